"""Service discovery end to end: Consul health change -> nginx traffic, and rendering at scale.

1. A real ``consul agent -dev`` (tests/support/consul.py), three tiny HTTP backends on
   127.0.0.1 answering their own name, registered with TTL checks, and a real nginx
   (tests/support/nginx.py) whose config a templates ``Runner.watch`` thread renders from
   templates/nginx.conf.j2 (check: ``nginx -t``; reload: ``nginx -s reload``). One
   backend's TTL check is flipped critical / passing, one flip at a time; each flip is
   timed until requests through nginx show it (the failed backend stops answering: the
   first of 6 answers in a row without it; the recovered one answers again: its first
   answer). Prints p50 / p95 / max, the quiescence setting (a deliberate wait that is
   part of every latency), and where the time goes (medians of each step).
2. templates/nginx.conf.j2 rendered for N services x 10 instances from a StaticCatalog,
   with the growth between sizes (linear growth means time ratio close to the size
   ratio), the same data through a per-service index (a helper of this bench, not a
   product catalog) to separate the template's own cost from the catalog reads, and the
   1,000-service output validated once with ``nginx -t`` in a throwaway prefix.

Everything started is stopped by PID; no traffic leaves 127.0.0.1. No assertions on time.

    python3 bench/bench_discovery.py [--flips 40] [--wait-min 0.1] [--wait-max 0.5]
                                     [--sizes 100,1000,2000,4000]
"""

from __future__ import annotations

import argparse
import http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.discovery.catalog import HealthQuery, Instance, StaticCatalog  # noqa: E402
from deployer.discovery.consul_catalog import ConsulCatalog  # noqa: E402
from deployer.discovery.template_config import ConsulSettings, TemplateSpec, WatchConfig  # noqa: E402
from deployer.discovery.template_runner import Runner  # noqa: E402
from deployer.discovery.templates import render  # noqa: E402
from tests.support.consul import ConsulAgent  # noqa: E402
from tests.support.nginx import NGINX, NginxServer, free_tcp_port  # noqa: E402

TEMPLATE = ROOT / "templates" / "nginx.conf.j2"
SERVICE = "bench-web"
TAG = "bench"
STREAK = 6  # answers in a row without the failed backend that prove it is gone (3 in rotation)
POLL_GAP = 0.002  # between requests through nginx: leaves CPU to nginx and the runner (2 cores)
FLIP_TIMEOUT = 10.0


# --- helpers --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.0f} ms"


def ask(port: int, path: str) -> str:
    """One GET through nginx on a fresh connection: the answering backend's name, or the
    status code, or 'error'."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return body.split()[0] if resp.status == 200 and body.strip() else str(resp.status)
    except OSError:
        return "error"
    finally:
        conn.close()


class NameServer:
    """An HTTP server on 127.0.0.1 (a thread) answering every GET with its name.

    TCP_NODELAY on its sockets: nginx keeps upstream connections alive, and a response
    written as headers then body would otherwise wait for a delayed ACK (~40 ms) on
    every request after the first, which would blur the timing."""

    def __init__(self, name: str):
        self.name = name
        body = f"{name}\n".encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"backend {name}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Events:
    """The runner's events with their monotonic time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, str, str]] = []

    def __call__(self, kind: str, detail: str) -> None:
        with self.lock:
            self.items.append((time.monotonic(), kind, detail))

    def first(self, kind: str, after: float) -> float | None:
        with self.lock:
            return next((t for t, k, _ in self.items if k == kind and t >= after), None)

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for _, k, _ in self.items if k == kind)


class ConsulNotice(threading.Thread):
    """A blocking query of its own on the service's health: when Consul reports the change."""

    def __init__(self, catalog: ConsulCatalog, index: int):
        super().__init__(daemon=True)
        self.catalog, self.index = catalog, index
        self.at: float | None = None

    def run(self) -> None:
        try:
            new_index, _ = self.catalog.query(HealthQuery(SERVICE, TAG), index=self.index, wait=FLIP_TIMEOUT)
        except Exception:  # noqa: BLE001 - only a timing aid
            return
        if new_index != self.index:
            self.at = time.monotonic()


