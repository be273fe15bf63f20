"""Compose files: which keys are supported, and what container a service becomes.

Two jobs, both pure (no Docker, no git):

* ``validate_compose(doc, path, repo_root)`` checks a parsed compose document
  (ruamel round-trip data, so every key knows its line) and returns every
  problem as a ConfigError naming file, line and field. A key the deployer does
  not support is an error, never silently ignored.
* ``container_spec(node, service, repo_root)`` turns one validated service into a
  ContainerSpec: exactly the arguments the Docker engine API is called with,
  plus the labels that identify the container and a hash of all of it.

The one read outside the compose document itself: a secret file must exist and
must not be tracked by git (``git ls-files --error-unmatch``), and its content is
hashed into the spec so that changing a secret recreates the container.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import ipaddress
import json
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scalarint import OctalInt

from deployer.errors import ConfigError
from deployer.gitrepo import git
from deployer.model import Node, Service

from deployer.labels import (
    LABEL_CONFIG, LABEL_CONFIG_HASH, LABEL_DC, LABEL_IMAGE, LABEL_NODE, LABEL_SERVICE, RESERVED_LABELS,
)
from deployer.spec import (
    DEFAULT_SECRET_MODE, DEFAULT_STOP_TIMEOUT, SECRETS_DIR, ContainerSpec, NetworkSpec, SecretFile, VolumeSpec,
)

# --------------------------------------------------------------------------
# What is supported

TOP_KEYS = {"services", "volumes", "networks", "secrets", "version", "name"}

SERVICE_KEYS = {
    "ports", "image", "volumes", "restart", "environment", "build", "networks",
    "depends_on", "command", "secrets", "container_name", "expose", "healthcheck",
    "entrypoint", "labels", "user", "working_dir", "hostname", "extra_hosts",
    "cap_add", "cap_drop", "mem_limit", "cpus", "logging", "init", "stop_signal",
    "stop_grace_period", "network_mode", "privileged", "read_only", "tmpfs", "dns",
    "shm_size",
}  # fmt: skip

# A word on why some well-known compose keys are refused.
UNSUPPORTED_HINTS = {
    "env_file": "write the variables under 'environment'",
    "deploy": "it is for swarm; use restart, mem_limit and cpus",
    "links": "services on a shared network reach each other by service name",
    "profiles": "every service in a node's compose file is deployed",
    "extends": "use YAML anchors or x-* extension keys",
    "configs": "mount a bind volume or bake the file into the image",
}

HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "disable"}
PORT_LONG_KEYS = {"target", "published", "host_ip", "protocol", "mode"}
VOLUME_LONG_KEYS = {"type", "source", "target", "read_only", "tmpfs"}
TOP_VOLUME_KEYS = {"driver", "driver_opts", "labels", "external", "name"}
TOP_NETWORK_KEYS = {"driver", "driver_opts", "internal", "labels", "external", "name"}
TOP_SECRET_KEYS = {"file"}
SERVICE_SECRET_KEYS = {"source", "target", "mode"}
SERVICE_NETWORK_KEYS = {"aliases", "ipv4_address"}
DEPENDS_ON_KEYS = {"condition"}
DEPENDS_ON_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
BUILD_KEYS = {"context", "dockerfile", "args"}
LOGGING_KEYS = {"driver", "options"}
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
PROTOCOLS = ("tcp", "udp", "sctp")

# Keys whose value is a list or mapping: written empty (null) they mean "none".
NULL_MEANS_EMPTY = {
    "ports", "volumes", "environment", "networks", "depends_on", "secrets", "expose",
    "labels", "extra_hosts", "cap_add", "cap_drop", "tmpfs", "dns",
}  # fmt: skip

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # compose keys of services, volumes, networks
_CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_SIGNAL_RE = re.compile(r"[A-Za-z0-9+-]+")
_RELATIVE_BIND = "relative bind mount paths are not supported: the path would be resolved on the Docker host"


# --------------------------------------------------------------------------
# ruamel data -> plain data, and type names


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, ScalarBoolean))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not _is_bool(v)


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


def _is_scalar(v: Any) -> bool:
    return v is None or _is_bool(v) or isinstance(v, (str, int, float))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if _is_bool(v):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return f"a {type(v).__name__}"


def to_plain(obj: Any) -> Any:
    """ruamel round-trip data -> plain dicts, lists, str, int, float, bool, None (recursively)."""
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if _is_bool(obj):
        return bool(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    return obj


def _scalar_str(v: Any) -> str:
    """A scalar as the string the engine gets (YAML booleans as true/false, null as '')."""
    if v is None:
        return ""
    if _is_bool(v):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, int):
        return str(int(v))
    return str(v)


# --------------------------------------------------------------------------
# Value parsers shared by validation and the spec (plain or ruamel input)


class _Bad(ValueError):
    """A value that is not valid; the message says why."""


_DURATION_UNITS = {
    "ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6,
    "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: Any) -> int:
    """A compose (Go) duration such as '1m30s', '10s', '500ms', '1h' -> nanoseconds."""
    if not isinstance(value, str):
        raise _Bad(f"must be a duration with a unit, like '30s' or '1m30s', not {_kind(value)}")
    text = value.strip()
    if text == "0":
        return 0
    total: int | Fraction = 0
    pos = 0
    if not text:
        raise _Bad("invalid duration '': write a number with a unit, like '30s' or '1m30s'")
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise _Bad(
                f"invalid duration {value!r}: write numbers with units (ns, us, ms, s, m, h), like '1m30s'"
            )
        number = m.group(1)
        unit = _DURATION_UNITS[m.group(2)]
        # exact arithmetic; whole numbers (the usual case) skip the Fraction
        total += int(number) * unit if number.isdigit() else Fraction(number) * unit
        pos = m.end()
    return int(total)


_BYTES_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(value: Any) -> int:
    """An int of bytes, or '512m', '1g', '100k', '1.5g', '64mb', '1GiB' (binary units) -> bytes."""
    if _is_int(value):
        if value < 0:
            raise _Bad(f"must not be negative, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise _Bad(f"must be a size in bytes or a string like '512m' or '1g', not {_kind(value)}")
    m = _BYTES_RE.fullmatch(value.strip())
    if not m:
        raise _Bad(f"invalid size {value!r}: write bytes or a number with a unit b, k, m, g, like '512m'")
    return int(Fraction(m.group(1)) * _BYTE_UNITS[(m.group(2) or "").lower()])


def parse_cpus(value: Any) -> float:
    if _is_number(value):
        cpus = float(value)
    elif isinstance(value, str):
        try:
            cpus = float(value.strip())
        except ValueError:
            raise _Bad(f"invalid number of CPUs {value!r}") from None
    else:
        raise _Bad(f"must be a number, like 0.5 or 2, not {_kind(value)}")
    if not math.isfinite(cpus) or cpus <= 0:
        raise _Bad(f"must be a number greater than 0, got {value!r}")
    return cpus


def _port_range(text: str, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not m:
        raise _Bad(f"invalid {what} {text!r}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise _Bad(f"{what} {p} is out of range 1-65535")
    if hi < lo:
        raise _Bad(f"invalid {what} range {text!r}: the first port must not be greater than the last")
    return lo, hi


def _check_port(value: Any, what: str) -> int:
    if _is_int(value):
        port = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    else:
        raise _Bad(f"{what} must be a port number, not {_kind(value)}" + (f" {value!r}" if isinstance(value, str) else ""))
    if not 1 <= port <= 65535:
        raise _Bad(f"{what} {port} is out of range 1-65535")
    return port


def _check_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise _Bad(f"invalid IP address {text!r}") from None
    return text


def _check_protocol(proto: Any) -> str:
    if proto not in PROTOCOLS:
        raise _Bad(f"invalid protocol {proto!r}: use {', '.join(PROTOCOLS)}")
    return proto


# One published port: (container port, protocol, host IP or '', host port or None for any free port)
_Binding = tuple[int, str, str, "int | None"]


def parse_port(value: Any) -> list[_Binding]:
    """A ports entry in short syntax ("80", "8080:80", "127.0.0.1:8080:80/udp", ranges, an int)."""
    if _is_int(value):
        return [(_check_port(value, "container port"), "tcp", "", None)]
    if not isinstance(value, str):
        raise _Bad(f"must be a string like '8080:80', a port number or a mapping with 'target', not {_kind(value)}")
    text = value.strip()
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        _check_protocol(proto)
    ip = ""
    host: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise _Bad(f"invalid port {value!r}: write '[ipv6]:host:container'")
        ip = text[1:end]
        parts = text[end + 2 :].split(":")
        if len(parts) != 2:
            raise _Bad(f"invalid port {value!r}: write '[ipv6]:host:container'")
        host, container = parts
    else:
        parts = text.split(":")
        if len(parts) == 1:
            host, container = None, parts[0]
        elif len(parts) == 2:
            host, container = parts
        elif len(parts) == 3:
            ip, host, container = parts
        else:
            raise _Bad(f"invalid port {value!r}: write '[ip:]host:container', with IPv6 addresses in brackets")
    if ip:
        _check_ip(ip)
    c_lo, c_hi = _port_range(container, "container port")
    count = c_hi - c_lo + 1
    if not host or host.strip() == "0":  # 0: any free port, like an empty host port
        hosts: list[int | None] = [None] * count
    else:
        h_lo, h_hi = _port_range(host, "host port")
        if h_hi - h_lo + 1 != count:
            raise _Bad(f"invalid port {value!r}: the host and container port ranges must have the same length")
        hosts = list(range(h_lo, h_hi + 1))
    return [(c_lo + i, proto, ip, hosts[i]) for i in range(count)]


def parse_port_long(value: Mapping[str, Any]) -> list[_Binding]:
    """A ports entry in long syntax (target, published, host_ip, protocol, mode)."""
    target = _check_port(value.get("target"), "target")
    proto = _check_protocol(value.get("protocol", "tcp"))
    ip = value.get("host_ip") or ""
    if not isinstance(ip, str):
        raise _Bad(f"host_ip must be a string, not {_kind(ip)}")
    if ip:
        _check_ip(ip)
    published = value.get("published")
    host = None if published in (None, "", 0, "0") else _check_port(published, "published")
    mode = value.get("mode", "host")
    if mode not in ("host", "ingress"):
        raise _Bad(f"invalid mode {mode!r}: use host or ingress")
    return [(target, proto, ip, host)]


def parse_expose(value: Any) -> list[tuple[int, str]]:
    """An expose entry: 80, "80", "80/udp", "8000-8010"."""
    if _is_int(value):
        return [(_check_port(value, "port"), "tcp")]
    if not isinstance(value, str):
        raise _Bad(f"must be a port number or a string like '80/udp', not {_kind(value)}")
    text, proto = value.strip(), "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        _check_protocol(proto)
    lo, hi = _port_range(text, "port")
    return [(p, proto) for p in range(lo, hi + 1)]


def _volume_mode(text: str) -> tuple[bool, str]:
    """'ro', 'rw', 'z', 'ro,Z', ... -> (read_only, selinux label option)."""
    read_only, selinux, seen_access = False, "", False
    for opt in text.split(","):
        if opt in ("ro", "rw"):
            if seen_access:
                raise _Bad(f"invalid volume mode {text!r}: give ro or rw once")
            seen_access, read_only = True, opt == "ro"
        elif opt in ("z", "Z"):
            if selinux:
                raise _Bad(f"invalid volume mode {text!r}: give z or Z once")
            selinux = opt
        else:
            raise _Bad(f"invalid volume mode {opt!r}: use ro or rw (optionally with z or Z)")
    return read_only, selinux


def _check_target(target: Any) -> str:
    if not isinstance(target, str) or not target.startswith("/"):
        raise _Bad(f"the mount target must be an absolute path in the container, not {target!r}")
    return target


def _source_kind(source: str) -> str:
    """'bind' for an absolute path, 'volume' for a volume name; relative paths are refused."""
    if source.startswith("/"):
        return "bind"
    if source.startswith("~"):
        raise _Bad(f"'~' is not expanded in {source!r}: write the absolute path on the Docker host")
    if source.startswith(".") or "/" in source:
        raise _Bad(_RELATIVE_BIND)
    if not _NAME_RE.fullmatch(source):
        raise _Bad(f"invalid volume name {source!r}")
    return "volume"


_ANONYMOUS = (
    "anonymous volumes are not supported (they are lost when the container is recreated): "
    "name the volume ('data:/path') and declare it under the top-level volumes"
)


def parse_volume(value: Any) -> dict[str, Any]:
    """A service volumes entry (short string or long mapping) -> a normalized mount dict.

    Keys: type (volume|bind|tmpfs), source, target, read_only, selinux, tmpfs_size.
    """
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 1:
            raise _Bad(_ANONYMOUS)
        if len(parts) > 3:
            raise _Bad(f"invalid volume {value!r}: write 'source:target[:ro|rw]'")
        source, target = parts[0], parts[1]
        read_only, selinux = _volume_mode(parts[2]) if len(parts) == 3 else (False, "")
        if not source:
            raise _Bad(f"invalid volume {value!r}: the source is empty")
        kind = _source_kind(source)
        return {"type": kind, "source": source, "target": _check_target(target),
                "read_only": read_only, "selinux": selinux, "tmpfs_size": None}  # fmt: skip
    if not isinstance(value, dict):
        raise _Bad(f"must be a string like 'data:/var/lib/data' or a mapping with 'type', not {_kind(value)}")
    kind = value.get("type")
    if kind not in ("volume", "bind", "tmpfs"):
        raise _Bad(f"type must be volume, bind or tmpfs, not {kind!r}")
    target = _check_target(value.get("target"))
    read_only = value.get("read_only", False)
    if not _is_bool(read_only):
        raise _Bad(f"read_only must be true or false, not {_kind(read_only)}")
    source = value.get("source")
    size = None
    if kind == "tmpfs":
        if source not in (None, ""):
            raise _Bad("a tmpfs mount has no source")
        opts = value.get("tmpfs")
        if opts is not None:
            if not isinstance(opts, dict) or set(opts) - {"size"}:
                raise _Bad("tmpfs must be a mapping with only 'size'")
            if "size" in opts:
                size = parse_bytes(opts["size"])
    else:
        if "tmpfs" in value:
            raise _Bad("'tmpfs' options are only for type tmpfs")
        if source in (None, ""):
            raise _Bad(_ANONYMOUS if kind == "volume" else "a bind mount needs a source")
        if not isinstance(source, str):
            raise _Bad(f"source must be a string, not {_kind(source)}")
        actual = _source_kind(source)
        if actual != kind:
            raise _Bad(
                f"source {source!r} is a volume name, but type is bind: bind sources are absolute paths"
                if kind == "bind"
                else f"source {source!r} is a path, but type is volume: write a volume name or use type bind"
            )
    return {"type": kind, "source": source, "target": target, "read_only": bool(read_only),
            "selinux": "", "tmpfs_size": size}  # fmt: skip


def parse_tmpfs(value: Any) -> tuple[str, str]:
    """A tmpfs entry "/run" or "/run:size=64m,mode=1777" -> (path, options)."""
    if not isinstance(value, str):
        raise _Bad(f"must be a string like '/run' or '/run:size=64m', not {_kind(value)}")
    path, _, options = value.partition(":")
    return _check_target(path), options


def _split_assignment(item: Any, what: str) -> tuple[str, str | None]:
    """'K=V' -> (K, V), 'K' -> (K, None)."""
    if not isinstance(item, str):
        raise _Bad(f"must be a string like 'KEY=value', not {_kind(item)}")
    key, eq, val = item.partition("=")
    if not key or key != key.strip():
        raise _Bad(f"invalid {what} {item!r}: the name is empty or has surrounding spaces")
    return key, (val if eq else None)


def _env_pairs(env: Any) -> list[tuple[str, str | None]]:
    """environment (list or mapping) -> (name, value or None for 'take from the deployer's environment')."""
    if env is None:
        return []
    if isinstance(env, list):
        return [_split_assignment(item, "environment variable") for item in env]
    return [(str(k), None if v is None else _scalar_str(v)) for k, v in env.items()]


def _label_pairs(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if isinstance(labels, list):
        out = {}
        for item in labels:
            k, v = _split_assignment(item, "label")
            out[k] = v or ""
        return out
    return {str(k): _scalar_str(v) for k, v in labels.items()}


def parse_restart(value: Any) -> dict[str, Any] | None:
    """restart -> the engine's RestartPolicy, or None for 'no'."""
    if value is False or value is None:  # `restart: no` read as YAML 1.1
        return None
    if not isinstance(value, str):
        raise _Bad(f"must be one of {', '.join(RESTART_POLICIES)} or on-failure:N, not {_kind(value)}")
    if value == "no":
        return None
    if value in ("always", "unless-stopped"):
        return {"Name": value}
    m = re.fullmatch(r"on-failure(?::(\d+))?", value)
    if m:
        return {"Name": "on-failure", "MaximumRetryCount": int(m.group(1) or 0)}
    raise _Bad(f"invalid restart policy {value!r}: use no, always, on-failure[:N] or unless-stopped")


def parse_command(value: Any) -> list[str]:
    """command/entrypoint: a string (split like a shell) or a list -> list of arguments."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise _Bad(f"cannot split {value!r} into arguments: {exc}") from None
    if isinstance(value, list):
        out = []
        for i, arg in enumerate(value):
            if not isinstance(arg, (str, int, float)) or _is_bool(arg):
                raise _Bad(f"argument [{i}] must be a string, not {_kind(arg)}")
            out.append(_scalar_str(arg))
        return out
    raise _Bad(f"must be a string or a list of strings, not {_kind(value)}")


def parse_healthcheck_test(value: Any) -> list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("the test command is empty")
        return ["CMD-SHELL", value]
    if not isinstance(value, list):
        raise _Bad(f"must be a string or a list like ['CMD', 'curl', ...], not {_kind(value)}")
    if not value:
        raise _Bad("must not be empty: leave test out to keep the image's own check")
    if not all(isinstance(x, str) for x in value):
        raise _Bad("every element must be a string")
    head, args = value[0], value[1:]
    if head == "NONE":
        if args:
            raise _Bad("['NONE'] takes no arguments")
    elif head == "CMD":
        if not args:
            raise _Bad("['CMD', ...] needs the command to run")
    elif head == "CMD-SHELL":
        if len(args) != 1:
            raise _Bad("['CMD-SHELL', ...] takes exactly one shell command string")
    else:
        raise _Bad(f"must start with CMD, CMD-SHELL or NONE, not {head!r}")
    return [str(x) for x in value]


def parse_mode(value: Any) -> int:
    """A file mode written in octal: 0440, '0440', '440'. 0o440 is refused (see below)."""
    if isinstance(value, OctalInt):
        # the plain data handed to container_spec cannot tell 0o640 from 640, so one notation only
        raise _Bad(f"write the mode as octal digits with a leading 0, like 0{value:o}, not 0o{value:o}")
    if _is_int(value):
        digits = str(int(value))
    elif isinstance(value, str):
        digits = value.strip()
    else:
        raise _Bad(f"must be an octal file mode like 0440, not {_kind(value)}")
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise _Bad(f"invalid file mode {value!r}: write octal digits, like 0440")
    return int(digits, 8)


def _extra_host_pairs(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [(str(k), _scalar_str(v)) for k, v in value.items()]
    out = []
    for item in value:
        if not isinstance(item, str):
            raise _Bad(f"must be a string like 'host:10.0.0.1', not {_kind(item)}")
        sep = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
        if sep <= 0:
            raise _Bad(f"invalid extra host {item!r}: write 'hostname:ip'")
        out.append((item[:sep], item[sep + 1 :]))
    return out


def _check_extra_host(hostname: str, ip: str) -> None:
    if not hostname or re.search(r"\s", hostname):
        raise _Bad(f"invalid host name {hostname!r}")
    if ip != "host-gateway":
        _check_ip(ip.strip("[]"))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _service_deps(config: Mapping[str, Any]) -> list[str]:
    """Services this one needs started first: depends_on and network_mode service:X."""
    dep = config.get("depends_on") or []
    names = list(dep.keys()) if isinstance(dep, dict) else [d for d in dep if isinstance(d, str)]
    mode = config.get("network_mode")
    if isinstance(mode, str) and mode.startswith("service:"):
        names.append(mode[len("service:") :])
    return [str(n) for n in names]


# --------------------------------------------------------------------------
# Validation


@dataclass
class _At:
    """A value in the document, with its dotted field path and 1-based line."""

    value: Any
    field: str | None
    line: int | None

    def _child_field(self, key: Any) -> str:
        return f"{self.field}.{key}" if self.field else str(key)

    def entries(self) -> Iterator[tuple[Any, _At]]:
        lc = getattr(self.value, "lc", None)
        for key, val in self.value.items():
            try:
                line = lc.key(key)[0] + 1
            except Exception:  # plain dicts, and keys merged in with `<<: *anchor`
                line = self.line
            yield key, _At(val, self._child_field(key), line)

    def get(self, key: str) -> _At | None:
        if isinstance(self.value, dict):  # a direct lookup: validation asks for many keys of every service
            if key not in self.value:
                return None
            try:
                line = self.value.lc.key(key)[0] + 1
            except Exception:  # plain dicts, and keys merged in with `<<: *anchor`
                line = self.line
            return _At(self.value[key], self._child_field(key), line)
        for k, child in self.entries():
            if k == key:
                return child
        return None

    def items(self) -> Iterator[tuple[int, _At]]:
        lc = getattr(self.value, "lc", None)
        for i, val in enumerate(self.value):
            try:
                line = lc.item(i)[0] + 1
            except Exception:
                line = self.line
            yield i, _At(val, f"{self.field}[{i}]", line)


@dataclass
class _ServiceFacts:
    """What the cross-service checks need to know about one service."""

    at: _At
    deps: list[tuple[str, _At]] = field(default_factory=list)  # (service, where it is named)
    bindings: list[tuple[_Binding, _At]] = field(default_factory=list)
    container_name: tuple[str, _At] | None = None


class _Checker:
    def __init__(self, path: str, repo_root: Path):
        self.path = path
        self.repo_root = Path(repo_root)
        self.errors: list[ConfigError] = []
        self.volumes: dict[str, Any] = {}
        self.networks: dict[str, Any] = {}
        self.secrets: set[str] = set()
        self.service_names: list[str] = []
        self.facts: dict[str, _ServiceFacts] = {}

    # -- helpers ----------------------------------------------------------

    def err(self, at: _At, message: str, field: str | None | bool = True) -> None:
        where = at.field if field is True else (None if field is False else field)
        self.errors.append(ConfigError(self.path, message, line=at.line, field=where))

    def mapping(self, at: _At) -> bool:
        if isinstance(at.value, dict):
            return True
        self.err(at, f"must be a mapping, not {_kind(at.value)}")
        return False

    def seq(self, at: _At, what: str = "a list") -> bool:
        if isinstance(at.value, list):
            return True
        self.err(at, f"must be {what}, not {_kind(at.value)}")
        return False

    def string(self, at: _At, nonempty: bool = True) -> bool:
        if not isinstance(at.value, str):
            self.err(at, f"must be a string, not {_kind(at.value)}")
            return False
        if nonempty and not at.value.strip():
            self.err(at, "must not be empty")
            return False
        return True

    def boolean(self, at: _At) -> bool:
        if _is_bool(at.value):
            return True
        self.err(at, f"must be true or false, not {_kind(at.value)}")
        return False

    def parsed(self, at: _At, parser, *args) -> Any:
        """Run a parser; report its complaint at ``at``. Returns None when it failed."""
        try:
            return parser(at.value, *args)
        except _Bad as exc:
            self.err(at, str(exc))
            return None

    def keys(self, at: _At, allowed: set[str], extensions: bool = True) -> None:
        for key, child in at.entries():
            if not isinstance(key, str):
                self.err(child, f"keys must be strings, not {_kind(key)}", field=at.field)
                continue
            if key in allowed or (extensions and key.startswith("x-")):
                continue
            message = f"unsupported key {key!r}"
            hint = UNSUPPORTED_HINTS.get(key) if allowed is SERVICE_KEYS else None
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.8)
            if hint:
                message += f": {hint}"
            elif close:
                message += f" (did you mean {close[0]!r}?)"
            self.err(child, message)

    def name_map(self, at: _At, check_value) -> None:
        """A mapping of names (list entries or mapping keys) to values, like labels or driver_opts."""
        if isinstance(at.value, list):
            for _, item in at.items():
                self.parsed(item, _split_assignment, "entry")
        elif isinstance(at.value, dict):
            for key, child in at.entries():
                if not isinstance(key, str) or not key:
                    self.err(child, f"names must be non-empty strings, not {_kind(key)}", field=at.field)
                check_value(child)
        else:
            self.err(at, f"must be a list of 'NAME=value' or a mapping, not {_kind(at.value)}")

    def scalar_value(self, at: _At) -> None:
        if not _is_scalar(at.value):
            self.err(at, f"must be a string, number, boolean or null, not {_kind(at.value)}")

    def labels(self, at: _At) -> None:
        if at.value is None:
            return
        self.name_map(at, self.scalar_value)
        if isinstance(at.value, (list, dict)):
            try:
                names = _label_pairs(at.value)
            except _Bad:
                return
            for name in sorted(names):
                if name in RESERVED_LABELS:
                    self.err(at, f"label {name!r} is set by the deployer and cannot be written")

    def string_map(self, at: _At) -> None:
        """driver_opts, logging options: name -> string or number."""
        if not self.mapping(at):
            return
        for key, child in at.entries():
            if not isinstance(key, str):
                self.err(child, f"names must be strings, not {_kind(key)}", field=at.field)
            if child.value is None or not _is_scalar(child.value):
                self.err(child, f"must be a string or number, not {_kind(child.value)}")

    # -- top level --------------------------------------------------------

    def check(self, doc: Any) -> list[ConfigError]:
        top = _At(doc, None, None)
        if not isinstance(doc, dict):
            self.errors.append(
                ConfigError(self.path, f"a compose file must be a mapping with a 'services' key, not {_kind(doc)}", line=1)
            )
            return self.errors
        self.keys(top, TOP_KEYS)
        for key, at in top.entries():
            if key == "volumes":
                self.top_definitions(at, TOP_VOLUME_KEYS, self.volumes, "volume")
            elif key == "networks":
                self.top_definitions(at, TOP_NETWORK_KEYS, self.networks, "network")
            elif key == "secrets":
                self.top_secrets(at)
            elif key == "name" and not isinstance(at.value, str):
                self.err(at, f"must be a string, not {_kind(at.value)}")
        services = top.get("services")
        if services is None:
            self.errors.append(ConfigError(self.path, "missing required key 'services'", line=1))
        elif self.mapping(services):
            self.service_names = [k for k in services.value if isinstance(k, str)]
            for name, at in services.entries():
                self.service(name, at)
            self.cross_service_checks()
        return sorted(self.errors, key=lambda e: e.line or 0)

    def top_definitions(self, at: _At, allowed: set[str], declared: dict[str, Any], what: str) -> None:
        if at.value is None:
            return
        if not self.mapping(at):
            return
        for name, child in at.entries():
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                self.err(child, f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-'")
                continue
            declared[name] = child.value
            if child.value is None:
                continue
            if not self.mapping(child):
                continue
            self.keys(child, allowed)
            external = False
            for key, sub in child.entries():
                if key == "driver":
                    self.string(sub)
                elif key == "driver_opts":
                    self.string_map(sub)
                elif key == "labels":
                    self.labels(sub)
                elif key in ("external", "internal"):
                    if self.boolean(sub) and key == "external":
                        external = bool(sub.value)
                elif key == "name":
                    if self.string(sub) and not _CONTAINER_NAME_RE.fullmatch(sub.value):
                        self.err(sub, f"invalid {what} name {sub.value!r}")
            if external:
                for key, sub in child.entries():
                    if key in ("driver", "driver_opts", "labels", "internal"):
                        self.err(sub, f"an external {what} is not created by the deployer, so {key!r} cannot be set")

    def top_secrets(self, at: _At) -> None:
        if at.value is None or not self.mapping(at):
            return
        compose_dir = self.repo_root / PurePosixPath(self.path).parent
        for name, child in at.entries():
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                self.err(child, f"invalid secret name {name!r}")
                continue
            self.secrets.add(name)
            if not self.mapping(child):
                continue
            for key, sub in child.entries():
                if key == "environment":
                    self.err(sub, "secrets from 'environment' are not supported: use 'file'")
                elif key == "external":
                    self.err(sub, "external secrets are for swarm and not supported: use 'file'")
            self.keys(child, TOP_SECRET_KEYS | {"environment", "external"})
            file_at = child.get("file")
            if file_at is None:
                if child.get("environment") is None and child.get("external") is None:
                    self.err(child, "missing required key 'file'")
                continue
            if self.string(file_at):
                self.secret_file(file_at, compose_dir / file_at.value)

    def secret_file(self, at: _At, file: Path) -> None:
        file = Path(os.path.normpath(file))
        root = Path(os.path.normpath(self.repo_root))
        try:
            shown = file.relative_to(root).as_posix()
            inside = True
        except ValueError:
            shown, inside = str(file), False
        if not file.exists():
            self.err(at, f"secret file {shown} does not exist")
            return
        if not file.is_file():
            self.err(at, f"secret file {shown} is not a regular file")
            return
        if not inside:
            return
        if git.is_tracked(root, shown):
            self.err(at, f"secret file {shown} is tracked by git; secrets must stay out of the repository")

    # -- one service ------------------------------------------------------

    def service(self, name: Any, at: _At) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            self.err(at, f"invalid service name {name!r}: use letters, digits, '_', '.', '-'")
            return
        facts = self.facts[name] = _ServiceFacts(at)
        if not self.mapping(at):
            return
        self.keys(at, SERVICE_KEYS)
        if at.get("image") is None:
            if at.get("build") is not None:
                self.err(at, "missing required key 'image': the deployer never builds, 'build' is allowed only beside 'image'")
            else:
                self.err(at, "missing required key 'image'")
        network_mode = None
        mode_at = at.get("network_mode")
        if mode_at is not None and isinstance(mode_at.value, str):
            network_mode = mode_at.value
        for key, child in at.entries():
            if not isinstance(key, str) or key not in SERVICE_KEYS:
                continue
            if child.value is None and key in NULL_MEANS_EMPTY:
                continue
            getattr(self, f"s_{key}")(name, child, facts, network_mode)

    def s_image(self, name, at, facts, network_mode) -> None:
        if self.string(at) and re.search(r"\s", at.value):
            self.err(at, f"invalid image reference {at.value!r}: it contains whitespace")

    def s_build(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, str):
            self.string(at)
            return
        if not isinstance(at.value, dict):
            self.err(at, f"must be a string (the context) or a mapping, not {_kind(at.value)}")
            return
        self.keys(at, BUILD_KEYS)
        for key, sub in at.entries():
            if key in ("context", "dockerfile"):
                self.string(sub)
            elif key == "args" and sub.value is not None:
                self.name_map(sub, self.scalar_value)

    def s_ports(self, name, at, facts, network_mode) -> None:
        if network_mode and network_mode != "bridge":
            self.err(at, f"ports cannot be published with network_mode {network_mode!r}")
        if not self.seq(at):
            return
        for _, item in at.items():
            if isinstance(item.value, dict):
                self.keys(item, PORT_LONG_KEYS, extensions=False)
                if item.get("target") is None:
                    self.err(item, "missing required key 'target'")
                    continue
                bindings = self.parsed(item, parse_port_long)
            else:
                bindings = self.parsed(item, parse_port)
            for b in bindings or []:
                facts.bindings.append((b, item))

    def s_expose(self, name, at, facts, network_mode) -> None:
        if self.seq(at):
            for _, item in at.items():
                self.parsed(item, parse_expose)

    def s_volumes(self, name, at, facts, network_mode) -> None:
        if not self.seq(at):
            return
        targets: dict[str, str] = {}
        tmpfs_at = facts.at.get("tmpfs")
        if tmpfs_at is not None:
            for item in _as_list(tmpfs_at.value):
                if isinstance(item, str):
                    targets[item.partition(":")[0]] = "tmpfs"
        for _, item in at.items():
            if isinstance(item.value, dict):
                self.keys(item, VOLUME_LONG_KEYS, extensions=False)
            mount = self.parsed(item, parse_volume)
            if mount is None:
                continue
            if mount["type"] == "volume" and mount["source"] not in self.volumes:
                self.err(item, f"volume {mount['source']!r} is not declared in the top-level volumes")
            target = mount["target"].rstrip("/") or "/"
            if target in targets:
                self.err(item, f"mount target {target} is used twice (also by {targets[target]})")
            targets[target] = item.field or ""

    def s_tmpfs(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, str):
            self.parsed(at, parse_tmpfs)
        elif self.seq(at, "a path or a list of paths"):
            for _, item in at.items():
                self.parsed(item, parse_tmpfs)

    def s_restart(self, name, at, facts, network_mode) -> None:
        if at.value is None:
            self.err(at, f"must be one of {', '.join(RESTART_POLICIES)} or on-failure:N, not null")
            return
        self.parsed(at, parse_restart)

    def s_environment(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, list):
            for _, item in at.items():
                self.parsed(item, _split_assignment, "environment variable")
        elif isinstance(at.value, dict):
            for key, child in at.entries():
                if not isinstance(key, str) or not key or "=" in key:
                    self.err(child, f"invalid variable name {key!r}", field=at.field)
                self.scalar_value(child)
        else:
            self.err(at, f"must be a list of 'NAME=value' or a mapping, not {_kind(at.value)}")

    def s_labels(self, name, at, facts, network_mode) -> None:
        self.labels(at)

    def s_command(self, name, at, facts, network_mode) -> None:
        if at.value is None:
            self.err(at, "must be a string or a list of strings, not null")
            return
        if isinstance(at.value, list):
            for _, item in at.items():
                if not isinstance(item.value, (str, int, float)) or _is_bool(item.value):
                    self.err(item, f"must be a string, not {_kind(item.value)}")
            return
        self.parsed(at, parse_command)

    s_entrypoint = s_command

    def s_healthcheck(self, name, at, facts, network_mode) -> None:
        if not self.mapping(at):
            return
        self.keys(at, HEALTHCHECK_KEYS)
        disabled = False
        for key, sub in at.entries():
            if key == "test":
                self.parsed(sub, parse_healthcheck_test)
            elif key in ("interval", "timeout", "start_period"):
                ns = self.parsed(sub, parse_duration)
                if ns is not None and 0 < ns < 10**6:
                    self.err(sub, "must be 0 or at least 1ms")
            elif key == "retries":
                if not _is_int(sub.value) or sub.value < 0:
                    self.err(sub, f"must be a whole number of 0 or more, not {_kind(sub.value)}")
            elif key == "disable":
                if self.boolean(sub):
                    disabled = bool(sub.value)
        if disabled:
            others = [k for k in at.value if k != "disable" and not str(k).startswith("x-")]
            if others:
                self.err(at, f"disable: true cannot be combined with {', '.join(map(str, others))}")

    def s_depends_on(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, list):
            for _, item in at.items():
                if self.string(item):
                    facts.deps.append((item.value, item))
        elif isinstance(at.value, dict):
            for dep, child in at.entries():
                if not isinstance(dep, str):
                    self.err(child, f"service names must be strings, not {_kind(dep)}", field=at.field)
                    continue
                facts.deps.append((dep, child))
                if child.value is None:
                    continue
                if not self.mapping(child):
                    continue
                self.keys(child, DEPENDS_ON_KEYS, extensions=False)
                cond = child.get("condition")
                if cond is not None and cond.value not in DEPENDS_ON_CONDITIONS:
                    self.err(cond, f"invalid condition {cond.value!r}: use {', '.join(DEPENDS_ON_CONDITIONS)}")
        else:
            self.err(at, f"must be a list of service names or a mapping, not {_kind(at.value)}")

    def s_networks(self, name, at, facts, network_mode) -> None:
        if network_mode is not None:
            self.err(at, "networks cannot be combined with network_mode")
        if isinstance(at.value, list):
            for _, item in at.items():
                if self.string(item):
                    self.declared_network(item.value, item)
        elif isinstance(at.value, dict):
            for net, child in at.entries():
                if not isinstance(net, str):
                    self.err(child, f"network names must be strings, not {_kind(net)}", field=at.field)
                    continue
                self.declared_network(net, child)
                if child.value is None or not self.mapping(child):
                    continue
                self.keys(child, SERVICE_NETWORK_KEYS)
                aliases = child.get("aliases")
                if aliases is not None and self.seq(aliases):
                    for _, alias in aliases.items():
                        if self.string(alias) and re.search(r"\s", alias.value):
                            self.err(alias, f"invalid alias {alias.value!r}")
                ip = child.get("ipv4_address")
                if ip is not None and self.string(ip):
                    try:
                        ipaddress.IPv4Address(ip.value)
                    except ValueError:
                        self.err(ip, f"invalid IPv4 address {ip.value!r}")
                    else:
                        definition = self.networks.get(net)
                        if not (isinstance(definition, dict) and definition.get("external") is True):
                            self.err(
                                ip,
                                "a static address needs a network with a configured subnet; the deployer "
                                "does not manage IPAM, so declare the network as external",
                            )
        else:
            self.err(at, f"must be a list of network names or a mapping, not {_kind(at.value)}")

    def declared_network(self, net: str, at: _At) -> None:
        if net != "default" and net not in self.networks:
            self.err(at, f"network {net!r} is not declared in the top-level networks")

    def s_network_mode(self, name, at, facts, network_mode) -> None:
        if not self.string(at):
            return
        mode = at.value
        if mode in ("host", "none", "bridge"):
            return
        if mode.startswith("service:"):
            other = mode[len("service:") :]
            facts.deps.append((other, at))
            return
        if mode.startswith("container:") and len(mode) > len("container:"):
            return
        self.err(at, f"invalid network_mode {mode!r}: use host, none, bridge, service:<name> or container:<name>")

    def s_secrets(self, name, at, facts, network_mode) -> None:
        if not self.seq(at):
            return
        targets: dict[str, str] = {}
        for _, item in at.items():
            source, target = None, None
            if isinstance(item.value, dict):
                self.keys(item, SERVICE_SECRET_KEYS, extensions=False)
                src = item.get("source")
                if src is None:
                    self.err(item, "missing required key 'source'")
                elif self.string(src):
                    source = src.value
                tgt = item.get("target")
                if tgt is not None and self.string(tgt):
                    if ".." in PurePosixPath(tgt.value).parts:
                        self.err(tgt, f"invalid target {tgt.value!r}: '..' is not allowed")
                    else:
                        target = tgt.value
                mode = item.get("mode")
                if mode is not None:
                    self.parsed(mode, parse_mode)
            elif self.string(item):
                source = item.value
            if source is None:
                continue
            if source not in self.secrets:
                self.err(item, f"secret {source!r} is not declared in the top-level secrets")
            path = _secret_target(source, target)
            if path in targets:
                self.err(item, f"secret target {path} is used twice (also by {targets[path]})")
            targets[path] = item.field or ""

    def s_container_name(self, name, at, facts, network_mode) -> None:
        if not self.string(at):
            return
        if not _CONTAINER_NAME_RE.fullmatch(at.value):
            self.err(at, f"invalid container name {at.value!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]+")
            return
        facts.container_name = (at.value, at)

    def s_user(self, name, at, facts, network_mode) -> None:
        if _is_int(at.value):
            return
        self.string(at)

    def s_working_dir(self, name, at, facts, network_mode) -> None:
        if self.string(at) and not at.value.startswith("/"):
            self.err(at, f"must be an absolute path, not {at.value!r}")

    def s_hostname(self, name, at, facts, network_mode) -> None:
        if self.string(at) and re.search(r"\s", at.value):
            self.err(at, f"invalid hostname {at.value!r}")

    def s_extra_hosts(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, list):
            for _, item in at.items():
                pairs = self.parsed(item, lambda v: _extra_host_pairs([v]))
                for host, ip in pairs or []:
                    self.parsed(item, lambda _v, h=host, i=ip: _check_extra_host(h, i))
        elif isinstance(at.value, dict):
            for host, child in at.entries():
                if not isinstance(child.value, str):
                    self.err(child, f"must be an IP address, not {_kind(child.value)}")
                    continue
                self.parsed(child, lambda _v, h=str(host): _check_extra_host(h, child.value))
        else:
            self.err(at, f"must be a list of 'host:ip' or a mapping, not {_kind(at.value)}")

    def s_cap_add(self, name, at, facts, network_mode) -> None:
        if self.seq(at):
            for _, item in at.items():
                if self.string(item) and not re.fullmatch(r"[A-Za-z_0-9]+", item.value):
                    self.err(item, f"invalid capability {item.value!r}")

    s_cap_drop = s_cap_add

    def s_mem_limit(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_bytes)

    s_shm_size = s_mem_limit

    def s_cpus(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_cpus)

    def s_logging(self, name, at, facts, network_mode) -> None:
        if not self.mapping(at):
            return
        self.keys(at, LOGGING_KEYS)
        driver = at.get("driver")
        if driver is not None:
            self.string(driver)
        options = at.get("options")
        if options is not None and options.value is not None:
            self.string_map(options)

    def s_init(self, name, at, facts, network_mode) -> None:
        self.boolean(at)

    s_privileged = s_init
    s_read_only = s_init

    def s_stop_signal(self, name, at, facts, network_mode) -> None:
        if _is_int(at.value) and at.value > 0:
            return
        if self.string(at) and not _SIGNAL_RE.fullmatch(at.value):
            self.err(at, f"invalid signal {at.value!r}")

    def s_stop_grace_period(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_duration)

    def s_dns(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, str):
            self.parsed(at, _check_ip)
        elif self.seq(at, "an IP address or a list of them"):
            for _, item in at.items():
                if self.string(item):
                    self.parsed(item, _check_ip)

    # -- across services --------------------------------------------------

    def cross_service_checks(self) -> None:
        known = set(self.service_names)
        listing = ", ".join(sorted(known))
        edges: dict[str, list[tuple[str, _At]]] = {}
        for name, facts in self.facts.items():
            for dep, at in facts.deps:
                if dep not in known:
                    self.err(at, f"unknown service {dep!r} (services in this file: {listing})")
                else:
                    edges.setdefault(name, []).append((dep, at))
        self.cycles(edges)

        names: dict[str, str] = {}
        for name, facts in self.facts.items():
            if facts.container_name:
                cname, at = facts.container_name
                if cname in names:
                    self.err(at, f"container name {cname!r} is also used by service {names[cname]!r}")
                names[cname] = name

        published: list[tuple[_Binding, str, _At]] = []
        for name, facts in self.facts.items():
            for binding, at in facts.bindings:
                _, proto, ip, port = binding
                if port is None:
                    continue
                for (_, o_proto, o_ip, o_port), o_name, o_at in published:
                    if o_proto == proto and o_port == port and _ips_overlap(ip, o_ip):
                        self.err(at, f"host port {port}/{proto} is already published by service {o_name!r} ({o_at.field})")
                        break
                published.append((binding, name, at))

    def cycles(self, edges: dict[str, list[tuple[str, _At]]]) -> None:
        reported: set[tuple[str, ...]] = set()
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        stack: list[str] = []

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for dep, _ in sorted(edges.get(node, []), key=lambda e: e[0]):
                if state.get(dep) == 1:
                    cycle = stack[stack.index(dep) :]
                    first = cycle.index(min(cycle))
                    cycle = cycle[first:] + cycle[:first]
                    if tuple(cycle) not in reported:
                        reported.add(tuple(cycle))
                        at = next(a for d, a in edges[cycle[0]] if d == (cycle[1] if len(cycle) > 1 else cycle[0]))
                        self.err(at, "depends_on cycle: " + " -> ".join(cycle + [cycle[0]]))
                elif dep not in state:
                    visit(dep)
            stack.pop()
            state[node] = 2

        for node in sorted(edges):
            if node not in state:
                visit(node)


def _ips_overlap(a: str, b: str) -> bool:
    if a == b or not a or not b:
        return True
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    if ia.version != ib.version:
        return False
    return ia.is_unspecified or ib.is_unspecified


def _secret_target(name: str, target: str | None) -> str:
    if not target:
        return f"{SECRETS_DIR}/{name}"
    return target if target.startswith("/") else f"{SECRETS_DIR}/{target}"


def validate_compose(doc: Any, path: str, repo_root: Path) -> list[ConfigError]:
    """Every problem in a parsed compose document, ordered by line.

    ``doc`` is ruamel round-trip data (plain data works too, without lines);
    ``path`` is the file's repo-relative path, used in the errors and to find
    secret files (relative to the compose file's directory) under ``repo_root``.
    """
    return _Checker(path, Path(repo_root)).check(doc)


# --------------------------------------------------------------------------
# Engine names and resources


def _engine_name(project: str, name: str, definition: Any) -> str:
    """Volumes and networks: 'name:' as written, the key itself when external, else project_key."""
    definition = definition or {}
    if definition.get("name"):
        return str(definition["name"])
    if definition.get("external"):
        return name
    return f"{project}_{name}"


def _network_engine_name(node: Node, name: str) -> str:
    return _engine_name(node.project, name, node.networks.get(name))


def _container_name(node: Node, service_name: str, config: Mapping[str, Any]) -> str:
    return config.get("container_name") or f"{node.project}-{service_name}"


def container_name(node: Node, service: Service) -> str:
    """The engine name of a service's container: ``container_name`` or <project>-<service>."""
    return _container_name(node, service.name, service.config)


def _uses_default_network(config: Mapping[str, Any]) -> bool:
    if config.get("network_mode"):
        return False
    nets = config.get("networks")
    return not nets or "default" in nets


def _string_dict(value: Any) -> dict[str, str]:
    return {str(k): _scalar_str(v) for k, v in sorted((value or {}).items())}


def node_resources(node: Node) -> tuple[list[VolumeSpec], list[NetworkSpec]]:
    """The named volumes and networks the node's engine must have.

    External ones are listed with ``external=True`` (they must exist; the
    deployer does not create them). The default network is included when a
    service uses it (joins no network explicitly and has no network_mode).
    """
    identity = {LABEL_DC: node.dc, LABEL_NODE: node.name}
    volumes = []
    for name in sorted(node.volumes):
        d = node.volumes[name] or {}
        external = bool(d.get("external"))
        volumes.append(
            VolumeSpec(
                name=_engine_name(node.project, name, d),
                driver=d.get("driver") or "local",
                driver_opts=_string_dict(d.get("driver_opts")),
                labels={} if external else {**_label_pairs(d.get("labels")), **identity},
                external=external,
            )
        )
    wanted = dict(node.networks)
    if "default" not in wanted and any(_uses_default_network(s.config) for s in node.services.values()):
        wanted["default"] = None
    networks = []
    for name in sorted(wanted):
        d = wanted[name] or {}
        external = bool(d.get("external"))
        networks.append(
            NetworkSpec(
                name=_engine_name(node.project, name, d),
                driver=d.get("driver") or "bridge",
                options=_string_dict(d.get("driver_opts")),
                internal=bool(d.get("internal")),
                labels={} if external else {**_label_pairs(d.get("labels")), **identity},
                external=external,
            )
        )
    return volumes, networks


# --------------------------------------------------------------------------
# Container spec


def _port_key(port: int, proto: str) -> int | tuple[int, str]:
    return port if proto == "tcp" else (port, proto)


def _healthcheck(config: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """compose healthcheck -> (engine Healthcheck dict or None, whether a compose test runs)."""
    hc = config.get("healthcheck")
    if hc is None:
        return None, False
    test = parse_healthcheck_test(hc["test"]) if hc.get("test") is not None else None
    if hc.get("disable") or test == ["NONE"]:
        return {"Test": ["NONE"]}, False
    out: dict[str, Any] = {}
    if test is not None:
        out["Test"] = test
    for key, engine_key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod")):
        if hc.get(key) is not None:
            out[engine_key] = parse_duration(hc[key])
    if hc.get("retries") is not None:
        out["Retries"] = int(hc["retries"])
    return out, test is not None


def _environment(config: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    values: dict[str, str] = {}
    for key, value in _env_pairs(config.get("environment")):
        if value is None:
            # like compose: a name without a value takes the deployer's environment, or is left out
            if key in environ:
                values[key] = environ[key]
            else:
                values.pop(key, None)
        else:
            values[key] = value
    return [f"{k}={values[k]}" for k in sorted(values)]


def _secret_files(node: Node, config: Mapping[str, Any], repo_root: Path) -> list[SecretFile]:
    compose_dir = Path(repo_root) / PurePosixPath(node.compose_path or node.path).parent
    out = []
    for entry in config.get("secrets") or []:
        if isinstance(entry, str):
            name, target, mode = entry, None, DEFAULT_SECRET_MODE
        else:
            name, target = entry["source"], entry.get("target")
            mode = parse_mode(entry["mode"]) if entry.get("mode") is not None else DEFAULT_SECRET_MODE
        source = Path(os.path.abspath(compose_dir / node.secrets[name]["file"]))
        try:
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigError(
                node.compose_path or node.path,
                f"cannot read secret file {source}: {exc.strerror or exc}",
                field=f"secrets.{name}.file",
            ) from None
        out.append(SecretFile(name=name, source=str(source), target=_secret_target(name, target), sha256=digest, mode=mode))
    return sorted(out, key=lambda s: s.target)


def container_spec(
    node: Node, service: Service, repo_root: Path, *, environ: Mapping[str, str] | None = None
) -> ContainerSpec:
    """The container a validated service becomes on ``node``.

    ``service.config`` is plain data that passed ``validate_compose``. ``environ``
    resolves environment entries written without a value (default: os.environ).
    """
    cfg = service.config
    env_source = os.environ if environ is None else environ
    create: dict[str, Any] = {}
    host: dict[str, Any] = {}

    # process
    if cfg.get("command") is not None:
        create["command"] = parse_command(cfg["command"])
    if cfg.get("entrypoint") is not None:
        create["entrypoint"] = parse_command(cfg["entrypoint"])
    environment = _environment(cfg, env_source)
    if environment:
        create["environment"] = environment
    for key in ("user", "working_dir", "hostname"):
        if cfg.get(key) is not None:
            create[key] = str(cfg[key])
    if cfg.get("stop_signal") is not None:
        create["stop_signal"] = str(cfg["stop_signal"])
    stop_timeout = DEFAULT_STOP_TIMEOUT
    if cfg.get("stop_grace_period") is not None:
        stop_timeout = math.ceil(parse_duration(cfg["stop_grace_period"]) / 10**9)
    create["stop_timeout"] = stop_timeout
    healthcheck, has_healthcheck = _healthcheck(cfg)
    if healthcheck is not None:
        create["healthcheck"] = healthcheck

    # ports
    bindings: list[_Binding] = []
    for entry in cfg.get("ports") or []:
        bindings.extend(parse_port_long(entry) if isinstance(entry, dict) else parse_port(entry))
    exposed = {(port, proto) for port, proto, _, _ in bindings}
    for entry in cfg.get("expose") or []:
        exposed.update(parse_expose(entry))
    if exposed:
        create["ports"] = [_port_key(p, proto) for p, proto in sorted(exposed)]
    if bindings:
        port_bindings: dict[str, list[tuple[str, int | None]]] = {}
        for port, proto, ip, host_port in bindings:
            entry = (ip, host_port)
            slot = port_bindings.setdefault(f"{port}/{proto}", [])
            if entry not in slot:
                slot.append(entry)
        host["port_bindings"] = {
            k: sorted(v, key=lambda b: (b[0], b[1] or 0))
            for k, v in sorted(port_bindings.items(), key=lambda kv: (int(kv[0].split("/")[0]), kv[0]))
        }

    # mounts
    binds = []
    tmpfs: dict[str, str] = {}
    for entry in cfg.get("volumes") or []:
        mount = parse_volume(entry)
        if mount["type"] == "tmpfs":
            tmpfs[mount["target"]] = f"size={mount['tmpfs_size']}" if mount["tmpfs_size"] is not None else ""
            continue
        source = mount["source"]
        if mount["type"] == "volume":
            source = _engine_name(node.project, source, node.volumes.get(source))
        options = "ro" if mount["read_only"] else "rw"
        if mount["selinux"]:
            options += "," + mount["selinux"]
        binds.append(f"{source}:{mount['target']}:{options}")
    for entry in _as_list(cfg.get("tmpfs")):
        path, options = parse_tmpfs(entry)
        tmpfs[path] = options
    if binds:
        host["binds"] = sorted(binds, key=lambda b: (b.split(":")[1], b))
    if tmpfs:
        host["tmpfs"] = dict(sorted(tmpfs.items()))

    # host settings
    restart = parse_restart(cfg.get("restart"))
    if restart:
        host["restart_policy"] = restart
    for key in ("cap_add", "cap_drop"):
        if cfg.get(key):
            host[key] = sorted(set(cfg[key]))
    if cfg.get("mem_limit") is not None:
        host["mem_limit"] = parse_bytes(cfg["mem_limit"])
    if cfg.get("shm_size") is not None:
        host["shm_size"] = parse_bytes(cfg["shm_size"])
    if cfg.get("cpus") is not None:
        host["nano_cpus"] = int(round(parse_cpus(cfg["cpus"]) * 10**9))
    logging = cfg.get("logging")
    if logging is not None:
        host["log_config"] = {"Type": logging.get("driver") or "", "Config": _string_dict(logging.get("options"))}
    for key in ("init", "privileged", "read_only"):
        if cfg.get(key) is not None:
            host[key] = bool(cfg[key])
    extra_hosts = _extra_host_pairs(cfg.get("extra_hosts"))
    if extra_hosts:
        host["extra_hosts"] = sorted({f"{h}:{ip}" for h, ip in extra_hosts})
    if cfg.get("dns"):
        host["dns"] = [str(d) for d in _as_list(cfg["dns"])]

    # networks
    networks: list[tuple[str, list[str]]] = []
    ipv4: dict[str, str] = {}
    mode = cfg.get("network_mode")
    if mode:
        if mode.startswith("service:"):
            other = mode[len("service:") :]
            other_cfg = node.services[other].config if other in node.services else {}
            mode = f"container:{_container_name(node, other, other_cfg)}"
        host["network_mode"] = mode
    else:
        nets = cfg.get("networks") or ["default"]
        entries = {n: None for n in nets} if isinstance(nets, list) else dict(nets)
        for net in sorted(entries):
            opts = entries[net] or {}
            engine = _network_engine_name(node, net)
            aliases = sorted({service.name, *(str(a) for a in opts.get("aliases") or [])})
            networks.append((engine, aliases))
            if opts.get("ipv4_address"):
                ipv4[engine] = str(opts["ipv4_address"])
        host["network_mode"] = networks[0][0]

    labels = _label_pairs(cfg.get("labels"))
    labels.update({LABEL_DC: node.dc, LABEL_NODE: node.name, LABEL_SERVICE: service.name, LABEL_IMAGE: service.image})

    return ContainerSpec(
        dc=node.dc,
        node=node.name,
        service=service.name,
        name=_container_name(node, service.name, cfg),
        image=service.image,
        create=create,
        host=host,
        networks=networks,
        labels=dict(sorted(labels.items())),
        secrets=_secret_files(node, cfg, repo_root),
        stop_timeout=stop_timeout,
        has_healthcheck=has_healthcheck,
        published_ports=any(host_port for _, _, _, host_port in bindings),  # fixed host ports only
        ipv4_addresses=ipv4,
    )


# --------------------------------------------------------------------------
# Order


def start_order(services: dict[str, Service]) -> list[str]:
    """Service names so that each comes after the services it depends on; ties by name.

    Dependencies are depends_on and network_mode service:X. Names outside
    ``services`` are ignored; services caught in a cycle (validation reports
    those) come last, by name.
    """
    needs = {
        name: {d for d in _service_deps(svc.config) if d in services and d != name}
        for name, svc in services.items()
    }
    waiting_on = {name: len(deps) for name, deps in needs.items()}
    dependents: dict[str, list[str]] = {name: [] for name in services}
    for name, deps in needs.items():
        for dep in deps:
            dependents[dep].append(name)
    ready = [name for name, n in waiting_on.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other in dependents[name]:
            waiting_on[other] -= 1
            if waiting_on[other] == 0:
                heapq.heappush(ready, other)
    order.extend(sorted(n for n in services if n not in order))
    return order
