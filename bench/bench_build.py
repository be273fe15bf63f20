"""Benchmark of the builders and the image builder.

Prints how long each step takes: the Debian base image, the Go builder image,
a cold Go build (empty cache volume), a warm one, their ratio, the app image
build and its push to a TLS registry; then the same Go build on a remote engine
over ssh:// (a Docker node in its own network namespace, tests/support/engines.py):
the builder image moved there (docker save | load, streamed), cold and warm builds,
and the ratio remote warm / local warm (the source and /out archives over SSH are
the only extra).

    python3 bench/bench_build.py                 # private dockerd + registry, removed at the end
    python3 bench/bench_build.py --repeat 5      # warm builds and pushes repeated, median shown
    python3 bench/bench_build.py --big-push      # also push the Go builder image (hundreds of MB)
    python3 bench/bench_build.py --no-remote     # without the ssh:// engine

Needs root and scripts/install-builders.sh (it starts its own dockerd in a
network namespace, as the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.build import builders as B  # noqa: E402
from deployer.build import image as I  # noqa: E402
from tests.support.build_engine import BuildEngine  # noqa: E402
from bench.common import git, timed  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402



def commit(src: Path, note: str) -> None:
    (src / "NOTES").write_text(note + "\n")
    git(src.parent, "add", "-A")
    git(src.parent, "commit", "-q", "-m", note)


def remote_builds(local, go_ref: str, src_app: Path, work: Path, repeat: int, local_warm: float) -> dict[str, float]:
    """The same build on an ssh:// engine: a fleet node with sshd, reached through deployer's own client."""
    from deployer.ops.build_engine import build_client
    from tests.support.engines import Fleet

    numbers: dict[str, float] = {}
    home = work / "home"
    home.mkdir()
    os.environ["HOME"] = str(home)  # the node's host key and identity go to this ~/.ssh, not the operator's
    (work / "fleet").mkdir()
    with Fleet(str(work / "fleet")) as fleet:
        node, numbers["remote engine start (ssh)"] = timed(fleet.add_node, "benchb", ssh=True)
        node.trust_ssh(home)
        remote = build_client(node.ssh_url)
        try:
            _, numbers["go builder image moved over ssh"] = timed(B.ensure_builder_image, remote, "go", source=local)
            cold = B.build(remote, src_app, artifacts_dir=work / "out-remote", cache_volume="bench-cold")
            numbers["remote cold build (ssh)"] = cold.seconds
            warm = [B.build(remote, src_app, artifacts_dir=work / "out-remote", cache_volume="bench-cold").seconds
                    for _ in range(repeat)]
            numbers["remote warm build (ssh, median)"] = statistics.median(warm)
            numbers["remote/local warm ratio"] = numbers["remote warm build (ssh, median)"] / local_warm
            numbers[f"source archive sent (KiB), {cold.source_files} files"] = cold.source_bytes / 1024
        finally:
            remote.close()
    return numbers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="sensor", choices=["sensor", "worker", "app"])
    parser.add_argument("--repeat", type=int, default=3, help="warm builds and image pushes to take the median of")
    parser.add_argument("--big-push", action="store_true", help="also push the Go builder image")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    parser.add_argument("--no-remote", action="store_true", help="skip the builds on a remote ssh:// engine")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_build: needs root (network namespace, dockerd)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="deployer-bench-"))
    os.environ["DEPLOYER_CACHE_DIR"] = str(work / "cache")
    numbers: dict[str, float] = {}
    engine = BuildEngine()
    registry = None
    try:
        _, numbers["engine start"] = timed(engine.start)
        registry = RegistryServer(engine.bridge_ip)
        _, numbers["registry start"] = timed(registry.start)
        client = engine.client()

        _, numbers["base image (mmdebstrap + import)"] = timed(B.ensure_base_image, client)
        go_ref, numbers["go builder image"] = timed(B.ensure_builder_image, client, "go")
        size = client.images.get(go_ref).attrs["Size"] / 1e6

        src_app = ROOT / "examples" / "apps" / args.app
        cold = B.build(client, src_app, artifacts_dir=work / "out", cache_volume="bench-cold")
        numbers["cold build"] = cold.seconds
        warm = [B.build(client, src_app, artifacts_dir=work / "out", cache_volume="bench-cold").seconds
                for _ in range(args.repeat)]
        numbers["warm build (median)"] = statistics.median(warm)
        numbers["cold/warm ratio"] = numbers["cold build"] / numbers["warm build (median)"]

        repo = work / "repo"
        src = repo / args.app
        shutil.copytree(src_app, src)
        git(repo, "init", "-q", "-b", "main")
        commit(src, "bench 0")
        image_builds, pushes, totals = [], [], []
        for i in range(args.repeat):
            if i:
                commit(src, f"bench {i}")
            result, total = timed(I.build_image, client, src, registry.address)
            image_builds.append(result.build_seconds)
            pushes.append(result.push_seconds)
            totals.append(total)
        app_size = client.images.get(result.ref).attrs["Size"] / 1e6
        numbers["build_image: binaries + docker build (median)"] = statistics.median(image_builds)
        numbers[f"push of a {app_size:.1f} MB image, first"] = pushes[0]
        if len(pushes) > 1:
            # Later commits only change NOTES: same binary, same layer, so only the manifest moves.
            numbers["push, layer already in the registry (median)"] = statistics.median(pushes[1:])
        numbers["build_image total (median)"] = statistics.median(totals)
        _, numbers["build_image, same commit again (skipped)"] = timed(I.build_image, client, src, registry.address)

        if not args.no_remote:
            numbers.update(remote_builds(client, go_ref, src_app, work, args.repeat, numbers["warm build (median)"]))

        if args.big_push:
            big = f"{registry.address}/builder-go:bench"
            client.api.tag(go_ref, f"{registry.address}/builder-go", "bench")
            _, numbers[f"push of the {size:.0f} MB go builder image"] = timed(I.push_image, client, big)
        client.close()
    finally:
        if registry is not None:
            registry.stop()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in numbers)
    print(f"go builder image: {size:.0f} MB; {os.cpu_count()} cores")
    for key, value in numbers.items():
        unit = "x" if "ratio" in key else ("" if "KiB" in key else "s")
        print(f"{key:<{width}}  {value:8.2f}{unit}")
    if args.json:
        print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
