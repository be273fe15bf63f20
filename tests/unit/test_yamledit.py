"""Tests for deployer.config.yamledit: byte-preserving edits of compose files."""

from __future__ import annotations

import difflib
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from deployer.config import yamledit
from deployer.errors import ConfigError, ImageReferenceError, TargetError
from deployer.config.yamledit import (
    EditVerificationError,
    add_service,
    get_service_image,
    set_service_image,
    yaml_diff,
)

SHA = "sha256:" + "0123456789abcdef" * 4


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its single occurrence of ``old`` replaced (fails if not exactly one)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    """(removed, added) line pairs between two texts, line ends kept."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op != "equal":
            out.append(("".join(a[i1:i2]), "".join(b[j1:j2])))
    return out


def load(text: str):
    return YAML(typ="rt").load(text)


# ---------------------------------------------------------------------------
# Real-world shaped compose files

FULL = """\
# Compose file for dev1.
# Managed by deployer; edit by hand with care.

x-logging: &logging
  driver: json-file   # local logs
  options:
    max-size: "10m"
    max-file: '3'

x-common: &common
  restart: unless-stopped
  logging: *logging
  image: should-not-change:1   # x- blocks may mention image too

services:
  # The public entry point.
  web:
    image: nginx:1.25-alpine   # pinned, see OPS-123
    ports:
      - "80:80"
      - 443:443
    depends_on: [worker]

  worker:
    <<: *common
    image: "registry.example.com:5000/team/worker:1.4"
    command: ["python", "-m", "worker"]
    environment:
      QUEUE: jobs   # comment
      EMPTY:

  # Two services on the same image.
  scheduler:
    image: 'registry.example.com:5000/team/worker:1.4'
    command: [python, -m, scheduler]
  cron: {image: "registry.example.com:5000/team/worker:1.4", command: ["cron"]}

  db:
    image:    postgres:15    # extra spaces around
    volumes:
      - data:/var/lib/postgresql/data

volumes:
  data: {}   # named volume

# trailing comment
"""


@pytest.mark.parametrize(
    "service, image, old_fragment, new_fragment",
    [
        ("web", "nginx:1.26", "image: nginx:1.25-alpine   # pinned", "image: nginx:1.26   # pinned"),
        (
            "worker",
            "registry.example.com:5000/team/worker:1.5",
            '    image: "registry.example.com:5000/team/worker:1.4"\n',
            '    image: "registry.example.com:5000/team/worker:1.5"\n',
        ),
        (
            "scheduler",
            "registry.example.com:5000/team/worker:1.5",
            "image: 'registry.example.com:5000/team/worker:1.4'",
            "image: 'registry.example.com:5000/team/worker:1.5'",
        ),
        (
            "cron",
            "registry.example.com:5000/team/worker:1.5",
            '{image: "registry.example.com:5000/team/worker:1.4", command',
            '{image: "registry.example.com:5000/team/worker:1.5", command',
        ),
        ("db", "postgres:16", "image:    postgres:15    # extra", "image:    postgres:16    # extra"),
        ("db", f"postgres@{SHA}", "image:    postgres:15    #", f"image:    postgres@{SHA}    #"),
    ],
)
def test_set_image_changes_exactly_one_value(service, image, old_fragment, new_fragment):
    new = set_service_image(FULL, service, image, path="datacenters/dev/dev1/docker-compose.yml")
    assert new == replace_once(FULL, old_fragment, new_fragment)
    assert get_service_image(new, service) == image
    assert len(changed_lines(FULL, new)) == 1


def test_same_image_in_several_services_only_target_changes():
    new = set_service_image(FULL, "scheduler", "registry.example.com:5000/team/worker:2.0")
    assert get_service_image(new, "scheduler") == "registry.example.com:5000/team/worker:2.0"
    for other in ("worker", "cron"):
        assert get_service_image(new, other) == "registry.example.com:5000/team/worker:1.4"
    assert "should-not-change:1" in new
    [(removed, added)] = changed_lines(FULL, new)
    assert removed == "    image: 'registry.example.com:5000/team/worker:1.4'\n"
    assert added == "    image: 'registry.example.com:5000/team/worker:2.0'\n"


def test_x_extension_image_is_not_touched_and_merge_is_kept():
    new = set_service_image(FULL, "worker", "w:2")
    data = load(new)
    assert data["x-common"]["image"] == "should-not-change:1"
    assert data["services"]["worker"]["restart"] == "unless-stopped"  # still merged
    assert data["services"]["worker"]["image"] == "w:2"


def test_setting_the_current_image_changes_nothing():
    assert set_service_image(FULL, "web", "nginx:1.25-alpine") == FULL


FLOW = """\
services:
  web: {image: "a:1", ports: ["80:80"]}
  api: {image: a:1, ports: [8080]}
  last: {ports: [1], image: a:1}
