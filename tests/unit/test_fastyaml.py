"""fastyaml and loader.load_fast: exactly ruamel.yaml's YAML 1.2 safe loading, faster.

The contract: ``fastyaml.load(text)`` either returns what
``YAML(typ="safe").load(text)`` returns (same values, same types: bool is not
int, int is not float, dict keys in the same order) or raises; and it never
loads a text that ruamel refuses. ``load_fast`` (which falls back to ruamel
whenever fastyaml raises) always has ruamel's outcome. Differential tests: a
table of scalars in every context, a table of documents, generated documents
(hypothesis), the example repository and the benchmark's files.

Also here: ContainerSpec.config_hash / config_json, rewritten without
dataclasses.asdict for speed, must give the very same JSON as before.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import math
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from deployer.config import fastyaml
from deployer.config.compose_keys import to_plain
from deployer.config.loader import load_fast
from deployer.labels import RESERVED_LABELS
from deployer.spec import Rollout, ContainerSpec, SecretFile

PROJECT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# Comparing outcomes


def ruamel_safe(text: str) -> Any:
    return YAML(typ="safe", pure=False).load(text)


def ruamel_round_trip(text: str) -> Any:
    return to_plain(YAML().load(text))


def outcome(load, text: str) -> tuple[bool, Any]:
    try:
        return True, load(text)
    except Exception as exc:  # noqa: BLE001 - any failure is an outcome
        return False, exc


def same(a: Any, b: Any, seen: set | None = None) -> bool:
    """Deep equality that also compares types (True is not 1, 1 is not 1.0), NaN equal to NaN, dict key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (dict, list, tuple)):
        seen = set() if seen is None else seen
        if (id(a), id(b)) in seen:  # a recursive structure (ruamel builds them from recursive aliases)
            return True
        seen.add((id(a), id(b)))
        if isinstance(a, dict):
            return len(a) == len(b) and all(
                same(ka, kb, seen) and same(a[ka], b[kb], seen) for ka, kb in zip(a, b)
            )
        return len(a) == len(b) and all(same(x, y, seen) for x, y in zip(a, b))
    if isinstance(a, datetime.datetime):
        return a == b and a.tzinfo == b.tzinfo
    return a == b


def check(text: str) -> bool:
    """fastyaml agrees with ruamel or raises; load_fast agrees always. True when fastyaml loaded the text."""
    r_ok, r_value = outcome(ruamel_safe, text)
    f_ok, f_value = outcome(fastyaml.load, text)
    if f_ok:
        assert r_ok, f"fastyaml loads {text!r} as {f_value!r}, ruamel refuses it: {r_value!r}"
        assert same(f_value, r_value), f"{text!r}: fastyaml {f_value!r}, ruamel {r_value!r}"
    l_ok, l_value = outcome(load_fast, text)
    assert l_ok == r_ok, f"{text!r}: load_fast {l_value!r}, ruamel {r_value!r}"
    if r_ok:
        assert same(l_value, r_value), f"{text!r}: load_fast {l_value!r}, ruamel {r_value!r}"
    else:
        assert type(l_value) is type(r_value), f"{text!r}: load_fast raised {l_value!r}, ruamel {r_value!r}"
    return f_ok


# --------------------------------------------------------------------------
# Scalars, in every context

