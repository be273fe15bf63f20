"""`deployer plan`, repository side only, over generated repos of N nodes x 10 containers.

No hosts: every node is planned against an empty engine state, so this measures
loading and validating the repo, building every container spec with its hash, and
planning. Prints seconds per size and the growth ratios (linear growth means
time(10N)/time(N) close to 10). Target: 1,000 nodes x 10 containers under 2 s.

Each size is generated twice, the same containers written two ways: ``plain``
(every value written out in every node's file) and ``shared`` (every service
``extends`` a definition in ``common/svc.yml``, its image and label come from
variables of datacenter.yml and the node's ``.env``, a default from
``${LOG_LEVEL:-info}``). The run checks that both give the same container specs
and prints the shared repository's time as a ratio of the plain one's, measured
in the same run.

Each repository is planned three times: without a git directory (no parse cache:
the path before the cache), then in a git repository with an empty cache (it is
filled), then again (files found in the cache by their blob ids). The ratio
warm / no cache is printed per size and variant. Target: 10,000 nodes x 10
containers under 2 s, warm. ``status`` is timed too, repository side (warm):
load, the selection of every datacenter as targets, each node's specs in start
order, planned and made status rows against an empty engine state.

``--baseline DIR`` (a checkout of other code, e.g. ``git worktree add DIR main``)
compares this checkout's code with it at the largest size: each variant's
repository is generated once per checkout (each fills its own parse cache: the
cache belongs to the code that made it), then warm plans and statuses run as
fresh processes, the two checkouts alternated ``--repeat`` times. Printed: the
medians of wall time and of the process's CPU time (the time the command's
work took in the process, its interpreter start and imports included), the
ratios this / baseline, and the load average around each pair.

    python3 bench/bench_plan.py [--sizes 100,1000,10000] [--baseline DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_ENV = "BENCH_PLAN_CODE"  # the checkout whose deployer a --child process runs (--baseline)
sys.path.insert(0, os.environ.get(CODE_ENV) or str(ROOT))

from deployer.config import compose_spec, loader  # noqa: E402
from deployer.engine.plan import plan_node  # noqa: E402
from deployer.engine.state import NodeState  # noqa: E402
from deployer.ops.fleet import ordered_specs, status_row  # noqa: E402
from deployer.ops.targets import selection  # noqa: E402

SERVICE = """\
  svc{i}:
    image: registry.example:5000/team/svc{i}:1.{i}
    init: true
    ports: ["{port}:8080"]
    environment:
      LOG_LEVEL: info
      PEERS: "svc{j}:8080"
    depends_on: [svc{j}]
    healthcheck:
      test: ["CMD", "/svc", "-health"]
      interval: 5s
      timeout: 2s
      retries: 3
    restart: unless-stopped
    labels:
      team: core
"""


# The same services through extends and variables.
COMMON = """\
services:
  base:
    init: true
    environment:
      LOG_LEVEL: ${LOG_LEVEL:-info}
    healthcheck:
      test: ["CMD", "/svc", "-health"]
      interval: 5s
      timeout: 2s
      retries: 3
    restart: unless-stopped
    labels:
      team: ${TEAM}
"""

SHARED_SERVICE = """\
  svc{i}:
    extends: {{file: ../../../common/svc.yml, service: base}}
    image: ${{REGISTRY}}/team/svc{i}:${{SVC{i}_VERSION}}
    ports: ["{port}:8080"]
    environment:
      PEERS: "svc{j}:8080"
    depends_on: [svc{j}]
"""


def generate(root: Path, nodes: int, per_node: int = 10, shared: bool = False) -> None:
    if shared:
        (root / "common").mkdir(parents=True)
        (root / "common" / "svc.yml").write_text(COMMON)
    for n in range(nodes):
        dc = f"dc{n % 4}"
        node_dir = root / "datacenters" / dc / f"node{n:05d}"
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text(f"docker: ssh://deploy@10.{n // 250 % 250}.{n % 250}.1\n")
        template = SHARED_SERVICE if shared else SERVICE
        services = "".join(
            template.format(i=i, j=i - 1, port=8000 + i).replace("    depends_on: [svc-1]\n", "")
            for i in range(per_node))
        (node_dir / "docker-compose.yml").write_text("services:\n" + services)
        if shared:
            (node_dir / ".env").write_text("".join(f"SVC{i}_VERSION=1.{i}\n" for i in range(per_node)))
            if n < 4:
                (root / "datacenters" / dc / "datacenter.yml").write_text(
                    "variables:\n  REGISTRY: registry.example:5000\n  TEAM: core\n")


def plan_repo(root: Path) -> tuple[int, dict]:
    infra = loader.load(root)
    empty = NodeState(managed=[], names={})
    changes = 0
    hashes = {}
    for node in infra.nodes():
        specs = [compose_spec.container_spec(node, node.services[name], root)
                 for name in compose_spec.start_order(node.services)]
        changes += len(plan_node(specs, empty, {}))
        hashes[node.target] = [s.config_hash() for s in specs]
    return changes, hashes


def status_repo(root: Path) -> int:
    """``deployer status DC...`` for every datacenter, repository side: rows against an empty engine state."""
    infra = loader.load(root)
    empty = NodeState(managed=[], names={})
    rows = 0
    for node, services, _ in selection(infra, sorted(infra.datacenters)):
        specs = ordered_specs(root, node, services)
        changes = plan_node(specs, empty, {})
        rows += sum(status_row(spec, change).state == "missing" for spec, change in zip(specs, changes))
    return rows


def child(root: Path, what: str) -> None:
    """One warm command in this process (``--child``): prints its seconds as JSON."""
    start, cpu = time.perf_counter(), time.process_time()
    count = plan_repo(root)[0] if what == "plan" else status_repo(root)
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "count": count}))


def fresh(code: Path, root: Path, what: str) -> dict:
    """Run one warm ``what`` in a fresh process on ``code``'s deployer: its wall and CPU time, whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(root), "--what", what],
                          env=dict(os.environ, **{CODE_ENV: str(code)}), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{what} on {code} failed: {done.stderr}")
    inner = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "inner": inner["seconds"], "count": inner["count"]}


