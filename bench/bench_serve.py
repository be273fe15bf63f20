"""``deployer serve`` under load: GET /api/v1/status with 100 services while 50 clients hold the event stream
and deploys run, against a bare Starlette endpoint measured in the same run.

One real dockerd in a network namespace (tests/support/engines.py), locally
built images. The repository has 10 nodes x 10 services (every node on that one
engine; one service runs, the others are "missing": the status still plans all
100). A real ``deployer serve`` process (the CLI, uvicorn) serves it; 50 event
stream clients stay connected while a loop deploys web:1 / web:2 to the running
service through the API (one job after the other). Meanwhile one keep-alive
client times ``GET /api/v1/status`` (a read token), then the same client times a
bare Starlette endpoint under uvicorn (another process, the same load still
running) that returns the same bytes, and one that returns ``{}``. With
``--page``, also ``GET /`` (the dashboard, signed in with the token).

Prints p50/p95 of each and the ratio to the bare endpoint with the same body
(goal: status p95 under 100 ms), the events each stream client received, and the
deploys done. No assertions: this prints numbers.

    python3 bench/bench_serve.py [--requests 300] [--clients 50] [--page]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from deployer.serve.auth import TokenStore  # noqa: E402
from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import build_standard_images  # noqa: E402
from tests.support.serve import ServeProcess, free_port  # noqa: E402

IMAGES = ("deployer-test/web:1", "deployer-test/web:2")
SERVICE = """\
  s{i}:
    image: {image}
    init: true
    expose: ["80"]
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 200ms
      timeout: 2s
      retries: 2
