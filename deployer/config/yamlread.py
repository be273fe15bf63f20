"""Reading YAML text: within the limits, and every failure a ConfigError with its line.

``yaml_limits(text, path)`` checks a text against the limits of docs/compose.md
("Limits") before any parser builds anything: the size, then, with one scan of
the event stream (libyaml through ruamel's C parser: linear, no recursion,
nothing built), the nesting depth, the length of every scalar, how many nodes
aliases stand for, and aliases inside the node they name. Most files skip the
scan: a bound counted at C speed shows they cannot break a limit.
``parse_yaml`` is the round-trip read (every key knows its line), ``load_fast``
the plain-data read (``fastyaml``, else ruamel's safe loader). Both build with
constructors that refuse an int too long to write in decimal, and the round
trip names the line of any value its constructor cannot convert.
``loader`` reads the repository's files through these.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import RoundTripConstructor, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent
from ruamel.yaml.nodes import ScalarNode

from deployer.errors import ConfigError, YamlValueError

try:
    from deployer.config import fastyaml
except ImportError:  # no PyYAML libyaml binding: ruamel's loader reads every file
    fastyaml = None
try:
    from ruamel.yaml.cyaml import CParser as _CEventParser  # libyaml via ruamel.yaml.clib
except ImportError:
    _CEventParser = None

# ruamel warns on stderr, over several lines, about legal YAML (a reused anchor name)
# and about what it may refuse one day; the loader reports every problem itself.
warnings.filterwarnings("ignore", category=YAMLWarning)
warnings.filterwarnings("ignore", category=YAMLFutureWarning)

# -- Limits (docs/compose.md, "Limits"): checked before any parser builds anything

MAX_FILE_BYTES = 1024 * 1024  # a YAML file of the repository, in bytes
MAX_SCALAR_CHARS = 256 * 1024  # one scalar (a string, a number), in characters
MAX_DEPTH = 100  # collections nested in collections
MAX_ALIAS_NODES = 100_000  # nodes all aliases stand for, counted as if each alias were written out


def limit_error(path: str, what: str, line: int | None = 1) -> ConfigError:
    return ConfigError(path, f"{what} (see 'Limits' in docs/compose.md)", line=line)


def _could_exceed(text: str) -> bool:
    """False when no event scan is needed: the text cannot break a depth, scalar or alias limit.

    In block style, every two levels of nesting take at least one more
    character of a line's lead (its indentation and the indicators '- ', '? ',
    ': ' before the content; a sequence may sit at its key's indentation, so
    one character for two levels); in flow style every level takes an opening
    bracket. So a document is at most 2 * (longest lead) + 2 + (number of '['
    and '{') deep. A scalar is never longer than the text, and expansion needs
    an alias ('*'). The bound is counted at C speed; most files are far below
    it (tests/unit/test_hostile_yaml.py checks it against the real depth).
    """
    if "*" in text or len(text) > MAX_SCALAR_CHARS:
        return True
    first = len(text) - len(text.lstrip(" \t?:-"))
    lead = max(first, max(map(len, _LEAD_RE.findall(text)), default=0))  # (one more than a lead: the break)
    return 2 * lead + 2 + text.count("[") + text.count("{") > MAX_DEPTH


# A line's leading indentation and indicators, after any line break ruamel knows (not only '\n').
_LEAD_RE = re.compile("[\r\n\x85\u2028\u2029][ \t?:-]+")


def _scan(events: Any, path: str) -> ConfigError | None:
    """Depth, scalar size and alias expansion of an event stream, without building anything."""
    sizes: dict[Any, int | None] = {}  # anchor -> nodes it stands for (None while its collection is open)
    stack: list[list] = []  # open collections: [nodes so far, anchor]
    aliased = 0
    for event in events:
        cls = event.__class__
        if cls is ScalarEvent:
            if len(event.value) > MAX_SCALAR_CHARS:
                return limit_error(path, f"a scalar of {len(event.value):,} characters: the limit is "
                                          f"{MAX_SCALAR_CHARS:,}", event.start_mark.line + 1)
            if event.anchor is not None:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][0] += 1
        elif cls is AliasEvent:
            line = event.start_mark.line + 1
            size = sizes.get(event.anchor, 0)
            if size is None:
                return ConfigError(path, f"alias *{event.anchor} is inside the node it names: "
                                         "a recursive structure is not data the deployer can use", line=line)
            aliased += size
            if aliased > MAX_ALIAS_NODES:
                return limit_error(path, f"aliases stand for more than {MAX_ALIAS_NODES:,} nodes", line)
            if stack:
                stack[-1][0] += size
        elif isinstance(event, CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                return limit_error(path, f"nested more than {MAX_DEPTH} levels deep", event.start_mark.line + 1)
            if event.anchor is not None:
                sizes[event.anchor] = None
            stack.append([1, event.anchor])
        elif isinstance(event, CollectionEndEvent) and stack:
            count, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
            if stack:
                stack[-1][0] += count
    return None


def yaml_limits(text: str, path: str) -> ConfigError | None:
    """The first limit ``text`` breaks (docs/compose.md, "Limits"), or None; cheap, and before any parser builds."""
    size = len(text) if len(text) * 3 <= MAX_FILE_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        return limit_error(path, f"{size:,} bytes: a YAML file may have at most {MAX_FILE_BYTES:,}")
    if not _could_exceed(text):
        return None
    # libyaml's event parser first (fast, linear). Text it refuses is scanned by
    # the pure-Python parser the round trip uses (it accepts a little more, like
    # surrogate escapes), so that what the round trip reads is bounded too. That
    # parser is about 30 times slower and quadratic in flow nesting: beyond
    # MAX_PURE_CHARS or MAX_PURE_FLOW flow openings, libyaml's refusal is the answer.
    if _CEventParser is not None:
        try:
            return _scan(_events(_CEventParser(text)), path)
        except Exception as exc:
            if len(text) > MAX_PURE_CHARS or text.count("[") + text.count("{") > MAX_PURE_FLOW:
                if isinstance(exc, MarkedYAMLError):
                    return _malformed(path, exc)
                return ConfigError(path, f"malformed YAML: {' '.join(str(exc).split())}", line=1)
    try:
        return _scan(YAML().parse(text), path)
    except Exception:  # malformed: parse_yaml says where
        return None


MAX_PURE_CHARS = 128 * 1024  # the longest text libyaml refuses that the pure-Python parser is asked about
MAX_PURE_FLOW = 10_000  # ... and the most flow openings ('[', '{') in it


def _malformed(path: str, exc: MarkedYAMLError) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    return ConfigError(path, f"malformed YAML: {exc.problem or exc.context or 'invalid YAML'}", line=line)


def _events(parser: Any) -> Any:
    try:
        while parser.check_event():
            yield parser.get_event()
    finally:
        parser.dispose()


class _RefuseLongInts:
    """An int too long to write in decimal is refused, with its line.

    (ruamel builds ``0x`` and 5,000 digits as an int, which Python then cannot
    turn into a string: every message, label and environment value would raise.)
    """

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        data = super().construct_object(node, deep=deep)
        if data.__class__ is not bool and isinstance(data, int) and _too_long(data):
            raise YamlValueError(_too_long_message(), node.start_mark.line + 1)
        return data


def _too_long(number: int) -> bool:
    digits = sys.get_int_max_str_digits()
    return digits > 0 and number.bit_length() > 3 * digits and abs(number) >= 10**digits


def _too_long_message() -> str:
    return f"a number of more than {sys.get_int_max_str_digits():,} digits (see 'Limits' in docs/compose.md)"


class _Constructor(_RefuseLongInts, RoundTripConstructor):
    """The round-trip constructor: long ints refused, and what a value's conversion raises names its line."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (YamlValueError, MarkedYAMLError, RecursionError, MemoryError):
            raise
        except Exception as exc:  # the innermost node: its line
            raise _value_problem(node, exc) from None


