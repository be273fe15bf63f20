"""The plumbing every part of the infrastructure repository shares: opening it, running git in it, paths.

``GitRepoBase`` opens a work tree at its root, runs git there (through
``gitrepo.git``) and turns paths into repo-relative POSIX strings. The parts
that commit (``commit.py``), read history (``history.py``) and talk to the
remote (``remote.py``) are mixins on top of it, put together as ``InfraRepo``
in ``repo.py``, the way docker-py's APIClient is one mixin per resource.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping

from deployer.errors import RepoError
from deployer.gitrepo import git as _git

if TYPE_CHECKING:  # pragma: no cover
    import git


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def git_plain(args: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
              timeout: float | None = None) -> tuple[int, str, str]:
    """``git <args>``: (exit status, stdout, stderr). 124 when killed after ``timeout`` (git.DEFAULT_TIMEOUT if None)."""
    return tuple(_git.run(args, cwd, env=env, timeout=timeout or _git.DEFAULT_TIMEOUT))  # type: ignore[return-value]


class GitRepoBase:
    """The infrastructure git repository, opened at its work-tree root.

    Paths taken and returned are repo-relative POSIX strings
    (``datacenters/dev/dev1/docker-compose.yml``); absolute paths inside the
    root are accepted too. Call ``close()`` (or use ``with``) to stop the
    ``git cat-file`` helper processes early.
    """

    def __init__(self, root: Path, common_dir: Path):
        self.root = root
        self._common_dir = common_dir
        self._gitpython: "git.Repo | None" = None  # opened on first use: only history reads need it
        self._parsed: dict[str, Any] = {}  # blob sha -> parsed YAML (None: did not parse)
        self._yaml: Any = None

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "GitRepoBase":
        p = Path(path).expanduser()
        if not p.exists():
            raise RepoError(f"{path} is not a git repository (it does not exist)")
        p = p.resolve()
        # one process in the usual case (a work tree); a failure is looked at again to say why
        status, out, _ = git_plain(["-C", str(p), "rev-parse", "--is-bare-repository", "--absolute-git-dir",
                                    "--show-toplevel", "--git-common-dir"])
        if status != 0:
            status, out, _ = git_plain(["-C", str(p), "rev-parse", "--is-bare-repository", "--absolute-git-dir"])
            if status != 0:
                raise RepoError(f"{path} is not a git repository")
            if (out.splitlines() or [""])[0].strip() == "true":
                raise RepoError(f"{path} is a bare git repository; the deployer needs a working tree")
            raise RepoError(f"{path} is not a git repository")
        bare, _git_dir, top, common = (out.splitlines() + ["", "", "", ""])[:4]
        if bare.strip() == "true":
            raise RepoError(f"{path} is a bare git repository; the deployer needs a working tree")
        if not top:
            raise RepoError(f"{path} is not a git repository")
        root = Path(top).resolve()
        if root != p:
            raise RepoError(f"{path} is not the root of a git repository (it is inside {root})")
        common_dir = Path(common) if Path(common).is_absolute() else p / common
        return cls(root, common_dir.resolve())

    @property
    def _repo(self) -> "git.Repo":
        """GitPython, for its persistent ``git cat-file`` readers (history walks)."""
        if self._gitpython is None:
            import git

            self._gitpython = git.Repo(self.root)
        return self._gitpython

    def close(self) -> None:
        if self._gitpython is not None:
            self._gitpython.close()

    def __enter__(self) -> "GitRepoBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def git_dir(self) -> Path:
        """The repository's common .git directory (shared by all worktrees): where the lock lives."""
        return self._common_dir

    # -- plumbing ------------------------------------------------------------

    def _run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        read_only: bool = False,
        strip: bool = True,
    ) -> str:
        """Run ``git <args>`` in the root; a failure -> RepoError with git's message in one line."""
        cmd = ["--literal-pathspecs"]
        if read_only:
            cmd.append("--no-optional-locks")
        cmd.extend(args)
        status, out, err = git_plain(cmd, cwd=self.root, env=env)
        if status != 0:
            name = next((a for i, a in enumerate(args) if a != "-c" and (i == 0 or args[i - 1] != "-c")), "")
            raise RepoError(f"git {name} failed in {self.root}: {one_line(err.strip() or out.strip() or f'exit status {status}')}")
        return out[:-1] if strip and out.endswith("\n") else out

    def _rel(self, relpath: str | os.PathLike[str]) -> str:
        """A repo-relative POSIX path, refusing anything outside the root."""
        raw = os.fspath(relpath)
        p = Path(raw)
        if p.is_absolute():
            try:
                p = p.relative_to(self.root)
            except ValueError:
                try:
                    p = p.parent.resolve().relative_to(self.root) / p.name
                except ValueError:
                    raise RepoError(f"{raw} is outside the repository {self.root}") from None
        parts = PurePosixPath(p.as_posix()).parts
        parts = tuple(x for x in parts if x != ".")
        if not parts or ".." in parts or parts[0] == ".git":
            raise RepoError(f"invalid repository path {raw!r}")
        return "/".join(parts)

    def _has_head(self) -> bool:
        try:
            self._run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", read_only=True)
            return True
        except RepoError:
            return False

    def rev_parse(self, rev: str) -> str | None:
        """The full sha of the commit ``rev`` names, or None when it names none."""
        if not rev or rev.startswith("-"):
            return None
        status, out, _ = git_plain(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
                                    cwd=self.root)
        if status != 0:
            return None
        out = out.strip()
        return out if re.fullmatch(r"[0-9a-f]{40,64}", out) else None


    def tracked_files(self, relpath: str | os.PathLike[str]) -> list[str]:
        """The files git tracks at or under ``relpath`` (repo-relative, sorted)."""
        rel = self._rel(relpath)
        out = self._run("ls-files", "-z", "--", rel, read_only=True)
        return sorted(p for p in out.split("\0") if p)

