"""Source repositories: what git says about the code being built.

The build layer versions images by commit, and ``deployer watch-builds``
follows a branch; both ask git here, never themselves:

* :func:`read_source` describes an app directory: the commit it is at, the
  tags on that commit, its uncommitted changes (in that directory only: an
  edit elsewhere in a monorepo does not make this app dirty) and where it
  comes from (origin's URL, else the working tree's top).
* :func:`bare_clone` keeps a bare clone of a source given as a URL.
* :class:`SourceRepo` is one branch of a source repository, bare or not, and
  the app directory in it: the branch head (fetched first when the branch
  has a remote), the new commits since the last one seen, their subjects and
  a clean checkout of any one of them.

Every git process goes through :func:`deployer.gitrepo.git.run`: a timeout,
the C locale, and none of the variables git exports to hooks, so a deployer
started from a post-receive hook reads the repository it was pointed at, not
the hook's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from deployer.errors import DeployerError, SourceError
from deployer.gitrepo.git import run


def _squeeze(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- an app directory


@dataclass(frozen=True)
class SourceState:
    """An app directory as git sees it."""

    top: Path  # the working tree's top
    revision: str  # HEAD's full commit sha
    tags: list[str] = field(default_factory=list)  # tags on HEAD, highest version first
    changes: list[str] = field(default_factory=list)  # `git status --porcelain` lines of this directory
    url: str = ""  # origin's URL, else the top of the working tree

    @property
    def dirty(self) -> bool:
        return bool(self.changes)


def read_source(source_dir: str | os.PathLike) -> SourceState:
    """What git says about ``source_dir``. SourceError when it is not a committed git working tree."""
    src = Path(source_dir)
    if not src.is_dir():
        raise SourceError(f"{source_dir}: not a directory")
    top = run(["rev-parse", "--show-toplevel"], src)
    if not top.ok:
        raise SourceError(f"{source_dir}: not inside a git repository (images are versioned by commit)")
    head = run(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], src)
    if not head.ok:
        raise SourceError(f"{source_dir}: the git repository has no commit yet")
    tags = run(["tag", "--points-at", "HEAD", "--sort=-v:refname"], src).out.split()
    # Only this directory counts: an edit elsewhere in a monorepo does not make this app dirty.
    status = run(["status", "--porcelain", "--untracked-files=all", "--", "."], src)
    if not status.ok:
        raise SourceError(f"{source_dir}: git status failed: {_squeeze(status.err)}")
    changes = [line for line in status.out.splitlines() if line.strip()]
    url = run(["config", "--get", "remote.origin.url"], src).out.strip() or top.out.strip()
    return SourceState(top=Path(top.out.strip()), revision=head.out.strip(), tags=tags, changes=changes, url=url)


# --------------------------------------------------------------------------- a branch to follow


def branch_name_ok(branch: str) -> bool:
    """Whether ``branch`` is a valid branch name (``git check-ref-format --branch``), no repository needed."""
    return run(["check-ref-format", "--branch", branch], tempfile.gettempdir()).ok


def bare_clone(url: str, directory: str | os.PathLike) -> Path:
    """A bare clone of ``url`` in ``directory`` (made when absent; an existing one is kept, the
    ``SourceRepo`` over it fetches its branch): how ``deployer serve``'s release hooks read a
    source given as a URL. SourceError, with git's message, when the clone fails."""
    target = Path(directory)
    if (target / "HEAD").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        r = run(["clone", "--quiet", "--bare", url, str(tmp / "repo.git")], target.parent)
        if not r.ok:
            raise SourceError(f"git clone {url} failed: {_squeeze(r.err) or 'exit ' + str(r.status)}")
        os.replace(tmp / "repo.git", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class SourceRepo:
    """One branch of a source repository (bare or not) and the app directory in it."""

    def __init__(self, path: str | os.PathLike, branch: str = "main", app: str | None = None):
        given = Path(path)
        if not given.is_dir():
            raise SourceError(f"{path}: not a directory")
        self.path = given.resolve()
        r = run(["rev-parse", "--absolute-git-dir"], self.path)
        if not r.ok:
            raise SourceError(f"{path}: not a git repository")
        self.git_dir = Path(r.out.strip())
        self.bare = run(["rev-parse", "--is-bare-repository"], self.path).out.strip() == "true"
        if not run(["check-ref-format", "--branch", branch], self.path).ok:
            raise SourceError(f"{branch!r} is not a valid branch name")
        self.branch = branch
        if self.bare:
            self.top = None
            name = self.git_dir.name
            prefix = "."
        elif self.path == self.git_dir or self.git_dir in self.path.parents:
            # Inside a working tree's .git, where push hooks run: the app is the whole tree.
            self.top = self.git_dir.parent
            name = self.top.name
            prefix = "."
        else:
            self.top = Path(run(["rev-parse", "--show-toplevel"], self.path).out.strip())
            name = self.top.name
            prefix = os.path.relpath(self.path, self.top)
        self.name = name[:-4] if name.endswith(".git") and len(name) > 4 else name
        rel = Path(app if app is not None else prefix)
        if rel.is_absolute() or ".." in rel.parts:
            raise SourceError(f"--app {app}: must be a directory inside the repository, relative to its top")
        self.app = rel.as_posix()
        self.remote = self._remote()
        self.url = self._url()

    def _git(self, *args: str):
        return run(list(args), self.git_dir)

    def _remote(self) -> str | None:
        configured = self._git("config", "--get", f"branch.{self.branch}.remote").out.strip()
        remotes = self._git("remote").out.split()
        if configured and configured != "." and configured in remotes:
            return configured
        return "origin" if "origin" in remotes else None

    def _url(self) -> str:
        if self.remote:
            url = self._git("remote", "get-url", self.remote).out.strip()
            if url:
                return url
        return str(self.top or self.git_dir)

    def head(self) -> str:
        """The branch head: fetched from the remote when there is one, else the local branch."""
        if self.remote:
            tracking = f"refs/remotes/{self.remote}/{self.branch}"
            r = self._git("fetch", "--quiet", self.remote, f"+refs/heads/{self.branch}:{tracking}")
            if not r.ok:
                raise DeployerError(f"{self.path}: git fetch {self.remote} {self.branch} failed: "
                                    f"{_squeeze(r.err) or 'exit ' + str(r.status)}")
            ref = tracking
        else:
            ref = f"refs/heads/{self.branch}"
        r = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if not r.ok:
            where = f"{self.remote}/{self.branch}" if self.remote else self.branch
            raise SourceError(f"{self.path}: no branch {where}")
        return r.out.strip()

    def new_commits(self, since: str | None, head: str, backlog: int | None = None) -> tuple[list[str], list[str]]:
        """(commits to build, oldest first; commits skipped) between ``since`` and ``head``: the
        first-parent line (commits as they landed on the branch), all of them unless ``backlog`` caps it."""
        if since == head:
            return [], []
        if since is None or not self._git("merge-base", "--is-ancestor", since, head).ok:
            return [head], []  # first run, or history rewritten: only the head
        r = self._git("rev-list", "--first-parent", "--reverse", f"{since}..{head}")
        commits = r.out.split() if r.ok else [head]
        if backlog is None or len(commits) <= backlog:
            return commits, []
        return commits[-backlog:], commits[:-backlog]

    def has_commit(self, sha: str) -> bool:
        """Whether ``sha`` (a full commit id) is a commit of this repository."""
        return self._git("cat-file", "-e", f"{sha}^{{commit}}").ok

    def subject(self, sha: str) -> str:
        return self._git("log", "-1", "--format=%s", sha).out.strip()

    @contextlib.contextmanager
    def checkout(self, sha: str, parent: str | os.PathLike) -> Iterator[Path]:
        """A clean checkout of ``sha`` in a temp dir under ``parent`` named like the repository;
        yields the app directory, and removes the checkout after.

        A ``--shared`` clone (objects read from this repository) with the
        source's tags, so the version is the commit's tag or short hash as
        ``build_image`` computes it, and the image's source label is the
        repository's remote URL (else its path).
        """
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=parent))
        try:
            work = tmp / self.name
            for args in (["clone", "--quiet", "--shared", "--no-checkout", str(self.git_dir), str(work)],
                         ["-C", str(work), "checkout", "--quiet", "--detach", sha],
                         ["-C", str(work), "remote", "set-url", "origin", self.url]):
                r = run(args, tmp)
                if not r.ok:
                    raise SourceError(f"{self.path}: checking out {sha[:12]} failed: {_squeeze(r.err)}")
            yield work / self.app
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