"""


@pytest.mark.parametrize(
    "service, old, new",
    [
        ("web", '{image: "a:1", ', '{image: "b:2", '),
        ("api", "{image: a:1, ", "{image: b:2, "),
        ("last", "image: a:1}", "image: b:2}"),
    ],
)
def test_flow_mapping_services(service, old, new):
    assert set_service_image(FLOW, service, "b:2") == replace_once(FLOW, old, new)


def test_multi_line_flow_mapping_service():
    text = "services:\n  web: {\n    image: a:1,\n    ports: [80]\n  }\n"
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


def test_flow_style_services_mapping():
    text = "services: {web: {image: 'a:1'}, db: {image: a:1}}  # all on one line\n"
    assert set_service_image(text, "db", "pg:16") == replace_once(text, "{image: a:1}", "{image: pg:16}")
    assert set_service_image(text, "web", "x:2") == replace_once(text, "'a:1'", "'x:2'")


def test_crlf_line_endings_are_kept():
    text = FULL.replace("\n", "\r\n")
    new = set_service_image(text, "db", "postgres:16")
    assert new == replace_once(text, "postgres:15", "postgres:16")
    assert new.count("\r\n") == text.count("\r\n")
    assert "\n" not in new.replace("\r\n", "")


def test_cr_only_line_endings():
    text = "services:\r  web:\r    image: a:1\r"
    assert set_service_image(text, "web", "b:2") == "services:\r  web:\r    image: b:2\r"


@pytest.mark.parametrize(
    "text, old, new",
    [
        ("services:\n  web:\n    image: a:1", "a:1", "b:2"),
        ("services:\n  web:\n    image: a:1  # last", "a:1", "b:2"),
        ("services:\n  web:\n    image: 'a:1'", "'a:1'", "'b:2'"),
        ('services:\r\n  web:\r\n    image: "a:1"', '"a:1"', '"b:2"'),
        ("services: {web: {image: a:1}}", "a:1", "b:2"),
    ],
)
def test_missing_final_newline_stays_missing(text, old, new):
    assert set_service_image(text, "web", "b:2") == replace_once(text, old, new)


@pytest.mark.parametrize("indent", [1, 3, 4, 8])
def test_unusual_indentation(indent):
    i = " " * indent
    text = (
        f"version: '3.8'\nservices:\n{i}web:\n{i}{i}image: a:1\n{i}{i}ports:\n"
        f"{i}{i}{i}- 80:80\n{i}db:\n{i}{i}image: a:1\n"
    )
    new = set_service_image(text, "db", "b:2")
    assert new == text[: text.rindex("a:1")] + "b:2\n"


def test_root_indented_with_document_markers():
    text = "%YAML 1.2\n---\n# c\nservices:\n    web:\n        image: a:1\n...\n"
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


def test_byte_order_mark_and_non_ascii_before_the_image():
    text = "\ufeff# café ☕ 🚀 ünïcode\nservices:\n  web:\n    labels: {note: \"é🚀\"}\n    image: a:1\n"
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


def test_quoted_keys():
    text = 'services:\n  "web":\n    \'image\': a:1\n'
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


def test_anchors_elsewhere_in_the_file():
    text = """\
x-env: &env
  TZ: UTC
x-ports: &ports ["80:80"]
services:
  web: &web-anchor-not-used
    image: a:1
    environment: *env
    ports: *ports
  db:
    image: a:1
    environment:
      <<: *env
      PGDATA: /data
"""
    new = set_service_image(text, "web", "b:2")
    assert new == text.replace("    image: a:1\n    environment: *env", "    image: b:2\n    environment: *env")
    assert set_service_image(text, "db", "pg:1") == text[: text.rindex("a:1")] + "pg:1" + text[text.rindex("a:1") + 3 :]


def test_other_tags_in_file_are_fine():
    text = "services:\n  web:\n    image: a:1\n    ports: !reset []\n    labels: !override {a: b}\n"
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


def test_custom_tag_on_the_service_mapping():
    text = "services:\n  web: !custom\n    image: a:1\n"
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


def test_numeric_image_value_can_be_replaced():
    text = "services:\n  web:\n    image: 123\n"
    assert set_service_image(text, "web", "b:2") == "services:\n  web:\n    image: b:2\n"


# --- quoting -----------------------------------------------------------------


@pytest.mark.parametrize(
    "image, written",
    [
        ("b:2", "b:2"),
        ("1e3", '"1e3"'),  # a valid image name, but a float when plain
        ("123", '"123"'),
        ("1:20", '"1:20"'),  # YAML 1.1 sexagesimal integer
        ("on", '"on"'),  # YAML 1.1 boolean
        ("null", '"null"'),
        ("2024-01-01", '"2024-01-01"'),
        ("a #b", '"a #b"'),
        ("a: b", '"a: b"'),
        ("*x", '"*x"'),
        ("&x", '"&x"'),
        ("!x", '"!x"'),
        ("%x", '"%x"'),
        ("@x", '"@x"'),
        ("'x", "\"'x\""),
        ('"x', '"\\"x"'),
        ("${REGISTRY}/app:${TAG:-latest}", "${REGISTRY}/app:${TAG:-latest}"),
    ],
)
def test_plain_value_is_quoted_when_needed(image, written):
    text = "services:\n  web:\n    image: a:1  # c\n"
    new = set_service_image(text, "web", image)
    assert new == f"services:\n  web:\n    image: {written}  # c\n"
    assert get_service_image(new, "web") == image


@pytest.mark.parametrize(
    "image, written",
    [
        ("b:2", "b:2"),
        ("a,b", '"a,b"'),
        ("a}b", '"a}b"'),
        ("a]b", '"a]b"'),
        ("{a}", '"{a}"'),
        ("a#b", "a#b"),
    ],
)
def test_plain_value_in_flow_mapping_is_quoted_when_needed(image, written):
    text = "services:\n  web: {image: a:1, ports: [80]}\n"
    new = set_service_image(text, "web", image)
    assert new == f"services:\n  web: {{image: {written}, ports: [80]}}\n"
    assert get_service_image(new, "web") == image


def test_single_quoted_escapes_quote():
    text = "services:\n  web:\n    image: 'a:1'\n"
    new = set_service_image(text, "web", "it's")
    assert new == "services:\n  web:\n    image: 'it''s'\n"
    assert get_service_image(new, "web") == "it's"


def test_double_quoted_escapes_quote_and_backslash():
    text = 'services:\n  web:\n    image: "a:1"\n'
    new = set_service_image(text, "web", 'a"b\\c')
    assert new == 'services:\n  web:\n    image: "a\\"b\\\\c"\n'
    assert get_service_image(new, "web") == 'a"b\\c'


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(
        [
            ("services:\n  web:\n    image: ", "a:1", "  # c\n    ports: [80]\n"),
            ("services:\n  web:\n    image: ", "'a:1'", "\n"),
            ("services:\n  web:\n    image: ", '"a:1"', "\n  db: {image: x}\n"),
            ("services:\n  web: {image: ", "a:1", ", ports: [80]}\n"),
            ("services:\n  web: {ports: [80], image: ", "a:1", "}\n"),
            ("services:\n  web: {image: ", "'a:1'", "}\n"),
        ]
    ),
    image=st.text(alphabet="ab:/._-@#'\" ,{}[]!&*%|>?=~\\é", min_size=1, max_size=12),
)
def test_any_printable_image_round_trips_and_only_the_value_changes(template, image):
    assume(image.strip() == image)
    before, old_value, after = template
    text = before + old_value + after
    new = set_service_image(text, "web", image)
    assert new.startswith(before) and new.endswith(after)
    assert get_service_image(new, "web") == image
    if image == image.strip() and old_value[0] not in "'\"" and yamledit._plain_ok(image, "{" in before):
        assert new == before + image + after


# --- refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message, line",
    [
        ("version: '3'\n", "no 'services' mapping", None),
        ("", "no 'services' mapping", None),
        ("- a\n- b\n", "no 'services' mapping", None),
        ("x: 1\nservices:\n  - web\n", "'services' is not a mapping", 2),
        ("services:\n  db:\n    image: pg\n", "no service 'web' (services: db)", 1),
        ("x: 1\nservices:\n  web:\n    ports: [80]\n", "the service has no image", 3),
        ("services:\n  web: nginx\n", "service 'web' is not a mapping", 2),
        ("services:\n  web:\n    image: |\n      a:1\n", "block scalar", 3),
        ("services:\n  web:\n    image: >-\n      a:1\n", "block scalar", 3),
        ("services:\n  web:\n    image: a:1\n      continued\n", "several lines", 3),
        ('services:\n  web:\n    image: "a:1\n      b"\n', "several lines", 3),
        ("services:\n  web:\n    image: &img a:1\n", "anchor (&img)", 3),
        ("x: &img a:1\nservices:\n  web:\n    image: *img\n", "alias (*img)", 4),
        ("services:\n  web:\n    image: !!str a:1\n", "YAML tag", 3),
        ("services:\n  web:\n    image:\n", "image is empty", 3),
        ("services:\n  web:\n    image: [a]\n", "not a string", 3),
        (
            "x: &base\n  image: a:1\nservices:\n  web:\n    <<: *base\n    ports: [80]\n",
            "merge key",
            4,
        ),
        ("x: &base\n  image: a:1\nservices:\n  web: *base\n", "the service is a YAML alias (*base)", 4),
        (
            "services:\n  web: &w\n    image: a:1\n  web2:\n    <<: *w\n    ports: [81]\n",
            "anchor &w, which is used elsewhere",
            2,
        ),
        ("services: &s\n  web:\n    image: a:1\nx-copy: *s\n", "'services' carries the YAML anchor &s", 1),
        ("x: &s\n  web:\n    image: a:1\nservices: *s\n", "'services' is a YAML alias", 4),
    ],
)
def test_refusals_are_config_errors(text, message, line):
    with pytest.raises(ConfigError) as info:
        set_service_image(text, "web", "b:2", path="datacenters/dev/dev1/docker-compose.yml")
    err = info.value
    assert message in err.message
    assert err.field == "services.web.image"
    assert err.path == "datacenters/dev/dev1/docker-compose.yml"
    assert err.line == line
    assert "\n" not in str(err)


def test_invalid_yaml_is_a_config_error_with_line():
    with pytest.raises(ConfigError) as info:
        set_service_image("services:\n  web:\n    image: a:1\n   bad: [\n", "web", "b:2", path="f.yml")
    assert info.value.path == "f.yml"
    assert info.value.line is not None
    assert "invalid YAML" in info.value.message
    assert "\n" not in str(info.value)


def test_duplicate_keys_are_a_config_error():
    with pytest.raises(ConfigError, match="duplicate key"):
        set_service_image("services:\n  web:\n    image: a:1\n    image: a:2\n", "web", "b:2")


def test_several_documents_are_a_config_error():
    with pytest.raises(ConfigError, match="single document"):
        set_service_image("services:\n  web:\n    image: a:1\n---\nx: 1\n", "web", "b:2")


@pytest.mark.parametrize("image", ["", " a", "a ", "a\nb", "a\tb", "a\x00b", "a\u2028b", None, 1])
def test_bad_new_image_values(image):
    with pytest.raises(ImageReferenceError):
        set_service_image("services:\n  web:\n    image: a:1\n", "web", image)  # type: ignore[arg-type]


def test_unused_anchor_on_service_is_allowed():
    text = "services:\n  web: &w\n    image: a:1\n"
    assert set_service_image(text, "web", "b:2") == replace_once(text, "a:1", "b:2")


# --- the safety net ----------------------------------------------------------


def test_safety_net_catches_a_broken_plain_value(monkeypatch):
    monkeypatch.setattr(yamledit, "_plain_ok", lambda value, flow: True)
    text = "services:\n  web:\n    image: a:1\n    ports: [80]\n"
    with pytest.raises(EditVerificationError, match="internal error"):
        set_service_image(text, "web", "a #comment")  # would become a comment
    with pytest.raises(EditVerificationError, match="invalid YAML"):
        set_service_image(text, "web", "a: b")  # would become a mapping


def test_safety_net_catches_edits_outside_the_value(monkeypatch):
    monkeypatch.setattr(yamledit, "_double_quoted", lambda value: '"x", ports: [1]')
    text = 'services:\n  web: {image: "a:1"}\n'
    with pytest.raises(EditVerificationError, match="would change other data"):
        set_service_image(text, "web", "b:2")


def test_verify_compares_types_order_and_tags():
    same = yamledit._same
    p = yamledit._plain
    assert same(p(load("a: 1\nb: x\n")), p(load("a: 1\nb: 'x'\n")))
    assert not same(p(load("a: 1\n")), p(load("a: '1'\n")))
    assert not same(p(load("a: 1\n")), p(load("a: 1.0\n")))
    assert not same(p(load("a: true\n")), p(load("a: 1\n")))
    assert not same(p(load("a: 1\nb: 2\n")), p(load("b: 2\na: 1\n")))
    assert not same(p(load("a: !reset []\n")), p(load("a: []\n")))
    assert same(p(load("a: .nan\n")), p(load("a: .NaN\n")))


# ---------------------------------------------------------------------------
# get_service_image


def test_get_service_image():
    assert get_service_image(FULL, "web") == "nginx:1.25-alpine"
    assert get_service_image(FULL, "cron") == "registry.example.com:5000/team/worker:1.4"
    assert get_service_image(FULL, "nope") is None
    assert get_service_image("services:\n  web:\n    ports: [80]\n", "web") is None
    assert get_service_image("version: '3'\n", "web") is None
    assert get_service_image("", "web") is None
    assert get_service_image("x: &b {image: m:1}\nservices:\n  web: {<<: *b}\n", "web") == "m:1"
    with pytest.raises(ConfigError):
        get_service_image("services: [\n", "web")


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
        raise yamledit._CannotEditInPlace

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


# ---------------------------------------------------------------------------
# yaml_diff


def test_yaml_diff_shows_one_changed_line():
    new = set_service_image(FULL, "web", "nginx:1.26")
    diff = yaml_diff(FULL, new, "datacenters/dev/dev1/docker-compose.yml")
    lines = diff.splitlines()
    assert lines[0] == "--- a/datacenters/dev/dev1/docker-compose.yml"
    assert lines[1] == "+++ b/datacenters/dev/dev1/docker-compose.yml"
    assert [line for line in lines[2:] if line[:1] in "+-"] == [
        "-    image: nginx:1.25-alpine   # pinned, see OPS-123",
        "+    image: nginx:1.26   # pinned, see OPS-123",
    ]
    assert lines[2].startswith("@@ ")


def test_yaml_diff_equal_is_empty():
    assert yaml_diff(FULL, FULL, "x") == ""


def test_yaml_diff_crlf_and_missing_final_newline():
    old = "services:\r\n  web:\r\n    image: a:1"
    new = set_service_image(old, "web", "b:2")
    diff = yaml_diff(old, new, "c.yml")
    assert "\r" not in diff
    assert diff.endswith(
        "-    image: a:1\n\\ No newline at end of file\n+    image: b:2\n\\ No newline at end of file\n"
    )


def test_yaml_diff_of_added_service():
    new = add_service(COMPOSE, "cache", "redis:7")
    diff = yaml_diff(COMPOSE, new, "c.yml")
    changes = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert sorted(changes) == ["+", "+    image: redis:7", "+  cache:"]


def test_value_that_crashes_yaml11_float_resolver_is_quoted():
    # ruamel's YAML 1.1 resolver takes '._' for a float and then fails to convert it.
    out = set_service_image("services:\n  web:\n    image: a:1  # c\n", "web", "._")
    assert out == 'services:\n  web:\n    image: "._"  # c\n'
