"""Compose interpolation (config/interpolate.py): every form of the spec, and what is refused."""

from __future__ import annotations

import pytest

from deployer.config.interpolate import interpolate_document, references, substitute
from deployer.config.yamlread import parse_yaml
from deployer.errors import BadTemplate

V = {"A": "a", "EMPTY": "", "TAG": "1.5", "HOST": "db"}


@pytest.mark.parametrize("text, want", [
    ("plain", "plain"),
    ("$A", "a"),
    ("${A}", "a"),
    ("x$A-y", "xa-y"),
    ("postgres://${HOST}/x", "postgres://db/x"),
    ("$$5", "$5"),
    ("$$A", "$A"),
    ("$${A}", "${A}"),
    ("a $5 b", "a $5 b"),            # not a name: kept, as Compose keeps it
    ("end$", "end$"),
    ("${UNSET:-d}", "d"),
    ("${EMPTY:-d}", "d"),
    ("${A:-d}", "a"),
    ("${UNSET-d}", "d"),
    ("${EMPTY-d}", ""),
    ("${A:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${UNSET:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${A:?boom}", "a"),
    ("${EMPTY?boom}", ""),
    ("${UNSET:-${TAG}}", "1.5"),
    ("${UNSET:-${NOPE:-x}}", "x"),
    ("${A:-${NOPE}}", "a"),           # a default is evaluated only when used
    ("${UNSET:-$TAG}", "1.5"),
    ("registry/api:${API_VERSION:-1.0}", "registry/api:1.0"),
    ("${UNSET:-a:b/c}", "a:b/c"),
    ("${UNSET:-}", ""),
    ("$A$A", "aa"),
    ("${A}}", "a}"),
])
def test_substitute(text, want):
    assert substitute(text, V) == want


@pytest.mark.parametrize("text, says", [
    ("$UNSET", "variable UNSET is not set"),
    ("${UNSET}", "variable UNSET is not set"),
    ("${UNSET:-${NOPE}}", "variable NOPE is not set"),
    ("${UNSET:?set it in .env}", "required variable UNSET is not set: set it in .env"),
    ("${EMPTY:?no empty}", "required variable EMPTY is empty: no empty"),
    ("${UNSET?}", "required variable UNSET is not set"),
    ("${UNSET?need $A}", "required variable UNSET is not set: need a"),
    ("${A", "without its closing"),
    ("x ${A:-${B} y", "without its closing"),
    ("${}", "invalid interpolation"),
    ("${1A}", "invalid interpolation"),
    ("${A/x/y}", "invalid interpolation"),
    ("${A:=x}", "invalid interpolation"),
])
def test_substitute_refuses(text, says):
    with pytest.raises(BadTemplate) as exc:
        substitute(text, V)
    assert says in str(exc.value)


def test_unset_message_says_where_variables_come_from():
    with pytest.raises(BadTemplate) as exc:
        substitute("$NOPE", V)
    assert ".env" in str(exc.value) and "node.yml" in str(exc.value) and "empty string" in str(exc.value)


def test_references():
    assert references("$A") and references("${A}") and references("$$")
    assert not references("a $5") and not references("plain") and not references("end$")


TEXT = """\
services:
  web:
    image: "registry/api:${TAG}"
    read_only: ${RO}
    environment:
      DB_URL: postgres://${HOST}/x
      PRICE: "$$5"
      ${KEY}: kept
    ports:
      - "${PORT:-8080}:80"
    healthcheck:
      retries: ${RETRIES}
  bad:
    image: x
    command: ["a", "${MISSING}"]
    labels:
      l: ${ALSO_MISSING:?write it in .env}
"""


def test_document_in_place_keeps_lines_and_keys():
    doc = parse_yaml(TEXT, "c.yml")
    problems = interpolate_document(doc, {**V, "RO": "true", "RETRIES": "3"}, "c.yml")
    web = doc["services"]["web"]
    assert web["image"] == "registry/api:1.5"
    assert web["read_only"] is True  # cast, as Compose casts
    assert web["healthcheck"]["retries"] == 3
    assert web["environment"]["DB_URL"] == "postgres://db/x"
    assert web["environment"]["PRICE"] == "$5"
    assert "${KEY}" in web["environment"]  # keys are never interpolated
    assert web["ports"] == ["8080:80"]
    assert web.lc.value("image")[0] + 1 == 3  # lines stay
    assert [p.render() for p in problems] == [
        "c.yml:15: services.bad.command[1]: variable MISSING is not set: define it in the repository ('.env' beside "
        "the compose file, 'variables:' in node.yml or datacenter.yml) or write a default (${MISSING:-value}); "
        "Compose would substitute an empty string, the deployer refuses",
        "c.yml:17: services.bad.labels.l: required variable ALSO_MISSING is not set: write it in .env",
    ]


def test_document_plain_data():
    doc = {"services": {"w": {"image": "x:${TAG}", "cpus": "${C:-0.5}"}}}
    assert interpolate_document(doc, V, "c.yml") == []
    assert doc == {"services": {"w": {"image": "x:1.5", "cpus": "0.5"}}}


def test_a_collection_shared_by_an_alias_is_resolved_once():
    from deployer.config.yamlread import load_fast

    text = "x-env: &env {PRICE: '$$HOME', A: $A}\nservices:\n  a: {image: x, environment: *env}\n  b: {image: x, environment: *env}\n"
    for doc in (parse_yaml(text, "c.yml"), load_fast(text)):
        assert interpolate_document(doc, V, "c.yml") == []
        assert doc["services"]["b"]["environment"] == {"PRICE": "$HOME", "A": "a"}


def test_file_modes_stay_as_written():
    doc = {"services": {"a": {"secrets": [{"source": "s", "mode": "${MODE}"}]}}}
    assert interpolate_document(doc, {"MODE": "0440"}, "c.yml") == []
    assert doc["services"]["a"]["secrets"][0]["mode"] == "0440"