SCALARS = [
    # integers (YAML 1.2: no 1.1 octal, no sexagesimal; ruamel accepts '_')
    "0", "1", "12", "-1", "+1", "-0", "+0", "00", "007", "0755", "089", "0o17", "0o0", "+0o17", "-0o17", "0o",
    "0x1F", "0x1f", "-0x1F", "+0x1F", "0X1F", "0x", "0x_1", "0x_", "0b101", "-0b1", "0b", "0b_1", "0b2",
    "1_000", "1__", "0_", "_1", "1_", "-_", "+_", "_", "12345678901234567890123", "1:20", "1:20:30", "-1:20",
    # floats
    ".5", "-.5", "+.5", "1.", "0.", "1.5", "-1.5", "+1.5", "1.5e3", "1e3", "1E3", "1e+3", "1e-3", "-1e3", ".5e3",
    ".5e+3", "1.e3", "1_0.5", "1.5_0", "._5", "1.5.5", "1e", "e3", "1ee3", "1.5e3.5", "1:20.5", "0.1e-05",
    ".inf", ".Inf", ".INF", "-.inf", "+.inf", "-.Inf", ".iNf", "inf", "-inf", ".nan", ".NaN", ".NAN", "-.nan",
    "nan", ".Nan",
    # null
    "~", "null", "Null", "NULL", "nUll", "none", "None", "",
    # booleans (YAML 1.2: only true/false in three spellings)
    "true", "True", "TRUE", "tRue", "false", "False", "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "y", "Y",
    "n", "N", "on", "On", "ON", "off", "Off", "OFF",
    # timestamps
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2001-12-15T02:59:43.1Z",
    "2001-12-14 21:59:43.10", "2002-12-14", "2001-2-3", "2001-13-14", "2001-02-30", "20011214", "2001-12-14x",
    # strings that look like something
    "<<", "<", "<<<", "=", "==", "a=b", "!", "&", "*", "http://example.com:8080/x", "8080:80", "127.0.0.1:80:80",
    "a:b", "a?b", "a#b", "a #b", "5s", "1m30s", "512m", "1.5g", "0.5", "unless-stopped", "CMD-SHELL",
    "registry.example:5000/team/svc:1.2", "a b c", "é", "日本", "x" * 200,
    # quoted and tagged
    '"12"', "'12'", '"true"', "'null'", '""', "''", '"a\\tb"', '"\\x41\\u00e9\\/"', "'it''s'", '"\\N"',
    "!!str 12", "!!str true", "!!str", '!!str ""', "!!int 12", '!!int "12"', "!!int '0x1F'", "!!int 1.5",
    "!!int abc", "!!float 1", "!!float .5", '!!float "1e3"', "!!float abc", "!!bool true", "!!bool yes",
    "!!bool maybe", "!!null x", '!!null ""', "!!timestamp 2001-12-14", "!!timestamp x", "!!binary aGVsbG8=",
    "!!binary !!!", "!!merge <<", "!!value =", "!!set x", "!!map x", "!!seq x", "!x 12", "!<tag:yaml.org,2002:str> 12",
    "!<tag:yaml.org,2002:int> 12", "! 12", '! "12"', "! true", "!", '!""',
    "&a 12", "&a true", "&a ''",
]  # fmt: skip

CONTEXTS = [
    "{}",
    "k: {}",
    "- {}",
    "- a\n- {}\n- b",
    "[{}]",
    "[a, {}, b]",
    "{{k: {}}}",
    "{{k: {}, j: 1}}",
    "{}: v",
    "{{{}: v}}",
    "? {}\n: v",
    "k:\n  - {}\n  - [{}]",
    "k: &x {}\nj: *x",
    "[&x {}, *x]",
]


@pytest.mark.parametrize("context", CONTEXTS)
def test_scalars_in_every_context(context):
    for scalar in SCALARS:
        check(context.format(scalar, scalar))


# Block-context scalars that fastyaml must read itself (the ones a compose file is made of).
FAST_SCALARS = [
    s for s in SCALARS
    if not s.startswith(("!!set", "!!map", "!!seq", "!!merge", "!!value", "!x"))
    and s not in ("<<", "=", "-_", "+_", "0x_", "0b_1", "0x_1", "!!int 1.5", "!!int abc", "!!float abc",
                  "!!bool maybe", "!!timestamp x", "!!binary !!!", "&a ''")
]  # fmt: skip


def test_common_scalars_take_the_fast_path():
    for scalar in FAST_SCALARS:
        for context in ("k: {}", "- {}"):
            text = context.format(scalar)
            if outcome(ruamel_safe, text)[0]:
                assert check(text), f"fastyaml fell back on {text!r}"


# --------------------------------------------------------------------------
# Documents