class _SafeConstructor(_RefuseLongInts, SafeConstructor):
    """The safe constructor of ``load_fast``'s fallback: ruamel's, long ints refused."""


def _value_problem(node: Any, exc: Exception) -> YamlValueError:
    """What the constructor raised for ``node``, as a message: the value and its tag when it is a scalar."""
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return YamlValueError(_too_long_message(), node.start_mark.line + 1)
    problem = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(node, ScalarNode) and isinstance(node.value, str):
        value = node.value if len(node.value) <= 40 else node.value[:40] + "..."
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        return YamlValueError(f"cannot read {value!r} as {tag}: {problem}", node.start_mark.line + 1)
    return YamlValueError(f"cannot read this value: {problem}", node.start_mark.line + 1)


def parse_yaml(text: str, path: str, limits: bool = True) -> Any:
    """Round-trip parse (keys keep their line numbers); malformed YAML, or a limit broken, is a ConfigError.

    ``limits=False`` when the caller has checked ``yaml_limits`` on this text already.
    """
    err = yaml_limits(text, path) if limits else None
    if err is not None:
        raise err
    yaml = YAML()
    yaml.Constructor = _Constructor
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        raise _malformed(path, exc) from None
    except YamlValueError as exc:
        raise ConfigError(path, exc.problem, line=exc.line) from None
    except YAMLError as exc:  # the reader's: a character YAML does not allow, at a position
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
        char = getattr(exc, "character", None)
        char = f"U+{char:04X}" if isinstance(char, int) else f"{char!r}"
        problem = getattr(exc, "reason", None) and f"{exc.reason}: {char}"
        raise ConfigError(path, f"malformed YAML: {problem or ' '.join(str(exc).split())}", line=line) from None
    except (RecursionError, MemoryError):
        raise
    except Exception as exc:  # ruamel building a collection (the values in it were wrapped above)
        raise ConfigError(path, f"cannot read this YAML: {' '.join(str(exc).split()) or type(exc).__name__}",
                          line=1) from None


