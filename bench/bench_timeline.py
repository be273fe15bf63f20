"""Where one `deployer deploy` spends its time on the engine: every engine call of the deploy, in order.

The job of bench/bench_peers.py (a one-container image change, healthcheck interval
200 ms, a fixed published port, on a dockerd this benchmark starts in its own network
namespace, tests/support/engines.py; images built locally), run IN this process
through the CLI (``deployer.cli.main``), so no interpreter start-up or imports are in
the figures: what is left is the engine work and the deployer's own work between
the calls. Each engine HTTP call is timed where docker-py sends it (``requests``'
``Session.send``); a call on a container names that container (the lock object
``deployer-lock.*``, the service's ``-web`` and ``-web-next``). Printed: the median
start offset and duration of each call over ``--runs`` deploys (alternating between
two images), the phases they add up to (node lock, graceful stop, create, start,
health wait, remove and rename, lock release), and how long after the engine's
``health_status: healthy`` event (read by a listener of the bench's own) the deploy
read the container as healthy.

Then, in fresh processes (``--fresh N``, default 10; 0 leaves it out), what a
``deployer deploy`` run as a command adds on top: the interpreter (``python -c
pass``), the imports the deploy path makes, timed inside a fresh process in three
steps (``deployer.cli.main``, then the docker SDK as the engine layer loads it, with
requests and urllib3, then ``deployer.ops.deploy`` and the modules under it), and the same deploy run as
a command; its wall time less the interpreter and the imports is its deploy, to set
beside the in-process one (which the bench's wrapper around every engine call slows a little).
No assertions: this prints numbers.

    python3 bench/bench_timeline.py [--runs 10] [--fresh 10]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from bench.bench_peers import IMAGES, compose_text, loadavg, make_repo, web_node  # noqa: E402
from tests.support.engines import Fleet  # noqa: E402

ID = re.compile(r"[0-9a-f]{64}")
CALLS: list[tuple[float, float, str, str]] = []  # (start, end, method, path with container names)
NAMES: dict[str, str] = {}  # container id -> the name it was created with
_send = requests.Session.send


def _timed_send(self, request, **kwargs):
    started = time.perf_counter()
    response = _send(self, request, **kwargs)
    ended = time.perf_counter()
    url = urlsplit(request.url)
    path = re.sub(r"^/v1\.\d+", "", url.path)
    if request.method == "POST" and path == "/containers/create" and response.status_code == 201:
        name = (parse_qs(url.query).get("name") or ["?"])[0]
        NAMES[response.json()["Id"]] = name
        path += f" {name}"
    cid = ID.search(path)
    path = ID.sub(lambda m: NAMES.get(m[0], "ID"), path)
    if cid and path.endswith("/rename") and response.status_code == 204:  # named as it is from now on
        NAMES[cid[0]] = (parse_qs(url.query).get("name") or ["?"])[0]
    CALLS.append((started, ended, request.method, path))
    return response


#: Timed inside a fresh process, in the order a deploy imports them: the CLI's module (click, the options), the
#: docker SDK as the engine layer loads it (requests, urllib3; paramiko left out until an ssh:// node needs it),
#: then the deploy command's modules (the operations, engine, config and git layers). Prints three seconds.
IMPORTS = """
import time
t0 = time.perf_counter()
import deployer.cli.main
t1 = time.perf_counter()
from deployer.engine.connect import import_docker
import_docker()
t2 = time.perf_counter()
import deployer.cli.deploy, deployer.ops.deploy
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def fresh(argv: list[str], cwd: str) -> tuple[float, str]:
    """(wall seconds, stdout) of one fresh process, which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return elapsed, done.stdout


def phase_of(method: str, path: str, seen_start: bool, healthy: bool) -> str:
    if "deployer-lock" in path:
        return "node lock: release" if method == "DELETE" else "node lock: take and check"
    if method == "POST" and path.endswith("/stop") and not healthy:
        return "graceful stop of the old container"
    if method == "POST" and path.startswith("/containers/create"):
        return "create"
    if method == "POST" and path.endswith("/start"):
        return "start"
    if healthy:
        return "remove the old one, rename, read"
    return "health wait" if seen_start else "read the node (list, inspect, networks)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="deploys measured (median; default 10)")
    parser.add_argument("--fresh", type=int, default=10,
                        help="fresh-process runs of the start-up figures and of the deploy as a command (default 10)")
    args = parser.parse_args()
    from deployer.cli.main import main as cli  # noqa: PLC0415 - after the bench's imports, like a user's process

    loads = [("start", loadavg())]
    requests.Session.send = _timed_send
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        node, client = web_node(fleet, "timeline")
        make_repo(tmp / "repo", node.unix_url, {"dpl": compose_text(IMAGES[0], "18094:80", True)})
        healthy_at: list[float] = []

        def listen() -> None:  # the engine's own word on when the new container became healthy
            events = node.client().api.events(decode=True, filters={"type": "container", "event": "health_status"})
            for event in events:
                if event.get("status", "").endswith("healthy") and "unhealthy" not in event.get("status", ""):
                    healthy_at.append(time.perf_counter())

        threading.Thread(target=listen, daemon=True).start()
        runner = CliRunner()
        offsets: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        phases: dict[str, list[float]] = collections.defaultdict(list)
        totals, lags = [], []
        for r in range(args.runs + 1):  # the first converges, unmeasured
            CALLS.clear()
            healthy_at.clear()
            started = time.perf_counter()
            result = runner.invoke(cli, ["--repo", str(tmp / "repo"), "deploy", "-q", IMAGES[(r + 1) % 2],
                                         "bench/dpl"])
            ended = time.perf_counter()
            if result.exit_code != 0:
                raise SystemExit(f"deploy failed (exit {result.exit_code}): {result.output}")
            if r == 0:
                continue
            totals.append(ended - started)
            seen = collections.Counter()
            sums: dict[str, float] = collections.defaultdict(float)
            seen_start = healthy = False
            for (s, e, method, path) in CALLS:
                key = f"{method} {path}"
                seen[key] += 1
                offsets[f"{key} #{seen[key]}"].append(((s - started) * 1000, (e - s) * 1000))
                phase = phase_of(method, path, seen_start, healthy)
                sums[phase] += (e - s) * 1000
                seen_start = seen_start or (method == "POST" and path.endswith("/start"))
                if phase == "health wait" and path.endswith("/json") and healthy_at and e > healthy_at[0]:
                    healthy = True  # the read that saw it healthy ends the wait
                    lags.append((e - healthy_at[0]) * 1000)
            starts = [e for (s, e, m, p) in CALLS if m == "POST" and p.endswith("/start")]
            if starts and healthy_at:
                sums["health wait"] = (healthy_at[0] - starts[0]) * 1000  # start returned -> the engine said healthy
            for phase, ms in sums.items():
                phases[phase].append(ms)
        starts: dict[str, list[float]] = collections.defaultdict(list)
        py = sys.executable
        for r in range(args.fresh):  # alternating, so the load of the moment falls on each figure alike
            starts["python -c pass"].append(fresh([py, "-c", "pass"], tmp_dir)[0])
            cli_main, sdk, deploy_path = (float(x) for x in fresh([py, "-c", IMPORTS], tmp_dir)[1].split())
            starts["import deployer.cli.main (click, the CLI's options)"].append(cli_main)
            starts["import the docker SDK (requests, urllib3; no paramiko)"].append(sdk)
            starts["import the deploy command's modules (ops, engine, config, gitrepo)"].append(deploy_path)
            starts["deployer deploy as a command"].append(fresh(
                [py, "-m", "deployer", "--repo", str(tmp / "repo"), "deploy", "-q", IMAGES[r % 2], "bench/dpl"],
                tmp_dir)[0])
        loads.append(("end", loadavg()))

    print(f"one deploy in process (no start-up), the bench_peers job, median of {args.runs}: "
          f"{statistics.median(totals) * 1000:.1f} ms")
    print(f"  {'at ms':>7} {'took ms':>7}  engine call (#n: its n-th time in the deploy)")
    for key, values in sorted(offsets.items(), key=lambda kv: statistics.median(v[0] for v in kv[1])):
        if len(values) * 2 >= args.runs:  # calls in most runs (a renewal or a retry is not the path)
            print(f"  {statistics.median(v[0] for v in values):7.1f} {statistics.median(v[1] for v in values):7.1f}"
                  f"  {key}")
    print("phases (engine time; the health wait from the start's answer to the engine's healthy event):")
    for phase, values in sorted(phases.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {phase:45} {statistics.median(values):7.1f} ms")
    engine = sum(statistics.median(v) for v in phases.values())
    print(f"  {'all of them':45} {engine:7.1f} ms; the deployer's own work between the calls "
          f"{statistics.median(totals) * 1000 - engine:.1f} ms")
    if lags:
        print(f"healthy read {statistics.median(lags):.1f} ms (median; max {max(lags):.1f}) after the engine's "
              "health_status event")
    if starts:
        print(f"the same deploy as a fresh command, median of {args.fresh} fresh processes (imports timed inside one):")
        figures = {k: statistics.median(v) * 1000 for k, v in starts.items()}
        for what, ms in figures.items():
            print(f"  {what:70} {ms:7.1f} ms")
        whole = figures.pop("deployer deploy as a command")
        rest = whole - sum(figures.values())
        print(f"  {'the command less the interpreter and the imports: its deploy':70} {rest:7.1f} ms "
              f"(in process, timed above: {statistics.median(totals) * 1000:.1f} ms, each engine call wrapped)")
    print("load average (1, 5, 15 min): " + "; ".join(f"{when} {value}" for when, value in loads))


if __name__ == "__main__":
    main()