def compare(baseline: Path, size: int, repeat: int) -> None:
    """This checkout against ``baseline`` at ``size`` nodes: warm plan and status, fresh processes alternated."""
    codes = {"this": ROOT, "baseline": baseline.resolve()}
    for variant in ("plain", "shared"):
        with tempfile.TemporaryDirectory() as tmp:
            repos = {}
            for label in codes:
                repos[label] = Path(tmp) / label
                if not repos.get("this") or label == "this":
                    generate(repos[label], size, shared=variant == "shared")
                else:  # the same files (a copy), without the other code's cache
                    shutil.copytree(repos["this"], repos[label], ignore=shutil.ignore_patterns(".git"))
                subprocess.run(["git", "init", "-q", str(repos[label])], check=True)
                fresh(codes[label], repos[label], "plan")  # fills its cache (not measured)
            for what in ("plan", "status"):
                got: dict[str, list[dict]] = {label: [] for label in codes}
                loads = []
                for i in range(repeat):
                    loads.append(os.getloadavg()[0])
                    for label in (("this", "baseline") if i % 2 == 0 else ("baseline", "this")):
                        got[label].append(fresh(codes[label], repos[label], what))
                    loads.append(os.getloadavg()[0])
                counts = {r["count"] for runs in got.values() for r in runs}
                assert len(counts) == 1, f"the checkouts disagree: {counts}"
                med = {label: {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "inner")}
                       for label, runs in got.items()}
                this, base = med["this"], med["baseline"]
                print(f"{size:,} nodes, {variant:>6}, warm {what:>6}, fresh processes, median of {repeat}: "
                      f"CPU {base['cpu']:.2f} -> {this['cpu']:.2f} s (x{this['cpu'] / base['cpu']:.2f}), "
                      f"wall {base['wall']:.2f} -> {this['wall']:.2f} s (x{this['wall'] / base['wall']:.2f}), "
                      f"in-process {base['inner']:.2f} -> {this['inner']:.2f} s "
                      f"(load {min(loads):.1f}-{max(loads):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--baseline", type=Path, help="a checkout of other code to compare with (largest size)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per checkout (--baseline)")
    parser.add_argument("--only-baseline", action="store_true", help="with --baseline: skip the in-process runs")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--what", default="plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.what)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.baseline and args.only_baseline:
        compare(args.baseline, max(sizes), args.repeat)
        return
    runs = ("none", "cold", "warm")
    times: dict[tuple[str, str], dict[int, float]] = {(v, r): {} for v in ("plain", "shared") for r in runs}
    for size in sizes:
        hashes = {}
        for variant in ("plain", "shared"):
            with tempfile.TemporaryDirectory() as tmp:
                generate(Path(tmp), size, shared=variant == "shared")
                for run in runs:
                    if run == "cold":
                        subprocess.run(["git", "init", "-q", tmp], check=True)
                    start = time.perf_counter()
                    changes, got = plan_repo(Path(tmp))
                    times[variant, run][size] = time.perf_counter() - start
                    assert changes == size * 10
                    assert hashes.setdefault(variant, got) == got, "the cache must give the same containers"
                start = time.perf_counter()
                rows = status_repo(Path(tmp))
                status_s = time.perf_counter() - start
                assert rows == size * 10
                t = {r: times[variant, r][size] for r in runs}
                # The in-process figures follow the generation in this process (its garbage and heap);
                # a user's command is a fresh process: the median of three of those, for both commands.
                own = {what: statistics.median(fresh(ROOT, Path(tmp), what)["inner"] for _ in range(3))
                       for what in ("plan", "status")}
                print(f"{size:>6} nodes x 10 containers, {variant:>6}: no cache {t['none']:6.2f} s, "
                      f"cache filled {t['cold']:6.2f} s, warm {t['warm']:6.2f} s "
                      f"({t['warm'] / size * 1000:.2f} ms/node; warm / no cache x{t['warm'] / t['none']:.2f}); "
                      f"status warm {status_s:.2f} s; fresh processes, warm: plan {own['plan']:.2f} s, "
                      f"status {own['status']:.2f} s")
        assert hashes["plain"] == hashes["shared"], "extends and variables must give the same containers"
        print(f"{size:>6} nodes: shared / plain, no cache x{times['shared', 'none'][size] / times['plain', 'none'][size]:.2f}"
              f", warm x{times['shared', 'warm'][size] / times['plain', 'warm'][size]:.2f} (same container specs)")
    for a, b in zip(sizes, sizes[1:]):
        for variant in ("plain", "shared"):
            print(f"growth {a} -> {b} nodes, {variant}: no cache x{times[variant, 'none'][b] / times[variant, 'none'][a]:.1f}"
                  f", warm x{times[variant, 'warm'][b] / times[variant, 'warm'][a]:.1f} (linear would be x{b / a:.0f})")
    for size in sizes:
        if size >= 1000:
            print(f"{size:,} nodes x 10 containers, warm: plain {times['plain', 'warm'][size]:.2f} s, "
                  f"shared {times['shared', 'warm'][size]:.2f} s (target < 2 s; load {os.getloadavg()[0]:.1f})")
    if args.baseline:
        compare(args.baseline, max(sizes), args.repeat)


if __name__ == "__main__":
    main()
