"""The secret-file policy: the repository-files policy (``repo_files``) for ``secrets.<name>.file``.

A compose secret's file is read on the deployer's machine and shipped to the
node; ``repo_files`` holds the one policy for every file that is shipped, and
this module names its secret variant (``repo_files.SECRET``: an untracked
file of the repository or a file under the datacenter's ``secrets_dir``, at
most 1 MiB). ``resolve_secret_file`` applies it, ``open_secret_file`` opens the
checked file again without following a symlink, ``read_secret_file`` does both
and returns the bytes. The compose check and the spec builder both call these.
"""

from __future__ import annotations

import os
from typing import Sequence

from deployer.config.repo_files import (
    MAX_SECRET_BYTES, SECRET, RepoFile, Where, open_checked, printable, read_bytes, resolve, top_level_line,
)  # fmt: skip

SecretSource = RepoFile
__all__ = ["MAX_SECRET_BYTES", "SecretSource", "printable", "resolve_secret_file", "open_secret_file",
           "read_secret_file", "secret_line"]


def _where(compose_path: str, name: str, line: int | None) -> Where:
    return Where(compose_path, f"secrets.{name}.file", line)


def secret_line(repo_root: str | os.PathLike[str], compose_path: str, name: str) -> int | None:
    """The line ``secrets.<name>.file`` is written on in the compose file on disk (None if it cannot be found)."""
    return top_level_line(repo_root, compose_path, "secrets", name)


def resolve_secret_file(written: str | None, *, name: str, compose_path: str, repo_root: str | os.PathLike[str],
                        secrets_dirs: Sequence[str] = (), line: int | None = None) -> RepoFile:
    """The file ``written`` (a compose ``secrets.<name>.file``) names, if the policy allows it; ConfigError otherwise."""
    return resolve(written, SECRET, _where(compose_path, name, line), repo_root=repo_root, secrets_dirs=secrets_dirs)


def open_secret_file(source: RepoFile, *, name: str, compose_path: str, line: int | None = None) -> int:
    """A read-only descriptor of the checked secret file (``repo_files.open_checked``); the caller closes it."""
    return open_checked(source, SECRET, _where(compose_path, name, line))


def read_secret_file(written: str | None, *, name: str, compose_path: str, repo_root: str | os.PathLike[str],
                     secrets_dirs: Sequence[str] = (), line: int | None = None) -> tuple[RepoFile, bytes]:
    """The policy applied (``resolve_secret_file``), then the file read once through ``open_secret_file``."""
    source = resolve_secret_file(written, name=name, compose_path=compose_path, repo_root=repo_root,
                                 secrets_dirs=secrets_dirs, line=line)
    return source, read_bytes(source, SECRET, _where(compose_path, name, line))
