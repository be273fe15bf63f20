"""deployer.values: the one grammar of durations, byte sizes and port numbers."""

from __future__ import annotations

import time
from fractions import Fraction

import docker.utils
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML

from deployer.values import (
    MAX_DURATION_TEXT,
    MAX_SIZE_TEXT,
    NS_PER_SECOND,
    BadValue,
    format_duration,
    kind,
    parse_bytes,
    parse_duration,
    parse_duration_ns,
    parse_port_number,
    parse_port_range,
)

S = NS_PER_SECOND
UNITS = "write numbers with units (ns, us, ms, s, m, h), like '1m30s'"
BARE = "write seconds or a duration like 250ms, 2s, 1m30s"
SIZE = "write bytes or a number with a unit b, k, m, g, like '512m'"


# --------------------------------------------------------------------------
# Durations: Go's syntax


@pytest.mark.parametrize(
    "text, ns",
    [
        ("1m30s", 90 * S), ("10s", 10 * S), ("500ms", 5 * 10**8), ("250ms", 250 * 10**6), ("1h", 3600 * S),
        ("1.5s", 1_500_000_000), ("1.5h", 5400 * S), ("0", 0), ("0s", 0), ("2h45m", 9900 * S),
        ("250us", 250_000), ("250µs", 250_000), ("250μs", 250_000), ("7ns", 7), (".5s", S // 2),
        ("1h2m3s4ms5us6ns", 3723 * S + 4_005_006), ("1s1s", 2 * S), ("90m", 5400 * S), (" 30s ", 30 * S),
        ("1.000000001s", S + 1), ("0.1s", 100_000_000), ("0.3s", 300_000_000), ("1.1h", 3960 * S),
    ],
)  # fmt: skip
def test_durations(text, ns):
    assert parse_duration_ns(text) == ns
    assert parse_duration_ns(text, bare_seconds=True) == ns
    assert parse_duration(text) == ns / S


def test_the_micro_sign_and_the_greek_mu_are_both_microseconds():
    assert "µ" != "μ"
    assert parse_duration_ns("3µs") == parse_duration_ns("3μs") == parse_duration_ns("3us") == 3000


def test_arithmetic_is_exact():
    assert parse_duration_ns("0.1s") == 100_000_000  # not 100_000_000.00000001 or 99_999_999
    assert parse_duration_ns("0.1s0.2s") == 300_000_000
    assert parse_duration_ns("0.000000001s") == 1
    assert parse_duration_ns("2562047h") == 2562047 * 3600 * S  # beyond float precision of ns
    assert parse_duration_ns(0.1, bare_seconds=True) == 100_000_000
    assert parse_duration_ns("0.1", bare_seconds=True) == 100_000_000
    assert parse_duration("0.1s") == 0.1


@pytest.mark.parametrize(
    "value, ns",
    [(2, 2 * S), (0, 0), (1.5, 1_500_000_000), ("1.5", 1_500_000_000), ("2", 2 * S), (".5", S // 2), ("1.", S),
     ("0", 0), (" 3 ", 3 * S), (10**6, 10**6 * S)],
)  # fmt: skip
def test_bare_seconds_where_documented(value, ns):
    assert parse_duration_ns(value, bare_seconds=True) == ns
    assert parse_duration(value) == ns / S  # parse_duration: bare seconds by default


def test_bare_seconds_from_yaml_numbers():
    doc = YAML().load("a: 2\nb: 1.5\nc: '1.5'\n")
    assert [parse_duration(doc[k]) for k in "abc"] == [2.0, 1.5, 1.5]


@pytest.mark.parametrize("value", [2, 1.5, "1.5", "10", ".5"])
def test_compose_durations_need_a_unit(value):
    with pytest.raises(BadValue) as info:
        parse_duration_ns(value)
    if isinstance(value, str):
        assert str(info.value) == f"invalid duration {value!r}: {UNITS}"
    else:
        what = "an integer" if isinstance(value, int) else "a number"
        assert str(info.value) == f"must be a duration with a unit, like '30s' or '1m30s', not {what}"
    with pytest.raises(BadValue):
        parse_duration(value, bare_seconds=False)


@pytest.mark.parametrize(
    "value, bare, message",
    [
        (-1, True, "must not be negative, got -1"),
        (-0.5, True, "must not be negative, got -0.5"),
        ("-1", True, "must not be negative, got '-1'"),
        ("-1s", True, "must not be negative, got '-1s'"),
        ("-1s", False, "must not be negative, got '-1s'"),
        (" -1m", False, "must not be negative, got ' -1m'"),
    ],
)
def test_negative_durations_are_refused_everywhere(value, bare, message):
    with pytest.raises(BadValue) as info:
        parse_duration_ns(value, bare_seconds=bare)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "value, unit_message, bare_message",
    [
        ("soon", f"invalid duration 'soon': {UNITS}", f"invalid duration 'soon': {BARE}"),
        ("1m30", f"invalid duration '1m30': {UNITS}", f"invalid duration '1m30': {BARE}"),
        ("5 s", f"invalid duration '5 s': {UNITS}", f"invalid duration '5 s': {BARE}"),
        ("1S", f"invalid duration '1S': {UNITS}", f"invalid duration '1S': {BARE}"),
        ("1.s", f"invalid duration '1.s': {UNITS}", f"invalid duration '1.s': {BARE}"),
        ("+1s", f"invalid duration '+1s': {UNITS}", f"invalid duration '+1s': {BARE}"),
        ("1m-30s", f"invalid duration '1m-30s': {UNITS}", f"invalid duration '1m-30s': {BARE}"),
        ("1e3", f"invalid duration '1e3': {UNITS}", f"invalid duration '1e3': {BARE}"),
        ("1_000s", f"invalid duration '1_000s': {UNITS}", f"invalid duration '1_000s': {BARE}"),
        ("1d", f"invalid duration '1d': {UNITS}", f"invalid duration '1d': {BARE}"),
        ("s", f"invalid duration 's': {UNITS}", f"invalid duration 's': {BARE}"),
        ("µs", f"invalid duration 'µs': {UNITS}", f"invalid duration 'µs': {BARE}"),
        ("", "invalid duration '': write a number with a unit, like '30s' or '1m30s'", None),
        ("   ", "invalid duration '': write a number with a unit, like '30s' or '1m30s'", None),
        (None, "must be a duration with a unit, like '30s' or '1m30s', not null",
         "must be seconds or a duration like 250ms, 2s, 1m30s, not null"),
        (True, "must be a duration with a unit, like '30s' or '1m30s', not a boolean",
         "must be seconds or a duration like 250ms, 2s, 1m30s, not a boolean"),
        ([1], "must be a duration with a unit, like '30s' or '1m30s', not a list",
         "must be seconds or a duration like 250ms, 2s, 1m30s, not a list"),
        (float("nan"), "must be a duration with a unit, like '30s' or '1m30s', not a number", f"invalid duration nan: {BARE}"),
        (float("inf"), "must be a duration with a unit, like '30s' or '1m30s', not a number", f"invalid duration inf: {BARE}"),
    ],
)  # fmt: skip
def test_junk_is_refused_with_the_documented_message(value, unit_message, bare_message):
    with pytest.raises(BadValue) as info:
        parse_duration_ns(value)
    assert str(info.value) == unit_message
    with pytest.raises(BadValue) as info:
        parse_duration_ns(value, bare_seconds=True)
    assert str(info.value) == (bare_message or unit_message)


def test_yaml_booleans_are_not_seconds():
    doc = YAML().load("a: &flag true\nb: false\n")  # ruamel's ScalarBoolean (anchored) and bool
    assert type(doc["a"]).__name__ == "ScalarBoolean"
    for key in "ab":
        with pytest.raises(BadValue, match="not a boolean"):
            parse_duration(doc[key])


def test_bad_value_is_a_value_error():
    assert issubclass(BadValue, ValueError)


def test_very_long_strings_are_refused_fast():
    longest = "1s" * (MAX_DURATION_TEXT // 2)
    assert parse_duration_ns(longest) == MAX_DURATION_TEXT // 2 * S
    with pytest.raises(BadValue) as info:
        parse_duration_ns(longest + "1s")
    assert str(info.value) == f"invalid duration: {MAX_DURATION_TEXT + 2} characters is too long for a duration"
    for text in ("1s" * 10**6, "9" * 10**6 + "s", "1" * 10**6):
        started = time.process_time()
        with pytest.raises(BadValue, match="too long for a duration"):
            parse_duration_ns(text, bare_seconds=True)
        assert time.process_time() - started < 0.05


# --------------------------------------------------------------------------
# format_duration


@pytest.mark.parametrize(
    "seconds, text",
    [(90, "1m30s"), (0.25, "250ms"), (0, "0s"), (1, "1s"), (60, "1m"), (3600, "1h"), (3661, "1h1m1s"),
     (86400, "24h"), (1.5, "1500ms"), (0.000001, "1us"), (0.000000001, "1ns"), (0.0000015, "1500ns"),
     (7200.5, "7200500ms"), (Fraction(1, 10), "100ms")],
)  # fmt: skip
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == float(seconds)


@given(st.integers(min_value=0, max_value=10**15))
def test_format_duration_round_trips_every_nanosecond_count(ns):
    text = format_duration(ns / S)
    assert parse_duration_ns(text) == ns
    assert parse_duration_ns(text, bare_seconds=True) == ns


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_of_whole_seconds_uses_h_m_s(seconds):
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert "ms" not in text and "us" not in text and "ns" not in text


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=999), st.sampled_from(["h", "m", "s", "ms", "us", "ns"])),
        min_size=1, max_size=6,
    )
)  # fmt: skip
def test_parsing_a_formatted_duration_gives_the_same_time(parts):
    text = "".join(f"{n}{unit}" for n, unit in parts)
    ns = parse_duration_ns(text)
    assert ns == sum(n * {"h": 3600 * S, "m": 60 * S, "s": S, "ms": 10**6, "us": 10**3, "ns": 1}[u] for n, u in parts)
    if ns < 2**52:
        assert parse_duration_ns(format_duration(ns / S)) == ns


