"""`deployer logs --tail 100` of a dc over 3 nodes against `docker logs --tail 100` on each node.

Three real Docker nodes (network namespaces, unix sockets), one service each that
has written 2000 lines (half to stdout, half to stderr). Each round times, as fresh
processes, `deployer logs --tail 100 bench` (the 3 nodes read in parallel) and the
three `docker -H unix://... logs --tail 100 <container>` one after the other.
Prints the medians and the ratio deployer / docker (all three), and `deployer status
bench` as the floor (the same start-up, repository load, connections and reads).

    python3 bench/bench_logs.py [--rounds 10]
"""

from __future__ import annotations

import argparse
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
from tests.support.repos import git  # noqa: E402

COMPOSE = """\
services:
  talk:
    image: deployer-test/busybox:base
    init: true
    command: ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); echo out line $i; echo err line $i >&2; done; sleep 3600"]
"""


def seconds(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{args} failed: {done.stdout}{done.stderr}")
    return elapsed, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        nodes = fleet.add_nodes(dict(name="la"), dict(name="lb"), dict(name="lc"))
        root = Path(tmp) / "infra"
        for node in nodes:
            with closing(node.client()) as client:
                build_standard_images(client)
            node_dir = root / "datacenters" / "bench" / node.name
            node_dir.mkdir(parents=True)
            (node_dir / "node.yml").write_text(f"docker: {node.unix_url}\n")
            (node_dir / "docker-compose.yml").write_text(COMPOSE)
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")
        seconds([sys.executable, "-m", "deployer", "--repo", str(root), "apply", "-q"])
        time.sleep(2)  # the 2000 lines are written
        ours, theirs, status = [], [], []
        for _ in range(args.rounds):
            status.append(seconds([sys.executable, "-m", "deployer", "--repo", str(root), "status", "bench"])[0])
            t, out = seconds([sys.executable, "-m", "deployer", "--repo", str(root), "logs", "--tail", "100", "bench"])
            assert len(out.splitlines()) == 300, len(out.splitlines())
            ours.append(t)
            total = 0.0
            for node in nodes:
                t, out = seconds(["docker", "-H", node.unix_url, "logs", "--tail", "100", f"{node.name}-talk"])
                assert len(out.splitlines()) == 100
                total += t
            theirs.append(total)
    mo, mt, ms = statistics.median(ours), statistics.median(theirs), statistics.median(status)
    print(f"logs --tail 100 across 3 nodes, median of {args.rounds} (fresh processes):")
    print(f"  deployer logs --tail 100 bench        {mo:.3f} s")
    print(f"  docker logs --tail 100, x3 in a row   {mt:.3f} s ({mt / 3:.3f} s each)")
    print(f"  ratio deployer / docker x3            {mo / mt:.2f}")
    print(f"  deployer status bench (same start-up, connect, read; no logs)  {ms:.3f} s")


if __name__ == "__main__":
    main()
