"""The repository-files policy: which files of the deployer's machine a compose file may ship to a node.

A compose file names files that the deployer reads on its own machine and
ships to the node: ``secrets.<name>.file``, ``configs.<name>.file``,
``env_file`` entries and relative bind mount sources (``./nginx.conf:...``).
None of them may name a file the repository's authors have no business
shipping there (``/proc/self/environ``, ``/etc/...``, an operator's ``~/.ssh``).
One policy covers all of them (docs/compose.md, "Files and secrets on the
node"); what differs is a ``Kind``:

* every path: a relative path may not climb out of the repository (lexically,
  before any symlink is followed); symlinks are resolved and the resolved
  file must not be under /proc, /sys or /dev, nor inside the repository's
  .git directory; it must exist and be a regular file (or, where the kind
  allows it, a directory); it holds at most the kind's size limit;
* a secret (``SECRET``) may also be an absolute path under the datacenter's
  ``secrets_dir``, and inside the repository it must NOT be tracked by git;
* every other kind (configs, env_file, bind sources) lies inside the
  repository, after symlinks are resolved: an absolute path is refused.

``resolve`` applies the policy and returns the checked file (``RepoFile``);
``read_bytes`` opens it again without following a symlink, makes sure it is
still the file that was checked, and reads it within the limit; ``read_tree``
does the same for every file of a directory (a symlink inside it is followed
only while it stays inside the repository; a directory symlink is refused).
The compose check and the spec builder both call these, so what is checked
and what is shipped cannot disagree.

Every refusal is a ConfigError ``file:line: <field>: <why>``, its paths
escaped so that the message prints whatever bytes the path holds.
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

#: Never shipped: the kernel's and the devices' files (the deployer's own environment, its memory, a disk).
SYSTEM_DIRS = ("/proc", "/sys", "/dev")
MIB = 1024 * 1024
#: The most one secret file may hold: secrets are small.
MAX_SECRET_BYTES = MIB
#: The most one shipped file (a config, an env_file, a file of a bind source) may hold.
MAX_FILE_BYTES = 4 * MIB
#: The most the files one service ships may hold together (configs, bind sources, secrets; not env_file).
MAX_SERVICE_BYTES = 16 * MIB
#: The most files one service may ship (a directory counts each file and folder in it).
MAX_SERVICE_ENTRIES = 2000


@dataclass(frozen=True)
class Kind:
    """What a path names, for the policy and the messages."""

    what: str  # "secret file", "config file", "env_file", "bind source"
    max_bytes: int
    secret: bool = False  # may be outside the repository (under a secrets_dir); must be untracked inside it
    directory: bool = False  # may be a directory


SECRET = Kind("secret file", MAX_SECRET_BYTES, secret=True)
CONFIG = Kind("config file", MAX_FILE_BYTES)
ENV_FILE = Kind("env_file", MAX_FILE_BYTES)
BIND = Kind("bind source", MAX_FILE_BYTES, directory=True)


@dataclass(frozen=True)
class RepoFile:
    """A path that passed the policy: its resolved path and the identity of what was checked."""

    path: str  # absolute, symlinks resolved
    shown: str  # how messages name it: repo-relative inside the repository, else absolute; printable
    device: int
    inode: int
    size: int
    is_dir: bool = False


@dataclass(frozen=True)
class Where:
    """Where a path is written, for the messages: the compose file, the field, the line."""

    compose_path: str
    field: str
    line: int | None = None

    def refuse(self, message: str) -> ConfigError:
        return ConfigError(self.compose_path, message, line=self.line, field=self.field)


def printable(text: str) -> str:
    """A path with every character that cannot be printed as-is escaped, and backslash itself (so it reads back)."""
    return errors_printable(text.replace("\\", "\\\\"))


def top_level_line(repo_root: str | os.PathLike[str], compose_path: str, section: str, name: str,
                   key: str = "file") -> int | None:
    """The line ``<section>.<name>.<key>`` is written on in the compose file on disk (None if it cannot be found).

    For the spec builder's messages: it works on plain data, without lines.
    """
    try:
        text = (Path(repo_root) / compose_path).read_text(encoding="utf-8")
        doc = YAML().load(text)
        return doc[section][name].lc.value(key)[0] + 1
    except Exception:  # any reason: the message then names the file without a line
        return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _system_dir(path: str) -> str | None:
    return next((d for d in SYSTEM_DIRS if _within(path, d)), None)


def _shown(path: str, root: str) -> str:
    return printable(os.path.relpath(path, root) if _within(path, root) and path != root else path)


def too_big(kind: Kind, shown: str, size: int, limit: int | None = None) -> str:
    limit = kind.max_bytes if limit is None else limit
    return f"{kind.what} {shown} holds {size} bytes; a {kind.what} may hold at most {limit} bytes ({limit // MIB} MiB)"


def resolve(
    written: str | None,
    kind: Kind,
    where: Where,
    *,
    repo_root: str | os.PathLike[str],
    secrets_dirs: Sequence[str] = (),
) -> RepoFile:
    """The file ``written`` names (relative to the compose file's directory), if the policy allows it.

    ConfigError otherwise (see the module docstring for the rules, in order).
    """
    what = kind.what
    never = "never secrets" if kind.secret else "never shipped"
    root_lex = os.path.abspath(repo_root)
    root_real = os.path.realpath(root_lex)
    if not isinstance(written, str) or not written:
        raise where.refuse(f"must be a non-empty string: the path of the {what}")
    if "\0" in written:
        raise where.refuse(f"{what} {printable(written)} contains a NUL byte")
    try:
        os.fsencode(written)
    except UnicodeEncodeError:
        raise where.refuse(f"{what} {printable(written)} is not a valid file name (it cannot be encoded)") from None
    if os.path.isabs(written):
        if not kind.secret:
            raise where.refuse(f"{what} {printable(written)} is an absolute path: a file shipped from the "
                               "repository is named relative to the compose file, inside the repository")
        candidate = os.path.normpath(written)
    else:
        compose_dir = os.path.join(root_lex, *PurePosixPath(where.compose_path).parent.parts)
        candidate = os.path.normpath(os.path.join(compose_dir, written))
        if not _within(candidate, root_lex):
            hint = (": name a file elsewhere by its absolute path under the datacenter's secrets_dir"
                    if kind.secret else "")
            raise where.refuse(f"{what} {printable(written)} climbs out of the repository (to "
                               f"{printable(candidate)}); a relative path must stay inside it{hint}")
    shown = _shown(candidate, root_lex)
    system = _system_dir(candidate)
    if system:
        raise where.refuse(f"{what} {shown} is under {system}: system files are {never}")
    try:
        resolved = os.path.realpath(candidate, strict=True)
    except FileNotFoundError:
        raise where.refuse(f"{what} {shown} does not exist") from None
    except OSError as exc:
        raise where.refuse(f"{what} {shown} cannot be resolved: {exc.strerror or exc}") from None
    shown_resolved = _shown(resolved, root_real)
    via = "" if shown_resolved == shown else f" (resolves to {shown_resolved})"
    system = _system_dir(resolved)
    if system:
        raise where.refuse(f"{what} {shown}{via} is under {system}: system files are {never}")
    try:
        info = os.stat(resolved)
    except OSError as exc:
        raise where.refuse(f"cannot read {what} {shown}{via}: {exc.strerror or exc}") from None
    is_dir = stat.S_ISDIR(info.st_mode)
    if not (stat.S_ISREG(info.st_mode) or (kind.directory and is_dir)):
        raise where.refuse(f"{what} {shown}{via} is not a regular file{' or a directory' if kind.directory else ''}")
    inside = _within(resolved, root_real)
    if inside:
        rel = os.path.relpath(resolved, root_real)
        if rel.split(os.sep)[0] == ".git" or (is_dir and rel == "."):
            where_ = "the repository itself" if rel == "." else "inside the repository's .git directory"
            raise where.refuse(f"{what} {shown}{via} is {where_}")
        if kind.secret and git.is_tracked(root_real, rel):
            which = f"{shown}{via}, which" if via else f"{shown}"
            raise where.refuse(f"{what} {which} is tracked by git; secrets must stay out of the repository")
    elif kind.secret:
        if not any(_within(resolved, os.path.realpath(d)) for d in secrets_dirs):
            allowed = ", ".join(printable(d) for d in secrets_dirs) if secrets_dirs else "none set in datacenter.yml"
            raise where.refuse(
                f"{what} {shown}{via} is outside the repository and the datacenter's secrets_dir ({allowed}); "
                "a secret file is an untracked file of the repository or lies under a secrets_dir"
            )
    else:
        raise where.refuse(f"{what} {shown}{via} leaves the repository: only files of the repository are shipped")
    if not is_dir and info.st_size > kind.max_bytes:
        raise where.refuse(too_big(kind, shown + via, info.st_size))
    return RepoFile(path=resolved, shown=shown + via, device=info.st_dev, inode=info.st_ino, size=info.st_size,
                    is_dir=is_dir)


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def open_checked(source: RepoFile, kind: Kind, where: Where) -> int:
    """A read-only descriptor of ``source``'s file, opened without following a symlink, proven to be the file checked.

    The final component is opened with O_NOFOLLOW (a symlink put there since
    the check is refused: ELOOP) and O_NONBLOCK (a FIFO put there cannot
    block), and the open file must be the regular file that was checked (same
    device and inode, so a folder on the way swapped for a symlink is refused
    too) and still within the size limit. The caller closes it.
    """
    try:
        fd = os.open(source.path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise where.refuse(f"{kind.what} {source.shown} was replaced by a symlink after it was checked") from None
        if exc.errno == errno.ENOENT:
            raise where.refuse(f"{kind.what} {source.shown} does not exist") from None
        raise where.refuse(f"cannot read {kind.what} {source.shown}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (source.device, source.inode):
            raise where.refuse(f"{kind.what} {source.shown} was replaced by another file after it was checked")
        if info.st_size > kind.max_bytes:
            raise where.refuse(too_big(kind, source.shown, info.st_size))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(source: RepoFile, kind: Kind, where: Where) -> bytes:
    """The checked file's bytes, read once through ``open_checked`` (at most the kind's limit)."""
    fd = open_checked(source, kind, where)
    try:
        chunks = []
        total = 0
        while total <= kind.max_bytes:
            try:
                chunk = os.read(fd, kind.max_bytes + 1 - total)
            except OSError as exc:
                raise where.refuse(f"cannot read {kind.what} {source.shown}: {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > kind.max_bytes:  # grew after it was checked
        raise where.refuse(too_big(kind, source.shown, total))
    return b"".join(chunks)


@dataclass(frozen=True)
class TreeEntry:
    """One file or folder of a shipped directory: its path below the directory, mode and bytes (None: a folder)."""

    rel: str
    mode: int
    data: bytes | None


def read_tree(source: RepoFile, kind: Kind, where: Where, *, repo_root: str | os.PathLike[str],
              max_entries: int = MAX_SERVICE_ENTRIES, max_total: int = MAX_SERVICE_BYTES) -> list[TreeEntry]:
    """Every folder and file below the checked directory ``source``, sorted, each file through the policy.

    A symlink inside is followed when it resolves to a regular file inside the
    repository (its content is shipped); one that leaves the repository, or
    names a directory, is refused. At most ``max_entries`` entries and
    ``max_total`` bytes.
    """
    root_real = os.path.realpath(os.path.abspath(repo_root))
    entries: list[TreeEntry] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(source.path, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, source.path)
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                raise where.refuse(f"{kind.what} {source.shown} holds a symlink to a directory "
                                   f"({_shown(full, root_real)}): symlinked folders are not shipped")
            entries.append(TreeEntry(os.path.normpath(os.path.join(rel_dir, name)),
                                     stat.S_IMODE(os.lstat(full).st_mode), None))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            shown = _shown(full, root_real)
            file_where = where
            resolved = os.path.realpath(full)
            if not _within(resolved, root_real):
                raise where.refuse(f"{kind.what} {source.shown} holds {shown}, which leaves the repository "
                                   f"(resolves to {printable(resolved)}): only files of the repository are shipped")
            try:
                info = os.stat(resolved)
            except OSError as exc:
                raise where.refuse(f"cannot read {shown} in {kind.what} {source.shown}: {exc.strerror or exc}") from None
            if not stat.S_ISREG(info.st_mode):
                raise where.refuse(f"{shown} in {kind.what} {source.shown} is not a regular file")
            if os.path.relpath(resolved, root_real).split(os.sep)[0] == ".git":
                raise where.refuse(f"{shown} in {kind.what} {source.shown} is inside the repository's .git directory")
            one = RepoFile(path=resolved, shown=shown, device=info.st_dev, inode=info.st_ino, size=info.st_size)
            data = read_bytes(one, kind, file_where)
            total += len(data)
            if total > max_total:
                raise where.refuse(f"{kind.what} {source.shown} holds more than {max_total} bytes "
                                   f"({max_total // MIB} MiB, the most one service ships)")
            entries.append(TreeEntry(rel, stat.S_IMODE(info.st_mode), data))
        if len(entries) > max_entries:
            raise where.refuse(f"{kind.what} {source.shown} holds more than {max_entries} files and folders")
    return sorted(entries, key=lambda e: e.rel)
