"""`deployer apply` and `deployer status` across 1, 5 and 20 real nodes (default parallelism).

Twenty Docker nodes (network namespaces, one dockerd each, unix sockets), one service
with a healthcheck on each. A round commits nothing: it writes an image change into the
compose files of the first N nodes and times `deployer apply TARGETS` as a fresh process
(N nodes switched health-gated, --parallel's default), then `deployer status TARGETS`
(N nodes read). Prints the medians per size and the ratios 5/1 and 20/1 (goal: 20/1
under 2 with the default parallelism). Heavy on a small machine: 20 dockerd's start.

    python3 bench/bench_fleet.py [--rounds 3] [--sizes 1,5,20] [--health 200ms[,2s]]
                                 [--variant LABEL=DIR[:PARALLEL] ...] [--phases]

Besides the wall time, each measured process's own CPU seconds (user + system, from
wait4) are printed, per apply and per node: the deployer's share of the work, which
twenty engines sharing two cores cannot inflate the way they inflate wall time (they
can a little: a loaded machine makes every instruction slower through cache misses).
So is the whole machine's CPU over each apply (``/proc/stat``: every process, the
engines, their shims and runc, the containers' health checks): how many of the cores
were busy while it ran, and what is left after the deployer's own share. Where the
machine is busy all the time an apply runs, its wall time is the engines' CPU shared
out over the cores here, not a figure of the deployer's.

``--health`` lists the healthcheck intervals of the service, one table each (default
``200ms``, the row measured before). Every 200 ms twenty containers run a check
(an exec: runc, a shim), which is most of the machine's load while the fleet runs;
a longer interval takes that load away, so the ratio shows more of the deployer's
side, but each switch then waits for the first check (about one interval) too.

``--phases`` runs one 20-node apply (the largest size) per variant with the
deployer's main steps timed in the process (load, node locks, the transaction's
pull, each node's session, switch and health wait, release, exit) and prints, per
step, how many ran, their median and longest time, and when the first began and
the last ended: what runs one after the other and what overlaps.

``--wide 20,100`` measures what many nodes' sessions cost the deployer: a second
repository with that many nodes spread over the fleet's engines (several nodes per
engine), and ``deployer status`` over all of them (one engine session and one worker
thread per node at once), with ``--parallel 8`` and with the default, per variant:
wall time, CPU seconds and peak RSS of the process (the rows are "missing" or
"drifted": status reads every node all the same).

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
IDLE_SAMPLE = 5.0  # seconds the machine is watched with no command running, before each table


def write(root: Path, names: list[str], image: str, health: str = "200ms") -> None:
    service = WEB_SERVICE.format(image=image).replace("interval: 200ms", f"interval: {health}")
    for name in names:
        (root / "datacenters" / "bench" / name / "docker-compose.yml").write_text("services:\n" + service)


# Runs the deployer with its main steps timed (``--phases``): each wrapped function's calls as
# (step, start, end) seconds since BENCH_T0 (the bench's clock just before it started the process).
PHASES = """
import json, os, runpy, sys, threading, time
T0 = float(os.environ["BENCH_T0"])
spans = [("interpreter start", 0.0, time.time() - T0)]
def timed(owner, name, step):
    fn = getattr(owner, name)
    def wrapper(*a, **kw):
        start = time.time() - T0
        try:
            return fn(*a, **kw)
        finally:
            spans.append((step, start, time.time() - T0))
    setattr(owner, name, wrapper)
from deployer.ops import deploy, fleet, locks
from deployer.gitrepo import transaction
from deployer.engine import apply, session
timed(deploy.Deployer, "load", "load the repository")
timed(locks.NodeLocks, "__enter__", "node locks: take all")
timed(locks.NodeLocks, "_take", "node locks: one node")
timed(locks.NodeLocks, "__exit__", "node locks: release all")
timed(transaction.RepoTransaction, "__enter__", "transaction: enter (flock, locks, pull)")
timed(transaction.RepoTransaction, "__exit__", "transaction: leave")
timed(fleet, "apply", "apply: all nodes")
timed(fleet, "apply_node", "apply: one node")
timed(session.EngineSession, "plan", "node: read state + plan")
timed(apply.Applier, "ensure_image", "node: ensure image")
timed(apply.Applier, "apply", "node: switch (create, start, health, remove old)")
timed(apply.Applier, "wait_healthy", "node: health wait")
def write():
    spans.append(("exit", time.time() - T0, time.time() - T0))
    with open(os.environ["BENCH_PHASES"], "w") as f:
        f.write(json.dumps(spans))
leave = os._exit
def counted_exit(code):  # a successful command leaves with os._exit (cli.main)
    write()
    leave(code)
os._exit = counted_exit
import atexit
atexit.register(write)
sys.argv = ["deployer", *sys.argv[1:]]
runpy.run_module("deployer", run_name="__main__")
"""


def phases(root: Path, variant: "Variant", targets: list[str]) -> list[tuple[str, float, float]]:
    """One apply with its steps timed (PHASES); the spans as (step, start, end) seconds since the process began."""
    import json

    env = dict(os.environ, PYTHONPATH=str(variant.code))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env["BENCH_PHASES"] = out.name
        env["BENCH_T0"] = repr(time.time())
        done = subprocess.run([sys.executable, "-c", PHASES, "--repo", str(root), *variant.args("apply"), "-q",
                               *targets], capture_output=True, text=True, env=env, cwd=root.parent)
        if done.returncode != 0:
            raise SystemExit(f"apply failed ({done.returncode}): {done.stdout}{done.stderr}")
        return [tuple(s) for s in json.loads(Path(out.name).read_text())]


def print_phases(spans: list[tuple[str, float, float]]) -> None:
    steps: dict[str, list[tuple[float, float]]] = {}
    for step, start, end in spans:
        steps.setdefault(step, []).append((start, end))
    print(f"   {'step':<52} {'n':>3} {'median':>7} {'max':>7} {'first':>7} {'last':>7}")
    for step, ranges in sorted(steps.items(), key=lambda kv: min(r[0] for r in kv[1])):
        took = [e - s for s, e in ranges]
        print(f"   {step:<52} {len(ranges):>3} {statistics.median(took):7.2f} {max(took):7.2f} "
              f"{min(s for s, _ in ranges):7.2f} {max(e for _, e in ranges):7.2f}")


class Variant:
    def __init__(self, text: str):
        label, _, rest = text.partition("=")
        code, _, parallel = (rest or str(ROOT)).partition(":")
        self.label, self.code, self.parallel = label, Path(code).resolve(), parallel or None
        self.rss: list[int] = []  # KiB, per measured process
        self.cpu: list[float] = []  # the last measured process's CPU seconds (user + system)
        self.machine: list[float] = []  # the whole machine's CPU seconds over each measured process

    def args(self, command: str) -> list[str]:
        return [command, *(["--parallel", self.parallel] if self.parallel else [])]


def machine_busy() -> float:
    """CPU seconds every process on the machine has used since boot, all cores: user, nice, system, irq and
    softirq (idle, iowait and the hypervisor's steal left out)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed(root: Path, *args: str, ok: tuple[int, ...] = (0,), variant: Variant | None = None) -> float:
    env = dict(os.environ, PYTHONPATH=str(variant.code if variant else ROOT))
    busy = machine_busy()
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=root.parent)  # not a checkout: sys.path[0] is the cwd, before PYTHONPATH
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        busy = machine_busy() - busy
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode not in ok:
        raise SystemExit(f"deployer {' '.join(args)} failed ({proc.returncode}): {text}")
    if variant is not None:
        variant.rss.append(usage.ru_maxrss)
        variant.cpu.append(usage.ru_utime + usage.ru_stime)
        variant.machine.append(busy)
    return elapsed


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,5,20")
    parser.add_argument("--health", default="200ms", help="healthcheck intervals, one table each (e.g. 200ms,2s)")
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--phases", action="store_true", help="also time the steps of one largest apply")
    parser.add_argument("--wide", default="", help="node counts for status over many sessions (e.g. 20,100)")
    args = parser.parse_args()
    variants = [Variant(v) for v in args.variant] or [Variant("this")]
    sizes = [int(s) for s in args.sizes.split(",")]
    healths = args.health.split(",")
    count = max(sizes)
    started = time.perf_counter()
    loads: dict[str, list[str]] = {h: [] for h in healths}
    spans: dict[tuple[str, str], list] = {}
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        nodes = fleet.add_nodes(*(dict(name=f"bf{i:02d}") for i in range(count)))
        print(f"{count} nodes up in {time.perf_counter() - started:.1f} s (load {load_average()})", flush=True)
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
        write(root, names, IMAGES[0], healths[0])
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")

        applies = {(h, v.label, n): [] for h in healths for v in variants for n in sizes}
        statuses = {(h, v.label, n): [] for h in healths for v in variants for n in sizes}
        cpus = {(h, v.label, n): [] for h in healths for v in variants for n in sizes}  # the apply's CPU seconds
        busy = {(h, v.label, n): [] for h in healths for v in variants for n in sizes}  # the machine's, meanwhile
        idle: dict[str, float] = {}  # cores busy with no command running (the fleet's health checks), per interval
        current = IMAGES[0]
        for health in healths:
            write(root, names, current, health)
            timed(root, "apply", "-q")  # first converge (or the healthcheck's change), not measured
            loads[health].append(load_average())
            before, t0 = machine_busy(), time.perf_counter()
            time.sleep(IDLE_SAMPLE)  # the fleet with nothing to do: its containers' health checks alone
            idle[health] = (machine_busy() - before) / (time.perf_counter() - t0)
            for _ in range(args.rounds):
                for n in sizes:
                    targets = [f"bench/{name}" for name in names[:n]]
                    for v in variants:
                        current = IMAGES[IMAGES.index(current) ^ 1]
                        write(root, names[:n], current, health)
                        applies[health, v.label, n].append(
                            timed(root, *v.args("apply"), "-q", *targets, variant=v))
                        cpus[health, v.label, n].append(v.cpu[-1])
                        busy[health, v.label, n].append(v.machine[-1])
                        statuses[health, v.label, n].append(timed(root, *v.args("status"), *targets, variant=v))
                        print(f"  healthcheck {health}, round {_ + 1}, {n} node(s), {v.label}: "
                              f"apply {applies[health, v.label, n][-1]:.2f} s ({v.cpu[-2]:.2f} s CPU), "
                              f"status {statuses[health, v.label, n][-1]:.2f} s, load {load_average()}", flush=True)
                        write(root, names, current, health)
                        timed(root, "apply", "-q")  # the others along, not measured
                loads[health].append(load_average())
            if args.phases:
                targets = [f"bench/{name}" for name in names[:count]]
                for v in variants:
                    current = IMAGES[IMAGES.index(current) ^ 1]
                    write(root, names, current, health)
                    spans[health, v.label] = phases(root, v, targets)
        wide = wide_status(Path(tmp), nodes, current, [int(w) for w in args.wide.split(",") if w], variants,
                           args.rounds) if args.wide else []
    a = {k: statistics.median(v) for k, v in applies.items()}
    s = {k: statistics.median(v) for k, v in statuses.items()}
    c = {k: statistics.median(v) for k, v in cpus.items()}
    m = {k: statistics.median(v) for k, v in busy.items()}
    cores = os.cpu_count() or 1
    first = variants[0].label
    base = sizes[0]
    print(f"deployer apply (one-container change per node) and status, median of {args.rounds}, fresh process each;"
          " CPU: the apply process's own user + system seconds (wait4):")
    for health in healths:
        print(f" healthcheck interval {health} (load average 1/5/15 min after each round: "
              f"{', '.join(loads[health])}); with no command running, {idle[health]:.2f} of {cores} cores "
              f"were busy (the fleet's health checks):")
        for v in variants:
            print(f"  {v.label} ({v.code}, --parallel {v.parallel or 'default'}), peak RSS {max(v.rss) / 1024:.1f} MB:")
            for n in sizes:
                k = (health, v.label, n)
                vs = f"   ({a[k] / a[health, first, n]:.2f} / {s[k] / s[health, first, n]:.2f} of {first})" \
                    if v.label != first else ""
                print(f"   {n:>3} node{'s' if n > 1 else ' '}  apply {a[k]:6.2f} s   status {s[k]:6.2f} s   "
                      f"apply CPU {c[k]:5.2f} s ({c[k] / n:.3f} s per node){vs}")
                engines = m[k] - c[k] - idle[health] * a[k]
                print(f"               machine CPU over the apply {m[k]:6.2f} s = {m[k] / a[k]:.2f} of {cores} cores "
                      f"busy; less the deployer's and the idle fleet's: {engines:6.2f} s for the switches "
                      f"(engines, shims, runc, the new containers), {engines / n:.2f} s per node, "
                      f"{engines / cores:.2f} s of wall on {cores} cores")
            for n in sizes[1:]:
                k, b = (health, v.label, n), (health, v.label, base)
                print(f"   ratio {n}/{base}  apply {a[k] / a[b]:.2f}   status {s[k] / s[b]:.2f}   "
                      f"apply CPU {c[k] / c[b]:.2f}" + ("   (goal < 2)" if n == count else ""))
            if (health, v.label) in spans:
                print(f"   the steps of one {count}-node apply (seconds since the process was started):")
                print_phases(spans[health, v.label])
    if wide:
        print(f" status over many nodes' sessions (nodes spread over {count} engines), median of {args.rounds}:")
        for line in wide:
            print("  " + line)