DOCUMENTS = [
    # empty and trivial
    "", "\n", "# only a comment\n", "---\n", "--- \n...\n", "~", "k:", "k: v", "- a", "[]", "{}", "k: []\nj: {}",
    # several documents, directives, markers
    "a: 1\n---\nb: 2\n", "---\na: 1\n...\n", "---\na: 1\n---\n", "%YAML 1.1\n---\nk: yes\n", "%YAML 1.2\n---\nk: 1\n",
    "%TAG !e! tag:example.com,2000:\n---\nk: !e!x 1\n", "k: |\n  %YAML 1.1\n  x\n", "\ufeffk: v\n",
    # block scalars, folding, comments, unusual line ends
    "k: |\n  line1\n  line2\n", "k: >\n  folded\n  text\n\n  para\n", "k: |-\n  x\n", "k: |+\n  x\n\n",
    "k: >2\n    indented\n", "k: a # comment\nj: b#c\n", "k: multi\n  line plain\n", 'k: "multi\n  line"\n',
    "a: 1\r\nb: 2\r\n", "a: 1\rb: 2\r", "k:\tv\n", "k: v\t\n", "\tk: v\n", "k: \u2028v\n", "k: v\x85j: w\n",
    "k: \x07\n",
    # anchors and aliases
    "a: &x 1\nb: *x\n", "a: &x [1, 2]\nb: *x\n", "a: &x {p: 1}\nb: *x\n", "a: *x\n", "a: &x 1\nb: &x 2\nc: *x\n",
    "&x [*x]", "&x {a: *x}", "a: &x\n  b: *x\n", "- &x\n  - *x\n", "&a a: &b b\n*b : *a\n", "[&x a, *x]: v",
    # merge keys
    "base: &b {x: 1, y: 2}\nk:\n  <<: *b\n  y: 3\n",
    "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nk:\n  <<: [*a, *b]\n  z: 3\n",
    "a: &a {x: 1}\nk:\n  z: 0\n  <<: *a\n  x: 5\n",
    "k:\n  <<: {x: 1}\n  <<: {y: 2}\n", "k:\n  <<: {}\n  <<: {y: 2}\n", "k:\n  <<: []\n  y: 2\n",
    "k:\n  <<: {x: 1}\n  y: 2\n  y: 3\n", "k:\n  <<: 1\n", "k:\n  <<: [1]\n", "k:\n  <<: ~\n",
    "a: &a {x: 1, <<: {w: 0}}\nk: {<<: *a, v: 1}\n", "a: &a {<<: *a}\n", "a: &a {x: 1}\nk: {<<: [*a, *a]}\n",
    "k: {'<<': {x: 1}}\n", 'k: {"<<": {x: 1}}\n', "k: {!!str <<: {x: 1}}\n", "<<: {a: 1}\n", "- <<: {a: 1}\n",
    "k:\n  <<: {x: 1, x: 2}\n", "k:\n  <<: {x: 1}\n  x: 2\n  x: 3\n",
    "k:\n  x: 1\n  x: 2\n  <<: {}\n", "k:\n  x: 1\n  x: 2\n  <<: {a: 1}\n",
    "a: &a {x: {deep: 1}}\nk:\n  <<: *a\nj:\n  <<: *a\n",
    "a: &a\n  =: 1\nk:\n  <<: *a\n",
    # '=' keys and values
    "=: 1\n", "{=: 1}", "k: =\n", "- =\n", "a: &x =\nb: *x\n", "&x =: *x\n",
    # duplicate keys, in all their spellings
    "a: 1\na: 2\n", "{a: 1, a: 2}", "1: a\n1: b\n", "1: a\n1.0: b\n", "1: a\ntrue: b\n", "0: a\nfalse: b\n",
    "~: a\nnull: b\n", ": a\n~: b\n", ".nan: a\n.NaN: b\n", ".inf: a\n.Inf: b\n", "'a': 1\na: 2\n",
    "0x10: a\n16: b\n", "0o10: a\n8: b\n", "2001-12-14: a\n2001-12-14: b\n", "a: 1\nb:\n  a: 1\n",
    # non-string keys
    "1: a\n2: b\n", "true: a\nfalse: b\n", "~: a\n", "1.5: a\n", "2001-12-14: a\n", "0x1F: a\n",
    "? [a, b]\n: v\n", "[a, b]: v", "? {a: 1}\n: v\n", "{[a]: v}", "? - a\n  - b\n: v\n", "[[a]]: v",
    # flow context: where libyaml 0.2.5 and ruamel's libyaml differ
    "[a:b]", "{a:1}", "[a?b]", "{a?b: 1}", "[http://x.y/z]", "{url: http://x.y/z}", "[a: b]", "[a:]", "[a:,b]",
    "[!!str, a]", "[!, a]", "{!!str : a}", "[!!str a]", "[! a]", "{k: !!int 1}", "[&x a, *x]", "[a, , b]",
    "[?a]", "[? a]", "{? a}", "{a, b}", "{a: , b: 1}", "[a: 1, b]", "{[a, b]}", '{"a":1}', "{'a':1}", "[-1, -x]",
    "[a\n b:c]", "[x, !foo,bar y]", "[!<tag:yaml.org,2002:str> a]", "{? a:b : c}",
    # tags on collections
    "!!map {a: 1}", "!!seq [1]", "!!map [1]", "!!seq {a: 1}", "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]",
    "! {a: 1}", "! [1]", "!x {a: 1}", "k: !!map\n  a: 1\n", "k: !!seq\n  - 1\n", "k: !!str\n  a: 1\n",
    # malformed
    "a: b: c", "[a", "{a: 1", "k: 'x", 'k: "x', "- a\nb: c", "a:\n- b\n c", "*", "&", "!<>", "k: *undefined",
    "\x00", "k: v\x00",
    # nesting
    "a:\n  b:\n    c:\n      d: [1, {e: f}]\n", "- - - a\n    - b\n  - c\n", "[[[[[[[[[[[[x]]]]]]]]]]]]",
    "- " * 60 + "x",
]  # fmt: skip