# --- 1. health change -> nginx ---------------------------------------------------------------


def wait_reflected(port: int, path: str, victim: str, gone: bool, deadline: float) -> tuple[float | None, int, int]:
    """(when nginx started showing the change, requests sent, errors)."""
    sent = errors = 0
    streak_start = None
    streak = 0
    while time.monotonic() < deadline:
        if sent:
            time.sleep(POLL_GAP)
        sent_at = time.monotonic()
        who = ask(port, path)
        sent += 1
        if who == "error" or who.isdigit():
            errors += 1
            streak, streak_start = 0, None
            continue
        if gone:
            if who == victim:
                streak, streak_start = 0, None
            else:
                if streak == 0:
                    streak_start = sent_at
                streak += 1
                if streak >= STREAK:
                    return streak_start, sent, errors
        elif who == victim:
            return time.monotonic(), sent, errors
    return None, sent, errors


def bench_latency(flips: int, wait_min: float, wait_max: float) -> None:
    print(f"== 1. Consul health change -> nginx serving the new upstream ({flips} flips)")
    agent = ConsulAgent(node="deployer-bench")
    backends: list[NameServer] = []
    server: NginxServer | None = None
    stop = threading.Event()
    watch_thread: threading.Thread | None = None
    tmp = tempfile.TemporaryDirectory(prefix="bench-discovery-")
    try:
        started = time.monotonic()
        agent.start()
        print(f"consul {agent.address} up in {time.monotonic() - started:.1f} s")
        catalog = ConsulCatalog(agent.address)
        client = agent.client()
        backends = [NameServer(name) for name in ("alpha", "beta", "gamma")]
        for b in backends:
            catalog.register_instance(SERVICE, f"{SERVICE}-{b.name}", "127.0.0.1", b.port, tags=[TAG], ttl="600s")
            client.agent.check.ttl_pass(f"service:{SERVICE}-{b.name}")
        deadline = time.monotonic() + 10
        while len(catalog.instances(SERVICE, TAG)) < 3:
            if time.monotonic() > deadline:
                raise SystemExit("the three backends never all passed in Consul")
            time.sleep(0.02)

        server = NginxServer(Path(tmp.name) / "nginx")
        vars_ = {"listen_address": "127.0.0.1", "listen_port": server.port,
                 "listen_port_key": "bench/nginx/port", "tag": TAG}
        settings = ConsulSettings(agent.address)

        def config(with_reload: bool) -> WatchConfig:
            spec = TemplateSpec(TEMPLATE, server.conf, check=server.check_command,
                                reload=server.reload_command if with_reload else None, vars=vars_)
            return WatchConfig([spec], settings, wait_min=wait_min, wait_max=wait_max)

        Runner(config(False)).run_once()  # first render, then nginx starts on it
        server.start()
        path = f"/{SERVICE}/"
        seen = {ask(server.port, path) for _ in range(9)}
        if seen != {"alpha", "beta", "gamma"}:
            raise SystemExit(f"nginx does not serve the three backends: {seen}")

        watch_config = config(True)
        runner = Runner(watch_config)
        events = Events()
        runner.on_event = events
        watch_thread = threading.Thread(target=runner.watch, args=(stop,), name="templates watch", daemon=True)
        watch_thread.start()
        deadline = time.monotonic() + 10
        while runner.stats["renders"] < 1:  # the first pass (same bytes: nothing written)
            if time.monotonic() > deadline:
                raise SystemExit("the runner never rendered")
            time.sleep(0.01)
        time.sleep(0.3)  # its watcher threads are in their blocking queries

        print(f"quiescence (templates watch): wait.min {wait_min * 1000:.0f} ms / wait.max {wait_max * 1000:.0f} ms"
              f" -> a lone change is rendered {wait_min * 1000:.0f} ms after Consul reports it;"
              f" that wait is part of every number below")
        check_times = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([a.replace("{file}", str(server.conf)) for a in server.check_command], check=True,
                           capture_output=True)
            check_times.append(time.perf_counter() - t)

        victim = "gamma"
        check_id = f"service:{SERVICE}-{victim}"
        rows: list[dict] = []
        timeouts = sent_total = errors_total = 0
        polled = 0.0
        for n in range(flips):
            gone = n % 2 == 0  # even flips fail the check, odd ones pass it again
            index = catalog.query(HealthQuery(SERVICE, TAG))[0]
            notice = ConsulNotice(ConsulCatalog(agent.address), index)
            notice.start()
            t0 = time.monotonic()  # the change: just before the check update is sent
            (client.agent.check.ttl_fail if gone else client.agent.check.ttl_pass)(check_id)
            seen_at, sent, errors = wait_reflected(server.port, path, victim, gone, t0 + FLIP_TIMEOUT)
            sent_total += sent
            errors_total += errors
            polled += time.monotonic() - t0
            notice.join(FLIP_TIMEOUT)
            if seen_at is None:
                timeouts += 1
                print(f"flip {n + 1}: not reflected within {FLIP_TIMEOUT:.0f} s")
                if timeouts >= 3:
                    print("giving up after 3 timeouts")
                    break
                continue
            rows.append({
                "gone": gone,
                "total": seen_at - t0,
                "consul": notice.at,
                "written": events.first("written", t0),
                "reloaded": events.first("reloaded", t0),
                "t0": t0,
                "seen": seen_at,
            })
            time.sleep(0.15)  # let the old nginx worker finish before the next flip

        totals = [r["total"] for r in rows]
        if not totals:
            raise SystemExit("no flip was reflected")
        print(f"flips measured: {len(rows)} of {flips} (timeouts: {timeouts});"
              f" requests through nginx: {sent_total} (one per {polled / max(sent_total, 1) * 1000:.1f} ms:"
              f" the timing resolution), failed requests: {errors_total}")
        print(f"health change -> traffic: p50 {ms(percentile(totals, 50))}   p95 {ms(percentile(totals, 95))}"
              f"   max {ms(max(totals))}")
        for label, want in (("backend failed  (gone from answers)", True), ("backend passing (answers again)  ", False)):
            sub = [r["total"] for r in rows if r["gone"] == want]
            if sub:
                print(f"  {label}: p50 {ms(percentile(sub, 50))}   p95 {ms(percentile(sub, 95))}"
                      f"   max {ms(max(sub))}   (n={len(sub)})")

        def med(key_from: str, key_to: str) -> str:
            spans = [r[key_to] - r[key_from] for r in rows if r[key_from] is not None and r[key_to] is not None]
            return ms(statistics.median(spans)) if spans else "    n/a"

        print("where the time goes (medians):")
        print(f"  change -> Consul blocking query answers       {med('t0', 'consul')}")
        print(f"  Consul answers -> config written              {med('consul', 'written')}"
              f"   (quiescence {wait_min * 1000:.0f} ms + render + nginx -t; nginx -t alone:"
              f" {statistics.median(check_times) * 1000:.0f} ms)")
        print(f"  written -> reload command returned            {med('written', 'reloaded')}")
        print(f"  reload returned -> traffic shows the change   {med('reloaded', 'seen')}")
        print(f"runner: {runner.stats['renders']} renders, {events.count('written')} writes,"
              f" {events.count('reloaded')} reloads (nginx counted {server.reloads()}),"
              f" {events.count('deferred')} deferred, {events.count('failed')} failed")
    finally:
        stop.set()
        if watch_thread is not None:
            watch_thread.join(5)
        if server is not None:
            server.stop()
        for b in backends:
            b.close()
        agent.close()
        tmp.cleanup()