# --------------------------------------------------------------------------
# Byte sizes


@pytest.mark.parametrize(
    "value, size",
    [
        (1024, 1024), (0, 0), ("0", 0), ("100", 100), ("100k", 102400), ("512m", 512 * 2**20), ("1g", 2**30),
        ("1.5g", 3 * 2**29), ("64mb", 64 * 2**20), ("2GiB", 2 * 2**30), ("1t", 2**40), ("1TB", 2**40),
        ("10b", 10), ("10B", 10), ("1K", 1024), ("1kb", 1024), ("1kib", 1024), ("1KiB", 1024), ("1 k", 1024),
        (" 512m ", 512 * 2**20), ("0.5k", 512), ("1.25m", 5 * 2**18),
    ],
)  # fmt: skip
def test_sizes(value, size):
    assert parse_bytes(value) == size


def test_sizes_from_yaml():
    doc = YAML().load("a: 1024\nb: 512m\nc: '1g'\n")
    assert [parse_bytes(doc[k]) for k in "abc"] == [1024, 512 * 2**20, 2**30]


@pytest.mark.parametrize(
    "value, message",
    [
        ("1z", f"invalid size '1z': {SIZE}"),
        ("-1m", f"invalid size '-1m': {SIZE}"),
        ("", f"invalid size '': {SIZE}"),
        ("m", f"invalid size 'm': {SIZE}"),
        ("1ib", f"invalid size '1ib': {SIZE}"),
        ("1e3", f"invalid size '1e3': {SIZE}"),
        ("1p", f"invalid size '1p': {SIZE}"),
        ("1mm", f"invalid size '1mm': {SIZE}"),
        (-1, "must not be negative, got -1"),
        (None, "must be a size in bytes or a string like '512m' or '1g', not null"),
        (True, "must be a size in bytes or a string like '512m' or '1g', not a boolean"),
        (1.5, "must be a size in bytes or a string like '512m' or '1g', not a number"),
        ([1], "must be a size in bytes or a string like '512m' or '1g', not a list"),
        ("1" * (MAX_SIZE_TEXT + 1), f"invalid size: {MAX_SIZE_TEXT + 1} characters is too long for a size"),
    ],
)
def test_bad_sizes(value, message):
    with pytest.raises(BadValue) as info:
        parse_bytes(value)
    assert str(info.value) == message


