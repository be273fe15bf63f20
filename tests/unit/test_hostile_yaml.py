"""Hostile YAML is bad input: one line with file:line and exit 3, fast, never a traceback or a hang.

Each case the issue listed (and each the property test in ``test_property_yaml`` found) is here, run
through ``deployer validate`` in-process; the limits (docs/compose.md, "Limits") at their edges; the port
overlap check on ranges; and error lines that stay printable whatever bytes the file held.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from deployer.cli.main import main
from deployer.config import loader, yamlread
from deployer.config.compose_check_service import MAX_PORTS_PER_FILE
from deployer.config.compose_keys import MAX_PORTS_PER_ENTRY, parse_port
from deployer.errors import ConfigError, ValidationFailed, printable
from deployer.model import Location, Node
from tests.support.compose import COMPOSE, one_problem, problems

NODE_YML = "datacenters/dc/n1/node.yml"
COMPOSE_YML = "datacenters/dc/n1/docker-compose.yml"
DC_YML = "datacenters/dc/datacenter.yml"
WEB = "services:\n  web:\n    image: nginx:1\n"


def short(value):
    """A test id for a long input: its first characters and its length."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return f"{text[:24]!r}+{len(text)}" if len(text) > 30 else None


def repo(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    defaults = {NODE_YML: "docker: unix:///x.sock\n", COMPOSE_YML: WEB}
    for rel, content in {**defaults, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return tmp_path


def run(root: Path, *args: str):
    """The result and the CPU seconds of this process it took (the work's cost; wall time grows with the load)."""
    start = time.process_time()
    result = CliRunner().invoke(main, ["--repo", str(root), *args])
    return result, time.process_time() - start


def one_error(tmp_path: Path, files: dict[str, str | bytes], command: str = "validate") -> str:
    """The one error line `deployer <command>` prints for this repository: exit 3, no traceback, under 2 s of CPU."""
    result, elapsed = run(repo(tmp_path, files), command)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 3, result.output
    assert elapsed < 2, f"{elapsed:.1f}s"
    lines = result.output.splitlines()
    assert len(lines) == 1, lines
    line = lines[0].removeprefix("error: ")
    line.encode("utf-8")
    assert line.isprintable(), line
    return line


# -- the cases of the issue, each through validate ------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (WEB + "    cpus: !!float x\n",
     f"{COMPOSE_YML}:4: cannot read 'x' as !!float: could not convert string to float: 'x'"),
    (WEB + "x: &x {<<: *x}\n",
     f"{COMPOSE_YML}:4: alias *x is inside the node it names: a recursive structure is not data the deployer can use"),
    (WEB + "x-loop: &y [*y]\n",
     f"{COMPOSE_YML}:4: alias *y is inside the node it names: a recursive structure is not data the deployer can use"),
    (WEB + "    cpus: " + "9" * 5000 + "\n", f"{COMPOSE_YML}:4: a number of more than 4,300 digits (see 'Limits' in docs/compose.md)"),
    # found by the property test: hex, octal and binary ints are built, then cannot be written in decimal
    (WEB + "    labels:\n      team: 0x" + "9" * 5000 + "\n",
     f"{COMPOSE_YML}:5: a number of more than 4,300 digits (see 'Limits' in docs/compose.md)"),
    (WEB + "    environment: {A: 0o" + "7" * 6000 + "}\n",
     f"{COMPOSE_YML}:4: a number of more than 4,300 digits (see 'Limits' in docs/compose.md)"),
    ("services:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(3000)),
     f"{COMPOSE_YML}:1: 9,012,010 bytes: a YAML file may have at most 1,048,576 (see 'Limits' in docs/compose.md)"),
    ("services:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(150)),
     f"{COMPOSE_YML}:101: nested more than 100 levels deep (see 'Limits' in docs/compose.md)"),
    ("services: " + "[" * 20000 + "]" * 20000 + "\n",
     f"{COMPOSE_YML}:1: nested more than 100 levels deep (see 'Limits' in docs/compose.md)"),
    # 200,000 levels in 400 KB: libyaml's recursive composer (the fast path) crashed the process on this
    ("services: " + "{a: " * 200000 + "}" * 200000 + "\n",
     f"{COMPOSE_YML}:1: nested more than 100 levels deep (see 'Limits' in docs/compose.md)"),
    (WEB + '    ports: ["1-65535:1-65535"]\n',
     f"{COMPOSE_YML}:4: services.web.ports[0]: the range '1-65535:1-65535' stands for 65,535 ports: an entry may "
     "stand for at most 16,384 (see 'Limits' in docs/compose.md)"),
    # found by the property test: keys merged into the top level have no line of their own
    ("x-d: &d {restart: always}\n<<: *d\n" + WEB, f"{COMPOSE_YML}:1: restart: unsupported key 'restart'"),
], ids=short)  # fmt: skip
def test_issue_cases_are_one_line_errors(tmp_path, text, expected):
    assert one_error(tmp_path, {COMPOSE_YML: text}) == expected


def test_a_surrogate_in_a_secret_file_name_is_printed_escaped(tmp_path):
    text = WEB + '    secrets: [s]\nsecrets:\n  s:\n    file: "\\ud800"\n'
    line = one_error(tmp_path, {COMPOSE_YML: text})
    assert line.startswith(f"{COMPOSE_YML}:7: secrets.s.file: ") and "\\ud800" in line


def test_a_20_mb_scalar_is_refused_before_it_is_read(tmp_path):
    text = WEB + "    labels:\n      x: " + "a" * 20_000_000 + "\n"
    assert one_error(tmp_path, {COMPOSE_YML: text}) == (
        f"{COMPOSE_YML}:1: {len(text):,} bytes: a YAML file may have at most 1,048,576 (see 'Limits' in docs/compose.md)")


def test_every_command_that_loads_the_repository_gives_the_same_line(tmp_path):
    line = one_error(tmp_path, {COMPOSE_YML: WEB + "    cpus: !!float x\n"}, command="ls")
    assert line == f"{COMPOSE_YML}:4: cannot read 'x' as !!float: could not convert string to float: 'x'"
    control = one_error(tmp_path / "b", {COMPOSE_YML: WEB + '    container_name: "a\\e[31m\\u202e\\ud800"\n'},
                        command="ls")
    assert control == (f"{COMPOSE_YML}:4: services.web.container_name: invalid container name "
                       "'a\\x1b[31m\\u202e\\ud800': use [a-zA-Z0-9][a-zA-Z0-9_.-]+")


@pytest.mark.parametrize("rel, text, expected", [
    (NODE_YML, "docker: !!int x\n", f"{NODE_YML}:1: cannot read 'x' as !!int: invalid literal for int() with base 10: 'x'"),
    (NODE_YML, "docker: &d [*d]\n", f"{NODE_YML}:1: alias *d is inside the node it names: a recursive structure is "
                                    "not data the deployer can use"),
    (NODE_YML, "docker: " + "[" * 101 + "]" * 101, f"{NODE_YML}:1: nested more than 100 levels deep (see 'Limits' in "
                                                   "docs/compose.md)"),
    (DC_YML, "consul: 0b" + "1" * 20000 + "\n", f"{DC_YML}:1: a number of more than 4,300 digits (see 'Limits' in docs/compose.md)"),
    (DC_YML, b"description: caf\xe9\n", f"{DC_YML}:1: not UTF-8 text"),
    # `ls` prints the URL: a lone surrogate crashed it
    (NODE_YML, 'docker: "unix://\\ud800"\n', f"{NODE_YML}:1: docker: invalid Docker URL 'unix://\\ud800': use "
                                             "unix://PATH, ssh://[user@]host[:port] or tcp://host:port"),
    # found by the property test (on main: no line, and the position in characters)
    (DC_YML, "consul: x\ndescription: a\x7fb\n", f"{DC_YML}:2: malformed YAML: special characters are not allowed: U+007F"),
    (NODE_YML, "docker: !!int 0x\n", f"{NODE_YML}:1: cannot read '0x' as !!int: string index out of range"),
    (DC_YML, "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)),
     f"{DC_YML}:5: aliases stand for more than 100,000 nodes (see 'Limits' in docs/compose.md)"),
], ids=short)  # fmt: skip
def test_node_and_datacenter_files(tmp_path, rel, text, expected):
    assert one_error(tmp_path, {rel: text}) == expected