# --- 2. rendering at scale ----------------------------------------------------------------------


def make_instances(services: int, per_service: int = 10) -> list[Instance]:
    # 127.0.0.0/8 addresses only: nothing ever connects to them, not even nginx -t.
    return [
        Instance(f"svc-{s:05d}", f"svc-{s:05d}-{i}", f"node{i:02d}", f"127.{s // 250 % 250}.{s % 250}.{i + 1}",
                 8000 + i, tags=("bench",))
        for s in range(services) for i in range(per_service)
    ]


def timed_render(catalog, variables: dict) -> tuple[float, str, int]:
    """(best seconds, text, runs): repeated while the runs stay short, at most 3."""
    best, text, runs, spent = float("inf"), "", 0, 0.0
    while runs < 3 and (runs == 0 or spent < 1.0):
        start = time.perf_counter()
        text = render(TEMPLATE, catalog, variables)
        took = time.perf_counter() - start
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best, text, runs


def bench_render(sizes: list[int]) -> None:
    print(f"== 2. rendering {TEMPLATE.relative_to(ROOT)} from a StaticCatalog, N services x 10 instances")
    print("(each render() compiles the template, as `deployer render` does; best of up to 3 runs)")
    variables = {"listen_address": "127.0.0.1", "listen_port": free_tcp_port(), "listen_port_key": "bench/nginx/port"}
    render(TEMPLATE, StaticCatalog(make_instances(2)), variables)  # imports, first compile
    static_t: dict[int, float] = {}
    output_1000 = None
    for size in sizes:
        instances = make_instances(size)
        start = time.perf_counter()
        static = StaticCatalog(instances)
        built = time.perf_counter() - start
        static_t[size], text, runs = timed_render(static, variables)
        upstreams = text.count("\n    upstream ")
        if upstreams != size:
            raise SystemExit(f"{size} services rendered {upstreams} upstreams")
        if size == 1000:
            output_1000 = text
        print(f"{size:>6} services x 10: {static_t[size]:7.3f} s  ({static_t[size] / size * 1000:.3f} ms/service,"
              f" {len(text) / 1e6:.1f} MB, runs {runs});  catalog built in {built:.3f} s")
    for a, b in zip(sizes, sizes[1:]):
        print(f"growth {a} -> {b} services: x{static_t[b] / static_t[a]:.1f} (linear would be x{b / a:g})")
    if 1000 in static_t:
        print(f"1,000 services x 10 instances: {static_t[1000]:.3f} s")

    if output_1000 is None:
        output_1000 = render(TEMPLATE, StaticCatalog(make_instances(1000)), variables)
    with tempfile.TemporaryDirectory(prefix="bench-nginx-t-") as prefix:
        (Path(prefix) / "logs").mkdir()
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(output_1000)
        start = time.perf_counter()
        done = subprocess.run([NGINX, "-t", "-q", "-e", "stderr", "-p", prefix + "/", "-c", str(conf)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        took = time.perf_counter() - start
    verdict = "passed" if done.returncode == 0 else f"FAILED (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    print(f"nginx -t on the 1,000-service output ({len(output_1000) / 1e6:.1f} MB, 1,000 upstreams,"
          f" 10,000 servers): {verdict} in {took:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flips", type=int, default=40)
    parser.add_argument("--wait-min", type=float, default=0.1, help="quiescence wait.min, seconds")
    parser.add_argument("--wait-max", type=float, default=0.5, help="quiescence wait.max, seconds")
    parser.add_argument("--sizes", default="100,1000,2000,4000")
    args = parser.parse_args()
    started = time.monotonic()
    bench_latency(min(max(args.flips, 1), 200), args.wait_min, args.wait_max)
    print()
    bench_render([int(s) for s in args.sizes.split(",")])
    print(f"\nbench took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