@pytest.mark.parametrize("text", DOCUMENTS)
def test_documents(text):
    check(text)


# Documents fastyaml must read itself: what compose files are made of.
FAST_DOCUMENTS = [
    "", "k: v", "k: [a, 'b:c', \"d?\", 1, 1.5, true, ~]\n", "ports: ['8000:8080', \"9000:9000/udp\"]\n",
    "k: {a: 1, b: [x, y]}\n", "base: &b {x: 1}\nk:\n  <<: *b\n  y: 2\n", "k:\n  <<: [{x: 1}, {y: 2}]\n",
    "=: 1\n", "2: a\ntrue: b\n~: c\n1.5: d\n", "k: |\n  text\n", "a: 1\r\nb: 2\r\n", "k: !!str 12\n",
    "k: ! 12\n", "a: &x [1]\nb: *x\n", "image: registry.example:5000/a/b:1.2\n", "url: http://x.y:80/z\n",
    "- - a\n  - b\n", "k: 2001-12-14\n", "'quoted key': 1\n", "k: !!binary aGVsbG8=\n",
]  # fmt: skip


@pytest.mark.parametrize("text", FAST_DOCUMENTS)
def test_fast_path_documents(text):
    assert check(text), f"fastyaml fell back on {text!r}"


def test_directives_go_to_ruamel():
    """ruamel's safe loader ignores '%YAML 1.1' (its round-trip loader does not): left to ruamel, whatever it does."""
    for text in ("%YAML 1.1\n---\nk: yes\n", "%YAML 1.2\n---\nk: 1\n", "%TAG !e! tag:e.com,2000:\n---\nk: !e!x 1\n"):
        with pytest.raises(fastyaml.Unsupported):
            fastyaml.load(text)
        check(text)


def test_deep_nesting():
    assert check("[" * 300 + "]" * 300)
    assert check("a:\n" + "".join(" " * (2 * i) + f"k{i}:\n" for i in range(1, 300)) + " " * 600 + "x\n")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # for the comparison here; fastyaml gives up at the usual limit, ruamel does not
    try:
        sys.setrecursionlimit(limit)
        assert not outcome(fastyaml.load, "[" * 3000 + "]" * 3000)[0]
        sys.setrecursionlimit(20000)
        check("[" * 3000 + "]" * 3000)
    finally:
        sys.setrecursionlimit(limit)


def test_duplicate_keys_are_refused_like_ruamel():
    from ruamel.yaml.constructor import DuplicateKeyError

    for text in ("a: 1\na: 2\n", "1: a\ntrue: b\n", ".nan: a\n.NaN: b\n", "k: {x: 1, x: 2}\n"):
        with pytest.raises(fastyaml.Unsupported):
            fastyaml.load(text)
        with pytest.raises(DuplicateKeyError):
            load_fast(text)


