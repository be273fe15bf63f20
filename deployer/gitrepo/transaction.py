"""The repository transaction: the one way a command changes the infrastructure repository.

Every command that changes the repository (deploy, rollback, apply, node add,
node rm, and any later one) runs inside one ``RepoTransaction``::

    with RepoTransaction(root, wait=10, progress=say) as tx:   # lock -> finish -> pull
        infra = loader.load(root)                              # the caller loads, under the lock
        tx.require_clean(rel)
        ... change the world (containers), or not ...
        tx.stage(rel, new_text)                                # what the commit will hold
        tx.commit(subject, trailers, reason=..., author=...)   # journal -> write -> commit -> push
                                                               # unlock on leaving the block

Entering takes the deploy lock (waiting up to ``wait`` seconds), then the node
locks the caller hands in (``node_locks``: a context manager from ``ops.locks``
taking the locks of the nodes the command changes, in Consul or on their engines,
so that deployers on other machines wait too; gitrepo knows nothing of nodes),
finishes the
commit of a deployer that died between writing its files and committing them
(the journal says which files, and their hashes prove they are the ones it
wrote), and pulls from the team's remote. ``commit`` records the staged files
in the journal, writes them atomically (or deletes them), commits exactly those
paths with the trailers, clears the journal and pushes with rebase-retry.

Nothing else commits: the commit message, its trailers (``commit.py``) and the
journal are written in this one place.

Two kinds of failure while committing, told apart by ``world_changed``:

* the command already changed containers (a deploy): the files stay written and
  the journal stays, so the next command that takes the lock commits them; the
  repository converges on what runs.
* nothing outside the repository changed (node add / rm): the files are put back
  as they were, created directories are removed, and the journal is cleared; the
  repository is exactly as before.

A dry run takes no lock, finishes nothing, pulls nothing and cannot commit.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from deployer.errors import RepoError
from deployer.files import atomic_write
from deployer.gitrepo.commit import with_reason
from deployer.gitrepo.lock import DeployLock, command_line
from deployer.gitrepo.repo import InfraRepo

#: The marker of the deployer project's own checkout (its datacenters/ is an example).
PROJECT_MARKER = ("setup.cfg", "name = deployer")


@dataclass
class Committed:
    """What ``RepoTransaction.commit`` did."""

    sha: str  # the commit on the branch (after a rebase on push, the rebased one)
    local: str  # the commit as made here, before any rebase on push
    pushed: str | None  # the sha the remote has now; None when there is no remote
    files: list[str]


def sha256_text(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refuse_project_repo(root: Path) -> None:
    """The deployer's own checkout is an example, never a repository to change."""
    setup = root / PROJECT_MARKER[0]
    if setup.exists() and PROJECT_MARKER[1] in setup.read_text(encoding="utf-8", errors="replace") \
            and (root / "deployer" / "ops").is_dir():
        raise RepoError(f"{root} is the deployer project itself; its datacenters/ is an example. "
                        "Make a repository of your own with 'deployer init DIR --example'")