def wide_status(tmp: Path, engines: list, image: str, counts: list[int], variants: list[Variant],
                rounds: int) -> list[str]:
    """``--wide``: status over N nodes (several per engine), --parallel 8 and the default; one line each."""
    out = []
    for n in counts:
        root = tmp / f"wide{n}"
        for i in range(n):
            node_dir = root / "datacenters" / "wide" / f"w{i:03d}"
            node_dir.mkdir(parents=True)
            (node_dir / "node.yml").write_text(f"docker: {engines[i % len(engines)].unix_url}\n")
            (node_dir / "docker-compose.yml").write_text("services:\n" + WEB_SERVICE.format(image=image))
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")
        for v in variants:
            for parallel in ("8", None):
                probe = Variant(f"{v.label}={v.code}" + (f":{parallel}" if parallel else ""))
                walls = [timed(root, *probe.args("status"), ok=(0, 1, 2), variant=probe) for _ in range(rounds)]
                out.append(f"{n:>4} nodes  {v.label} --parallel {parallel or 'default'}: "
                           f"wall {statistics.median(walls):6.2f} s, CPU {statistics.median(probe.cpu):5.2f} s "
                           f"({statistics.median(probe.cpu) / n * 1000:.1f} ms per node), "
                           f"peak RSS {max(probe.rss) / 1024:.1f} MB, load {load_average()}")
                print("  " + out[-1], flush=True)
    return out


if __name__ == "__main__":
    main()
