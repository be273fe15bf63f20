"""A real headless browser for the page tests: Debian's chromium driven by its chromedriver.

``Browser`` starts ``/usr/bin/chromedriver`` on a free loopback port itself (so it owns the
process and its PID), opens one Selenium session on it with ``/usr/bin/chromium`` in headless
mode and a fresh ``--user-data-dir``, and on ``close()`` ends the session, then stops every
process it started by PID: the chromium processes below chromedriver (walked in /proc, also
when the session is already gone) and chromedriver itself. Nothing is downloaded: Selenium is
pointed at the driver's URL, so Selenium Manager never runs.

Screenshots go to an artifacts folder: ``$DEPLOYER_TEST_ARTIFACTS`` or ``tests/artifacts/``
(git-ignored), one sub-folder per test, numbered in the order they were taken.

    with Browser(artifacts=Path("/tmp/shots")) as b:
        b.get("http://127.0.0.1:8700/login")
        b.screenshot("login")
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The flags that work here as root (docs/serve.md, serve_common.md).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
)
REPO_ROOT = Path(__file__).resolve().parents[2]

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def artifacts_root() -> Path:
    return Path(os.environ.get("DEPLOYER_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every live descendant of pid (from /proc's PPid fields)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


class Browser:
    def __init__(self, artifacts: Path | None = None, *, width: int = 1280, height: int = 1000):
        self.artifacts = Path(artifacts or artifacts_root() / "browser")
        self.workdir = Path(tempfile.mkdtemp(prefix="deployer-browser-"))
        self.port = _free_port()
        self.driver_proc: subprocess.Popen | None = None
        self.driver = None
        self.shots: list[Path] = []
        self.size = (width, height)
        self._pids: set[int] = set()

    @property
    def driver_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- start / stop -------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Browser":
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                pytest.fail(f"{path} is missing: run scripts/install.sh (Debian's chromium chromium-driver)",
                            pytrace=False)
        from selenium import webdriver
        from selenium.webdriver.remote.client_config import ClientConfig

        log = open(self.workdir / "chromedriver.log", "ab")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        try:
            self.driver_proc = subprocess.Popen(
                [CHROMEDRIVER, f"--port={self.port}", "--allowed-ips=127.0.0.1", "--log-level=WARNING"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.driver_proc.poll() is not None:
                raise RuntimeError(f"chromedriver exited: {self.log_tail()}")
            try:
                with _no_proxy.open(f"{self.driver_url}/status", timeout=1) as resp:
                    if b'"ready":true' in resp.read().replace(b" ", b""):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromedriver not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.workdir / 'profile'}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Remote(command_executor=self.driver_url, options=options,
                                           client_config=ClientConfig(self.driver_url, timeout=180))
        except BaseException:
            self.close()
            raise
        self._pids.update(_children(self.driver_proc.pid))
        self.driver.set_page_load_timeout(120)  # a loaded 2-core machine can take long
        return self

    def log_tail(self) -> str:
        try:
            return (self.workdir / "chromedriver.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        driver, self.driver = self.driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # noqa: BLE001 - the processes are stopped by PID below either way
                pass
        proc, self.driver_proc = self.driver_proc, None
        if proc is not None:
            pids = sorted(self._pids | set(_children(proc.pid)))
            _kill(pids, signal.SIGTERM)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.05)
            _kill([p for p in pids if _alive(p)], signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- helpers the tests use ----------------------------------------------------------------
    def get(self, url: str) -> None:
        self.driver.get(url)

    def screenshot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{safe}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def alert_text(self) -> str | None:
        """The text of an open alert/confirm dialog, or None when there is none."""
        from selenium.common.exceptions import NoAlertPresentException

        try:
            return self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return None

    def console(self) -> list[dict]:
        try:
            return self.driver.get_log("browser")
        except Exception:  # noqa: BLE001 - not every driver keeps the log
            return []

    def wait_for(self, predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except Exception as e:  # noqa: BLE001 - a stale element while the page updates
                last = e
                value = None
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


@pytest.fixture
def browser(request):
    """A fresh headless chromium per test; screenshots under artifacts/<test name>/, a last one at teardown."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    target = artifacts_root() / name
    shutil.rmtree(target, ignore_errors=True)
    with Browser(target) as b:
        try:
            yield b
        finally:
            try:
                b.screenshot("teardown")
            except Exception:  # noqa: BLE001 - the browser may already be gone
                pass
