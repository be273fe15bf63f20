"""The secret-file policy: which files a compose secret may name, checked and read in one place.

A compose ``secrets.<name>.file`` is read on the deployer's machine and copied
into the container on the node, so it must never name a file the repository's
authors have no business copying there (``/proc/self/environ``, ``/etc/...``,
an operator's ``~/.ssh``). ``resolve_secret_file`` applies the policy
(docs/compose.md, "Secrets") and returns the checked file; ``open_secret_file``
opens it again without following a symlink and makes sure it is still the file
that was checked; ``read_secret_file`` does both and returns the bytes. The
compose check (``compose_check``) and the spec builder (``compose_spec``) both
call these, so what is checked and what is copied cannot disagree.

Every refusal is a ConfigError ``file:line: secrets.<name>.file: <why>``, its
paths escaped so that the message prints whatever bytes the path holds.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ruamel.yaml import YAML

from deployer.errors import ConfigError
from deployer.errors import printable as errors_printable
from deployer.gitrepo import git

#: The most a secret file may hold (checked before it is read): secrets are small.
MAX_SECRET_BYTES = 1024 * 1024
#: Never a secret: the kernel's and the devices' files (the deployer's own environment, its memory, a disk).
SYSTEM_DIRS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class SecretSource:
    """A secret file that passed the policy: its resolved path and the identity of the file checked."""

    path: str  # absolute, symlinks resolved
    shown: str  # how messages name it: repo-relative inside the repository, else absolute; printable
    device: int
    inode: int
    size: int


@dataclass(frozen=True)
class _Where:
    compose_path: str
    name: str
    line: int | None

    def refuse(self, message: str) -> ConfigError:
        return ConfigError(self.compose_path, message, line=self.line, field=f"secrets.{self.name}.file")


def secret_line(repo_root: str | os.PathLike[str], compose_path: str, name: str) -> int | None:
    """The line ``secrets.<name>.file`` is written on in the compose file on disk (None if it cannot be found).

    For the spec builder's messages: it works on plain data, without lines.
    """
    try:
        text = (Path(repo_root) / compose_path).read_text(encoding="utf-8")
        doc = YAML().load(text)
        return doc["secrets"][name].lc.value("file")[0] + 1
    except Exception:  # any reason: the message then names the file without a line
        return None


def printable(text: str) -> str:
    """A path with every character that cannot be printed as-is escaped, and backslash itself (so it reads back)."""
    return errors_printable(text.replace("\\", "\\\\"))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _system_dir(path: str) -> str | None:
    return next((d for d in SYSTEM_DIRS if _within(path, d)), None)


def _shown(path: str, root: str) -> str:
    return printable(os.path.relpath(path, root) if _within(path, root) and path != root else path)


def resolve_secret_file(
    written: str | None,
    *,
    name: str,
    compose_path: str,
    repo_root: str | os.PathLike[str],
    secrets_dirs: Sequence[str] = (),
    line: int | None = None,
) -> SecretSource:
    """The file ``written`` (a compose ``secrets.<name>.file``) names, if the policy allows it; ConfigError otherwise.

    ``compose_path`` is the compose file's repo-relative path (relative paths
    resolve against its directory), ``secrets_dirs`` the datacenter's
    ``secrets_dir`` folders, ``line`` where the value is written (for the
    message). In order: a relative path may not climb out of the repository
    (lexically, before any symlink is followed); symlinks are resolved; the
    resolved file must not be under /proc, /sys or /dev, must be a regular
    file, must not be inside the repository's .git directory or tracked by
    git, must lie in the repository or under a secrets_dir, and may hold at
    most MAX_SECRET_BYTES.
    """
    where = _Where(compose_path, name, line)
    root_lex = os.path.abspath(repo_root)
    root_real = os.path.realpath(root_lex)
    if not isinstance(written, str) or not written:
        raise where.refuse("must be a non-empty string: the path of the secret file")
    if "\0" in written:
        raise where.refuse(f"secret file {printable(written)} contains a NUL byte")
    try:
        os.fsencode(written)
    except UnicodeEncodeError:
        raise where.refuse(f"secret file {printable(written)} is not a valid file name (it cannot be encoded)") from None
    if os.path.isabs(written):
        candidate = os.path.normpath(written)
    else:
        compose_dir = os.path.join(root_lex, *PurePosixPath(compose_path).parent.parts)
        candidate = os.path.normpath(os.path.join(compose_dir, written))
        if not _within(candidate, root_lex):
            raise where.refuse(
                f"secret file {printable(written)} climbs out of the repository (to {printable(candidate)}); "
                "a relative path must stay inside it: name a file elsewhere by its absolute path "
                "under the datacenter's secrets_dir"
            )
    shown = _shown(candidate, root_lex)
    system = _system_dir(candidate)
    if system:
        raise where.refuse(f"secret file {shown} is under {system}: system files are never secrets")
    try:
        resolved = os.path.realpath(candidate, strict=True)
    except FileNotFoundError:
        raise where.refuse(f"secret file {shown} does not exist") from None
    except OSError as exc:
        raise where.refuse(f"secret file {shown} cannot be resolved: {exc.strerror or exc}") from None
    shown_resolved = _shown(resolved, root_real)
    via = "" if shown_resolved == shown else f" (resolves to {shown_resolved})"
    system = _system_dir(resolved)
    if system:
        raise where.refuse(f"secret file {shown}{via} is under {system}: system files are never secrets")
    try:
        info = os.stat(resolved)
    except OSError as exc:
        raise where.refuse(f"cannot read secret file {shown}{via}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise where.refuse(f"secret file {shown}{via} is not a regular file")
    if _within(resolved, root_real):
        rel = os.path.relpath(resolved, root_real)
        if rel.split(os.sep)[0] == ".git":
            raise where.refuse(f"secret file {shown}{via} is inside the repository's .git directory")
        if git.is_tracked(root_real, rel):
            which = f"{shown}{via}, which" if via else f"{shown}"
            raise where.refuse(f"secret file {which} is tracked by git; secrets must stay out of the repository")
    elif not any(_within(resolved, os.path.realpath(d)) for d in secrets_dirs):
        allowed = ", ".join(printable(d) for d in secrets_dirs) if secrets_dirs else "none set in datacenter.yml"
        raise where.refuse(
            f"secret file {shown}{via} is outside the repository and the datacenter's secrets_dir ({allowed}); "
            "a secret file is an untracked file of the repository or lies under a secrets_dir"
        )
    if info.st_size > MAX_SECRET_BYTES:
        raise where.refuse(_too_big(shown + via, info.st_size))
    return SecretSource(path=resolved, shown=shown + via, device=info.st_dev, inode=info.st_ino, size=info.st_size)


def _too_big(shown: str, size: int) -> str:
    return f"secret file {shown} holds {size} bytes; a secret file may hold at most {MAX_SECRET_BYTES} bytes (1 MiB)"


def open_secret_file(source: SecretSource, *, name: str, compose_path: str, line: int | None = None) -> int:
    """A read-only descriptor of ``source``'s file, opened without following a symlink, proven to be the file checked.

    The final component is opened with O_NOFOLLOW (a symlink put there since
    the check is refused: ELOOP) and O_NONBLOCK (a FIFO put there cannot
    block), and the open file must be the regular file that was checked (same
    device and inode, so a folder on the way swapped for a symlink is refused
    too) and still within the size limit. The caller closes it.
    """
    where = _Where(compose_path, name, line)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(source.path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise where.refuse(f"secret file {source.shown} was replaced by a symlink after it was checked") from None
        if exc.errno == errno.ENOENT:
            raise where.refuse(f"secret file {source.shown} does not exist") from None
        raise where.refuse(f"cannot read secret file {source.shown}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (source.device, source.inode):
            raise where.refuse(f"secret file {source.shown} was replaced by another file after it was checked")
        if info.st_size > MAX_SECRET_BYTES:
            raise where.refuse(_too_big(source.shown, info.st_size))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_secret_file(
    written: str | None,
    *,
    name: str,
    compose_path: str,
    repo_root: str | os.PathLike[str],
    secrets_dirs: Sequence[str] = (),
    line: int | None = None,
) -> tuple[SecretSource, bytes]:
    """The policy applied (``resolve_secret_file``), then the file read once through ``open_secret_file``."""
    source = resolve_secret_file(
        written, name=name, compose_path=compose_path, repo_root=repo_root, secrets_dirs=secrets_dirs, line=line
    )
    fd = open_secret_file(source, name=name, compose_path=compose_path, line=line)
    try:
        chunks = []
        total = 0
        while total <= MAX_SECRET_BYTES:
            try:
                chunk = os.read(fd, MAX_SECRET_BYTES + 1 - total)
            except OSError as exc:
                raise _Where(compose_path, name, line).refuse(
                    f"cannot read secret file {source.shown}: {exc.strerror or exc}"
                ) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > MAX_SECRET_BYTES:  # grew after it was checked
        raise _Where(compose_path, name, line).refuse(_too_big(source.shown, total))
    return source, b"".join(chunks)
