"""A private Consul dev agent for tests, and tiny HTTP backends to register in it.

``ConsulAgent`` runs ``consul agent -dev`` (Debian 11's consul 1.8.7, installed
by ``scripts/install-consul.sh``) on 127.0.0.1 with free, non-default ports for
HTTP, Serf LAN/WAN and server RPC, DNS and gRPC disabled, so several can run on
one machine next to anyone else's Consul. It is stopped by its PID, also when a
test fails; ``kill()`` + ``start()`` simulates a crash and restart (dev mode
keeps nothing, like a Consul that lost its state).

``Backend`` is an HTTP server on 127.0.0.1 answering ``GET /...`` with its
name, and ``GET /health`` with 200 or 503 (``backend.healthy = False``).

Usable outside pytest::

    with ConsulAgent() as agent:
        print(agent.address)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CONSUL_CANDIDATES = ("/usr/local/bin/consul",)


def consul_binary() -> str:
    found = shutil.which("consul") or next((p for p in CONSUL_CANDIDATES if os.access(p, os.X_OK)), None)
    if not found:
        pytest.fail("consul is not installed: run scripts/install-consul.sh (as root)")
    return found


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (Serf uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ConsulAgent:
    def __init__(self, node: str = "deployer-test", workdir: str | Path | None = None):
        self.node = node
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="deployer-consul-"))
        self.http_port = free_port()
        self.serf_lan_port = free_port()
        self.serf_wan_port = free_port()
        self.server_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "consul.log"
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def argv(self) -> list[str]:
        return [
            consul_binary(), "agent", "-dev", "-node", self.node,
            "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-http-port", str(self.http_port), "-dns-port", "-1", "-grpc-port", "-1",
            "-serf-lan-port", str(self.serf_lan_port), "-serf-wan-port", str(self.serf_wan_port),
            "-server-port", str(self.server_port), "-log-level", "warn",
        ]

    def start(self, timeout: float = 20.0) -> "ConsulAgent":
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.proc = None
                raise RuntimeError(f"consul exited at start:\n{tail}")
            if self.leader():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"consul had no leader after {timeout}s")

    def leader(self) -> str:
        try:
            with _no_proxy.open(f"{self.url}/v1/status/leader", timeout=1) as resp:
                return json.loads(resp.read() or b'""') or ""
        except OSError:
            return ""

    def _signal(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """A crash: SIGKILL, no leave; the next start() begins with an empty catalog."""
        self._signal(signal.SIGKILL, 5.0)

    def client(self):
        import consul

        c = consul.Consul(host="127.0.0.1", port=self.http_port, connections_timeout=5)
        c.http.session.trust_env = False
        return c

    def close(self) -> None:
        """Stop the agent and remove its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ConsulAgent":
        try:
            return self.start()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="module")
def consul_agent():
    """One dev agent per test module; tests use their own service names."""
    with ConsulAgent() as agent:
        yield agent


class Backend:
    """An HTTP server on 127.0.0.1: ``/health`` is 200 or 503, anything else names the backend."""

    def __init__(self, name: str):
        self.name = name
        self.healthy = True
        self.hits = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/health":
                    code, body = (200, b"ok\n") if backend.healthy else (503, b"sick\n")
                else:
                    backend.hits += 1
                    code, body = 200, f"{backend.name} {self.path}\n".encode()
                self.send_response(code)
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

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
