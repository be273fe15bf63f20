"""Property: whatever bytes a compose file, node.yml or datacenter.yml holds, `deployer validate` ends with
exit 0 or 2, one printable line per problem and no traceback, in under 2 s.

Valid files are mutated (bytes flipped, lines deleted or duplicated, values of the wrong type, unicode,
huge numbers, deep nesting, alias loops, merge keys, long ranges) and validated in-process through click's
CliRunner. The cases that found bugs are kept as ``@example``s and in ``test_hostile_yaml``.
"""

from __future__ import annotations

import json
import os
import time
import unicodedata
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deployer.cli.main import main

COMPOSE = """\
# a node's containers
x-defaults: &defaults
  restart: unless-stopped
  labels:
    team: web
services:
  web:
    <<: *defaults
    image: nginx:1.25
    ports: ["8080:80", "127.0.0.1:9000-9002:9000-9002/udp"]
    expose: [81]
    environment:
      MODE: prod
      WORKERS: 4
    volumes:
      - data:/var/lib/data:ro
    healthcheck:
      test: ["CMD", "true"]
      interval: 5s
      retries: 3
    cpus: 0.5
    mem_limit: 256m
    depends_on: [cache]
  cache:
    image: redis:7
    command: redis-server --save ""
    ports:
      - target: 6379
        published: 6379
        host_ip: 0.0.0.0
volumes:
  data: {}
networks:
  back: {driver: bridge}
"""
NODE = """\
docker: ssh://deploy@n1.example:22
description: first node
address: 10.0.0.1
"""
DATACENTER = """\
description: the test datacenter
consul: http://127.0.0.1:8500
registry: registry.example:5000
"""
FILES = {
    "compose": ("datacenters/dc/n1/docker-compose.yml", COMPOSE),
    "node": ("datacenters/dc/n1/node.yml", NODE),
    "datacenter": ("datacenters/dc/datacenter.yml", DATACENTER),
}

# Snippets a careless user or an attacker writes in place of a value or a line.
HOSTILE = [
    "!!float x", "!!int 0x", "!!binary ==", "!!timestamp 2001-13-45", "!!str", "!!map [1]", "!!seq {a: 1}",
    "!custom v", '"\\ud800"', '"\\x00\\x1b[31m"', '"\\u202e"', "9" * 5000, "-" + "9" * 4400, "1e999999",
    "0o" + "7" * 5000, "1_000", "0x_", ".nan", "-.inf", "~", "null", "[]", "{}", "[[[[[[[]]]]]]]",
    "&a [*a]", "&b {<<: *b}", "*undefined", "{<<: 5}", "{<<: [1, 2]}", "? [a]\n: b", "|\n  text",
    "'1-65535:1-65535'", "'1-65535'", "'0.0.0.0:1-16384:1-16384'", "'::1:80'", "'[::1]:80:80'",
    "2001-12-14", "1:20", "yes", "'é日本'", "\t", "- x", "a: b: c", "{a: 1, a: 2}", "'${VAR}'",
]
LINES = [
    "x: &x {<<: *x}", "y: &y [*y]", "%YAML 1.1", "--- !!map", "...", "---", "<<: *defaults",
    "a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]", "\ufeff", "\x85", "\u2028",
    "k: " + "[" * 200 + "]" * 200, "k:" + "".join("\n" + "  " * (i + 1) + "k:" for i in range(150)),
]


# Any JSON value, written in flow style (JSON is YAML 1.2): the wrong type for whatever key it lands on.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
HUGE = st.builds(lambda digits, sign, unit: sign + "9" * digits + unit, st.sampled_from([19, 309, 4301, 6000]),
                 st.sampled_from(["", "-", "0x", "0o", "."]), st.sampled_from(["", "s", "ms", "h", "g", "b", ":80", "-1",
                                                                              ".5", "e999"]))