class RepoTransaction:
    """lock -> node locks -> finish an interrupted commit -> pull -> (caller) -> journal -> write -> commit -> push
    -> release the node locks -> unlock."""

    def __init__(self, root: str | os.PathLike[str], *, wait: float = 0, dry_run: bool = False,
                 command: str | None = None, progress: Callable[[str], None] | None = None,
                 node_locks: AbstractContextManager | None = None):
        self.root = Path(root).resolve()
        self.wait = wait
        self.node_locks = None if dry_run else node_locks  # entered after the repository lock, before the pull
        self._node_locks_held = False
        self.dry_run = dry_run
        self.command = command or command_line()
        self.progress = progress or (lambda msg: None)
        self.repo: InfraRepo | None = None
        self.lock: DeployLock | None = None
        self.remote = False
        self._staged: dict[str, bytes | None] = {}  # repo-relative path -> content (None: delete)
        self._written: dict[str, bytes | None] = {}  # written before the commit (write()), undone on failure
        self._included: set[str] = set()  # committed as they are in the work tree
        self._undo = _Undo(self.root)

    # -- entering and leaving ------------------------------------------------------

    def __enter__(self) -> "RepoTransaction":
        if not self.dry_run:
            refuse_project_repo(self.root)
        self.repo = InfraRepo.open(self.root)
        try:
            if not self.dry_run:
                self.lock = DeployLock(self.repo.git_dir, {"command": self.command})
                self.lock.acquire(wait=self.wait)
                if self.node_locks is not None:
                    self.node_locks.__enter__()
                    self._node_locks_held = True
                self._finish_interrupted()
                self.remote = self.repo.has_remote()
                if self.remote:
                    self.progress("bringing the repository up to date")
                    self.repo.sync()
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is not None and self._written:  # the block failed after write(): put the files back
                self._undo.rollback()
        finally:
            self._leave()

    def _leave(self) -> None:
        try:
            if self._node_locks_held:
                self._node_locks_held = False
                self.node_locks.__exit__(None, None, None)
        finally:
            self._release_repository()

    def _release_repository(self) -> None:
        if self.lock is not None and self.lock.held:
            self.lock.release()
        if self.repo is not None:
            self.repo.close()

    # -- what the commit will hold -------------------------------------------------

    def require_clean(self, rel: str) -> None:
        """Refuse to go on when ``rel`` has uncommitted changes (DirtyFileError); a dry run checks nothing."""
        if not self.dry_run:
            self._repo.require_clean(rel)

    def stage(self, rel: str, content: str | bytes | None) -> None:
        """Make ``rel`` part of the commit with this content (None: the file is deleted)."""
        self._staged[rel] = content.encode("utf-8") if isinstance(content, str) else content

    def write(self, rel: str, content: str | bytes | None) -> None:
        """Write (or delete) ``rel`` now, for steps that need the file on disk before the commit.

        It is part of the commit; if the ``with`` block fails before committing, it is put back as it was.
        """
        if self.dry_run:
            raise RepoError("a dry run writes nothing")
        data = content.encode("utf-8") if isinstance(content, str) else content
        self._undo.put(rel, data)
        self._written[rel] = data

    def include(self, rel: str) -> None:
        """Make ``rel`` part of the commit as it is in the work tree."""
        self._included.add(rel)

    @property
    def staged(self) -> list[str]:
        return sorted({*self._staged, *self._written, *self._included})

    def commit(self, subject: str, trailers: Iterable[tuple[str, str]], *, reason: str | None = None,
               author: str | None = None, world_changed: bool = True) -> Committed:
        """Journal -> write -> commit exactly the staged files -> push. See the module docstring for failures."""
        if self.dry_run or self.lock is None:
            raise RepoError("a dry run cannot commit")
        files = self.staged
        if not files:
            raise RepoError("nothing staged to commit")
        trailers = [tuple(t) for t in trailers]
        contents = {**{rel: self._current(rel) for rel in self._included}, **self._written, **self._staged}
        self.lock.journal_write({
            "files": [{"file": rel, "sha256": None if data is None else sha256_text(data)}
                      for rel, data in sorted(contents.items())],
            "subject": subject, "message": reason, "trailers": trailers, "author": author,
        })
        try:
            for rel, data in sorted(self._staged.items()):
                self._undo.put(rel, data)
            sha = self._repo.commit_paths(files, with_reason(subject, reason), trailers, author)
        except BaseException:
            if not world_changed:
                self._undo.rollback()
                self.lock.journal_clear()
            self._written.clear()  # kept or put back: either way no longer ours to undo
            raise
        self.lock.journal_clear()
        self._undo.remove_emptied_dirs()
        self._staged.clear()
        self._written.clear()
        self._included.clear()
        self._undo = _Undo(self.root)
        local, pushed = sha, None
        if self.remote:
            self.progress("pushing the commit")
            pushed = self._repo.push_with_retry() or sha
            sha = pushed  # a rebase on push gives the commit a new sha
        return Committed(sha, local, pushed, files)

    def _current(self, rel: str) -> bytes | None:
        path = self.root / rel
        return path.read_bytes() if path.is_file() else None

    # -- finishing what a dead deployer left ---------------------------------------

    def _finish_interrupted(self) -> None:
        """Commit the files of a deployer that died after writing them and before committing."""
        assert self.lock is not None
        journal = self.lock.journal_read()
        if not journal:
            return
        files = journal.get("files") or []
        if files and all(self._as_journaled(f) for f in files) and any(self._repo.is_dirty(f["file"]) for f in files):
            names = ", ".join(f["file"] for f in files)
            self.progress(f"finishing an interrupted deploy: committing {names}")
            self._repo.commit_paths([f["file"] for f in files], with_reason(journal["subject"], journal.get("message")),
                                    [tuple(t) for t in journal["trailers"]], journal.get("author"))
        self.lock.journal_clear()

    def _as_journaled(self, entry: dict) -> bool:
        path = self.root / entry["file"]
        if entry.get("sha256") is None:
            return not os.path.lexists(path)
        return path.is_file() and sha256_text(path.read_bytes()) == entry["sha256"]

    @property
    def _repo(self) -> InfraRepo:
        if self.repo is None:
            raise RepoError("the repository transaction has not begun")
        return self.repo


class _Undo:
    """The files a commit wrote or deleted and the directories it created, to put back on failure."""

    def __init__(self, root: Path):
        self.root = root
        self.files: list[tuple[Path, bytes | None, int | None]] = []  # path, old content (None: absent), old mode
        self.dirs: list[Path] = []  # created, outermost first
        self.deleted_from: list[Path] = []

    def put(self, rel: str, data: bytes | None) -> None:
        path = self.root / rel
        if path.is_symlink():
            raise RepoError(f"{rel} is a symbolic link; the deployer will not write through it")
        try:
            old: bytes | None = path.read_bytes()
            mode: int | None = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            old, mode = None, None
        except IsADirectoryError:
            raise RepoError(f"{rel} is not a regular file") from None
        self.files.append((path, old, mode))
        if data is None:
            if old is not None:
                path.unlink()
                self.deleted_from.append(path.parent)
            return
        self._mkdirs(path.parent)
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise RepoError(f"cannot write {rel}: {exc}") from None

    def _mkdirs(self, path: Path) -> None:
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for d in reversed(missing):
            d.mkdir()
            self.dirs.append(d)

    def rollback(self) -> None:
        for path, old, mode in reversed(self.files):
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(path, old, mode)
            except OSError:  # pragma: no cover - best effort; the original error matters more
                pass
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass

    def remove_emptied_dirs(self) -> None:
        """rmdir the directories that deleting files left empty, up to (not including) the root: git keeps none."""
        for start in self.deleted_from:
            d = start
            while d.parent != self.root and self.root in d.parents:  # top-level folders stay
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent
