"""Tests for deployer.config.yamledit.add_service: a new service, every other byte kept."""

from __future__ import annotations

import re

import pytest
from ruamel.yaml import YAML

from deployer.config import yamledit
from deployer.config.yamledit import add_service, get_service_image, yaml_diff
from deployer.errors import CannotEditInPlace, ConfigError, EditVerificationError, TargetError


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its single occurrence of ``old`` replaced (fails if not exactly one)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def load(text: str):
    return YAML(typ="rt").load(text)


# ---------------------------------------------------------------------------
# add_service

COMPOSE = """\
services:
  web:
    image: nginx:1   # front
    ports:
      - "80:80"

  worker:
    image: worker:1
    command: [run]

# --- storage ---
volumes:
  data: {}
"""


def test_add_service_after_the_last_service_before_next_top_level_key():
    new = add_service(COMPOSE, "cache", "redis:7", path="x/docker-compose.yml")
    assert new == replace_once(
        COMPOSE, "    command: [run]\n", "    command: [run]\n\n  cache:\n    image: redis:7\n"
    )
    assert get_service_image(new, "cache") == "redis:7"
    assert list(load(new)["services"]) == ["web", "worker", "cache"]


def test_add_service_without_blank_line_separators():
    text = "services:\n  web:\n    image: a:1\n  db:\n    image: pg  # db\nvolumes: {}\n"
    assert add_service(text, "cache", "redis") == replace_once(
        text, "pg  # db\n", "pg  # db\n  cache:\n    image: redis\n"
    )


def test_add_service_blank_line_detection_skips_comments_above_last_service():
    text = "services:\n  web:\n    image: a\n\n  # the db\n  db:\n    image: pg\n"
    assert add_service(text, "c", "r") == text + "\n  c:\n    image: r\n"


@pytest.mark.parametrize("svc_indent, child_indent", [(1, 1), (4, 4), (2, 4), (4, 2), (3, 3)])
def test_add_service_matches_indentation(svc_indent, child_indent):
    s, c = " " * svc_indent, " " * child_indent
    text = f"services:\n{s}web:\n{s}{c}image: a\n{s}{c}ports:\n{s}{c}- 80\nnetworks:\n{s}default: {{}}\n"
    new = add_service(text, "cache", "redis")
    assert new == replace_once(text, "- 80\n", f"- 80\n{s}cache:\n{s}{c}image: redis\n")


def test_add_service_keeps_indented_comments_of_the_services_block():
    text = "services:\n  web:\n    image: a\n  # old:\n  #   image: b\n\n# top level\nvolumes: {}\n"
    assert add_service(text, "c", "r") == replace_once(
        text, "  #   image: b\n", "  #   image: b\n  c:\n    image: r\n"
    )


def test_add_service_after_a_block_scalar():
    text = "services:\n  web:\n    image: a\n    command: |\n      echo hi\n\n      bye\n\nvolumes: {}\n"
    assert add_service(text, "c", "r") == replace_once(text, "      bye\n", "      bye\n  c:\n    image: r\n")


def test_add_service_after_keep_block_scalar_keeps_its_trailing_lines():
    text = "services:\n  web:\n    image: a\n    command: |+\n      echo hi\n\n"
    new = add_service(text, "c", "r")
    assert new == text + "  c:\n    image: r\n"
    assert load(new)["services"]["web"]["command"] == "echo hi\n\n"


def test_add_service_after_a_trailing_alias_and_multi_line_flow():
    text = "x: &p 80\nservices:\n  web:\n    image: a\n    ports:\n      - *p\nvolumes: {}\n"
    assert add_service(text, "c", "r") == replace_once(text, "- *p\n", "- *p\n  c:\n    image: r\n")
    text = "services:\n  web: {\n    image: a\n  }\nvolumes: {}\n"
    assert add_service(text, "c", "r") == replace_once(text, "  }\n", "  }\n  c:\n    image: r\n")


def test_add_service_at_end_of_file_without_final_newline():
    text = "services:\n  web:\n    image: a  # c"
    assert add_service(text, "c", "r") == text + "\n  c:\n    image: r"


def test_add_service_crlf():
    text = COMPOSE.replace("\n", "\r\n")
    new = add_service(text, "cache", "redis:7")
    assert new == replace_once(
        text, "    command: [run]\r\n", "    command: [run]\r\n\r\n  cache:\r\n    image: redis:7\r\n"
    )


def test_add_service_quotes_values_and_keys_that_need_it():
    text = "services:\n  web:\n    image: a\n"
    new = add_service(text, "on", "1:20")
    assert new == text + '  "on":\n    image: "1:20"\n'
    assert load(new)["services"]["on"]["image"] == "1:20"


def test_add_service_existing_is_config_error():
    with pytest.raises(ConfigError) as info:
        add_service(COMPOSE, "worker", "x", path="c.yml")
    assert info.value.field == "services.worker"
    assert info.value.line == 7
    assert "already exists" in info.value.message