# -- the limits at their edges --------------------------------------------------------------------


def nested(depth: int, flow: bool) -> str:
    """A compose file whose x-deep value makes the document ``depth`` collections deep."""
    inner = depth - 1  # the top-level mapping is one
    if flow:
        return WEB + "x-deep: " + "[" * inner + "]" * inner + "\n"
    return WEB + "x-deep:\n" + "".join("  " * (i + 1) + "k:\n" for i in range(inner - 1)) + "  " * inner + "k: v\n"


@pytest.mark.parametrize("flow", [True, False])
def test_depth_limit_edge(tmp_path, flow):
    ok, _ = run(repo(tmp_path / "ok", {COMPOSE_YML: nested(yamlread.MAX_DEPTH, flow)}), "validate")
    assert ok.exit_code == 0, ok.output
    line = one_error(tmp_path / "bad", {COMPOSE_YML: nested(yamlread.MAX_DEPTH + 1, flow)})
    assert line.endswith(": nested more than 100 levels deep (see 'Limits' in docs/compose.md)")


def test_scalar_limit_edge(tmp_path):
    ok, _ = run(repo(tmp_path / "ok", {COMPOSE_YML: WEB + "x-big: " + "a" * yamlread.MAX_SCALAR_CHARS + "\n"}), "validate")
    assert ok.exit_code == 0, ok.output
    line = one_error(tmp_path / "bad", {COMPOSE_YML: WEB + "x-big: '" + "a" * (yamlread.MAX_SCALAR_CHARS + 1) + "'\n"})
    assert line == f"{COMPOSE_YML}:4: a scalar of 262,145 characters: the limit is 262,144 (see 'Limits' in docs/compose.md)"


def test_file_size_limit_edge(tmp_path):
    filler = "# " + "x" * 98 + "\n"
    text = WEB + filler * ((yamlread.MAX_FILE_BYTES - len(WEB)) // len(filler))
    text += "#" * (yamlread.MAX_FILE_BYTES - len(text) - 1) + "\n"
    assert len(text.encode()) == yamlread.MAX_FILE_BYTES
    ok, _ = run(repo(tmp_path / "ok", {COMPOSE_YML: text}), "validate")
    assert ok.exit_code == 0, ok.output
    line = one_error(tmp_path / "bad", {COMPOSE_YML: text + "\n"})
    assert line == f"{COMPOSE_YML}:1: 1,048,577 bytes: a YAML file may have at most 1,048,576 (see 'Limits' in docs/compose.md)"


def test_aliases_that_realistic_files_use_pass(tmp_path):
    text = "x-defaults: &defaults\n  restart: always\n  labels: {team: web, tier: front}\n  logging:\n" \
           "    driver: json-file\n    options: {max-size: 10m}\nservices:\n" + "".join(
               f"  s{i}:\n    <<: *defaults\n    image: nginx:1\n" for i in range(200))
    result, elapsed = run(repo(tmp_path, {COMPOSE_YML: text}), "validate")
    assert result.exit_code == 0, result.output
    assert elapsed < 2


def test_limits_apply_to_an_edited_compose_text_too(tmp_path):
    node = Node(dc="dc", name="n1", docker="unix:///x.sock", path="datacenters/dc/n1",
                location=Location(NODE_YML), compose_path=COMPOSE_YML)
    with pytest.raises(ValidationFailed) as caught:
        loader.with_compose_text(tmp_path, node, WEB + "x: " + "[" * 200 + "]" * 200 + "\n")
    assert str(caught.value) == f"{COMPOSE_YML}:4: nested more than 100 levels deep (see 'Limits' in docs/compose.md)"


def test_parse_yaml_checks_the_limits():
    with pytest.raises(ConfigError, match="nested more than 100 levels deep"):
        loader.parse_yaml("[" * 101 + "]" * 101, "f.yml")
    with pytest.raises(ConfigError, match=r"^f.yml:2: cannot read 'x' as !!float: could not convert string to float"):
        loader.parse_yaml("a: 1\nb: !!float x\n", "f.yml")


def real_depth(text: str) -> int:
    depth = deepest = 0
    for event in YAML().parse(text):
        name = type(event).__name__
        if name in ("MappingStartEvent", "SequenceStartEvent"):
            depth += 1
            deepest = max(deepest, depth)
        elif name in ("MappingEndEvent", "SequenceEndEvent"):
            depth -= 1
    return deepest


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.just("v"), lambda c: st.lists(c, min_size=1, max_size=2) | st.dictionaries(
    st.sampled_from("ab"), c, min_size=1, max_size=2), max_leaves=20),
    st.integers(1, 4), st.integers(0, 2), st.sampled_from([False, True, None]),
    st.sampled_from(["\n", "\r\n", "\r", "\x85", "\u2028"]))