def _mutate(draw, text: str) -> str:
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "duplicate", "value", "line", "unicode", "truncate",
                                   "json", "huge"]))
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        if op == "flip" and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            c = draw(st.sampled_from(list(" :-[]{}&*!|>'\"#%@`,?\t\\") + [chr(draw(st.integers(0, 0x2FFF)))]))
            lines[i] = lines[i][:j] + c + lines[i][j + 1 :]
        elif op == "delete" and lines:
            del lines[i]
        elif op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(HOSTILE))}"
        elif op in ("json", "huge") and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            value = json.dumps(draw(JSON)) if op == "json" else draw(HUGE)
            lines[i] = f"{key}: {value}" if draw(st.booleans()) or op == "json" else f"{key}: [{value!r}]"
        elif op == "line":
            indent = " " * draw(st.sampled_from([0, 2, 4, 6]))
            lines.insert(i, indent + draw(st.sampled_from(LINES)))
        elif op == "unicode" and lines:
            lines[i] += draw(st.text(max_size=8))
        elif op == "truncate":
            lines = lines[: i + 1]
    return "\n".join(lines)


@st.composite
def mutated_repo(draw):
    which = draw(st.sampled_from(sorted(FILES)))
    return which, _mutate(draw, FILES[which][1])


def validate(tmp: Path, which: str, text: str):
    for rel, content in FILES.values():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode())
    (tmp / FILES[which][0]).write_bytes(text.encode("utf-8", "surrogatepass"))
    start = time.process_time()
    result = CliRunner().invoke(main, ["--repo", str(tmp), "validate"])
    return result, time.process_time() - start


def check_outcome(result, elapsed: float, text: str) -> None:
    crashed = result.exception if not isinstance(result.exception, SystemExit) else None
    assert crashed is None, f"{type(crashed).__name__}: {crashed} for {text!r}"
    assert result.exit_code in (0, 3), (result.exit_code, result.output, text)
    assert "Traceback" not in result.output
    if result.exit_code == 3:
        for line in result.output.splitlines():
            line.encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogates
            assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in line), line
            assert line.startswith("datacenters/"), line
            head = line.split(": ", 1)[0]
            assert head.count(":") == 1 and head.rsplit(":", 1)[1].isdigit(), f"no file:line in {line!r}"
    assert elapsed < 2, f"{elapsed:.1f}s for {text!r}"


def test_the_files_are_valid(tmp_path):
    for which in FILES:
        result, _ = validate(tmp_path, which, FILES[which][1])
        assert result.exit_code == 0, result.output


EXAMPLES = int(os.environ.get("PROPERTY_YAML_EXAMPLES", "300"))  # more for a longer hunt


# no wall-clock deadline (it flakes under load): check_outcome bounds each example's CPU seconds
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=mutated_repo())
# The cases this test found (each also in test_hostile_yaml, with its exact line):
@example(case=("compose", COMPOSE.replace("volumes:\n  data", "<<: *defaults\nvolumes:\n  data")))  # merged top keys
@example(case=("compose", COMPOSE.replace("team: web", "team: 0x" + "9" * 5000)))  # an int Python cannot print
@example(case=("compose", COMPOSE.replace("restart: unless-stopped", "restart: unless-stopped\ud7fc\n"
                                                                     "  restart: unless-stopped")))  # U+D7FC
@example(case=("datacenter", DATACENTER.replace("the test", "the\x7ftest")))  # no line from the reader
@example(case=("node", "docker: !!int 0x\n"))  # IndexError inside ruamel
@example(case=("node", "x: &x {<<: *x}\n" + NODE))  # AttributeError inside ruamel
@example(case=("datacenter", "description: !!float x\n"))  # ValueError
@example(case=("compose", COMPOSE.replace('"8080:80"', "'" + "9" * 4301 + "'")))  # int() of 4,301 digits
def test_validate_never_crashes_or_hangs(tmp_path_factory, case):
    which, text = case
    tmp = tmp_path_factory.mktemp("repo")
    result, elapsed = validate(tmp, which, text)
    check_outcome(result, elapsed, text)
