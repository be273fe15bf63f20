"""A new repository and its first commit: the git half of ``deployer init``.

``deployer init`` writes the files of a new infrastructure repository; this
makes it a git repository on branch ``main`` with everything in one commit.
A machine without a git identity (no ``user.email``) still gets its commit,
made as ``deployer <deployer@localhost>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from deployer.errors import RepoError
from deployer.gitrepo.git import run

FALLBACK_IDENTITY = ("-c", "user.name=deployer", "-c", "user.email=deployer@localhost")


def _git(root: Path, identity: tuple[str, ...], *args: str) -> str:
    done = run([*identity, *args], root)
    if not done.ok:
        raise RepoError(f"git {' '.join(args)} failed in {root}: {' '.join(done.err.split())}")
    return done.out.strip()


def init_repository(directory: str | os.PathLike, message: str) -> str:
    """``git init`` (branch main) in the existing ``directory``, then add and
    commit everything in it with ``message``; returns the commit's sha.
    RepoError, naming the git command, when one fails."""
    root = Path(directory)
    _git(root, (), "init", "-q", "-b", "main")
    identity = () if run(["config", "user.email"], root).ok else FALLBACK_IDENTITY
    _git(root, identity, "add", "-A")
    _git(root, identity, "commit", "-q", "-m", message)
    return _git(root, identity, "rev-parse", "HEAD")


def clone_repository(url: str, directory: str | os.PathLike) -> str:
    """``git clone`` ``url`` into ``directory`` (which must not exist, or be empty) for ``deployer serve
    --remote``; returns the directory. RepoError, with git's message, when the clone fails."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    done = run(["clone", "-q", url, str(target)], target.parent)
    if not done.ok:
        raise RepoError(f"git clone {url} failed: {' '.join(done.err.split())}")
    return str(target)