def test_very_long_sizes_are_refused_fast():
    started = time.process_time()
    with pytest.raises(BadValue, match="too long for a size"):
        parse_bytes("9" * 10**6 + "m")
    assert time.process_time() - started < 0.05


@pytest.mark.parametrize("value", [0, 1, 1024, 10**12, "100", "10b", "100k", "1K", "512m", "64mb", "1g", "2G", "1.5g"])
def test_sizes_agree_with_docker_py_where_both_accept(value):
    # engine.plan compared mem_limit with docker.utils.parse_bytes before it used values.parse_bytes
    assert parse_bytes(value) == docker.utils.parse_bytes(value)


# --------------------------------------------------------------------------
# Port numbers


@pytest.mark.parametrize("value, port", [(80, 80), (1, 1), (65535, 65535), ("8080", 8080), (" 443 ", 443)])
def test_port_numbers(value, port):
    assert parse_port_number(value) == port


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "host port 0 is out of range 1-65535"),
        (65536, "host port 65536 is out of range 1-65535"),
        ("70000", "host port 70000 is out of range 1-65535"),
        ("http", "host port must be a port number, not a string 'http'"),
        ("-1", "host port must be a port number, not a string '-1'"),
        ("²", "host port must be a port number, not a string '²'"),
        (True, "host port must be a port number, not a boolean"),
        (None, "host port must be a port number, not null"),
        (80.0, "host port must be a port number, not a number"),
    ],
)
def test_bad_port_numbers(value, message):
    with pytest.raises(BadValue) as info:
        parse_port_number(value, "host port")
    assert str(info.value) == message


