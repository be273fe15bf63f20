"""`deployer apply` of a one-container change on 1 node vs on 3 nodes (nodes worked on in parallel).

Three real Docker nodes (network namespaces, unix sockets), one service each with a
healthcheck. Each round commits an image change to the compose file of one node (or
of all three) and times `deployer apply` as a fresh process. Prints the medians and
the ratio 3 nodes / 1 node (target: at most 1.5).

``--calls`` counts instead of timing (what a loaded machine cannot blur): the
engine clients made, the pings and the engine API requests of one ``apply``
switching all three nodes, per node, for this checkout and for ``--baseline
DIR`` (another checkout, e.g. ``git worktree add DIR main``), alternated
``--rounds`` times (fresh processes; the counts are the same every round unless
a lock had to be waited for).

    python3 bench/bench_apply.py [--rounds 8] [--calls [--baseline DIR]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import build_standard_images  # noqa: E402
from tests.support.repos import WEB_SERVICE, git  # noqa: E402

IMAGES = ["deployer-test/web:1", "deployer-test/web:2"]


def write(root: Path, nodes: list[str], image: str) -> None:
    for name in nodes:
        (root / "datacenters" / "bench" / name / "docker-compose.yml").write_text(
            "services:\n" + WEB_SERVICE.format(image=image))


def apply_seconds(root: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), "apply", "-q"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"apply failed: {done.stdout}{done.stderr}")
    return elapsed


# Runs the deployer with docker-py's client counted (clients made, pings, every other API request).
COUNTING = """
import atexit, collections, json, os, runpy, sys
import docker.api.client as api
counts = collections.Counter()
send, init = api.APIClient.send, api.APIClient.__init__
def counted_send(self, request, **kw):
    counts["pings" if request.path_url.split("?")[0].endswith("/_ping") else "requests"] += 1
    return send(self, request, **kw)
def counted_init(self, *a, **kw):
    counts["clients"] += 1
    init(self, *a, **kw)
api.APIClient.send, api.APIClient.__init__ = counted_send, counted_init
def write():
    with open(os.environ["BENCH_CALLS"], "w") as f:
        f.write(json.dumps(counts))
atexit.register(write)
leave = os._exit
def counted_exit(code):  # a successful command leaves with os._exit (cli.main): no atexit
    write()
    leave(code)
os._exit = counted_exit
sys.argv = ["deployer", *sys.argv[1:]]
runpy.run_module("deployer", run_name="__main__")
"""


def apply_calls(root: Path, code: Path) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        done = subprocess.run([sys.executable, "-c", COUNTING, "--repo", str(root), "apply", "-q", "--no-consul"],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(code),
                                                                       BENCH_CALLS=out.name),
                              cwd=root.parent)  # not a checkout: sys.path[0] is the cwd, before PYTHONPATH
        if done.returncode != 0:
            raise SystemExit(f"apply failed: {done.stdout}{done.stderr}")
        return json.loads(out.read() or "{}")


def calls(root: Path, names: list[str], rounds: int, baseline: Path | None) -> None:
    codes = {"this": ROOT, **({"baseline": baseline.resolve()} if baseline else {})}
    got: dict[str, list[dict]] = {label: [] for label in codes}
    current = IMAGES[0]
    for i in range(rounds):
        for label in (list(codes) if i % 2 == 0 else list(codes)[::-1]):
            current = IMAGES[IMAGES.index(current) ^ 1]
            write(root, names, current)  # every node switches
            got[label].append(apply_calls(root, codes[label]))
    print(f"deployer apply --no-consul switching {len(names)} nodes (engine locks), per node, median of {rounds}:")
    for label, runs in got.items():
        med = {k: statistics.median(r.get(k, 0) for r in runs) / len(names) for k in ("clients", "pings", "requests")}
        print(f"  {label:>8} ({codes[label]}): {med['clients']:.1f} engine clients, {med['pings']:.1f} pings, "
              f"{med['requests']:.1f} other API requests")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", action="store_true", help="count engine clients and requests instead of timing")
    parser.add_argument("--baseline", type=Path, help="with --calls: another checkout to count too")
    args = parser.parse_args()
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        nodes = fleet.add_nodes(dict(name="ba"), dict(name="bb"), dict(name="bc"))
        root = Path(tmp) / "infra"
        names = [n.name for n in nodes]
        for node in nodes:
            with closing(node.client()) as client:
                build_standard_images(client)
            node_dir = root / "datacenters" / "bench" / node.name
            node_dir.mkdir(parents=True)
            (node_dir / "node.yml").write_text(f"docker: {node.unix_url}\n")
        write(root, names, IMAGES[0])
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")
        apply_seconds(root)  # first converge, not measured
        if args.calls:
            calls(root, names, args.rounds, args.baseline)
            return

        one, three = [], []
        current = IMAGES[0]
        for _ in range(args.rounds):
            current = IMAGES[IMAGES.index(current) ^ 1]
            write(root, names[:1], current)
            one.append(apply_seconds(root))  # one node changed
            write(root, names, current)
            apply_seconds(root)  # bring the other two along, not measured
            current = IMAGES[IMAGES.index(current) ^ 1]
            write(root, names, current)
            three.append(apply_seconds(root))  # all three nodes changed
    m1, m3 = statistics.median(one), statistics.median(three)
    print(f"deployer apply, one-container change, median of {args.rounds} (fresh process each):")
    print(f"  on 1 node    {m1:.3f} s")
    print(f"  on 3 nodes   {m3:.3f} s")
    print(f"  ratio 3/1    {m3 / m1:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
