"""Time from a container stopping to the alert webhook receiving "down", minus the configured threshold.

Real parts: one Docker node (a network namespace, tests/support/engines.py), a real
``consul agent -dev`` (tests/support/consul.py), a service deployed with a Consul HTTP
check every 1s, the real ``deployer alerts watch`` program, and an HTTP receiver on
127.0.0.1 for the webhook. Each round kills the container (SIGKILL: it stops at once) and records:

* **baseline**: when Consul itself marks the check critical, seen by a blocking query of
  its own on ``/v1/health/checks/<service>``: what Consul's check interval costs, which no
  watcher can beat;
* **alert**: when the receiver gets the "down" message, minus the threshold (goal: under 2 s);
* the watcher's own share: alert - baseline - threshold (blocking query, rules tick, POST).

Then it starts the container again and waits for "back to normal". Prints medians and
maxima over the rounds, and the ratio alert / baseline. Everything is stopped by PID.

    python3 bench/bench_alerts.py [--rounds 5] [--threshold 2s]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.values import parse_duration  # noqa: E402
from tests.support.consul import ConsulAgent, free_port  # noqa: E402
from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import build_standard_images  # noqa: E402
from tests.support.repos import git  # noqa: E402

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Receiver:
    def __init__(self):
        self.got: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with receiver.cond:
                    receiver.got.append((time.monotonic(), body.get("text", "")))
                    receiver.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, word: str, after: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, text in self.got:
                    if t >= after and word in text:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"no {word!r} alert within {timeout}s: {self.got[-3:]}")
                self.cond.wait(left)


def check_status(agent: ConsulAgent, service: str) -> str | None:
    with NO_PROXY.open(f"{agent.url}/v1/health/checks/{service}", timeout=2) as r:
        checks = json.loads(r.read())
    return checks[0]["Status"] if checks else None


def blocking_until(agent: ConsulAgent, service: str, status: str, out: list[float], timeout: float = 60.0) -> None:
    """Consul's own moment: a blocking query on the service's checks, answered as soon as they change."""
    deadline = time.monotonic() + timeout
    index = 0
    while time.monotonic() < deadline:
        with NO_PROXY.open(f"{agent.url}/v1/health/checks/{service}?index={index}&wait=10s", timeout=15) as r:
            index = int(r.headers.get("X-Consul-Index") or 0)
            checks = json.loads(r.read())
        if checks and checks[0]["Status"] == status:
            out.append(time.monotonic())
            return


def wait_status(agent: ConsulAgent, service: str, status: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check_status(agent, service) == status:
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"{service} not {status} in Consul within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threshold", default="2s")
    args = parser.parse_args()
    threshold = parse_duration(args.threshold, bare_seconds=False)
    receiver = Receiver()
    with Fleet() as fleet, ConsulAgent() as agent, tempfile.TemporaryDirectory() as tmp:
        (node,) = fleet.add_nodes(dict(name="al"))
        with closing(node.client()) as client:
            build_standard_images(client)
        root = Path(tmp) / "infra"
        service = "bench-web"
        node_dir = root / "datacenters" / "bench" / node.name
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text(f"docker: {node.unix_url}\naddress: {node.address}\n")
        (root / "datacenters" / "bench" / "datacenter.yml").write_text(f"consul: {agent.address}\n")
        (node_dir / "docker-compose.yml").write_text(
            "services:\n  web:\n    image: deployer-test/web:1\n    init: true\n"
            f"    ports: [\"{free_port()}:80\"]\n    labels:\n      deployer.consul.name: {service}\n"
            "      deployer.consul.check: \"http:/\"\n      deployer.consul.interval: 1s\n"
            "      deployer.consul.wait: 10s\n")
        (root / "alerts.yml").write_text(f"threshold: {args.threshold}\nsinks:\n  bench:\n    format: json\n"
                                         f"    url: {receiver.url}\n")
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "bench")
        deploy = [sys.executable, "-m", "deployer", "--repo", str(root)]
        done = subprocess.run([*deploy, "deploy", "deployer-test/web:1", f"bench/{node.name}"], capture_output=True,
                              text=True)
        if done.returncode:
            raise SystemExit(f"deploy failed: {done.stderr}")
        wait_status(agent, service, "passing")
        err = open(Path(tmp) / "watch.err", "wb")
        watch = subprocess.Popen([*deploy, "alerts", "watch", "--no-drift"], stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 30
            while b"alerts: watching" not in (Path(tmp) / "watch.err").read_bytes():
                if time.monotonic() > deadline or watch.poll() is not None:
                    raise SystemExit("the watch did not start")
                time.sleep(0.05)
            time.sleep(1.0)
            baseline, alert, own = [], [], []
            with closing(node.client()) as client:
                (container,) = client.containers.list(filters={"label": f"deployer.node={node.name}"})
                for i in range(args.rounds):
                    seen: list[float] = []
                    follower = threading.Thread(target=blocking_until, args=(agent, service, "critical", seen))
                    follower.start()
                    time.sleep(0.2)  # its first (immediate) answer is in: it now blocks
                    stopped = time.monotonic()
                    container.kill()  # SIGKILL: stopped at once, so the clock starts when it really stops
                    follower.join(60)
                    consul_critical = seen[0]
                    got = receiver.wait_for("is down", stopped)
                    baseline.append(consul_critical - stopped)
                    alert.append(got - stopped - threshold)
                    own.append(got - consul_critical - threshold)
                    print(f"round {i + 1}: Consul critical after {baseline[-1]:.2f}s; alert after threshold + "
                          f"{alert[-1]:.2f}s (the watcher's own share {own[-1]:.2f}s)", flush=True)
                    container.start()
                    started = time.monotonic()
                    wait_status(agent, service, "passing")
                    receiver.wait_for("back to normal", started)
                    time.sleep(0.5)
        finally:
            watch.send_signal(signal.SIGINT)
            try:
                watch.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(watch.pid, signal.SIGKILL)
                watch.wait(5)
            err.close()
    receiver.server.shutdown()
    print("messages of the first round, as the webhook received them:")
    for _, text in receiver.got[:2]:
        print(f"  {text}")
    med_b, med_a, med_o = statistics.median(baseline), statistics.median(alert), statistics.median(own)
    print(f"\nthreshold {threshold:g}s, Consul check interval 1s, {args.rounds} rounds")
    print(f"baseline, container stop -> Consul marks it critical: median {med_b:.2f}s, max {max(baseline):.2f}s")
    print(f"alert, container stop -> webhook receives 'down', minus the threshold: median {med_a:.2f}s, "
          f"max {max(alert):.2f}s (goal: under 2s)")
    print(f"the watcher's own share (alert - baseline - threshold): median {med_o:.2f}s, max {max(own):.2f}s")
    print(f"ratio alert / baseline: {med_a / med_b:.2f}" if med_b > 0 else "")


if __name__ == "__main__":
    main()
