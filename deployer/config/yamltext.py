"""YAML text as the byte-preserving edits see it.

``yamledit`` changes a compose file by splicing characters into its text; this
module gives it what that needs. ``event_tree`` parses the text into a tree of
ruamel's parser events, which carry the exact character offsets of every node;
``line_start``, ``line_end``, ``prev_line`` and ``eol_of`` find lines and the
file's line break. ``plain_ok`` says whether a string may be written unquoted
(it must read back as the same string under YAML 1.2 and 1.1), ``scalar_text``
and ``key_text`` write a value or key plain or double-quoted. ``verify`` is the
safety net behind every edit: the new text must parse to exactly the old data
with the intended change, or the edit is refused with EditVerificationError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from ruamel.yaml.scalarbool import ScalarBoolean

from deployer.errors import ConfigError, EditVerificationError, ImageReferenceError

_BREAK = re.compile(r"\r\n|\n|\r")  # the line breaks YAML knows (besides \x85, \u2028, \u2029)


# --------------------------------------------------------------------------
# Parsing helpers


def new_yaml() -> YAML:
    """A round-trip YAML instance that refuses duplicate keys."""
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _yaml_error(path: str, exc: Exception) -> ConfigError:
    line = None
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1
        parts = [p for p in (exc.context, exc.problem) if p]
        message = "; ".join(parts) if parts else str(exc)
    else:
        message = str(exc)
    return ConfigError(path, "invalid YAML: " + " ".join(message.split()), line=line)


def load(text: str, path: str) -> Any:
    """Round-trip data of ``text``; invalid YAML is a ConfigError with the line."""
    try:
        return new_yaml().load(text)
    except YAMLError as exc:
        raise _yaml_error(path, exc) from None


@dataclass
class Node:
    """A node of the event stream, with the events that start and end it."""

    kind: str  # "scalar" | "alias" | "map" | "seq"
    start: Any
    end: Any
    items: list = field(default_factory=list)  # map: [(key, value)], seq: [node]

    @property
    def flow(self) -> bool:
        return bool(isinstance(self.start, CollectionStartEvent) and self.start.flow_style)

    @property
    def anchor(self) -> str | None:
        return getattr(self.start, "anchor", None) if self.kind != "alias" else None

    @property
    def line(self) -> int:
        return self.start.start_mark.line + 1

    def get(self, key: str) -> tuple["Node", "Node"] | None:
        """The (key, value) pair written directly in this mapping for a plain string key."""
        if self.kind != "map":
            return None
        for k, v in self.items:
            if k.kind == "scalar" and k.start.tag is None and k.start.value == key:
                return k, v
        return None


@dataclass
class Tree:
    root: Node | None
    aliases: set[str]  # anchor names some alias refers to


def _build(events: list, i: int) -> tuple[Node, int]:
    ev = events[i]
    if isinstance(ev, ScalarEvent):
        return Node("scalar", ev, ev), i + 1
    if isinstance(ev, AliasEvent):
        return Node("alias", ev, ev), i + 1
    if isinstance(ev, MappingStartEvent):
        items = []
        i += 1
        while not isinstance(events[i], MappingEndEvent):
            k, i = _build(events, i)
            v, i = _build(events, i)
            items.append((k, v))
        return Node("map", ev, events[i], items), i + 1
    if isinstance(ev, SequenceStartEvent):
        items = []
        i += 1
        while not isinstance(events[i], SequenceEndEvent):
            item, i = _build(events, i)
            items.append(item)
        return Node("seq", ev, events[i], items), i + 1
    raise EditVerificationError(f"internal error: unexpected YAML event {type(ev).__name__}")


def event_tree(text: str, path: str) -> Tree:
    """The document as a tree of parser events (character offsets included) and the anchors aliases use."""
    try:
        events = list(new_yaml().parse(text))
    except YAMLError as exc:
        raise _yaml_error(path, exc) from None
    aliases = {ev.anchor for ev in events if isinstance(ev, AliasEvent)}
    # StreamStart, DocumentStart, <root>, DocumentEnd, StreamEnd
    if len(events) < 3 or isinstance(events[2], DocumentEndEvent):
        return Tree(None, aliases)
    root, _ = _build(events, 2)
    return Tree(root, aliases)


def eol_of(text: str) -> str:
    """The file's line break: its first one, else \\n."""
    m = _BREAK.search(text)
    return m.group(0) if m else "\n"


def ends_with_break(text: str) -> bool:
    return text.endswith(("\n", "\r"))


def line_end(text: str, pos: int) -> int:
    """Index just after the line break of the line containing ``pos`` (len(text) if none)."""
    m = _BREAK.search(text, pos)
    return m.end() if m else len(text)


def line_start(text: str, pos: int) -> int:
    """Index of the first character of the line containing ``pos``."""
    return max(text.rfind("\n", 0, pos), text.rfind("\r", 0, pos)) + 1


def prev_line(text: str, ls: int) -> tuple[int, str] | None:
    """(start, content without line break) of the line before the line starting at ``ls``."""
    if ls <= 0:
        return None
    end = ls - 2 if text[ls - 2 : ls] == "\r\n" else ls - 1
    start = line_start(text, end)
    return start, text[start:end]


