"""A real ``deployer serve`` process for the tests: started on a free loopback port, killed by its PID.

``ServeProcess(repo, tokens_file, *args).start()`` runs ``python -m deployer
--repo REPO serve --listen 127.0.0.1:PORT --tokens FILE --json ...`` and
waits until it answers (or ends it, when it does not); ``stop()`` (SIGTERM, then SIGKILL) or ``kill()``
(SIGKILL at once, as a crash) ends exactly that process. Use it as a context
manager so it ends even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, repo: Path | None, tokens: Path, *args: str, port: int | None = None,
                 env: dict[str, str] | None = None, remote: str | None = None):
        self.repo = repo
        self.tokens = tokens
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env = env
        self.remote = remote
        self.log = Path(tokens).parent / f"serve-{self.port}.log"

    def argv(self) -> list[str]:
        where = ["--repo", str(self.repo)] if self.repo else []
        return [sys.executable, "-m", "deployer", *where, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--tokens", str(self.tokens), "--json", "--no-alerts", *self.args]

    def start(self, timeout: float = 30.0) -> "ServeProcess":
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(self.env or {})}
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=self._log, env=env,
                                     cwd=str(self.tokens.parent))
        try:
            self.info = json.loads(self.proc.stdout.readline() or "{}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"deployer serve exited {self.proc.returncode}: "
                                       f"{self.log.read_text()[-2000:]}")
                try:
                    httpx.get(self.url + "/api/v1/status", timeout=1)
                    return self
                except httpx.HTTPError:
                    time.sleep(0.1)
            raise RuntimeError(f"deployer serve did not answer in {timeout}s: {self.log.read_text()[-2000:]}")
        except BaseException:
            self.stop()  # one that did not come up is ended here: as a context manager, __exit__ never runs for it
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
