"""Tests for deployer.config.yamledit: byte-preserving edits of compose files."""

from __future__ import annotations

import difflib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from deployer.config import yamledit, yamltext
from deployer.config.yamledit import get_service_image, set_service_image, yaml_diff
from deployer.errors import ConfigError, EditVerificationError, ImageReferenceError

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


@pytest.mark.parametrize("image", ["-_", "._", "+_", "0_"])
def test_values_ruamel_crashes_on_are_quoted(image):
    """Found by the property test below: ruamel's int resolver raises IndexError on a plain '-_'."""
    new = set_service_image("services:\n  web:\n    image: a:1\n", "web", image)
    assert get_service_image(new, "web") == image


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
    if image == image.strip() and old_value[0] not in "'\"" and yamltext.plain_ok(image, "{" in before):
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
    monkeypatch.setattr(yamledit, "plain_ok", lambda value, flow: True)
    text = "services:\n  web:\n    image: a:1\n    ports: [80]\n"
    with pytest.raises(EditVerificationError, match="internal error"):
        set_service_image(text, "web", "a #comment")  # would become a comment
    with pytest.raises(EditVerificationError, match="invalid YAML"):
        set_service_image(text, "web", "a: b")  # would become a mapping


def test_safety_net_catches_edits_outside_the_value(monkeypatch):
    monkeypatch.setattr(yamledit, "double_quoted", lambda value: '"x", ports: [1]')
    text = 'services:\n  web: {image: "a:1"}\n'
    with pytest.raises(EditVerificationError, match="would change other data"):
        set_service_image(text, "web", "b:2")


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


def test_value_that_crashes_yaml11_float_resolver_is_quoted():
    # ruamel's YAML 1.1 resolver takes '._' for a float and then fails to convert it.
    out = set_service_image("services:\n  web:\n    image: a:1  # c\n", "web", "._")
    assert out == 'services:\n  web:\n    image: "._"  # c\n'