@pytest.mark.parametrize("name", ["", "a b", "-a", "a/b", "a:b", None])
def test_add_service_invalid_name(name):
    with pytest.raises(TargetError):
        add_service(COMPOSE, name, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, message",
    [
        ("services: &s\n  web:\n    image: a\nx-copy: *s\n", "anchor &s, which is used elsewhere"),
        ("x: &s\n  web:\n    image: a\nservices: *s\n", "'services' is a YAML alias (*s)"),
    ],
)
def test_add_service_refuses_shared_services(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        add_service(text, "c", "r")


def test_add_service_with_unused_anchor_and_standard_tag():
    text = "services: &s\n  web:\n    image: a\n"
    assert add_service(text, "c", "r") == text + "  c:\n    image: r\n"
    new = add_service("services: !!map\n  web:\n    image: a\n", "c", "r")  # round trip; !!map is implicit
    assert get_service_image(new, "c") == "r"


def test_add_service_services_not_a_mapping():
    with pytest.raises(ConfigError, match="'services' is not a mapping"):
        add_service("services: [a]\n", "c", "r")
    with pytest.raises(ConfigError, match="not a mapping"):
        add_service("- a\n", "c", "r")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("services: {}\nvolumes: {}\n", "services:\n  c:\n    image: r\nvolumes: {}\n"),
        ("services: {}   # none yet\n", "services:   # none yet\n  c:\n    image: r\n"),
        ("services: {}", "services:\n  c:\n    image: r"),
        ("services:\nvolumes: {}\n", "services:\n  c:\n    image: r\nvolumes: {}\n"),
        ("services:  # later\n", "services:  # later\n  c:\n    image: r\n"),
        ("services: ~\n", "services:\n  c:\n    image: r\n"),
        ("services: null # x\r\n", "services: # x\r\n  c:\r\n    image: r\r\n"),
        ("x:\n    a: 1\nservices: {}\n", "x:\n    a: 1\nservices:\n    c:\n        image: r\n"),
        ("version: '3'\n", "version: '3'\nservices:\n  c:\n    image: r\n"),
        ("version: '3'", "version: '3'\nservices:\n  c:\n    image: r"),
        ("# only a comment\n", "# only a comment\nservices:\n  c:\n    image: r\n"),
        ("", "services:\n  c:\n    image: r\n"),
        ("services: {web: {image: a}}\n", "services: {web: {image: a}, c: {image: r}}\n"),
        ("services: {web: {image: a}, }  # c\n", "services: {web: {image: a}, c: {image: r}, }  # c\n"),
        ("{services: {web: {image: a}}}\n", "{services: {web: {image: a}, c: {image: r}}}\n"),
    ],
)
def test_add_service_empty_missing_and_flow_services(text, expected):
    new = add_service(text, "c", "r")
    assert new == expected
    assert get_service_image(new, "c") == "r"


def test_add_service_quotes_in_flow_context():
    new = add_service("services: {web: {image: a}}\n", "c", "a,b")
    assert new == 'services: {web: {image: a}, c: {image: "a,b"}}\n'


def test_add_service_falls_back_to_a_verified_round_trip(monkeypatch):
    def refuse(*args, **kwargs):
        raise CannotEditInPlace

    monkeypatch.setattr(yamledit, "_add_in_place", refuse)
    text = "# head\nx:\n    l:\n    - a\n    - 'b'   # keep\nservices:\n    web:\n        image: \"a:1\"\n"
    new = add_service(text, "c", "r:1")
    assert load(new)["services"]["c"]["image"] == "r:1"
    assert new.startswith(text)  # ruamel keeps this simple file byte for byte
    crlf = add_service(text.replace("\n", "\r\n").rstrip("\r\n"), "c", "r:1")
    assert "\n" not in crlf.replace("\r\n", "")
    assert not crlf.endswith("\n")


def test_add_service_falls_back_when_in_place_would_change_data():
    # A clipped block scalar at end of file without a newline: appending after it
    # would add a line break to its value, so the round trip is used.
    text = "services:\n  web:\n    image: a\n    command: |\n      echo hi"
    new = add_service(text, "c", "r")
    data = load(new)
    assert data["services"]["web"]["command"] == "echo hi"
    assert data["services"]["c"]["image"] == "r"


def test_add_service_fallback_failure_raises(monkeypatch):
    monkeypatch.setattr(yamledit, "_add_in_place", lambda *a: "services: {}\n")
    monkeypatch.setattr(yamledit, "_add_round_trip", lambda *a: "services: {}\n")
    with pytest.raises(EditVerificationError):
        add_service("services: {}\n", "c", "r")


def test_yaml_diff_of_added_service():
    new = add_service(COMPOSE, "cache", "redis:7")
    diff = yaml_diff(COMPOSE, new, "c.yml")
    changes = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert sorted(changes) == ["+", "+    image: redis:7", "+  cache:"]