@pytest.mark.parametrize("text, ports", [("80", (80, 80)), ("8000-8010", (8000, 8010)), (" 1-65535 ", (1, 65535)), ("5-5", (5, 5))])
def test_port_ranges(text, ports):
    assert parse_port_range(text) == ports


@pytest.mark.parametrize(
    "text, message",
    [
        ("10-5", "invalid port range '10-5': the first port must not be greater than the last"),
        ("0-5", "port 0 is out of range 1-65535"),
        ("80-70000", "port 70000 is out of range 1-65535"),
        ("a-b", "invalid port 'a-b'"),
        ("80-", "invalid port '80-'"),
        ("", "invalid port ''"),
    ],
)
def test_bad_port_ranges(text, message):
    with pytest.raises(BadValue) as info:
        parse_port_range(text)
    assert str(info.value) == message


# --------------------------------------------------------------------------
# kind


def test_kind_names_values_for_messages():
    doc = YAML().load("b: &b true\ni: 1\nf: 1.5\ns: yes\nm: {}\nl: []\nn:\n")
    assert [kind(doc[k]) for k in "bifsmln"] == [
        "a boolean", "an integer", "a number", "a string", "a mapping", "a list", "null",
    ]  # fmt: skip
    assert kind(True) == "a boolean" and kind(b"x") == "a bytes"
