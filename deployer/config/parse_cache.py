"""The parse cache: what reading and checking a YAML file gave, kept by the content's git blob id.

Loading a repository of 10,000 nodes spends most of its time parsing and
checking files that have not changed since the last command. The loader asks
this cache first (``loader._read_checked``, ``loader._load_compose``): the key
is the git blob id of the text the parser reads (``sha1("blob <len>\\0" + bytes)``,
what ``git hash-object`` prints for that text), so an entry is found again
exactly when the content is the same, whatever the file's time stamps say, and
a changed file is a new key. An entry holds only what was checked and found
valid: the plain data of the document (and, for a compose file, its checked
services); a file with problems is never cached, so every error is reported
with its line as before.

What else an entry depends on is in the key too, or the entry is not made:

* the deployer's own checking code: the cache file carries a fingerprint of
  the source of ``deployer/config`` and the shared modules it uses; another
  version of the code starts from an empty cache;
* a ``.env`` file's entry holds its parsed values, keyed by its blob id and the
  variables it is interpolated from (the datacenter's: ``variables_id``);
* a compose file that names secret files is not cached (the check reads those
  files, outside the document);
* a compose entry also keeps each service's container spec, built for that
  node (the key has the node's dc, name and variables: a spec reads nothing else,
  the operator's environment never). The spec's hash is kept with it
  (``ContainerSpec.config_hash`` answers it), computed by the same code (the
  fingerprint) from the same values; specs are not changed after they are built;
* anything that feeds a node besides its own text is in the key as well: the
  variables it is interpolated with (node.yml, ``.env``, datacenter.yml: their
  resolved names and values, ``variables_id``); the files its ``include`` and
  ``extends`` read are listed in the entry with their blob ids, and the entry is
  used only while each of them still has that content (``same_files``; each file
  is read and hashed once per load, however many nodes extend it).

The cache lives in the repository's git directory (``.git/deployer/parse-cache``),
one file written to a temporary name and renamed over the old one, so that
concurrent deployers each read a whole file (the last writer wins; both wrote
valid entries). It is written only when it changed, and holds the entries the
last full load used (entries of files that are gone are dropped). Data is kept
with ``marshal`` (plain values only: it cannot carry code). Without a git
directory nothing is cached.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import tempfile
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from deployer.spec import ContainerSpec

#: The cache file, under the git directory.
CACHE_FILE = "deployer/parse-cache"
#: Bumped when what an entry holds changes shape.
FORMAT = 1
#: Entries kept at most (a repository of 10,000 nodes has 20,000 files).
MAX_ENTRIES = 200_000

_MODULES = ("config", "errors.py", "values.py", "model.py", "labels.py", "imageref.py", "spec.py")
_fingerprint: str | None = None
_fingerprint_lock = threading.Lock()


def code_fingerprint() -> str:
    """A hash of the checking code's source: a cache made by other code is not used."""
    global _fingerprint
    with _fingerprint_lock:
        if _fingerprint is None:
            base = Path(__file__).resolve().parent.parent
            h = hashlib.sha256(f"format {FORMAT}".encode())
            for name in _MODULES:
                path = base / name
                for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
                    h.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
            _fingerprint = h.hexdigest()
        return _fingerprint