@example(["v"], 1, 0, False, "\n").via("a sequence in a sequence, compact")
def test_the_cheap_depth_bound_is_never_below_the_real_depth(data, indent, offset, flow, newline):
    """``_could_exceed`` (which lets most files skip the event scan) says yes to every text deeper than the limit."""
    yaml = YAML()
    yaml.indent(mapping=indent, sequence=max(indent, offset + 2), offset=offset)
    yaml.default_flow_style = flow
    out = io.StringIO()
    yaml.dump({"k": data}, out)
    text = out.getvalue().replace("\n", newline)  # every line break ruamel may read
    try:
        depth = real_depth(text)
    except YAMLError:
        assume(False)  # not a line break here (YAML 1.2 reads '\x85' and '\u2028' as text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(yamlread, "MAX_DEPTH", depth - 1)
        assert yamlread._could_exceed(text), text


@pytest.mark.parametrize("text", ["- - - - - a\n", "a:\n- b:\n  - c:\n    - d\n", "? - - a\n: - - b\n",
                                  "- {a: [b, {c: [d]}]}\n", "--- [[a]]\n", "- &x !!seq\n  - - a\n"])
def test_the_cheap_depth_bound_on_compact_forms(text):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(yamlread, "MAX_DEPTH", real_depth(text) - 1)
        assert yamlread._could_exceed(text), text


@pytest.mark.parametrize("entry, expected", [
    # found by the property test: Python cannot convert a string of more than 4,300 digits to an int
    ('ports: ["' + "9" * 4301 + '"]', "services.web.ports[0]: container port 999999999999... is out of range 1-65535"),
    ('ports: ["8080:' + "9" * 5000 + '"]', "services.web.ports[0]: container port 999999999999... is out of range 1-65535"),
    ('ports: [{target: "' + "9" * 5000 + '"}]', "services.web.ports[0]: target 999999999999... is out of range 1-65535"),
    ("expose: ['00000000000080']", None),
    ("restart: on-failure:" + "9" * 5000, "services.web.restart: invalid restart policy 'on-failure:" + "9" * 5000
     + "': use no, always, on-failure[:N] or unless-stopped"),
], ids=short)  # fmt: skip
def test_long_digit_strings_are_values_not_crashes(entry, expected):
    found = problems(f"services:\n  web:\n    image: nginx\n    {entry}\n")
    assert found == ([f"{COMPOSE}:4: {expected}"] if expected else [])


# -- ports: ranges checked as ranges --------------------------------------------------------------


def test_port_range_limits():
    assert len(parse_port(f"1-{MAX_PORTS_PER_ENTRY}:1-{MAX_PORTS_PER_ENTRY}")) == MAX_PORTS_PER_ENTRY
    assert one_problem(f"""
        services:
          web:
            image: nginx
            expose: ["1-{MAX_PORTS_PER_ENTRY + 1}"]
    """) == (f"{COMPOSE}:5: services.web.expose[0]: the range '1-16385' stands for 16,385 ports: an entry may stand "
             "for at most 16,384 (see 'Limits' in docs/compose.md)")
    ranges = ", ".join(f'"{1 + i * 16384}-{(i + 1) * 16384}/{proto}"' for proto in ("tcp", "udp") for i in range(3))
    assert one_problem(f"""
        services:
          web:
            image: nginx
            expose: [{ranges}]
    """) == (f"{COMPOSE}:5: services.web.expose[4]: the ports and expose entries of this file stand for more than "
             f"{MAX_PORTS_PER_FILE:,} ports (see 'Limits' in docs/compose.md)")


