"""deployer.gitrepo.lock: flock-based deploy lock and its journal, across real processes."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.errors import LockHeld, RepoError
from deployer.gitrepo.lock import JOURNAL_NAME, LOCK_NAME, DeployLock, describe_holder

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMAND = "deployer deploy web:2 local/local"

HOLDER = r"""
import json, sys, time
from deployer.gitrepo.lock import DeployLock
git_dir, hold, journal = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lock = DeployLock(git_dir, {"command": %r})
lock.acquire()
if journal:
    lock.journal_write(json.loads(journal))
print("locked", flush=True)
time.sleep(hold)
lock.release()
print("released", flush=True)
time.sleep(60)
""" % COMMAND


@pytest.fixture(autouse=True)
def git_env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for var in list(os.environ):
        if var.startswith("GIT_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return home


@pytest.fixture
def git_dir(tmp_path) -> Path:
    root = tmp_path / "infra"
    root.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    return root / ".git"


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def sleeps(monkeypatch):
    """The lock module's calls of time.sleep: "at once" means none (a wall-clock bound flakes under load)."""
    import deployer.gitrepo.lock as lock_module

    calls: list[float] = []
    real = lock_module.time.sleep

    def recording(seconds: float) -> None:
        calls.append(seconds)
        real(seconds)

    class Clock:  # the time module, but for sleep (patching time.sleep itself would see other threads' sleeps)
        sleep = staticmethod(recording)

        def __getattr__(self, name: str):
            return getattr(time, name)

    monkeypatch.setattr(lock_module, "time", Clock())
    return calls