"""

BARE = textwrap.dedent("""\
    import sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = open(sys.argv[2], "rb").read()

    async def same(request):
        return Response(body, media_type="application/json")

    async def empty(request):
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/same", same), Route("/empty", empty)])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
""")


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def make_repo(root: Path, docker_url: str, nodes: int, services: int) -> None:
    for n in range(nodes):
        d = root / "datacenters" / "bench" / f"n{n:02d}"
        d.mkdir(parents=True)
        (d / "node.yml").write_text(f"docker: {docker_url}\n")
        body = "".join(SERVICE.format(i=i, image=IMAGES[0]) for i in range(services))
        (d / "docker-compose.yml").write_text("services:\n" + body)
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def timed(client: httpx.Client, url: str, n: int, headers: dict | None = None) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url, headers=headers)
        r.raise_for_status()
        r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


class Streams:
    """``clients`` event-stream connections in one asyncio loop (a thread), counting the events each gets."""

    def __init__(self, url: str, token: str, clients: int):
        self.url, self.token, self.clients = url, token, clients
        self.counts = [0] * clients
        self.connected = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, client: httpx.AsyncClient, i: int) -> None:
        async with client.stream("GET", self.url + "/api/v1/events",
                                 headers={"Authorization": f"Bearer {self.token}"}) as r:
            self.connected += 1
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    self.counts[i] += 1
                if self.stop.is_set():
                    return

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.clients + 5)
        async with httpx.AsyncClient(timeout=None, limits=limits) as client:
            tasks = [asyncio.create_task(self._one(client, i)) for i in range(self.clients)]
            while not self.stop.is_set():
                await asyncio.sleep(0.2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def deploy_loop(url: str, token: str, target: str, stop: threading.Event, done: list) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=120) as client:
        i = 1
        while not stop.is_set():
            r = client.post(url + "/api/v1/deploy", headers=headers,
                            json={"image": IMAGES[i % 2], "targets": [target], "reason": f"bench {i}"})
            job = r.json()["job"]
            while True:
                state = client.get(f"{url}/api/v1/jobs/{job}", headers=headers).json()
                if state["state"] in ("ok", "failed"):
                    done.append(state["state"])
                    break
                time.sleep(0.2)
            i += 1


def sign_in(url: str, token: str) -> dict[str, str]:
    """The page's session cookie: the sign-in form (POST /login with the token)."""
    with httpx.Client(timeout=30, follow_redirects=False) as client:
        r = client.post(url + "/login", data={"token": token, "next": "/"}, headers={"Origin": url})
        if r.status_code != 303:
            raise SystemExit(f"sign-in failed: {r.status_code} {r.text[:200]}")
        return dict(client.cookies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--page", action="store_true", help="also time GET / (the dashboard page)")
    args = parser.parse_args()
    with Fleet() as fleet, tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        node = fleet.add_node("serve")
        with closing(node.client()) as client:
            build_standard_images(client)
        repo = tmp / "infra"
        make_repo(repo, node.unix_url, args.nodes, args.services)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        target = "bench/n00/s0"
        subprocess.run([sys.executable, "-m", "deployer", "--repo", str(repo), "deploy", IMAGES[0], target,
                        "--no-consul", "--settle", "0"], check=True, capture_output=True, env=env)
        store = TokenStore(tmp / "tokens.json")
        reader, deployer = store.add("bench-read", "read"), store.add("bench-deploy", "read,deploy")
        server = ServeProcess(repo, tmp / "tokens.json", "--no-consul", "--status-interval", "2", env=env)
        bare_port = free_port()
        bare = None
        with server:
            headers = {"Authorization": f"Bearer {reader}"}
            with httpx.Client(timeout=60) as client:
                deadline = time.monotonic() + 120
                while True:  # the first snapshot
                    r = client.get(server.url + "/api/v1/status", headers=headers)
                    if r.status_code == 200 and r.json()["summary"]["services"] == args.nodes * args.services:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no status: {r.status_code} {r.text[:300]}")
                    time.sleep(0.5)
                status_body = r.content
            (tmp / "status.json").write_bytes(status_body)
            (tmp / "bare.py").write_text(BARE)
            bare = subprocess.Popen([sys.executable, str(tmp / "bare.py"), str(bare_port), str(tmp / "status.json")],
                                    env=env)
            streams = Streams(server.url, reader, args.clients)
            streams.thread.start()
            while streams.connected < args.clients:
                time.sleep(0.1)
            stop, deploys = threading.Event(), []
            loop = threading.Thread(target=deploy_loop, args=(server.url, deployer, target, stop, deploys), daemon=True)
            loop.start()
            time.sleep(2)
            try:
                with httpx.Client(timeout=60) as client:
                    timed(client, server.url + "/api/v1/status", 20, headers)  # warm
                    status = timed(client, server.url + "/api/v1/status", args.requests, headers)
                    page = None
                    if args.page:
                        cookies = sign_in(server.url, reader)
                        with httpx.Client(timeout=60, cookies=cookies) as pc:
                            timed(pc, server.url + "/", 10)
                            page = timed(pc, server.url + "/", args.requests)
                    bare_url = f"http://127.0.0.1:{bare_port}"
                    while True:
                        try:
                            client.get(bare_url + "/empty")
                            break
                        except httpx.HTTPError:
                            time.sleep(0.1)
                    timed(client, bare_url + "/same", 20)
                    same = timed(client, bare_url + "/same", args.requests)
                    empty = timed(client, bare_url + "/empty", args.requests)
            finally:
                stop.set()
                streams.stop.set()
                loop.join(120)
                bare.terminate()
                bare.wait(10)
            streams.thread.join(10)
        services = args.nodes * args.services
        print(f"status with {services} services ({len(status_body)} bytes), {args.clients} event-stream clients, "
              f"deploys running: {len(deploys)} deploys ({deploys.count('ok')} ok) during the run")
        rows = [("GET /api/v1/status", status), ("bare Starlette, same body", same), ("bare Starlette, {}", empty)]
        if page is not None:
            rows.insert(1, ("GET / (page)", page))
        base95 = percentiles(same)[1]
        for name, samples in rows:
            p50, p95 = percentiles(samples)
            print(f"  {name:28s} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   p95 x{p95 / base95:5.2f} of bare same body")
        counts = sorted(streams.counts)
        print(f"  events per stream client: min {counts[0]}, median {statistics.median(counts):.0f}, max {counts[-1]}")
        print(f"  goal: status p95 under 100 ms -> {'met' if percentiles(status)[1] < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