def blob_id(text: str) -> str:
    """The git blob id of ``text`` (UTF-8): what ``git hash-object`` says for a file holding it."""
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def variables_id(variables: dict[str, str]) -> str:
    """One id for the variables a node's compose file is interpolated with (names and values, in order)."""
    h = hashlib.sha1()
    for name in sorted(variables):
        h.update(f"{name}\0{variables[name]}\0".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def key(kind: str, *ids: str) -> str:
    """The key of an entry: its kind and every blob id (or other exact input) it was made from."""
    return kind + ":" + ":".join(ids)


#: The fields of a spec an entry keeps: all but what carries files (a spec with files is not kept) and the
#: rollout settings (a spec with other than the default ones is not kept).
_NOT_KEPT = ("secrets", "files", "bundles", "rollout")
_SPEC_FIELDS = tuple(f.name for f in fields(ContainerSpec) if f.name not in _NOT_KEPT)
_DEFAULT_ROLLOUT = ContainerSpec.__dataclass_fields__["rollout"].default_factory()  # frozen: one serves all


def spec_data(spec: ContainerSpec) -> list | None:
    """A spec as plain data for an entry; None when it has what an entry must not hold (files, secrets)."""
    if spec.secrets or spec.files or spec.bundles or spec.rollout != _DEFAULT_ROLLOUT:
        return None
    return [*(getattr(spec, name) for name in _SPEC_FIELDS), spec.config_hash()]


def spec_from(data: list) -> ContainerSpec:
    """The spec ``spec_data`` kept. Its values are the entry's own: the caller uses an entry once
    (``compose_spec.container_spec`` drops it from the service), so no spec shares them with another.

    Made without the dataclass's ``__init__`` (this runs for every service of a 10,000-node load; the
    class has no ``__post_init__``): the kept fields, the ones a kept spec has empty, and the hash."""
    values = dict(zip(_SPEC_FIELDS, data))
    values["secrets"], values["files"], values["bundles"], values["rollout"] = [], {}, [], _DEFAULT_ROLLOUT
    values["_kept_hash"] = data[len(_SPEC_FIELDS)]  # computed from these very values when the entry was made
    spec = object.__new__(ContainerSpec)
    spec.__dict__ = values
    return spec


def git_dir(root: Path) -> Path | None:
    """The repository's git directory (``.git``, or where a worktree's ``.git`` file points); None without one."""
    dot = root / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        try:
            line = dot.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if line.startswith("gitdir:"):
            target = Path(line[len("gitdir:"):].strip())
            target = target if target.is_absolute() else (root / target)
            return target if target.is_dir() else None
    return None


class ParseCache:
    """The entries of one load: read once at the start, written once at the end if anything changed."""

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, Any] = {}
        self._used: set[str] = set()
        self._blobs: dict[str, str] = {}  # repo-relative path -> blob id, for same_files
        self._changed = False
        self._lock = threading.Lock()
        self._strings: dict[str, str] = {}  # one object per distinct text among the entries put (``_shared_strings``)
        if path is not None:
            self._entries = _read(path)

    @classmethod
    def for_root(cls, root: Path) -> "ParseCache":
        found = git_dir(root)
        return cls(found / CACHE_FILE if found is not None else None)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def get(self, name: str) -> Any:
        """The entry, or None."""
        value = self._entries.get(name)
        if value is not None:
            self._used.add(name)
        return value

    def same_files(self, root: Path, files: list) -> bool:
        """Whether each [repo-relative path, blob id] still holds that content (each file read once per load)."""
        for rel, wanted in files:
            have = self._blobs.get(rel)
            if have is None:
                try:
                    with open(os.path.join(root, rel), encoding="utf-8") as f:
                        have = blob_id(f.read())
                except (OSError, UnicodeDecodeError):
                    have = ""
                self._blobs[rel] = have
            if have != wanted:
                return False
        return True

    def put(self, name: str, value: Any) -> None:
        """Keep ``value`` (plain data: dict, list, str, int, float, bool, None); anything else is not kept."""
        if self.path is None or value is None:
            return
        try:
            marshal.dumps(value)
        except ValueError:  # a value marshal cannot hold (a date the YAML parser made): not cached
            return
        with self._lock:
            self._entries[name] = _shared_strings(value, self._strings)
            self._used.add(name)
            self._changed = True

    def save(self, prune: bool = True) -> None:
        """Write the cache if it changed; with ``prune`` only the entries this load used are kept."""
        if self.path is None:
            return
        keep = {k: v for k, v in self._entries.items() if k in self._used} if prune else self._entries
        if not self._changed and len(keep) == len(self._entries):
            return
        if len(keep) > MAX_ENTRIES:
            keep = dict(list(keep.items())[-MAX_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = marshal.dumps((FORMAT, code_fingerprint(), keep))
            fd, tmp = tempfile.mkstemp(prefix=".parse-cache.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self.path)  # readers see the old file or the new one, never part of one
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            return  # a read-only checkout: loading works, only slower
        self._entries, self._changed = keep, False


def _shared_strings(value: Any, strings: dict[str, str]) -> Any:
    """A copy of ``value`` in which equal strings are one object: marshal writes a string met again as a
    reference to the first, so the file is smaller and reading it makes one string where it made hundreds
    (the same keys and values recur in every node's entry). Strings are immutable: sharing them is safe;
    the containers are new (the caller's values are left as they were)."""
    if isinstance(value, str):
        return strings.setdefault(value, value)
    if isinstance(value, dict):
        return {_shared_strings(k, strings): _shared_strings(v, strings) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared_strings(v, strings) for v in value]
    if isinstance(value, tuple):
        return tuple(_shared_strings(v, strings) for v in value)
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    try:
        fmt, fingerprint, entries = marshal.loads(data)
    except Exception:  # truncated or foreign: start empty (it is rewritten at the end)
        return {}
    if fmt != FORMAT or fingerprint != code_fingerprint() or not isinstance(entries, dict):
        return {}
    return entries
