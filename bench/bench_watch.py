"""Benchmark of the `watch-builds` queue: 20 queued commits built with --jobs 1, then 20 more with --jobs 2.

Each commit changes the worker's source (a new string: a new binary, a new
image layer), so every queued commit compiles (warm Go cache), docker-builds
and pushes to a TLS registry. One ``BuildWatcher.poll()`` (what ``watch-builds
--once`` runs) takes the whole queue; the claims are the real ones on the build
engine. Prints the seconds and commits per minute of each, and the ratio
--jobs 2 / --jobs 1 (the baseline, measured in the same run). Setup (engine,
registry, base and Go builder images, the first cold build) is shown apart.

    python3 bench/bench_watch.py                 # 20 commits each way
    python3 bench/bench_watch.py --commits 10 --jobs 3 --json

``DEPLOYER_TEST_IMAGE_CACHE=DIR`` loads the base and builder images from the
test suite's ``docker save`` cache instead of making them. Needs root and
scripts/install-builders.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.build import builders as B  # noqa: E402
from deployer.ops.build_claims import EngineClaims  # noqa: E402
from deployer.ops.release import BuildWatcher  # noqa: E402
from tests.support.build_engine import BuildEngine, load_or_make_image  # noqa: E402
from bench.common import change_code, git, timed  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402



def queue_run(client, src: Path, registry: str, state: Path, jobs: int, first: int, commits: int) -> dict:
    """Queue ``commits`` new commits, then time one poll building them with ``jobs`` at a time."""
    for n in range(first, first + commits):
        change_code(src, n)
    watcher = BuildWatcher(client, src, registry=registry, jobs=jobs, state_path=state,
                           claims=EngineClaims(client))
    result, seconds = timed(watcher.poll)
    statuses = [o.status for o in result.outcomes]
    assert statuses == ["built"] * commits and all(o.built for o in result.outcomes), statuses
    return {"jobs": jobs, "commits": commits, "seconds": seconds, "per_minute": 60 * commits / seconds,
            "mean_build": sum(o.seconds for o in result.outcomes) / commits}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20, help="queued commits per run")
    parser.add_argument("--jobs", type=int, default=2, help="the concurrent run's --jobs (baseline: 1)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_watch: needs root (network namespace, dockerd)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="deployer-bench-watch-"))
    os.environ["DEPLOYER_CACHE_DIR"] = str(work / "cache")
    cache = os.environ.get("DEPLOYER_TEST_IMAGE_CACHE")
    setup: dict[str, float] = {}
    runs: list[dict] = []
    engine = BuildEngine()
    registry = None
    try:
        _, setup["engine start"] = timed(engine.start)
        registry = RegistryServer(engine.bridge_ip)
        _, setup["registry start"] = timed(registry.start)
        client = engine.client()
        _, setup["base image"] = timed(load_or_make_image, client, B.base_image_ref(), B.ensure_base_image, cache)
        _, setup["go builder image"] = timed(load_or_make_image, client, B.builder_image_ref("go"),
                                             lambda c: B.ensure_builder_image(c, "go"), cache)
        src = work / "src" / "worker"
        shutil.copytree(ROOT / "examples" / "apps" / "worker", src)
        git(src, "init", "-q", "-b", "main")
        git(src, "add", "-A")
        git(src, "commit", "-q", "-m", "initial")
        state = work / "builds.json"
        first = BuildWatcher(client, src, registry=registry.address, state_path=state)
        _, setup["first build (cold Go cache)"] = timed(first.poll)

        runs.append(queue_run(client, src, registry.address, state, 1, 1, args.commits))
        runs.append(queue_run(client, src, registry.address, state, args.jobs, 1 + args.commits, args.commits))
        client.close()
    finally:
        if registry is not None:
            registry.stop()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in setup)
    print(f"setup ({os.cpu_count()} cores):")
    for key, value in setup.items():
        print(f"  {key:<{width}}  {value:8.2f}s")
    print(f"watch-builds queue, {args.commits} queued commits (compile, docker build, push each):")
    for run in runs:
        print(f"  --jobs {run['jobs']}  {run['seconds']:7.1f}s  {run['per_minute']:5.1f} commits/min  "
              f"(one build {run['mean_build']:.1f}s on average)")
    ratio = runs[0]["seconds"] / runs[1]["seconds"]
    print(f"  throughput --jobs {args.jobs} / --jobs 1: {ratio:.2f}x")
    if args.json:
        print(json.dumps({"setup": setup, "runs": runs, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
