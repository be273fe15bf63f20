"""The one value grammar: durations, byte sizes and port numbers, wherever a user writes one.

CLI options, compose keys, ``deployer.*`` labels and the templates config file
all parse their durations and sizes here, so the same string means the same
thing everywhere.

Durations are Go's (and Compose's) syntax: one or more ``<number><unit>``
parts with the units ``ns``, ``us`` (``µs``), ``ms``, ``s``, ``m``, ``h``, such
as ``1m30s``, ``250ms``, ``1.5h``; ``0`` alone is zero. Where bare seconds are
documented (CLI options, labels, the templates config) a plain number, written
as a YAML number or as a string like ``"1.5"``, is seconds too; compose keys
require a unit, as the Compose spec does. Negative durations are refused
everywhere. Arithmetic is exact (nanoseconds as integers), so ``0.1s`` is
exactly 100,000,000 ns.

Byte sizes are an integer of bytes, or a number with a binary unit: ``b``,
``k``/``kb``/``kib``, ``m``, ``g``, ``t`` (case-insensitive): ``512m``,
``1.5g``, ``64MiB``. That is Docker's reading (``docker run -m 512m``).

Port numbers are 1-65535, written as an integer or a string of digits; a port
range is ``lo-hi`` (or one port) with ``lo <= hi``. The messages name the port
by the ``what`` the caller passes ('host port', 'published', ...).

A batch (``deploy --batch``) is a count of nodes, ``3``, or a share of them,
``25%`` (0-100 exclusive of 0; rounded up, at least one node): :func:`parse_batch`.

Errors are :class:`BadValue` (a ValueError) whose message says what is wrong
and how to write it; callers put the field name in front.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from deployer.errors import BadValue

NS_PER_SECOND = 10**9

_DURATION_UNITS = {
    "ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6,
    "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
#: A duration string longer than this is refused before it is scanned.
MAX_DURATION_TEXT = 100

_BYTES_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MAX_SIZE_TEXT = 100


def kind(value: Any) -> str:
    """What a value is, in words, for error messages ('a string', 'an integer', ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool) or type(value).__name__ == "ScalarBoolean":
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and kind(value) != "a boolean"


def parse_duration_ns(value: Any, *, bare_seconds: bool = False) -> int:
    """A duration -> whole nanoseconds. ``bare_seconds`` lets a plain number mean seconds."""
    if bare_seconds and _is_number(value):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadValue(f"invalid duration {value!r}: write seconds or a duration like 250ms, 2s, 1m30s")
        if value < 0:
            raise BadValue(f"must not be negative, got {value!r}")
        return int(Fraction(value) * NS_PER_SECOND)
    if not isinstance(value, str):
        if bare_seconds:
            raise BadValue(f"must be seconds or a duration like 250ms, 2s, 1m30s, not {kind(value)}")
        raise BadValue(f"must be a duration with a unit, like '30s' or '1m30s', not {kind(value)}")
    text = value.strip()
    if text == "0":
        return 0
    if not text:
        raise BadValue("invalid duration '': write a number with a unit, like '30s' or '1m30s'")
    if len(text) > MAX_DURATION_TEXT:
        raise BadValue(f"invalid duration: {len(text)} characters is too long for a duration")
    if text.startswith("-"):
        raise BadValue(f"must not be negative, got {value!r}")
    if bare_seconds and _BARE_NUMBER.fullmatch(text):
        return int(Fraction(text) * NS_PER_SECOND)
    total: int | Fraction = 0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            if bare_seconds:
                raise BadValue(f"invalid duration {value!r}: write seconds or a duration like 250ms, 2s, 1m30s")
            raise BadValue(f"invalid duration {value!r}: write numbers with units (ns, us, ms, s, m, h), like '1m30s'")
        number, unit = m.group(1), _DURATION_UNITS[m.group(2)]
        # exact arithmetic; whole numbers (the usual case) skip the Fraction
        total += int(number) * unit if number.isdigit() else Fraction(number) * unit
        pos = m.end()
    return int(total)


