"""A private nginx for tests: its own prefix directory, foreground, stopped by PID.

The config is ``PREFIX/nginx.conf`` (a whole nginx.conf, e.g. rendered from
``templates/nginx.conf.j2``); every relative path in it resolves against
PREFIX. ``check_command`` validates a candidate standalone, ``reload_command``
reloads gracefully and counts how often it ran (``reloads()``).

    server = NginxServer(tmp_path / "nginx")
    ... render server.conf ...
    server.start()
    status, body = server.get("/web/")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

NGINX = "/usr/sbin/nginx"

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxServer:
    def __init__(self, prefix: str | Path, port: int | None = None):
        self.prefix = Path(prefix).absolute()
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "nginx.conf"
        self.port = port or free_tcp_port()
        self.count_file = self.prefix / "reloads.count"
        self.proc: subprocess.Popen | None = None

    @property
    def check_command(self) -> list[str]:
        return [NGINX, "-t", "-q", "-e", "stderr", "-p", str(self.prefix), "-c", "{file}"]

    @property
    def reload_command(self) -> list[str]:
        """``nginx -s reload`` for this prefix, counting its runs in ``count_file``."""
        script = 'echo reload >> "$0" && exec "$1" -e stderr -p "$2" -c "$3" -s reload'
        return ["sh", "-c", script, str(self.count_file), NGINX, str(self.prefix), str(self.conf)]

    def reloads(self) -> int:
        try:
            return len(self.count_file.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def start(self, timeout: float = 10.0) -> "NginxServer":
        assert self.proc is None
        log = open(self.prefix / "logs" / "stderr.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [NGINX, "-e", "stderr", "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("nginx exited at start: " + (self.prefix / "logs" / "stderr.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port}")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)  # fast shutdown of the master we started
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, str]:
        try:
            with _no_proxy.open(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
