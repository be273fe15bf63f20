"""Benchmark of `deployer release`: a code change from commit to healthy container.

Each round edits the worker's source (a new string, so a new binary and a new
image layer), commits, and runs ``release`` end to end: check the target,
compile (warm Go cache), docker build, push to a TLS registry, deploy (the
node pulls the new layer, starts the container, waits until healthy, commits
to the infrastructure repository). Prints each phase's seconds, the median
over the rounds.

    python3 bench/bench_release.py               # 5 rounds, private dockerd + registry, removed at the end
    python3 bench/bench_release.py --rounds 10 --json
    python3 bench/bench_release.py --cli         # also time the `deployer release` program (subprocess)

One private dockerd (in a network namespace, as the tests use) is both the
build engine and the node, so after each push the image is removed from it:
the node then pulls it from the registry as a separate node would. The node's
compose file keeps the image's HEALTHCHECK but runs it every 500 ms (the
image says 5 s, which would dominate the deploy). Setup (base image, Go
builder image, a cold first build) is timed and shown apart.

Needs root and scripts/install-builders.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.build import builders as B  # noqa: E402
from deployer.build import image as I  # noqa: E402
from deployer.ops.release import ReleaseOptions, release  # noqa: E402
from tests.support.build_engine import BuildEngine  # noqa: E402
from bench.common import GIT_ENV, change_code, git, timed  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402

COMPOSE = "services:\n  worker:\n    image: {image}\n    healthcheck:\n      interval: 500ms\n"
PHASES = ["check target", "compile (warm)", "docker build", "push", "node pull", "start + healthy + commit",
          "deploy total", "release total"]


class Clock:
    """Progress callback that notes when the node started and finished pulling."""

    def __init__(self):
        self.pull_start = self.pull_end = None

    def __call__(self, msg: str) -> None:
        if ": pulling " in msg:
            self.pull_start = time.monotonic()
        elif ": pulled " in msg:
            self.pull_end = time.monotonic()

    @property
    def pull(self) -> float:
        return (self.pull_end - self.pull_start) if self.pull_start and self.pull_end else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="releases to take the median of")
    parser.add_argument("--cli", action="store_true", help="also time one release through the deployer program")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_release: needs root (network namespace, dockerd)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="deployer-bench-release-"))
    os.environ["DEPLOYER_CACHE_DIR"] = str(work / "cache")
    setup: dict[str, float] = {}
    rounds: list[dict[str, float]] = []
    engine = BuildEngine()
    registry = None
    try:
        _, setup["engine start"] = timed(engine.start)
        registry = RegistryServer(engine.bridge_ip)
        _, setup["registry start"] = timed(registry.start)
        client = engine.client()
        _, setup["base image"] = timed(B.ensure_base_image, client)
        _, setup["go builder image"] = timed(B.ensure_builder_image, client, "go")

        src = work / "src" / "worker"
        shutil.copytree(ROOT / "examples" / "apps" / "worker", src)
        git(src, "init", "-q", "-b", "main")
        git(src, "add", "-A")
        git(src, "commit", "-q", "-m", "initial")
        infra = work / "infra"
        node_dir = infra / "datacenters" / "bench" / "node1"
        node_dir.mkdir(parents=True)
        (infra / "datacenters" / "bench" / "datacenter.yml").write_text(f"registry: {registry.address}\n")
        (node_dir / "node.yml").write_text(f"docker: {engine.url}\n")
        (node_dir / "docker-compose.yml").write_text(COMPOSE.format(image=f"{registry.address}/worker:none"))
        git(infra, "init", "-q", "-b", "main")
        git(infra, "add", "-A")
        git(infra, "commit", "-q", "-m", "bench infrastructure")

        # The build engine is the node: forget the image once pushed, so the node pulls it.
        real_push = I.push_image

        def push_then_forget(client_, ref, image_id="", progress=None):
            digest = real_push(client_, ref, image_id=image_id, progress=progress)
            client_.images.remove(ref, force=True)
            return digest

        I.push_image = push_then_forget
        os.environ.update(GIT_ENV)  # the deploy commits
        first, setup["first release (cold Go cache)"] = timed(
            release, client, ReleaseOptions(src, ["bench/node1"], infra))

        for n in range(1, args.rounds + 1):
            change_code(src, n, "round")
            clock = Clock()
            result = release(client, ReleaseOptions(src, ["bench/node1"], infra), progress=clock)
            assert result.deploy.commit, "every round deploys a new image"
            s = result.seconds
            compile_s = result.image.build.seconds if result.image.build else float("nan")
            rounds.append({
                "check target": s["check"],
                "compile (warm)": compile_s,
                "docker build": result.image.build_seconds - compile_s,
                "push": s["push"],
                "node pull": clock.pull,
                "start + healthy + commit": s["deploy"] - clock.pull,
                "deploy total": s["deploy"],
                "release total": s["total"],
            })

        if args.cli:
            change_code(src, args.rounds + 1, "round")
            t = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(infra), "release", str(src),
                                "bench/node1", "--docker", engine.url, "--quiet"], capture_output=True, text=True)
            setup["`deployer release` program, one round (no pull: image kept)"] = time.monotonic() - t
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
        client.close()
    finally:
        if registry is not None:
            registry.stop()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    size = f"{len(rounds)} rounds, {os.cpu_count()} cores"
    medians = {k: statistics.median(r[k] for r in rounds) for k in PHASES} if rounds else {}
    width = max(len(k) for k in [*setup, *PHASES])
    print(f"setup ({size}):")
    for key, value in setup.items():
        print(f"  {key:<{width}}  {value:8.2f}s")
    print("release of a code change (median; min-max):")
    for key in PHASES:
        values = [r[key] for r in rounds]
        print(f"  {key:<{width}}  {medians[key]:8.2f}s   ({min(values):.2f}-{max(values):.2f})")
    if args.json:
        print(json.dumps({"setup": setup, "median": medians, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
