"""The deploy lock on an infrastructure repository, and its crash journal.

One deployer at a time may change a repository (edit + commit + deploy). The
lock is ``<git dir>/deployer.gitrepo.lock`` -- inside ``.git`` so it is never tracked --
locked with ``fcntl.flock`` on an open file descriptor:

* The kernel releases a flock when the holder's last descriptor closes, which
  includes the process dying (even by SIGKILL). A lock left by a dead deployer
  is therefore never "held": the next ``acquire`` simply gets it. That is how a
  stale lock is detected and broken safely -- no pid guessing, no timeouts.
* After locking, the holder writes who it is (pid, user, host, command, since)
  into the file (truncate + write + fsync). A deployer that cannot get the lock
  reads that and says who holds it (``LockHeld``).
* On release the holder empties the file, then unlocks. The file itself is never
  deleted (deleting a flock'ed file lets two processes lock two different
  inodes). So non-empty content found right after acquiring means the previous
  holder died while holding the lock; it is kept in ``stale_holder``.
* The descriptor is close-on-exec, so programs the deployer runs (ssh, docker)
  do not inherit -- and keep -- the lock. A ``fork()`` without exec does inherit it.
* flock is local to one machine (and unreliable on some network file systems):
  two deployers on two hosts sharing one checkout over NFS are not excluded.

Journal protocol (crash recovery), ``<git dir>/deployer.journal``:

1. ``acquire()`` the lock, then ``journal_read()``. ``None`` means the previous
   operation finished. A dict means the previous holder died (or gave up)
   mid-operation; ``acquire`` leaves that journal alone, so the caller reads it
   and decides: resume, restore, or report -- then ``journal_clear()``.
2. Before its first side effect, an operation ``journal_write({...})`` with what
   it is about to do (targets, old/new images, commit...) and writes again as it
   progresses. Each write replaces the whole journal atomically (temp + fsync +
   rename), so a reader sees the old or the new dict, never half of one.
3. When the operation is complete (or fully undone), ``journal_clear()``, then
   release the lock. Releasing does NOT clear the journal: an operation that
   stops half-way -- crash or unhandled exception -- leaves it for the next run.

``journal_write`` and ``journal_clear`` require the lock to be held by this
object; ``journal_read`` does not (``status`` may show an interrupted deploy).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import getpass
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from deployer.errors import LockHeld, RepoError
from deployer.files import atomic_write, fsync_dir

LOCK_NAME = "deployer.lock"
JOURNAL_NAME = "deployer.journal"
POLL_INTERVAL = 0.1  # seconds between attempts while waiting


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def command_line() -> str:
    """This process's command line as a second deployer is shown it: ``deployer deploy web:2 dev/dev1``."""
    args = sys.argv[1:]
    return shlex.join(["deployer", *args]) if args else "deployer"