def test_libyaml_differences_are_refused():
    """What PyYAML's libyaml 0.2.5 reads where ruamel's libyaml 0.1.7 stops with an error."""
    for text in ("[a:b]", "{a:1}", "[a?b]", "[http://x.y/z]", "[!!str, a]", "[!, a]", "k: [8080:80]"):
        with pytest.raises(fastyaml.Unsupported):
            fastyaml.load(text)
        with pytest.raises(Exception):
            load_fast(text)


def test_merge_keys_follow_ruamel():
    text = (
        "a: &a {x: a, y: a}\n"
        "b: &b {x: b, z: b}\n"
        "k:\n"
        "  own: 1\n"
        "  <<: [*a, *b]\n"
        "  y: own\n"
    )
    assert check(text)
    assert list(fastyaml.load(text)["k"].items()) == list(ruamel_safe(text)["k"].items())
    assert fastyaml.load(text)["k"] == {"x": "a", "z": "b", "y": "own", "own": 1}


def test_aliases_share_the_object_as_in_ruamel():
    doc = fastyaml.load("a: &x {p: [1]}\nb: *x\n")
    assert doc["a"] is doc["b"]


def test_nan_is_ruamels_one_nan():
    assert fastyaml.load(".nan") is ruamel_safe(".nan")


def test_the_collector_is_paused_and_restored():
    assert gc.isenabled()
    fastyaml.load("k: [1, 2, {a: b}]\n")
    assert gc.isenabled()
    with pytest.raises(Exception):
        fastyaml.load("k: [1, 2")
    assert gc.isenabled()
    gc.disable()
    try:
        fastyaml.load("k: v")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cache_holds_only_immutable_values():
    fastyaml.load("- 1\n- 1.5\n- true\n- ~\n- 2001-12-14\n- .nan\n- 0x1F\n- 2001-12-14 21:59:43.10 -5\n")
    immutable = (type(None), bool, int, float, str, bytes, datetime.date, datetime.datetime)
    assert all(isinstance(v, immutable) or v is fastyaml._NOT_A_VALUE for v in fastyaml._plain_cache.values())


# --------------------------------------------------------------------------
# Generated documents

PLAIN_SCALARS = [s for s in SCALARS if not s.startswith(("!", "&", "'", '"')) and s]
KEYS = ["a", "b", "image", "1", "true", "~", "<<", "=", "0x1F", ".nan", "a:b", "a?b", "'q'", '"d"', "!!str k", "2001-12-14"]


def scalar_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(PLAIN_SCALARS),
        st.sampled_from(SCALARS),
        st.text(alphabet="ab01._-+:?#,=~<eExXoO ", min_size=1, max_size=8).map(str.strip).filter(bool),
        st.text(max_size=6).map(json.dumps),  # double quoted, any character
    )


def render(node: tuple, indent: int) -> str:
    """A node as YAML text: ('s', text) | ('bmap' | 'fmap', [(key, node)]) | ('bseq' | 'fseq', [node]) | ('&', name, node) | ('*', name)."""
    kind = node[0]
    pad = " " * indent
    if kind == "s":
        return node[1]
    if kind == "*":
        return f"*{node[1]}"
    if kind == "&":
        inner = render(node[2], indent)
        return f"&{node[1]} {inner}" if not inner.startswith("\n") else f"&{node[1]}{inner}"
    if kind == "fseq":
        return "[" + ", ".join(render(n, indent) for n in node[1]) + "]"
    if kind == "fmap":
        return "{" + ", ".join(f"{k}: {render(v, indent)}" for k, v in node[1]) + "}"
    if not node[1]:
        return "[]" if kind == "bseq" else "{}"
    lines = []
    for item in node[1]:
        if kind == "bseq":
            child, prefix = item, "-"
        else:
            child, prefix = item[1], f"{item[0]}:"
        text = render(child, indent + 2)
        lines.append(f"{pad}{prefix}{text}" if text.startswith("\n") else f"{pad}{prefix} {text}")
    return "\n" + "\n".join(lines)