def parse_duration(value: Any, *, bare_seconds: bool = True) -> float:
    """A duration -> seconds (float). Bare numbers are seconds unless ``bare_seconds=False``."""
    return parse_duration_ns(value, bare_seconds=bare_seconds) / NS_PER_SECOND


_BATCH_RE = re.compile(r"(\d+)(%?)")


def parse_batch(value: Any) -> tuple[int, bool]:
    """A batch size -> (number, is_percent): ``3`` -> (3, False), ``25%`` -> (25, True).

    A count is 1 or more; a share is 1% to 100%. Anything else is a BadValue."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    m = _BATCH_RE.fullmatch(text or "") if text is not None and len(text) <= 12 else None
    if m is None:
        raise BadValue(f"{value!r} is not a batch size: write a number of nodes (3) or a share of them (25%)")
    number, percent = int(m.group(1)), bool(m.group(2))
    if number < 1 or (percent and number > 100):
        raise BadValue(f"{value!r}: a batch is 1 node or more, or 1% to 100% of them")
    return number, percent


def format_duration(seconds: float) -> str:
    """Seconds as the shortest exact Go duration string: 90 -> '1m30s', 0.25 -> '250ms'."""
    ns = int(round(Fraction(seconds) * NS_PER_SECOND))
    if ns == 0:
        return "0s"
    if ns % NS_PER_SECOND:
        for unit, size in (("ms", 10**6), ("us", 10**3), ("ns", 1)):
            if ns % size == 0:
                return f"{ns // size}{unit}"
    out, rest = "", ns // NS_PER_SECOND
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out


def parse_bytes(value: Any) -> int:
    """An int of bytes, or '512m', '1g', '100k', '1.5g', '64mb', '1GiB' (binary units) -> bytes."""
    if isinstance(value, int) and kind(value) == "an integer":
        if value < 0:
            raise BadValue(f"must not be negative, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise BadValue(f"must be a size in bytes or a string like '512m' or '1g', not {kind(value)}")
    if len(value) > MAX_SIZE_TEXT:
        raise BadValue(f"invalid size: {len(value)} characters is too long for a size")
    m = _BYTES_RE.fullmatch(value.strip())
    if not m:
        raise BadValue(f"invalid size {value!r}: write bytes or a number with a unit b, k, m, g, like '512m'")
    return int(Fraction(m.group(1)) * _BYTE_UNITS[(m.group(2) or "").lower()])


MAX_PORT = 65535
_PORT_RANGE_RE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_port_number(value: Any, what: str = "port") -> int:
    """A port number 1-65535: an int, or a string of digits like '8080'."""
    if isinstance(value, int) and kind(value) == "an integer":
        port = int(value)
    elif isinstance(value, str) and value.strip().isdecimal():
        port = _port_digits(value.strip(), what)
    else:
        raise BadValue(f"{what} must be a port number, not {kind(value)}" + (f" {value!r}" if isinstance(value, str) else ""))
    if not 1 <= port <= MAX_PORT:
        raise BadValue(f"{what} {port} is out of range 1-{MAX_PORT}")
    return port


def _port_digits(digits: str, what: str) -> int:
    """int(digits), refusing a number too long to be a port before Python converts it (over 4,300 digits it cannot)."""
    if len(digits.lstrip("0")) > len(str(MAX_PORT)):
        raise BadValue(f"{what} {digits[:12]}... is out of range 1-{MAX_PORT}")
    return int(digits)


def parse_port_range(text: str, what: str = "port") -> tuple[int, int]:
    """'8000-8010' -> (8000, 8010); '80' -> (80, 80). Both ends 1-65535, the first not above the last."""
    m = _PORT_RANGE_RE.fullmatch(text.strip())
    if not m:
        raise BadValue(f"invalid {what} {text!r}")
    lo, hi = _port_digits(m.group(1), what), _port_digits(m.group(2) or m.group(1), what)
    for p in (lo, hi):
        if not 1 <= p <= MAX_PORT:
            raise BadValue(f"{what} {p} is out of range 1-{MAX_PORT}")
    if hi < lo:
        raise BadValue(f"invalid {what} range {text!r}: the first port must not be greater than the last")
    return lo, hi
