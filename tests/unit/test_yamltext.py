"""Tests for deployer.config.yamltext: node offsets, lines, quoting, and the safety net behind every edit."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from deployer.config import yamltext
from deployer.errors import ConfigError, EditVerificationError, ImageReferenceError


def load(text: str):
    return YAML(typ="rt").load(text)


# --- the event tree ----------------------------------------------------------


def test_event_tree_gives_exact_offsets_of_scalars():
    text = "# c\nservices:\n  web: {image: 'a:1', ports: [80]}\n  db:\n    image: pg\n"
    tree = yamltext.event_tree(text, "f.yml")
    services = tree.root.get("services")[1]
    web = services.get("web")[1]
    assert web.kind == "map" and web.flow and web.line == 3
    image = web.get("image")[1].start
    assert text[image.start_mark.index : image.end_mark.index] == "'a:1'"
    db_image = services.get("db")[1].get("image")[1]
    assert db_image.line == 5 and not services.get("db")[1].flow
    assert services.get("nope") is None and image.style == "'"


def test_event_tree_records_used_anchors_and_empty_documents():
    tree = yamltext.event_tree("x: &a 1\ny: &b 2\nz: *a\n", "f.yml")
    assert tree.aliases == {"a"}
    assert tree.root.get("x")[1].anchor == "a"
    assert yamltext.event_tree("", "f.yml").root is None
    assert yamltext.event_tree("# only a comment\n", "f.yml").root is None


def test_event_tree_and_load_report_invalid_yaml_with_its_line():
    for read in (yamltext.event_tree, yamltext.load):
        with pytest.raises(ConfigError) as info:
            read("a: 1\nb: [\n", "f.yml")
        assert info.value.path == "f.yml" and info.value.line is not None
        assert info.value.message.startswith("invalid YAML: ")
    with pytest.raises(ConfigError, match="duplicate key"):
        yamltext.load("a: 1\na: 2\n", "f.yml")


# --- lines -------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_line_helpers(eol):
    text = eol.join(["one", "two", "three"])
    two = text.index("two")
    assert yamltext.eol_of(text) == eol
    assert yamltext.line_start(text, two + 1) == two
    assert yamltext.line_end(text, two) == two + 3 + len(eol)
    assert yamltext.line_end(text, text.index("three")) == len(text)
    assert yamltext.prev_line(text, two) == (0, "one")
    assert yamltext.prev_line(text, 0) is None
    assert yamltext.ends_with_break(text + eol) and not yamltext.ends_with_break(text)


def test_eol_of_a_file_without_line_breaks_is_newline():
    assert yamltext.eol_of("a: 1") == "\n"


# --- scalars -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, block, flow",
    [
        ("nginx:1.25", True, True),
        ("registry.example.com:5000/team/web@sha256:" + "0" * 64, True, True),
        ("a#b", True, True),
        ("a #b", False, False),  # a comment
        ("a,b", True, False),  # ends a flow entry
        ("{a}", False, False),
        ("on", False, False),  # a boolean in YAML 1.1
        ("1:20", False, False),  # a sexagesimal number in YAML 1.1
        ("0x1F", False, False),
        ("null", False, False),
        ("._", False, False),  # crashes ruamel's YAML 1.1 float resolver
        ("a: b", False, False),
        ("", False, False),
        (" a", False, False),
    ],
)
def test_plain_ok(value, block, flow):
    assert yamltext.plain_ok(value, False) is block
    assert yamltext.plain_ok(value, True) is flow


def test_quoting():
    assert yamltext.double_quoted('a"b\\c') == '"a\\"b\\\\c"'
    assert yamltext.single_quoted("it's") == "'it''s'"
    assert yamltext.scalar_text("nginx:1", False) == "nginx:1"
    assert yamltext.scalar_text("a,b", True) == '"a,b"'
    assert yamltext.scalar_text("yes", False) == '"yes"'
    assert yamltext.key_text("web", False) == "web"
    assert yamltext.key_text("1", False) == '"1"'
    assert yamltext.key_text("true", True) == '"true"'


@pytest.mark.parametrize("value", ["", " a", "a ", "a\nb", "a\tb", "a\x00b", None, 1])
def test_check_value_refuses_what_cannot_be_written_on_one_line(value):
    with pytest.raises(ImageReferenceError):
        yamltext.check_value(value, "image")


# --- the safety net ----------------------------------------------------------


def test_verify_compares_types_order_and_tags():
    same = yamltext.same
    p = yamltext.plain
    assert same(p(load("a: 1\nb: x\n")), p(load("a: 1\nb: 'x'\n")))
    assert not same(p(load("a: 1\n")), p(load("a: '1'\n")))
    assert not same(p(load("a: 1\n")), p(load("a: 1.0\n")))
    assert not same(p(load("a: true\n")), p(load("a: 1\n")))
    assert not same(p(load("a: 1\nb: 2\n")), p(load("b: 2\na: 1\n")))
    assert not same(p(load("a: !reset []\n")), p(load("a: []\n")))
    assert same(p(load("a: .nan\n")), p(load("a: .NaN\n")))


def _set_a(value):
    def change(d):
        yamltext.untag(d)["a"] = value
        return d

    return change


def test_verify_accepts_exactly_the_intended_change():
    yamltext.verify("a: 1  # c\nb: [x]\n", "a: 2  # c\nb: [x]\n", "f.yml", _set_a(2), "setting a")


def test_verify_refuses_other_changes_invalid_yaml_and_unmodelled_changes():
    old = "a: 1\nb: [x]\n"
    with pytest.raises(EditVerificationError, match="f.yml: internal error: setting a would change other data"):
        yamltext.verify(old, "a: 2\nb: [y]\n", "f.yml", _set_a(2), "setting a")
    with pytest.raises(EditVerificationError, match="setting a produced invalid YAML"):
        yamltext.verify(old, "a: [2\n", "f.yml", _set_a(2), "setting a")
    with pytest.raises(EditVerificationError, match="cannot model the change"):
        yamltext.verify(old, old, "f.yml", lambda d: d["missing"], "setting a")