def test_overlapping_ranges_are_one_error_per_entry_and_fast():
    start = time.process_time()
    found = problems("""
        services:
          a:
            image: nginx
            ports: ["1-16384:1-16384", "20000-36383:1-16384/udp"]
          b:
            image: nginx
            ports: ["16000-32383:1-16384", "20005:80/udp", "16384:80"]
    """)
    assert time.process_time() - start < 5  # CPU seconds: a quadratic clash check would take minutes
    assert found == [
        f"{COMPOSE}:8: services.b.ports[0]: host ports 16000-16384/tcp are already published by service 'a' "
        "(services.a.ports[0])",
        f"{COMPOSE}:8: services.b.ports[1]: host port 20005/udp is already published by service 'a' (services.a.ports[1])",
        f"{COMPOSE}:8: services.b.ports[2]: host port 16384/tcp is already published by service 'a' (services.a.ports[0])",
    ]


@pytest.mark.parametrize("first, second, clash", [
    ("8080:80", "8080:81", True),
    ("127.0.0.1:8080:80", "127.0.0.2:8080:80", False),
    ("127.0.0.1:8080:80", "0.0.0.0:8080:80", True),
    ("0.0.0.0:8080:80", "127.0.0.1:8080:80", True),
    ("127.0.0.1:8080:80", "8080:80", True),
    ("[::1]:8080:80", "8080:80", True),
    ("[::1]:8080:80", "[::]:8080:80", True),
    ("[::1]:8080:80", "0.0.0.0:8080:80", False),
    ("[::]:8080:80", "0.0.0.0:8080:80", False),
    ("[::1]:8080:80", "[0::1]:8080:80", True),  # the same address written twice
    ("8080:80/udp", "8080:80", False),
    ("8000-8010:8000-8010", "127.0.0.1:8010:80", True),
    ("8000-8010:8000-8010", "8011-8020:8011-8020", False),
    ("80", "8080:80", False),  # any free host port
], ids=short)  # fmt: skip
def test_which_addresses_clash(first, second, clash):
    found = problems(f"""
        services:
          a: {{image: nginx, ports: ["{first}"]}}
          b: {{image: nginx, ports: ["{second}"]}}
    """)
    assert len(found) == (1 if clash else 0), found
    if clash:
        assert "already published by service 'a' (services.a.ports[0])" in found[0]


def test_the_first_entry_keeps_the_ports_it_took():
    assert problems("""
        services:
          a: {image: nginx, ports: ["8080:80"]}
          b: {image: nginx, ports: ["8079-8081:8079-8081"]}
          c: {image: nginx, ports: ["8079:80", "8081:81"]}
    """) == [
        f"{COMPOSE}:4: services.b.ports[0]: host port 8080/tcp is already published by service 'a' (services.a.ports[0])",
        f"{COMPOSE}:5: services.c.ports[0]: host port 8079/tcp is already published by service 'b' (services.b.ports[0])",
        f"{COMPOSE}:5: services.c.ports[1]: host port 8081/tcp is already published by service 'b' (services.b.ports[0])",
    ]


# -- printable errors -----------------------------------------------------------------------------


def test_error_lines_escape_what_a_terminal_must_not_get():
    err = ConfigError("f.yml", "bad \ud800 \x1b[2J \u202e\n\t é 日本", line=3, field="a\x00")
    assert err.render() == "f.yml:3: a\\x00: bad \\ud800 \\x1b[2J \\u202e\\n\\t é 日本"
    assert err.one_line() == err.render()
    assert printable("plain text: ok") == "plain text: ok"