def documents() -> st.SearchStrategy[str]:
    anchors = st.sampled_from(["x", "y"])
    leaf = st.one_of(scalar_text().map(lambda s: ("s", s)), anchors.map(lambda a: ("*", a)))
    flow = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: ("fseq", xs)),
            st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=3).map(lambda xs: ("fmap", xs)),
        ),
        max_leaves=6,
    )
    block = st.recursive(
        st.one_of(leaf, flow),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=4).map(lambda xs: ("bseq", xs)),
            st.lists(st.tuples(st.sampled_from(KEYS), inner), min_size=1, max_size=4).map(lambda xs: ("bmap", xs)),
            st.tuples(anchors, inner).map(lambda t: ("&", t[0], t[1])),
        ),
        max_leaves=12,
    )
    return block.map(lambda n: render(n, 0).lstrip("\n") + "\n")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_documents(text):
    check(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab1 :-?,[]{}#&*!|>'\"\n\t%<=~.", max_size=30))
def test_generated_noise(text):
    check(text)


# --------------------------------------------------------------------------
# Real files


def repo_files() -> list[Path]:
    return sorted(p for d in ("datacenters", "examples", "templates") for p in (PROJECT / d).rglob("*.y*ml"))


def test_example_repository_files_load_identically_on_the_fast_path():
    files = repo_files()
    assert any("docker-compose" in p.name for p in files)
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert check(text), f"{path} fell back to ruamel"
        assert same(fastyaml.load(text), ruamel_round_trip(text)), f"{path}: round-trip data differs"


def test_benchmark_files_load_identically_on_the_fast_path(tmp_path):
    sys.path.insert(0, str(PROJECT / "bench"))
    try:
        import bench_plan
    finally:
        sys.path.remove(str(PROJECT / "bench"))
    bench_plan.generate(tmp_path, 2)
    for path in sorted(tmp_path.rglob("*.yml")):
        text = path.read_text(encoding="utf-8")
        assert check(text), f"{path} fell back to ruamel"


# The round-trip loader (the one that gives line numbers) agrees on what a repository is made of.
# Known differences between ruamel's own two loaders, fast path or not: a timestamp with a time is a
# TimeStamp there, an explicitly tagged scalar a TaggedScalar, and '<<' or '=' as a value loads.
ROUND_TRIP_EXCEPTIONS = ("!", "<<", "=", "2001-12-14t", "2001-12-14 21", "2001-12-15T")


def test_round_trip_loader_agrees_in_block_context():
    for scalar in SCALARS:
        if scalar.startswith(ROUND_TRIP_EXCEPTIONS) or "!!" in scalar:
            continue
        for context in ("k: {}", "- {}", "{}: v"):
            text = context.format(scalar)
            f_ok, f_value = outcome(fastyaml.load, text)
            if f_ok:
                r_ok, r_value = outcome(ruamel_round_trip, text)
                assert r_ok and same(f_value, r_value), f"{text!r}: fastyaml {f_value!r}, round trip {r_value!r}"


# --------------------------------------------------------------------------
# ContainerSpec.config_hash / config_json


def reference_data(spec: ContainerSpec, redact: bool) -> dict:
    """config_hash/config_json's data as computed before (dataclasses.asdict), to compare with."""
    data = asdict(spec)
    del data["bundles"]  # the content shipped: its digests are in the mounts and in files
    del data["rollout"], data["replica"]  # not hashed: how a service is rolled out replaces no container
    for name in ("files", "endpoints", "post_start", "pre_stop"):  # added later, left out when empty: older hashes stay
        if not data[name]:
            del data[name]
    if not redact:
        data["secrets"] = [(s["name"], s["target"], s["sha256"], s["mode"], s["uid"], s["gid"])
                           for s in data["secrets"]]
        return data
    salt = f"{spec.dc}/{spec.node}/{spec.service}"

    def fingerprint(name: str, value: str) -> str:
        return "sha256:" + hashlib.sha256(f"{salt}\0{name}\0{value}".encode()).hexdigest()[:12]

    data["labels"] = {k: v for k, v in data["labels"].items() if k not in RESERVED_LABELS}
    env = data["create"].get("environment")
    if env:
        data["create"]["environment"] = [f"{k}={fingerprint(k, v)}" for k, _, v in (e.partition("=") for e in env)]
    data["secrets"] = {s["target"]: [s["name"], s["mode"], s["uid"], s["gid"], fingerprint(s["name"], s["sha256"])]
                       for s in data["secrets"]} or []
    return data


def reference_json(spec: ContainerSpec, redact: bool) -> str:
    return json.dumps(reference_data(spec, redact), sort_keys=True, separators=(",", ":"), default=str)


def rich_spec() -> ContainerSpec:
    return ContainerSpec(
        dc="dc1",
        node="n1",
        service="web",
        name="n1-web",
        image="registry.example/web:1.2",
        create={
            "command": ["gunicorn", "-b", "0.0.0.0:8000"],
            "environment": ["A=1", "SECRET=s3cr=et", "EMPTY="],
            "healthcheck": {"Test": ["CMD", "true"], "Interval": 5_000_000_000},
            "ports": [(8000, "tcp"), (53, "udp")],
            "stop_timeout": 10,
            "user": "1000:1000",
        },
        host={
            "port_bindings": {"8000/tcp": [("127.0.0.1", 8000), ("", None)]},
            "binds": ["data:/data:rw"],
            "restart_policy": {"Name": "always"},
            "mem_limit": 512 * 1024**2,
            "init": True,
            "network_mode": "n1_default",
            "tmpfs": {"/tmp": "size=64m"},
        },
        networks=[("n1_default", ["web"]), ("n1_back", ["web", "www"])],
        labels={"team": "core", "deployer.dc": "dc1", "deployer.node": "n1", "deployer.service": "web",
                "deployer.image": "registry.example/web:1.2"},
        secrets=[SecretFile("db", "/repo/secrets/db", "/run/secrets/db", "ab" * 32, 0o400)],
        stop_timeout=10,
        has_healthcheck=True,
        published_ports=True,
        ipv4_addresses={"n1_back": "10.0.0.5"},
    )  # fmt: skip


def test_config_json_and_hash_are_unchanged():
    spec = rich_spec()
    for redact, produced in ((False, None), (True, spec.config_json())):
        expected = reference_json(spec, redact)
        if redact:
            assert produced == expected
        else:
            assert spec.config_hash() == hashlib.sha256(expected.encode()).hexdigest()[:16]
    plain = replace(spec, secrets=[], create={"stop_timeout": 10}, labels={})
    assert plain.config_json() == reference_json(plain, True)
    assert plain.config_hash() == hashlib.sha256(reference_json(plain, False).encode()).hexdigest()[:16]


def test_config_hash_covers_every_field_and_follows_changes():
    spec = rich_spec()
    before = spec.config_hash()
    changed = {
        "dc": "dc2", "node": "n2", "service": "api", "name": "other", "image": "web:2",
        "create": {**spec.create, "user": "root"}, "host": {**spec.host, "init": False},
        "networks": [("n1_default", ["web"])], "labels": {**spec.labels, "team": "edge"},
        "secrets": [replace(spec.secrets[0], sha256="cd" * 32)], "stop_timeout": 30, "has_healthcheck": False,
        "published_ports": False, "ipv4_addresses": {}, "endpoints": {"n1_back": {"ipv6_address": "fd00::5"}},
        "post_start": [{"cmd": ["true"]}], "pre_stop": [{"cmd": ["true"]}],
        "files": {"/etc/app.conf": "config app (app.conf) 0123456789ab"},
    }  # fmt: skip
    # bundles is the content behind files and the mounts: not hashed itself
    unhashed = {"rollout": Rollout(replicas=3, parallelism=2), "replica": 2}  # scaling replaces no container
    assert set(changed) | set(unhashed) | {"bundles"} == {f.name for f in fields(ContainerSpec)}, "a new field: add it here"
    for name, value in changed.items():
        assert replace(spec, **{name: value}).config_hash() != before, name
    for name, value in unhashed.items():
        assert replace(spec, **{name: value}).config_hash() == before, name
    # a spec changed in place hashes anew (nothing is cached)
    spec.host["mem_limit"] = 1
    assert spec.config_hash() != before


def test_config_json_does_not_touch_the_spec():
    spec = rich_spec()
    env = list(spec.create["environment"])
    labels = dict(spec.labels)
    spec.config_json()
    spec.config_hash()
    assert spec.create["environment"] == env and spec.labels == labels
    assert "s3cr" not in spec.config_json()