# --------------------------------------------------------------------------
# Scalars: when a value can stay plain, and how to quote it


def check_value(value: Any, what: str) -> None:
    """A new value must be a printable one-line string without surrounding whitespace (ImageReferenceError)."""
    if not isinstance(value, str):
        raise ImageReferenceError(f"invalid {what} {value!r}: not a string")
    if value == "" or value.strip() != value:
        raise ImageReferenceError(f"invalid {what} {value!r}: empty or surrounded by whitespace")
    for ch in value:
        if not ch.isprintable():
            raise ImageReferenceError(f"invalid {what} {ascii(value)}: contains non-printable character {ascii(ch)}")


def _loads_as_str(doc: str, key: str, value: str) -> bool:
    try:
        data = new_yaml().load(doc)
    except (YAMLError, ValueError, IndexError):  # ruamel's resolvers crash on values like '._' and '-_'
        return False
    if not isinstance(data, Mapping) or key not in data:
        return False
    got = data[key]
    return type(got) is str and got == value


def plain_ok(value: str, flow: bool) -> bool:
    """Whether ``value`` reads back as the same string when written unquoted.

    Checked by parsing, under YAML 1.2 and 1.1 (so ``on``, ``1:20`` and the
    like, which other compose implementations read as non-strings, get quoted).
    """
    if value == "" or value.strip() != value:
        return False
    docs = [f"{{k: {value}, z: 0}}\n", f"{{k: {value}}}\n"] if flow else [f"k: {value}\n", f"k: {value} # c\n"]
    for doc in docs:
        for prefix in ("", "%YAML 1.1\n---\n"):
            if not _loads_as_str(prefix + doc, "k", value):
                return False
    return True


def _key_plain_ok(key: str, flow: bool) -> bool:
    if key == "" or key.strip() != key:
        return False
    docs = [f"{{{key}: x, z: 0}}\n"] if flow else [f"{key}: x\n"]
    for doc in docs:
        for prefix in ("", "%YAML 1.1\n---\n"):
            try:
                data = new_yaml().load(prefix + doc)
            except (YAMLError, ValueError):
                return False
            if not isinstance(data, Mapping) or [type(k) for k in data][:1] != [str] or list(data)[0] != key:
                return False
    return True


def double_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def single_quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def scalar_text(value: str, flow: bool) -> str:
    """``value`` as YAML text: plain when that reads back the same, else double-quoted."""
    return value if plain_ok(value, flow) else double_quoted(value)


def key_text(key: str, flow: bool) -> str:
    """A mapping key as YAML text: plain when that reads back the same, else double-quoted."""
    return key if _key_plain_ok(key, flow) else double_quoted(key)


# --------------------------------------------------------------------------
# Data comparison (the safety net)


@dataclass(frozen=True)
class _Tagged:
    tag: str
    value: Any


def untag(x: Any) -> Any:
    """The value under a YAML tag (data from ``plain``)."""
    return x.value if isinstance(x, _Tagged) else x


def _tag_of(x: Any) -> str | None:
    tag = getattr(x, "tag", None)
    value = getattr(tag, "value", None)
    return value if isinstance(value, str) else None


def plain(x: Any) -> Any:
    """ruamel round-trip data -> plain Python (dict/list/str/int/float/bool/None/...)."""
    if isinstance(x, TaggedScalar):
        return _Tagged(_tag_of(x) or "", x.value)
    if isinstance(x, Mapping):
        out: Any = {_plain_key(k): plain(v) for k, v in x.items()}
    elif isinstance(x, (list, tuple)):
        out = [plain(v) for v in x]
    elif isinstance(x, (bool, ScalarBoolean)):
        return bool(x)
    elif isinstance(x, int):
        return int(x)
    elif isinstance(x, float):
        return float(x)
    elif isinstance(x, str):
        return str(x)
    else:
        return x
    tag = _tag_of(x)
    return _Tagged(tag, out) if tag else out


def _plain_key(k: Any) -> Any:
    p = plain(k)
    try:
        hash(p)
    except TypeError:
        return ("<complex key>", repr(p))
    return p


def same(a: Any, b: Any) -> bool:
    """Equal as YAML data: same types, key order, tags; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, _Tagged):
        return a.tag == b.tag and same(a.value, b.value)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def verify(old_text: str, new_text: str, path: str, change: Callable[[Any], Any], what: str) -> None:
    """Raise EditVerificationError unless data(new_text) == change(data(old_text))."""
    try:
        expected = change(plain(load(old_text, path)))
    except (KeyError, TypeError, AttributeError) as exc:
        raise EditVerificationError(f"{path}: internal error: {what}: cannot model the change ({exc!r})") from None
    try:
        got = plain(new_yaml().load(new_text))
    except YAMLError as exc:
        raise EditVerificationError(
            f"{path}: internal error: {what} produced invalid YAML "
            f"({' '.join(str(exc).split())}); the file was not changed"
        ) from None
    if not same(expected, got):
        raise EditVerificationError(
            f"{path}: internal error: {what} would change other data in the file; the file was not changed"
        )
