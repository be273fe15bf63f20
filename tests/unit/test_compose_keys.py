"""config.compose_keys: one parser per kind of compose value, and ruamel -> plain data.

The validator reports these messages after the field's file:line, so they are pinned here exactly.
"""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from deployer.config.compose_keys import (
    needs_mount_api,
    SERVICE_KEYS,
    UNSUPPORTED_HINTS,
    as_list,
    check_extra_host,
    env_pairs,
    extra_host_pairs,
    is_bool,
    is_int,
    is_scalar,
    label_pairs,
    parse_command,
    parse_cpus,
    parse_expose,
    parse_healthcheck_test,
    parse_mode,
    parse_port,
    parse_port_long,
    parse_restart,
    parse_tmpfs,
    parse_volume,
    scalar_str,
    secret_target,
)
from deployer.values import BadValue

RELATIVE = ("a bind source is an absolute path on the Docker host, or a path of the repository "
            "starting with './' or '../' (shipped to the node)")


def refused(parser, value) -> str:
    with pytest.raises(BadValue) as info:
        parser(value)
    return str(info.value)


def test_refused_keys_are_not_supported_keys():
    assert not set(UNSUPPORTED_HINTS) & SERVICE_KEYS


# --------------------------------------------------------------------------
# ports and expose


@pytest.mark.parametrize(
    "value, bindings",
    [
        ("[::1]:8080:80", [(80, "tcp", "::1", 8080)]),
        ("0:80", [(80, "tcp", "", None)]),
        (":80", [(80, "tcp", "", None)]),
        ("80-81", [(80, "tcp", "", None), (81, "tcp", "", None)]),
        ("8000-8001:80-81/udp", [(80, "udp", "", 8000), (81, "udp", "", 8001)]),
    ],
)
def test_more_port_short_syntax(value, bindings):
    assert parse_port(value) == bindings


@pytest.mark.parametrize(
    "value, message",
    [
        ("[::1]8080:80", "invalid port '[::1]8080:80': write '[ipv6]:host:container'"),
        ("[::1]:80", "invalid port '[::1]:80': write '[ipv6]:host:container'"),
        ("1:2:3:4", "invalid port '1:2:3:4': write '[ip:]host:container', with IPv6 addresses in brackets"),
        ("10.0.0.1:80:80/xtp", "invalid protocol 'xtp': use tcp, udp, sctp"),
        ("999.0.0.1:80:80", "invalid IP address '999.0.0.1'"),
        ("8000-8001:80-82", "invalid port '8000-8001:80-82': the host and container port ranges must have the same length"),
        ("[::1]:a:80", "invalid host port 'a'"),
        (1.5, "must be a string like '8080:80', a port number or a mapping with 'target', not a number"),
        (None, "must be a string like '8080:80', a port number or a mapping with 'target', not null"),
    ],
)
def test_bad_short_ports(value, message):
    assert refused(parse_port, value) == message


def test_port_long_syntax():
    assert parse_port_long({"target": 80, "published": "8080", "protocol": "udp"}) == [(80, "udp", "", 8080)]
    assert parse_port_long({"target": 80, "published": 0, "mode": "host", "name": "web", "app_protocol": "http"}) \
        == [(80, "tcp", "", None)]
    assert refused(parse_port_long, {"target": 80, "host_ip": 5}) == "host_ip must be a string, not an integer"
    assert refused(parse_port_long, {"target": 80, "mode": "x"}) == "invalid mode 'x': use host"
    assert refused(parse_port_long, {"target": 80, "mode": "ingress"}) == (
        "mode ingress is Swarm's routing mesh: one engine publishes the port on its own host, which is mode host "
        "(write host, or leave mode out)")
    assert refused(parse_port_long, {"target": "x"}) == "target must be a port number, not a string 'x'"
    assert refused(parse_port_long, {"target": 80, "protocol": "icmp"}) == "invalid protocol 'icmp': use tcp, udp, sctp"
    assert refused(parse_port_long, {"target": 80, "published": 70000}) == "published 70000 is out of range 1-65535"


def test_expose():
    assert parse_expose(80) == [(80, "tcp")]
    assert parse_expose("80/udp") == [(80, "udp")]
    assert parse_expose("8000-8002") == [(8000, "tcp"), (8001, "tcp"), (8002, "tcp")]
    assert refused(parse_expose, 1.5) == "must be a port number or a string like '80/udp', not a number"
    assert refused(parse_expose, "80/x") == "invalid protocol 'x': use tcp, udp, sctp"
    assert refused(parse_expose, "0") == "port 0 is out of range 1-65535"


# --------------------------------------------------------------------------
# volumes and tmpfs


NO_OPTIONS = {"tmpfs_size": None, "propagation": "", "create_host_path": None, "nocopy": False, "relative": False}


def test_volume_short_syntax():
    assert parse_volume("data:/d:ro,z") == {
        "type": "volume", "source": "data", "target": "/d", "read_only": True, "selinux": "z", **NO_OPTIONS,
    }  # fmt: skip
    assert parse_volume("/h:/c:rw,Z") == {
        "type": "bind", "source": "/h", "target": "/c", "read_only": False, "selinux": "Z", **NO_OPTIONS,
    }  # fmt: skip
    # a path of the repository: a bind, shipped to the node (compose_files)
    assert parse_volume("./conf:/c:ro") == {
        "type": "bind", "source": "./conf", "target": "/c", "read_only": True, "selinux": "", **NO_OPTIONS,
        "relative": True,
    }  # fmt: skip
    assert parse_volume({"type": "bind", "source": "../x", "target": "/c"})["relative"] is True


def test_anonymous_volumes():
    anon = {"type": "volume", "source": "", "target": "/data", "read_only": False, "selinux": "", **NO_OPTIONS}
    assert parse_volume("/data") == anon
    assert parse_volume({"type": "volume", "target": "/data"}) == anon
    assert parse_volume({"type": "volume", "target": "/data", "read_only": True}) == {**anon, "read_only": True}
    assert needs_mount_api(anon)


def test_long_volume_options():
    tmpfs = parse_volume({"type": "tmpfs", "target": "/t", "read_only": True, "tmpfs": {"size": "1m"}})
    assert (tmpfs["read_only"], tmpfs["tmpfs_size"]) == (True, 2**20)
    assert needs_mount_api(tmpfs)
    bind = parse_volume({"type": "bind", "source": "/h", "target": "/c",
                         "bind": {"propagation": "rshared", "selinux": "z", "create_host_path": True}})
    assert (bind["propagation"], bind["selinux"], bind["create_host_path"]) == ("rshared", "z", True)
    assert not needs_mount_api(bind)
    strict = parse_volume({"type": "bind", "source": "/h", "target": "/c", "bind": {"create_host_path": False}})
    assert needs_mount_api(strict)
    vol = parse_volume({"type": "volume", "source": "v", "target": "/c", "volume": {"nocopy": True}})
    assert vol["nocopy"] and not needs_mount_api(vol)


@pytest.mark.parametrize(
    "value, message",
    [
        ("data:/d:ro,rw", "invalid volume mode 'ro,rw': give ro or rw once"),
        ("data:/d:z,Z", "invalid volume mode 'z,Z': give z or Z once"),
        ("data:/d:x", "invalid volume mode 'x': use ro or rw (optionally with z or Z)"),
        ("a:b:c:d", "invalid volume 'a:b:c:d': write 'source:target[:ro|rw]'"),
        (":/d", "invalid volume ':/d': the source is empty"),
        ("data", "the mount target must be an absolute path in the container, not 'data'"),
        ("bad name:/d", "invalid volume name 'bad name'"),
        ("~/x:/d", "'~' is not expanded in '~/x': write the absolute path on the Docker host"),
        (".x:/d", RELATIVE),
        ("x/y:/d", RELATIVE),
        ("data:rel", "the mount target must be an absolute path in the container, not 'rel'"),
        (5, "must be a string like 'data:/var/lib/data' or a mapping with 'type', not an integer"),
        ({"type": "x", "target": "/d"}, "type must be volume, bind or tmpfs, not 'x'"),
        ({"type": "volume", "source": "data", "target": "/d", "read_only": "yes"}, "read_only must be true or false, not a string"),
        ({"type": "tmpfs", "source": "x", "target": "/d"}, "a tmpfs mount has no source"),
        ({"type": "tmpfs", "target": "/d", "tmpfs": {"mode": 1777}},
         "tmpfs.mode cannot be read as Compose reads it (1777 is decimal there, 01777 octal): "
         "use the service's tmpfs key, '/path:mode=1777', which both read as octal"),
        ({"type": "tmpfs", "target": "/d", "tmpfs": {"uid": 1}}, "unsupported key 'uid' in tmpfs: use mode, size"),
        ({"type": "tmpfs", "target": "/d", "tmpfs": 5}, "tmpfs must be a mapping, not an integer"),
        ({"type": "bind", "source": "/x", "target": "/d", "bind": {"propagation": "up"}},
         "invalid propagation 'up': use private, rprivate, shared, rshared, slave, rslave"),
        ({"type": "bind", "source": "/x", "target": "/d", "bind": {"recursive": "readonly"}},
         "recursive other than 'enabled' needs Docker API 1.44; the engines here speak 1.41"),
        ({"type": "bind", "source": "/x", "target": "/d", "bind": {"create_host_path": False, "selinux": "z"}},
         "selinux relabelling is an option of bind strings, which create a missing host path: "
         "drop create_host_path: false or selinux"),
        ({"type": "volume", "source": "v", "target": "/d", "volume": {"subpath": "a"}},
         "subpath needs Docker API 1.45; the engines here speak 1.41"),
        ({"type": "volume", "source": "v", "target": "/d", "bind": {}}, "'bind' options are only for type bind"),
        ({"type": "image", "source": "x", "target": "/d"},
         "type image is not supported: image mounts need Docker API 1.47; the engines here speak 1.41"),
        ({"type": "tmpfs", "target": "/d", "tmpfs": {"size": "lots"}}, "invalid size 'lots': write bytes or a number with a unit b, k, m, g, like '512m'"),
        ({"type": "bind", "source": "/x", "target": "/d", "tmpfs": {}}, "'tmpfs' options are only for type tmpfs"),
        ({"type": "bind", "target": "/d"}, "a bind mount needs a source"),
        ({"type": "bind", "source": 5, "target": "/d"}, "source must be a string, not an integer"),
        ({"type": "bind", "source": "data", "target": "/d"}, "source 'data' is a volume name, but type is bind: bind sources are absolute paths or repository paths starting with './'"),
        ({"type": "volume", "source": "/x", "target": "/d"}, "source '/x' is a path, but type is volume: write a volume name or use type bind"),
    ],
)  # fmt: skip
def test_bad_volumes(value, message):
    assert refused(parse_volume, value) == message


def test_tmpfs():
    assert parse_volume({"type": "tmpfs", "target": "/d", "tmpfs": {"size": "1m"}})["tmpfs_size"] == 2**20
    assert parse_tmpfs("/run") == ("/run", "")
    assert parse_tmpfs("/run:size=64m,mode=1777") == ("/run", "size=64m,mode=1777")
    assert refused(parse_tmpfs, "run") == "the mount target must be an absolute path in the container, not 'run'"
    assert refused(parse_tmpfs, 5) == "must be a string like '/run' or '/run:size=64m', not an integer"


# --------------------------------------------------------------------------
# process


def test_restart():
    assert [parse_restart(v) for v in ("no", None, False)] == [None, None, None]
    assert parse_restart("on-failure") == {"Name": "on-failure", "MaximumRetryCount": 0}
    assert parse_restart("on-failure:3") == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert parse_restart("unless-stopped") == {"Name": "unless-stopped"}
    assert refused(parse_restart, "sometimes") == (
        "invalid restart policy 'sometimes': use no, always, on-failure[:N] or unless-stopped"
    )
    assert refused(parse_restart, 5) == "must be one of no, always, on-failure, unless-stopped or on-failure:N, not an integer"


def test_command():
    assert parse_command('echo hi "a b"') == ["echo", "hi", "a b"]
    assert parse_command(["a", 1, 1.5]) == ["a", "1", "1.5"]
    assert refused(parse_command, ["a", True]) == "argument [1] must be a string, not a boolean"
    assert refused(parse_command, ["a", None]) == "argument [1] must be a string, not null"
    assert refused(parse_command, 5) == "must be a string or a list of strings, not an integer"
    assert refused(parse_command, 'echo "x') == "cannot split 'echo \"x' into arguments: No closing quotation"


@pytest.mark.parametrize(
    "value, message",
    [
        ("  ", "the test command is empty"),
        (5, "must be a string or a list like ['CMD', 'curl', ...], not an integer"),
        ([], "must not be empty: leave test out to keep the image's own check"),
        (["CMD", 1], "every element must be a string"),
        (["NONE", "x"], "['NONE'] takes no arguments"),
        (["CMD"], "['CMD', ...] needs the command to run"),
        (["CMD-SHELL"], "['CMD-SHELL', ...] takes exactly one shell command string"),
        (["CMD-SHELL", "a", "b"], "['CMD-SHELL', ...] takes exactly one shell command string"),
        (["RUN", "x"], "must start with CMD, CMD-SHELL or NONE, not 'RUN'"),
    ],
)
def test_bad_healthcheck_tests(value, message):
    assert refused(parse_healthcheck_test, value) == message


def test_healthcheck_tests():
    assert parse_healthcheck_test("curl x") == ["CMD-SHELL", "curl x"]
    assert parse_healthcheck_test(["NONE"]) == ["NONE"]
    assert parse_healthcheck_test(["CMD", "curl", "-f"]) == ["CMD", "curl", "-f"]


def test_file_modes():
    assert [parse_mode(v) for v in (440, "0440", "440", "0")] == [0o440, 0o440, 0o440, 0]
    assert refused(parse_mode, YAML().load("m: 0o440")["m"]) == (
        "write the mode as octal digits with a leading 0, like 0440, not 0o440"
    )
    assert refused(parse_mode, "0o440") == "invalid file mode '0o440': write octal digits, like 0440"
    assert refused(parse_mode, "9") == "invalid file mode '9': write octal digits, like 0440"
    assert refused(parse_mode, 1.5) == "must be an octal file mode like 0440, not a number"
    assert refused(parse_mode, True) == "must be an octal file mode like 0440, not a boolean"


def test_cpus():
    assert [parse_cpus(v) for v in (0.5, 2, "1.5")] == [0.5, 2.0, 1.5]
    assert refused(parse_cpus, "lots") == "invalid number of CPUs 'lots'"
    assert refused(parse_cpus, 0) == "must be a number greater than 0, got 0"
    assert refused(parse_cpus, -1) == "must be a number greater than 0, got -1"
    assert refused(parse_cpus, float("inf")) == "must be a number greater than 0, got inf"
    assert refused(parse_cpus, "nan") == "must be a number greater than 0, got 'nan'"
    assert refused(parse_cpus, None) == "must be a number, like 0.5 or 2, not null"
    assert refused(parse_cpus, True) == "must be a number, like 0.5 or 2, not a boolean"


# --------------------------------------------------------------------------
# pairs


def test_extra_hosts():
    assert extra_host_pairs(None) == []
    assert extra_host_pairs({"a": "1.2.3.4"}) == [("a", "1.2.3.4")]
    # IPv6 in brackets, as Compose allows: the engine takes the bare address ('[::1]' is its 400 invalid IP)
    assert extra_host_pairs(["a:1.2.3.4", "b=::1", "c:[::1]", "d=[::2]", "e:::3"]) == [
        ("a", "1.2.3.4"), ("b", "::1"), ("c", "::1"), ("d", "::2"), ("e", "::3")]
    assert extra_host_pairs({"m": ["10.0.0.1", "[::4]"]}) == [("m", "10.0.0.1"), ("m", "::4")]
    assert refused(extra_host_pairs, [5]) == "must be a string like 'host=10.0.0.1', not an integer"
    assert refused(extra_host_pairs, ["nohost"]) == "invalid extra host 'nohost': write 'hostname=ip'"
    assert refused(extra_host_pairs, [":1.2.3.4"]) == "invalid extra host ':1.2.3.4': write 'hostname=ip'"
    assert refused(lambda v: check_extra_host(*v), ("v6", "[::1]")) == "invalid IP address '[::1]'"
    for host, ip in (("db", "10.0.0.1"), ("gw", "host-gateway"), ("v6", "::1")):
        check_extra_host(host, ip)
    assert refused(lambda v: check_extra_host(*v), ("", "1.2.3.4")) == "invalid host name ''"
    assert refused(lambda v: check_extra_host(*v), ("a b", "1.2.3.4")) == "invalid host name 'a b'"
    assert refused(lambda v: check_extra_host(*v), ("x", "nope")) == "invalid IP address 'nope'"


def test_environment_and_label_pairs():
    assert env_pairs(None) == []
    assert env_pairs(["A=1", "B", "C="]) == [("A", "1"), ("B", None), ("C", "")]
    assert env_pairs({"A": 1, "B": None, "C": True, "D": 1.5}) == [("A", "1"), ("B", None), ("C", "true"), ("D", "1.5")]
    message = "the name is empty or has surrounding spaces"
    assert refused(env_pairs, [" A=1"]) == f"invalid environment variable ' A=1': {message}"
    assert refused(env_pairs, ["=x"]) == f"invalid environment variable '=x': {message}"
    assert refused(env_pairs, [5]) == "must be a string like 'KEY=value', not an integer"
    assert label_pairs(None) == {}
    assert label_pairs(["a=1", "b"]) == {"a": "1", "b": ""}
    assert label_pairs({"a": None, "b": False, "c": 2}) == {"a": "", "b": "false", "c": "2"}
    assert refused(label_pairs, ["=x"]) == f"invalid label '=x': {message}"


# --------------------------------------------------------------------------
# small helpers


def test_scalars_as_the_engine_gets_them():
    doc = YAML().load("a: &t true\nb: 1.5\nc: 2\nd:\ne: x\nf: false\n")
    assert [scalar_str(doc[k]) for k in "abcdef"] == ["true", "1.5", "2", "", "x", "false"]
    assert is_bool(doc["a"]) and not is_int(doc["a"]) and is_int(doc["c"])
    assert all(is_scalar(doc[k]) for k in "abcdef") and not is_scalar([]) and not is_scalar({})


def test_secret_targets_and_lists():
    assert secret_target("pw", None) == "/run/secrets/pw"
    assert secret_target("pw", "x") == "/run/secrets/x"
    assert secret_target("pw", "/etc/x") == "/etc/x"
    assert as_list(None) == [] and as_list("/run") == ["/run"] and as_list(["/a"]) == ["/a"]
