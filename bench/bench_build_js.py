"""Benchmark of the JS builder: a cold build against warm ones that reuse the npm cache volume.

The sample web front end (examples/apps/dashboard: webpack, its package-lock.json
committed) is built in the JS builder container: first with an empty npm cache
volume (every tarball from the npm registry), then ``--repeat`` times with that
volume (``npm ci --prefer-offline`` finds everything in it), and once more with
npm told to stay offline (``npm_config_offline=true``), which succeeds only if the
cache holds every locked package. Printed: each step's seconds, the npm ci and
webpack seconds npm and webpack report themselves, and the cold/warm ratio
(baseline: the cold build of the same run).

    python3 bench/bench_build_js.py              # private dockerd in a network namespace, removed at the end
    python3 bench/bench_build_js.py --repeat 5   # median of 5 warm builds
    python3 bench/bench_build_js.py --image      # also the nginx app image (docker build) and its rebuild
    python3 bench/bench_build_js.py --docker unix:///path/docker.sock   # an engine you started (kept)

Needs root and scripts/install-builders.sh, like bench/bench_build.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.build import builders as B  # noqa: E402
from deployer.build import image as I  # noqa: E402
from bench.common import timed  # noqa: E402
from tests.support.build_engine import BuildEngine  # noqa: E402

APP = ROOT / "examples" / "apps" / "dashboard"
VOLUME = "bench-js-cache"


def npm_seconds(logs: str) -> float:
    """What npm says `npm ci` took ("added 135 packages in 4s", "... in 850ms", "... in 2m")."""
    m = re.search(r"added \d+ packages? in ([\d.]+)(ms|s|m|h)\b", logs)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def webpack_seconds(logs: str) -> float:
    m = re.search(r"compiled successfully in (\d+) ms", logs)
    return int(m.group(1)) / 1000 if m else float("nan")


def _drop_volume(client) -> None:
    import docker.errors

    try:
        client.volumes.get(VOLUME).remove(force=True)
    except docker.errors.NotFound:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm builds to take the median of")
    parser.add_argument("--image", action="store_true", help="also build the nginx app image twice")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    parser.add_argument("--docker", metavar="URL", help="use this engine (its images are kept; the bench's cache "
                                                        "volume is removed before and after)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_build_js: needs root (network namespace, dockerd)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="deployer-bench-js-"))
    os.environ["DEPLOYER_CACHE_DIR"] = str(work / "cache")
    numbers: dict[str, float] = {}
    engine = None if args.docker else BuildEngine()
    client = None
    try:
        if engine is not None:
            _, numbers["engine start"] = timed(engine.start)
            client = engine.client()
        else:
            import docker

            client = docker.DockerClient(base_url=args.docker, timeout=900)
        _drop_volume(client)
        _, numbers["base image (mmdebstrap + import)"] = timed(B.ensure_base_image, client)
        js_ref, numbers["js builder image (apt: nodejs, npm)"] = timed(B.ensure_builder_image, client, "js")
        size = client.images.get(js_ref).attrs["Size"] / 1e6

        cold = B.build(client, APP, artifacts_dir=work / "out", cache_volume=VOLUME)
        numbers["cold build (empty npm cache)"] = cold.seconds
        numbers["  cold: npm ci"] = npm_seconds(cold.logs)
        numbers["  cold: webpack"] = webpack_seconds(cold.logs)
        warm = [B.build(client, APP, artifacts_dir=work / "out", cache_volume=VOLUME) for _ in range(args.repeat)]
        numbers["warm build (median)"] = statistics.median(w.seconds for w in warm)
        numbers["  warm: npm ci (median)"] = statistics.median(npm_seconds(w.logs) for w in warm)
        numbers["  warm: webpack (median)"] = statistics.median(webpack_seconds(w.logs) for w in warm)
        offline = B.build(client, APP, artifacts_dir=work / "out", cache_volume=VOLUME,
                          env={"npm_config_offline": "true"})
        numbers["warm build, npm offline (cache only)"] = offline.seconds
        numbers["cold/warm ratio"] = numbers["cold build (empty npm cache)"] / numbers["warm build (median)"]
        numbers["cold/warm npm ci ratio"] = numbers["  cold: npm ci"] / numbers["  warm: npm ci (median)"]

        if args.image:
            result = B.build(client, APP, artifacts_dir=work / "image-out", cache_volume=VOLUME)
            app = B.load_app_config(APP)
            info = I.SourceInfo(path=APP, version="bench", revision="0" * 40, dirty=False, tag=None)
            _, numbers["nginx app image, fresh engine (apt: nginx)"] = timed(
                I._build_app_image, client, app, info, result, "bench/dashboard:1", None)
            _, numbers["nginx app image again (layer cache)"] = timed(
                I._build_app_image, client, app, info, result, "bench/dashboard:2", None)
    finally:
        if client is not None:
            _drop_volume(client)
            client.close()
        if engine is not None:
            engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in numbers)
    print(f"js builder image: {size:.0f} MB; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    for key, value in numbers.items():
        unit = "x" if "ratio" in key else "s"
        print(f"{key:<{width}}  {value:8.2f}{unit}")
    if args.json:
        print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