def default_owner_info() -> dict[str, Any]:
    """pid, user, host, command and since for the current process."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry, no USER: still lockable
        user = str(os.getuid())
    try:
        host = socket.gethostname()
    except OSError:  # pragma: no cover
        host = "unknown-host"
    return {"pid": os.getpid(), "user": user, "host": host, "command": command_line(), "since": _now_iso()}


def describe_holder(info: dict[str, Any] | None) -> str:
    """``root@host pid 123 (deployer deploy web:2 local/local) since 2026-...``."""
    if not info:
        return "another deployer (it has not written its details yet)"
    who = f"{info.get('user', '?')}@{info.get('host', '?')} pid {info.get('pid', '?')}"
    if info.get("command"):
        who += f" ({info['command']})"
    if info.get("since"):
        who += f" since {info['since']}"
    return who


class DeployLock:
    """``with DeployLock(repo.git_dir, {"command": "deployer deploy ..."}) as lock: ...``

    ``owner_info`` is merged over ``default_owner_info()`` (pid, user, host,
    command, since) and written into the lock file while held. ``wait`` is what
    ``__enter__`` passes to ``acquire``.
    """

    def __init__(self, repo_git_dir: str | os.PathLike[str], owner_info: dict[str, Any] | None = None, wait: float = 0):
        self.git_dir = Path(repo_git_dir)
        self.path = self.git_dir / LOCK_NAME
        self.journal_path = self.git_dir / JOURNAL_NAME
        self.owner_info = dict(owner_info or {})
        self.wait = wait
        self.info: dict[str, Any] | None = None  # what we wrote, while held
        self.stale_holder: dict[str, Any] | None = None  # left by a holder that died
        self._fd: int | None = None

    # -- locking -------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0) -> "DeployLock":
        """Take the lock, waiting up to ``wait`` seconds (0: fail at once) -> LockHeld."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this DeployLock")
        if not self.git_dir.is_dir():
            raise RepoError(f"cannot lock: {self.git_dir} is not a directory")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RepoError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        deadline = time.monotonic() + max(0.0, float(wait or 0))
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise RepoError(f"cannot lock {self.path}: {exc.strerror}") from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = self._read_holder_of_locked(fd)
                    if wait and wait > 0:
                        raise LockHeld(
                            f"repository lock held by {describe_holder(holder)}; still held after waiting "
                            f"{_fmt_seconds(wait)}; retry or pass a longer --wait SECONDS"
                        )
                    raise LockHeld(
                        f"repository lock held by {describe_holder(holder)}; retry or pass --wait SECONDS"
                    )
                time.sleep(min(POLL_INTERVAL, remaining))
        except BaseException:
            os.close(fd)
            raise
        # Locked. Whatever is in the file was left by a holder that died.
        try:
            self.stale_holder = _parse_info(_read_fd(fd))
            info = default_owner_info()
            info.update(self.owner_info)
            _write_fd(fd, (json.dumps(info, sort_keys=True, default=str) + "\n").encode())
        except BaseException:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            raise
        self.info = info
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and unlock. Does nothing when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError:
            pass  # the unlock below is what matters
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
                self.info = None

    def __enter__(self) -> "DeployLock":
        return self.acquire(self.wait)

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - safety net
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)  # closing drops the flock
            except OSError:
                pass

    def read_holder(self) -> dict[str, Any] | None:
        """The details in the lock file (None when empty/missing). Not proof the lock is held."""
        try:
            return _parse_info(self.path.read_bytes())
        except OSError:
            return None

    def _read_holder_of_locked(self, fd: int) -> dict[str, Any] | None:
        # The holder writes its details just after locking: give it a moment.
        for _ in range(10):
            info = _parse_info(_read_fd(fd))
            if info:
                return info
            time.sleep(0.02)
        return None

    # -- journal ---------------------------------------------------------------

    def journal_write(self, data: dict[str, Any]) -> None:
        """Replace the journal with ``data`` (JSON-serializable), atomically and durably."""
        self._require_held("write the journal")
        payload = (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()
        atomic_write(self.journal_path, payload, mode=0o600)

    def journal_read(self) -> dict[str, Any] | None:
        """The journal left by the last ``journal_write``, or None when there is none."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise RepoError(
                f"{self.journal_path} is not valid JSON; inspect it and delete it to continue"
            ) from None
        if not isinstance(data, dict):
            raise RepoError(f"{self.journal_path} does not hold a JSON object; inspect it and delete it to continue")
        return data

    def journal_clear(self) -> None:
        self._require_held("clear the journal")
        try:
            os.unlink(self.journal_path)
        except FileNotFoundError:
            return
        fsync_dir(self.git_dir)

    def _require_held(self, what: str) -> None:
        if self._fd is None:
            raise RuntimeError(f"cannot {what}: the deploy lock {self.path} is not held")


def _fmt_seconds(s: float) -> str:
    return f"{s:g}s"


def _read_fd(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _write_fd(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        offset += os.pwrite(fd, view[offset:], offset)
    os.fsync(fd)


def _parse_info(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        info = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return {"command": raw.decode("utf-8", "replace").strip()[:200]}
    return info if isinstance(info, dict) else None
