"""`deployer apply` of a one-container change on 1 node vs on 3 nodes (nodes worked on in parallel).

Three real Docker nodes (network namespaces, unix sockets), one service each with a
healthcheck. Each round commits an image change to the compose file of one node (or
of all three) and times `deployer apply` as a fresh process. Prints the medians and
the ratio 3 nodes / 1 node (target: at most 1.5).

    python3 bench/bench_apply.py [--rounds 8]
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
from tests.support.repos import WEB_SERVICE, git  # noqa: E402

IMAGES = ["deployer-test/web:1", "deployer-test/web:2"]


def write(root: Path, nodes: list[str], image: str) -> None:
    for name in nodes:
        (root / "datacenters" / "bench" / name / "docker-compose.yml").write_text(
            "services:\n" + WEB_SERVICE.format(image=image))


def apply_seconds(root: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), "apply", "-q"],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"apply failed: {done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
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