@pytest.fixture
def spawn():
    """Start holder processes; kill the ones still running at the end (by pid)."""
    procs: list[subprocess.Popen] = []

    def start(git_dir: Path, hold: float = 60, journal: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(git_dir), str(hold), json.dumps(journal) if journal else ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "locked", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def _holder_info(git_dir: Path) -> dict:
    return json.loads((git_dir / LOCK_NAME).read_text())


def test_acquire_writes_holder_info_and_release_empties_file(git_dir):
    lock = DeployLock(git_dir, {"command": COMMAND})
    assert not lock.held
    lock.acquire()
    try:
        assert lock.held
        info = _holder_info(git_dir)
        assert info["pid"] == os.getpid()
        assert info["user"] == getpass.getuser()
        assert info["host"] == socket.gethostname()
        assert info["command"] == COMMAND
        assert dt.datetime.fromisoformat(info["since"]).tzinfo is not None
        assert lock.info == info
        assert lock.read_holder() == info
        assert lock.stale_holder is None
        with pytest.raises(RuntimeError):
            lock.acquire()
    finally:
        lock.release()
    assert not lock.held
    assert (git_dir / LOCK_NAME).exists()
    assert (git_dir / LOCK_NAME).read_bytes() == b""
    lock.release()  # idempotent


def test_default_owner_info_and_override(git_dir):
    with DeployLock(git_dir, {"user": "ci-bot", "ticket": "OPS-1"}) as lock:
        info = _holder_info(git_dir)
    assert info["user"] == "ci-bot" and info["ticket"] == "OPS-1"
    assert info["pid"] == os.getpid() and info["command"]  # from sys.argv
    assert not lock.held


def test_lock_files_are_not_tracked(git_dir):
    with DeployLock(git_dir) as lock:
        lock.journal_write({"step": 1})
        status = subprocess.run(
            ["git", "-C", str(git_dir.parent), "status", "--porcelain", "--untracked-files=all", "--ignored"],
            capture_output=True, text=True, check=True,
        ).stdout
        assert status == ""
        lock.journal_clear()


def test_second_acquire_in_another_process_fails_at_once(git_dir, spawn, sleeps):
    proc = spawn(git_dir)
    info = _holder_info(git_dir)
    with pytest.raises(LockHeld) as exc:
        DeployLock(git_dir, {"command": "deployer rollback web"}).acquire()
    assert sleeps == []  # no poll, no wait for the holder's details
    assert str(exc.value) == (
        f"repository lock held by {getpass.getuser()}@{socket.gethostname()} pid {proc.pid} ({COMMAND}) "
        f"since {info['since']}; retry or pass --wait SECONDS"
    )
    assert info["pid"] == proc.pid
    # the failed attempt did not disturb the holder's details
    assert _holder_info(git_dir) == info


def test_other_process_fails_while_we_hold(git_dir):
    code = (
        "import sys\n"
        "from deployer.gitrepo.lock import DeployLock\n"
        "from deployer.errors import LockHeld\n"
        "try:\n"
        "    DeployLock(sys.argv[1], {}).acquire()\n"
        "except LockHeld as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    with DeployLock(git_dir, {"command": COMMAND}) as lock:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(git_dir)], capture_output=True, text=True, env=_env(), timeout=30
        )
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.strip() == (
            f"repository lock held by {describe_holder(lock.info)}; retry or pass --wait SECONDS"
        )
        assert f"pid {os.getpid()} ({COMMAND}) since " in proc.stdout


def test_same_process_second_instance_is_excluded_too(git_dir):
    with DeployLock(git_dir, {"command": COMMAND}):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            DeployLock(git_dir).acquire()
    with DeployLock(git_dir):  # free again
        pass


def test_wait_gives_up_at_the_deadline(git_dir, spawn):
    proc = spawn(git_dir)
    t0 = time.monotonic()
    with pytest.raises(LockHeld) as exc:
        DeployLock(git_dir).acquire(wait=0.5)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 3, elapsed
    assert f"pid {proc.pid} ({COMMAND})" in str(exc.value)
    assert "still held after waiting 0.5s" in str(exc.value)


def test_wait_succeeds_when_holder_releases(git_dir, spawn):
    proc = spawn(git_dir, hold=0.6)
    t0 = time.monotonic()
    lock = DeployLock(git_dir, {"command": "deployer rollback web"}, wait=20)
    with lock:
        elapsed = time.monotonic() - t0
        assert 0.3 < elapsed < 10, elapsed
        assert _holder_info(git_dir)["pid"] == os.getpid()
        assert lock.stale_holder is None  # released cleanly
    assert proc.stdout.readline().strip() == "released"


def test_sigkilled_holder_lock_is_broken_immediately(git_dir, spawn, sleeps):
    journal = {"op": "deploy", "targets": ["dev/dev1/web"], "new_image": "web:2", "step": "commit"}
    proc = spawn(git_dir, journal=journal)
    dead_pid = proc.pid
    os.kill(dead_pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # the dead holder's details are still in the file...
    assert _holder_info(git_dir)["pid"] == dead_pid
    lock = DeployLock(git_dir, {"command": COMMAND})
    lock.acquire()  # ...but the kernel dropped its flock: no waiting
    try:
        assert sleeps == []
        assert lock.stale_holder is not None and lock.stale_holder["pid"] == dead_pid
        assert _holder_info(git_dir)["pid"] == os.getpid()
        # the interrupted operation's journal is left for the caller
        assert lock.journal_read() == journal
        lock.journal_clear()
        assert lock.journal_read() is None
    finally:
        lock.release()


def test_journal_roundtrip(git_dir):
    lock = DeployLock(git_dir)
    assert lock.journal_read() is None
    with pytest.raises(RuntimeError):
        lock.journal_write({"a": 1})
    with lock:
        data = {"op": "rollback", "targets": ["dev/dev1/worker", "dev/dev2/worker"], "done": [], "n": 2, "ok": None}
        lock.journal_write(data)
        assert lock.journal_read() == data
        data2 = dict(data, done=["dev/dev1/worker"], note="héllo")
        lock.journal_write(data2)
        assert lock.journal_read() == data2
        assert json.loads((git_dir / JOURNAL_NAME).read_text()) == data2
        assert not [p for p in os.listdir(git_dir) if p.endswith(".tmp")]
        with pytest.raises(TypeError):
            lock.journal_write({"bad": object()})
        assert lock.journal_read() == data2  # a failed write leaves the old journal
        assert not [p for p in os.listdir(git_dir) if p.endswith(".tmp")]
    # the journal survives release (only journal_clear removes it) and is readable without the lock
    assert DeployLock(git_dir).journal_read() == data2
    with DeployLock(git_dir) as lock2:
        lock2.journal_clear()
        lock2.journal_clear()  # no journal: fine
    assert lock2.journal_read() is None
    with pytest.raises(RuntimeError):
        lock2.journal_clear()


def test_corrupt_journal_is_reported(git_dir):
    (git_dir / JOURNAL_NAME).write_text("{not json")
    with pytest.raises(RepoError, match="is not valid JSON"):
        DeployLock(git_dir).journal_read()


def test_missing_git_dir(tmp_path):
    with pytest.raises(RepoError, match="is not a directory"):
        DeployLock(tmp_path / "nope" / ".git").acquire()


def test_describe_holder():
    assert describe_holder(None) == "another deployer (it has not written its details yet)"
    assert describe_holder({"user": "root", "host": "h", "pid": 7, "since": "2026-01-01T00:00:00+00:00"}) == (
        "root@h pid 7 since 2026-01-01T00:00:00+00:00"
    )