def load_fast(text: str) -> Any:
    """Plain data, exactly as ruamel's YAML 1.2 safe loader returns it (or raises), but without line numbers.

    ``fastyaml`` (PyYAML's libyaml binding, ruamel's resolver and scalar
    constructors) does most files several times faster than ruamel's own C
    loader; whatever it does not promise to read identically (it raises then)
    is read by ruamel's safe loader, so the result never depends on which one
    read it. Callers validate this first and re-read with ``parse_yaml``
    (round-trip, with lines) only when something is wrong and needs a line in
    its message. One difference from ruamel: an int too long for Python to
    write in decimal raises YamlValueError.
    """
    if fastyaml is not None:
        try:
            return fastyaml.load(text)
        except Exception:
            pass
    yaml = YAML(typ="safe", pure=False)
    yaml.Constructor = _SafeConstructor
    return yaml.load(text)


# --------------------------------------------------------------------------
# Lines of round-trip data (None for plain data, which has none)


def key_line(mapping: Any, key: Any) -> int | None:
    """The 1-based line of ``key`` in a round-trip mapping."""
    try:
        return mapping.lc.key(key)[0] + 1
    except Exception:  # noqa: BLE001 - plain data, or no such key
        return None


def value_line(mapping: Any, key: Any) -> int | None:
    """The 1-based line of the value of ``key`` in a round-trip mapping."""
    try:
        return mapping.lc.value(key)[0] + 1
    except Exception:  # noqa: BLE001
        return None


def item_line(seq: Any, i: int) -> int | None:
    """The 1-based line of item ``i`` of a round-trip sequence."""
    try:
        return seq.lc.item(i)[0] + 1
    except Exception:  # noqa: BLE001
        return None
