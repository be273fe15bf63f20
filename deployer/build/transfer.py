"""Source to the build engine and artifacts back, as tar archives over the engine's API.

A builder container never bind-mounts this machine's directories: the app's
source is packed here (:func:`pack_source`), excluding what the app's ignore
file says, refused before anything is sent when it is over the size limit,
and put into the created container with ``put_archive``; ``/out`` comes back
with ``get_archive`` and is unpacked by :func:`unpack_out`. So a build runs
the same on a local socket, an ``ssh://`` and a ``tcp://`` (TLS) engine.

The ignore file is ``.deployerignore`` in the app directory if there is one,
else ``.dockerignore`` (an app whose ``.dockerignore`` is written for its
image's context, the built binaries, gives the builder its own file). Its
grammar is Docker's (``.dockerignore``): one pattern per line, ``#`` starts
a comment line, surrounding blanks are dropped, a leading ``/`` is dropped
(patterns are relative to the app directory), ``*`` is any run of characters
but ``/``, ``?`` one such character, ``[a-z]`` / ``[^a-z]`` a class, ``\\``
escapes, ``**`` any number of directories (zero included); ``!`` before a
pattern re-includes what it matches. A path is left out when the last pattern
matching it *or one of its parent directories* excludes it.

The size limit counts the bytes of the regular files sent (tar headers not
included). Symbolic links are sent as links; sockets, FIFOs and devices are not
sent.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

from deployer.errors import BuildFailed, SourceError, SourceTooLarge

IGNORE_FILES = (".deployerignore", ".dockerignore")
DEFAULT_SOURCE_LIMIT = 100 * 1024**2  # deployer.yml source_limit overrides it
SPOOL_IN_MEMORY = 8 * 1024**2  # archives up to this size are kept in memory, bigger ones in a temp file


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    text: str  # as written (without the ! and the blanks)
    regex: re.Pattern
    exclusion: bool  # written with a leading "!": re-includes


def _translate(pattern: str) -> str:
    """Docker's pattern grammar as a regular expression (anchored by the caller)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise ValueError("ends with an unfinished escape (\\)")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = i + 1
            if end < n and pattern[end] == "^":
                end += 1
            if end < n and pattern[end] == "]":
                end += 1
            while end < n and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            if end >= n:
                raise ValueError("has an unclosed [")
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            if negate:
                body = body[1:]
            parts = []
            j = 0
            while j < len(body):
                if body[j] == "\\" and j + 1 < len(body):
                    parts.append(re.escape(body[j + 1]))
                    j += 2
                elif body[j] == "-" and 0 < j < len(body) - 1:
                    parts.append("-")
                    j += 1
                else:
                    parts.append(re.escape(body[j]))
                    j += 1
            out.append(("[^/" if negate else "[") + "".join(parts) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _clean(path: str) -> str:
    """Go's filepath.Clean on a relative, slash-separated path: no ``.``, no empty parts, ``..`` folded."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def parse_ignore(text: str, where: str = ".dockerignore") -> list[Pattern]:
    """The patterns of an ignore file; a malformed one raises SourceError naming ``where:line``."""
    patterns: list[Pattern] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = _clean(line.lstrip("/"))
        if not line:
            continue
        try:
            regex = re.compile(_translate(line) + r"\Z", re.DOTALL)
        except (ValueError, re.error) as e:
            raise SourceError(f"{where}:{number}: pattern {raw.strip()!r} {e}") from None
        patterns.append(Pattern(line, regex, exclusion))
    return patterns


def excluded(path: str, patterns: list[Pattern]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) is left out: the last pattern that matches it
    or one of its parent directories decides."""
    parents = []
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        parents.append("/".join(parts[:k]))
    result = False
    for p in patterns:
        if any(p.regex.match(candidate) for candidate in parents):
            result = not p.exclusion
    return result


def ignore_file(source_dir: Path) -> Path | None:
    """``.deployerignore``, else ``.dockerignore``, of the app directory; None without either."""
    for name in IGNORE_FILES:
        path = source_dir / name
        if path.is_file():
            return path
    return None


def load_ignore(source_dir: Path) -> tuple[Path | None, list[Pattern]]:
    path = ignore_file(source_dir)
    if path is None:
        return None, []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read: {e}") from None
    return path, parse_ignore(text, str(path))


# --------------------------------------------------------------------------- packing


@dataclass
class SourceArchive:
    file: IO[bytes]  # positioned at 0
    files: int
    content_bytes: int  # what the limit counts
    archive_bytes: int
    ignore_file: Path | None

    def close(self) -> None:
        self.file.close()


def source_entries(source_dir: Path, patterns: list[Pattern]) -> Iterable[tuple[str, Path, os.stat_result]]:
    """(relative path, path, lstat) of what is sent, parents before children, in a stable order."""
    def walk(directory: Path, rel: str):
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise SourceError(f"{directory}: cannot list: {e.strerror}") from None
        for name in names:
            child_rel = f"{rel}/{name}" if rel else name
            path = directory / name
            st = path.lstat()
            is_dir = stat.S_ISDIR(st.st_mode)
            if excluded(child_rel, patterns):
                # an excluded directory is still walked when a later "!" pattern may re-include below it
                if is_dir and any(p.exclusion for p in patterns):
                    yield from walk(path, child_rel)
                continue
            if is_dir:
                yield child_rel, path, st
                yield from walk(path, child_rel)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                yield child_rel, path, st

    yield from walk(source_dir, "")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def pack_source(source_dir: str | os.PathLike, limit: int = DEFAULT_SOURCE_LIMIT, *, prefix: str = "src",
                extra: dict[str, bytes] | None = None, limit_from: str = "") -> SourceArchive:
    """A tar archive of the app's source under ``prefix/`` (plus an empty ``out/`` and ``extra`` files
    by archive path), or SourceTooLarge before any byte of it is written."""
    src = Path(source_dir)
    ignore_path, patterns = load_ignore(src)
    entries = list(source_entries(src, patterns))
    total = sum(st.st_size for _, _, st in entries if stat.S_ISREG(st.st_mode))
    if total > limit:
        tops: dict[str, int] = {}
        for rel, _, st in entries:
            if stat.S_ISREG(st.st_mode):
                top = rel.split("/", 1)[0]
                tops[top] = tops.get(top, 0) + st.st_size
        biggest, size = max(tops.items(), key=lambda kv: kv[1])
        excludes = ignore_path.name if ignore_path is not None else ".deployerignore or .dockerignore"
        raise SourceTooLarge(
            f"{src}: the source to send is {_human(total)} in {sum(1 for e in entries if stat.S_ISREG(e[2].st_mode))} "
            f"files, over the limit of {_human(limit)}{limit_from} (biggest: {biggest}, {_human(size)}); "
            f"leave files out in {excludes} or raise source_limit in deployer.yml")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    files = 0
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_dir_info(prefix))
        tar.addfile(_dir_info("out"))
        for rel, path, st in entries:
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            else:
                info.size = st.st_size
                try:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                except OSError as e:
                    raise SourceError(f"{path}: cannot read: {e.strerror}") from None
                files += 1
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    size = spool.tell()
    spool.seek(0)
    return SourceArchive(file=spool, files=files, content_bytes=total, archive_bytes=size, ignore_file=ignore_path)


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o777
    return info


