"""`deployer apply` and `deployer status` across 1, 5 and 20 real nodes (default parallelism).

Twenty Docker nodes (network namespaces, one dockerd each, unix sockets), one service
with a healthcheck on each. A round commits nothing: it writes an image change into the
compose files of the first N nodes and times `deployer apply TARGETS` as a fresh process
(N nodes switched health-gated, --parallel's default), then `deployer status TARGETS`
(N nodes read). Prints the medians per size and the ratios 5/1 and 20/1 (goal: 20/1
under 2 with the default parallelism). Heavy on a small machine: 20 dockerd's start.

    python3 bench/bench_fleet.py [--rounds 3] [--sizes 1,5,20]
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
from tests.support.images import build_standard_images, copy_image  # noqa: E402
from tests.support.repos import WEB_SERVICE, git  # noqa: E402

IMAGES = ["deployer-test/web:1", "deployer-test/web:2"]


def write(root: Path, names: list[str], image: str) -> None:
    for name in names:
        (root / "datacenters" / "bench" / name / "docker-compose.yml").write_text(
            "services:\n" + WEB_SERVICE.format(image=image))


def timed(root: Path, *args: str, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), *args],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in ok:
        raise SystemExit(f"deployer {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,5,20")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    count = max(sizes)
    started = time.perf_counter()
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        nodes = fleet.add_nodes(*(dict(name=f"bf{i:02d}") for i in range(count)))
        print(f"{count} nodes up in {time.perf_counter() - started:.1f} s", flush=True)
        with closing(nodes[0].client()) as src:
            build_standard_images(src)
            for node in nodes[1:]:
                with closing(node.client()) as dst:
                    copy_image(src, dst, *IMAGES)
        root = Path(tmp) / "infra"
        names = [n.name for n in nodes]
        for node in nodes:
            node_dir = root / "datacenters" / "bench" / node.name
            node_dir.mkdir(parents=True)
            (node_dir / "node.yml").write_text(f"docker: {node.unix_url}\n")
        write(root, names, IMAGES[0])
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")
        timed(root, "apply", "-q")  # first converge, not measured

        applies: dict[int, list[float]] = {n: [] for n in sizes}
        statuses: dict[int, list[float]] = {n: [] for n in sizes}
        current = IMAGES[0]
        for _ in range(args.rounds):
            for n in sizes:
                targets = [f"bench/{name}" for name in names[:n]]
                current = IMAGES[IMAGES.index(current) ^ 1]
                write(root, names[:n], current)
                applies[n].append(timed(root, "apply", "-q", *targets))
                statuses[n].append(timed(root, "status", *targets))
                write(root, names, current)
                timed(root, "apply", "-q")  # the others along, not measured
    print(f"deployer apply (one-container change per node) and status, median of {args.rounds}, fresh process each,"
          " --parallel default (8):")
    a = {n: statistics.median(v) for n, v in applies.items()}
    s = {n: statistics.median(v) for n, v in statuses.items()}
    for n in sizes:
        print(f"  {n:>3} node{'s' if n > 1 else ' '}  apply {a[n]:6.2f} s   status {s[n]:6.2f} s")
    base = sizes[0]
    for n in sizes[1:]:
        print(f"  ratio {n}/{base}  apply {a[n] / a[base]:.2f}   status {s[n] / s[base]:.2f}"
              + ("   (goal < 2)" if n == count else ""))


if __name__ == "__main__":
    main()
