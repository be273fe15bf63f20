"""`deployer apply` and `deployer status` across 1, 5 and 20 real nodes (default parallelism).

Twenty Docker nodes (network namespaces, one dockerd each, unix sockets), one service
with a healthcheck on each. A round commits nothing: it writes an image change into the
compose files of the first N nodes and times `deployer apply TARGETS` as a fresh process
(N nodes switched health-gated, --parallel's default), then `deployer status TARGETS`
(N nodes read). Prints the medians per size and the ratios 5/1 and 20/1 (goal: 20/1
under 2 with the default parallelism). Heavy on a small machine: 20 dockerd's start.

    python3 bench/bench_fleet.py [--rounds 3] [--sizes 1,5,20] [--variant LABEL=DIR[:PARALLEL] ...]

``--variant`` (repeatable) compares deployers in the same run, rounds interleaved:
the checkout in DIR (default: this one), with ``--parallel PARALLEL`` when given
(default: the option's default). Each variant's ratios are against its own 1-node
time; the variants' times are also printed as ratios of the first variant's. Peak
RSS is each measured process's own (wait4).
"""

from __future__ import annotations

import argparse
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
from tests.support.images import build_standard_images, copy_image  # noqa: E402
from tests.support.repos import WEB_SERVICE, git  # noqa: E402

IMAGES = ["deployer-test/web:1", "deployer-test/web:2"]


def write(root: Path, names: list[str], image: str) -> None:
    for name in names:
        (root / "datacenters" / "bench" / name / "docker-compose.yml").write_text(
            "services:\n" + WEB_SERVICE.format(image=image))


class Variant:
    def __init__(self, text: str):
        label, _, rest = text.partition("=")
        code, _, parallel = (rest or str(ROOT)).partition(":")
        self.label, self.code, self.parallel = label, Path(code).resolve(), parallel or None
        self.rss: list[int] = []  # KiB, per measured process

    def args(self, command: str) -> list[str]:
        return [command, *(["--parallel", self.parallel] if self.parallel else [])]


def timed(root: Path, *args: str, ok: tuple[int, ...] = (0,), variant: Variant | None = None) -> float:
    env = dict(os.environ, PYTHONPATH=str(variant.code if variant else ROOT))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=root.parent)  # not a checkout: sys.path[0] is the cwd, before PYTHONPATH
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode not in ok:
        raise SystemExit(f"deployer {' '.join(args)} failed ({proc.returncode}): {text}")
    if variant is not None:
        variant.rss.append(usage.ru_maxrss)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,5,20")
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    variants = [Variant(v) for v in args.variant] or [Variant("this")]
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

        applies = {(v.label, n): [] for v in variants for n in sizes}
        statuses = {(v.label, n): [] for v in variants for n in sizes}
        current = IMAGES[0]
        for _ in range(args.rounds):
            for n in sizes:
                targets = [f"bench/{name}" for name in names[:n]]
                for v in variants:
                    current = IMAGES[IMAGES.index(current) ^ 1]
                    write(root, names[:n], current)
                    applies[v.label, n].append(timed(root, *v.args("apply"), "-q", *targets, variant=v))
                    statuses[v.label, n].append(timed(root, *v.args("status"), *targets, variant=v))
                    print(f"  round {_ + 1}, {n} node(s), {v.label}: apply {applies[v.label, n][-1]:.2f} s, "
                          f"status {statuses[v.label, n][-1]:.2f} s", flush=True)
                    write(root, names, current)
                    timed(root, "apply", "-q")  # the others along, not measured
    print(f"deployer apply (one-container change per node) and status, median of {args.rounds}, fresh process each:")
    a = {k: statistics.median(v) for k, v in applies.items()}
    s = {k: statistics.median(v) for k, v in statuses.items()}
    first = variants[0].label
    base = sizes[0]
    for v in variants:
        print(f" {v.label} ({v.code}, --parallel {v.parallel or 'default'}), peak RSS {max(v.rss) / 1024:.1f} MB:")
        for n in sizes:
            vs = f"   ({a[v.label, n] / a[first, n]:.2f} / {s[v.label, n] / s[first, n]:.2f} of {first})" \
                if v.label != first else ""
            print(f"  {n:>3} node{'s' if n > 1 else ' '}  apply {a[v.label, n]:6.2f} s   status {s[v.label, n]:6.2f} s{vs}")
        for n in sizes[1:]:
            print(f"  ratio {n}/{base}  apply {a[v.label, n] / a[v.label, base]:.2f}   "
                  f"status {s[v.label, n] / s[v.label, base]:.2f}" + ("   (goal < 2)" if n == count else ""))


if __name__ == "__main__":
    main()