# --------------------------------------------------------------------------- unpacking


class _StreamReader(io.RawIOBase):
    """A file over docker-py's chunk iterator, so tarfile can stream it."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def unpack_out(chunks, dest: Path, top: str = "out") -> list[Path]:
    """Unpack ``get_archive``'s stream of ``/out`` into ``dest`` (``out/x`` -> ``dest/x``); return the
    regular files. Only regular files, directories and links that stay inside ``dest`` are accepted
    (tarfile's ``data`` filter): anything else raises BuildFailed."""
    dest.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    reader = io.BufferedReader(_StreamReader(chunks), buffer_size=1024 * 1024)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            if name.parts[:1] != (top,):
                raise BuildFailed(f"the builder's /{top} archive holds {member.name!r}, outside {top}/")
            rel = PurePosixPath(*name.parts[1:]) if len(name.parts) > 1 else None
            if rel is None:
                continue
            member.name = str(rel)
            if member.islnk():  # a hard link names its target by archive path too
                target = PurePosixPath(member.linkname)
                member.linkname = str(PurePosixPath(*target.parts[1:])) if target.parts[:1] == (top,) else member.linkname
            member.uid = member.gid = None  # ours, not the container's
            member.uname = member.gname = None
            try:
                tar.extract(member, dest, filter="data")
            except tarfile.FilterError as e:
                raise BuildFailed(f"the builder's /{top} holds {rel}, refused: {e}") from None
            if member.isfile() or member.islnk():
                files.append(dest / str(rel))
    return sorted(files)


# --------------------------------------------------------------------------- images between engines


def move_image(source, target, ref: str) -> None:
    """``docker save ref`` on ``source`` streamed into ``docker load`` on ``target``, never whole in memory."""
    chunks = source.api.get_image(ref, chunk_size=1024 * 1024)
    response = target.api._post(target.api._url("/images/load"), data=_chunks(chunks), params={"quiet": "1"},
                                headers={"Content-Type": "application/x-tar"}, stream=True)
    target.api._raise_for_status(response)
    for line in response.iter_lines():
        if b'"error"' in line:
            raise BuildFailed(f"moving {ref}: the engine could not load it: {line.decode(errors='replace')}")


def _chunks(chunks):
    yield from chunks
