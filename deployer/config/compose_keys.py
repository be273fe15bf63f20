"""Compose keys: which are supported, and how each value is read.

The tables of supported keys (``TOP_KEYS``, ``SERVICE_KEYS`` and the keys of
each nested mapping) and the word on why some well-known keys are refused
(``UNSUPPORTED_HINTS``); ruamel data -> plain data (``to_plain``); and one
parser per kind of value (ports, expose, volumes, tmpfs, restart, command,
healthcheck test, file mode, extra hosts, environment and label pairs, cpus).
The parsers take plain or ruamel data and raise ``values.BadValue`` with the
message the validator reports; the spec builder calls the same parsers on
validated data, so both read a value the same way. Durations, byte sizes and
port numbers are the shared grammar of ``deployer.values`` (compose durations
need a unit, as the Compose spec says).
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from typing import Any, Mapping

from ruamel.yaml.scalarint import OctalInt

from deployer.config.compose_host import HOST_KEYS
from deployer.config.scalars import is_bool, is_int, scalar_str
from deployer.spec import SECRETS_DIR
from deployer.values import BadValue, kind, parse_bytes, parse_port_number, parse_port_range

# --------------------------------------------------------------------------
# What is supported

TOP_KEYS = {"services", "volumes", "networks", "secrets", "configs", "version", "name"}

# A word on why the top-level keys of the Compose specification the deployer lacks are refused.
TOP_HINTS = {
    "models": "AI models are run by Docker Model Runner, which these engines do not have",
}

SERVICE_KEYS = {
    "ports", "image", "volumes", "restart", "environment", "build", "networks",
    "depends_on", "command", "secrets", "container_name", "expose", "healthcheck",
    "entrypoint", "labels", "user", "working_dir", "hostname", "extra_hosts",
    "cap_add", "cap_drop", "mem_limit", "cpus", "logging", "init", "stop_signal",
    "stop_grace_period", "network_mode", "privileged", "read_only", "tmpfs", "dns",
    "shm_size", "configs", "env_file", "pull_policy", "post_start", "pre_stop",
    "deploy", "scale", "profiles",  # config.compose_deploy
    *HOST_KEYS,  # one engine argument each (config.compose_host)
}  # fmt: skip

# Why each service key of the Compose specification the deployer does not support is refused.
UNSUPPORTED_HINTS = {
    "links": "services on a shared network reach each other by service name (add an alias under networks)",
    "external_links": "links are a legacy of the default bridge: join the other container's network and use its name",
    "volumes_from": "name the volume and mount it in both services: the source container is replaced on "
                    "every deploy, and its mounts with it",
    "annotations": "container annotations need Docker API 1.43; the engines here speak 1.41",
    "label_file": "write the labels under 'labels'",
    "credential_spec": "credential specs are for Windows containers (gMSA); these are Linux engines",
    "cpu_count": "cpu_count is for Windows containers; on Linux use cpus or cpuset",
    "cpu_percent": "cpu_percent is for Windows containers; on Linux use cpus",
    "develop": "develop is for 'docker compose watch' on a developer's machine; the deployer deploys images",
    "models": "AI models are run by Docker Model Runner, which these engines do not have",
    "provider": "a provider service is set up by a Compose plugin, not by an engine",
    "use_api_socket": "it mounts the Docker socket and the operator's registry credentials into the container; "
                      "bind-mount /var/run/docker.sock explicitly if that is really meant",
    "pull_refresh_after": "the deployer pulls an image only when the node lacks it (pull_policy: missing)",
}

# Why some keys inside a service's mappings are refused (keyed by the key).
HEALTHCHECK_HINTS = {"start_interval": "needs Docker API 1.44; the engines here speak 1.41"}
PORT_MODES = ("host",)
VOLUME_LONG_HINTS = {
    "consistency": "consistency options mean something only on Docker Desktop for Mac; these are Linux engines",
    "image": "image mounts need Docker API 1.47; the engines here speak 1.41",
}
SERVICE_NETWORK_HINTS = {
    "mac_address": "a per-network MAC address needs Docker API 1.44; set the service's mac_address instead",
    "gw_priority": "the gateway priority needs Docker API 1.48; the engines here speak 1.41",
    "interface_name": "the interface name needs Docker API 1.49; the engines here speak 1.41",
}
PULL_POLICIES = ("missing", "if_not_present")

HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "disable"}
PORT_LONG_KEYS = {"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"}
VOLUME_LONG_KEYS = {"type", "source", "target", "read_only", "tmpfs", "bind", "volume"}
VOLUME_BIND_KEYS = {"propagation", "create_host_path", "selinux", "recursive"}
VOLUME_VOLUME_KEYS = {"nocopy", "subpath", "labels"}
VOLUME_TMPFS_KEYS = {"size", "mode"}
PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
TOP_VOLUME_KEYS = {"driver", "driver_opts", "labels", "external", "name"}
TOP_NETWORK_KEYS = {"driver", "driver_opts", "internal", "labels", "external", "name"}
TOP_SECRET_KEYS = {"file"}
SERVICE_SECRET_KEYS = {"source", "target", "mode", "uid", "gid"}
TOP_CONFIG_KEYS = {"file", "content"}
SERVICE_CONFIG_KEYS = {"source", "target", "mode", "uid", "gid"}
ENV_FILE_KEYS = {"path", "required"}
SERVICE_NETWORK_KEYS = {"aliases", "ipv4_address", "ipv6_address", "link_local_ips", "priority", "driver_opts"}
DEPENDS_ON_KEYS = {"condition", "restart", "required"}
DEPENDS_ON_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
# build is what made the image (the deployer deploys 'image' and never builds): every key of the spec is allowed
BUILD_KEYS = {
    "context", "dockerfile", "args", "additional_contexts", "cache_from", "cache_to", "dockerfile_inline",
    "entitlements", "extra_hosts", "isolation", "labels", "network", "no_cache", "platforms", "privileged",
    "provenance", "pull", "sbom", "secrets", "shm_size", "ssh", "tags", "target", "ulimits",
}  # fmt: skip
LOGGING_KEYS = {"driver", "options"}
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
PROTOCOLS = ("tcp", "udp", "sctp")

# Keys whose value is a list or mapping: written empty (null) they mean "none".
NULL_MEANS_EMPTY = {
    "ports", "volumes", "environment", "networks", "depends_on", "secrets", "expose",
    "labels", "extra_hosts", "cap_add", "cap_drop", "tmpfs", "dns", "configs", "env_file", "group_add", "dns_search", "dns_opt",
    "security_opt", "device_cgroup_rules", "storage_opt", "sysctls", "ulimits", "devices", "blkio_config",
}  # fmt: skip

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # compose keys of services, volumes, networks
CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
SIGNAL_RE = re.compile(r"[A-Za-z0-9+-]+")
_RELATIVE_BIND = ("a bind source is an absolute path on the Docker host, or a path of the repository "
                  "starting with './' or '../' (shipped to the node)")


# --------------------------------------------------------------------------
# ruamel data -> plain data, and type names


def _is_number(v: Any) -> bool:
    return is_int(v) or isinstance(v, float)


def is_scalar(v: Any) -> bool:
    return v is None or is_bool(v) or isinstance(v, (str, int, float))


def to_plain(obj: Any) -> Any:
    """ruamel round-trip data -> plain dicts, lists, str, int, float, bool, None (recursively)."""
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if is_bool(obj):
        return bool(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    return obj


# --------------------------------------------------------------------------
# Value parsers shared by validation and the spec (plain or ruamel input)


def parse_cpus(value: Any) -> float:
    if _is_number(value):
        cpus = float(value)
    elif isinstance(value, str):
        try:
            cpus = float(value.strip())
        except ValueError:
            raise BadValue(f"invalid number of CPUs {value!r}") from None
    else:
        raise BadValue(f"must be a number, like 0.5 or 2, not {kind(value)}")
    if not math.isfinite(cpus) or cpus <= 0:
        raise BadValue(f"must be a number greater than 0, got {value!r}")
    return cpus


def check_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise BadValue(f"invalid IP address {text!r}") from None
    return text


def _check_protocol(proto: Any) -> str:
    if proto not in PROTOCOLS:
        raise BadValue(f"invalid protocol {proto!r}: use {', '.join(PROTOCOLS)}")
    return proto


# One published port: (container port, protocol, host IP or '', host port or None for any free port)
Binding = tuple[int, str, str, "int | None"]
# A ports entry as a range, not expanded: (first container port, protocol, host IP or '',
# first host port or None for any free ports, number of ports)
PortRun = tuple[int, str, str, "int | None", int]

# The most ports one ports or expose entry may stand for (docs/compose.md, "Limits").
MAX_PORTS_PER_ENTRY = 16_384


def _check_range_size(lo: int, hi: int, value: Any) -> None:
    if hi - lo + 1 > MAX_PORTS_PER_ENTRY:
        raise BadValue(f"the range {value!r} stands for {hi - lo + 1:,} ports: an entry may stand for at most "
                       f"{MAX_PORTS_PER_ENTRY:,} (see 'Limits' in docs/compose.md)")


def expand_run(run: PortRun) -> list[Binding]:
    c_lo, proto, ip, h_lo, count = run
    if h_lo is None:
        return [(c_lo + i, proto, ip, None) for i in range(count)]
    return [(c_lo + i, proto, ip, h_lo + i) for i in range(count)]


def parse_port(value: Any) -> list[Binding]:
    """A ports entry in short syntax ("80", "8080:80", "127.0.0.1:8080:80/udp", ranges, an int)."""
    return expand_run(parse_port_run(value))


def parse_port_run(value: Any) -> PortRun:
    """A ports entry in short syntax as one range, not expanded (checked in time linear in the text)."""
    if is_int(value):
        return (parse_port_number(value, "container port"), "tcp", "", None, 1)
    if not isinstance(value, str):
        raise BadValue(f"must be a string like '8080:80', a port number or a mapping with 'target', not {kind(value)}")
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
            raise BadValue(f"invalid port {value!r}: write '[ipv6]:host:container'")
        ip = text[1:end]
        parts = text[end + 2 :].split(":")
        if len(parts) != 2:
            raise BadValue(f"invalid port {value!r}: write '[ipv6]:host:container'")
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
            raise BadValue(f"invalid port {value!r}: write '[ip:]host:container', with IPv6 addresses in brackets")
    if ip:
        check_ip(ip)
    c_lo, c_hi = parse_port_range(container, "container port")
    count = c_hi - c_lo + 1
    if not host or host.strip() == "0":  # 0: any free port, like an empty host port
        h_lo = None
    else:
        h_lo, h_hi = parse_port_range(host, "host port")
        if h_hi - h_lo + 1 != count:
            raise BadValue(f"invalid port {value!r}: the host and container port ranges must have the same length")
    _check_range_size(c_lo, c_hi, value)
    return (c_lo, proto, ip, h_lo, count)


def parse_port_long(value: Mapping[str, Any]) -> list[Binding]:
    """A ports entry in long syntax (target, published, host_ip, protocol, mode)."""
    target = parse_port_number(value.get("target"), "target")
    proto = _check_protocol(value.get("protocol", "tcp"))
    ip = value.get("host_ip") or ""
    if not isinstance(ip, str):
        raise BadValue(f"host_ip must be a string, not {kind(ip)}")
    if ip:
        check_ip(ip)
    published = value.get("published")
    host = None if published in (None, "", 0, "0") else parse_port_number(published, "published")
    mode = value.get("mode", "host")
    if mode == "ingress":
        raise BadValue("mode ingress is Swarm's routing mesh: one engine publishes the port on its own host, "
                       "which is mode host (write host, or leave mode out)")
    if mode not in PORT_MODES:
        raise BadValue(f"invalid mode {mode!r}: use host")
    for key in ("name", "app_protocol"):
        if value.get(key) is not None and not isinstance(value.get(key), str):
            raise BadValue(f"{key} must be a string, not {kind(value.get(key))}")
    return [(target, proto, ip, host)]


def parse_expose(value: Any) -> list[tuple[int, str]]:
    """An expose entry: 80, "80", "80/udp", "8000-8010"."""
    lo, hi, proto = expose_range(value)
    return [(p, proto) for p in range(lo, hi + 1)]


def expose_range(value: Any) -> tuple[int, int, str]:
    """An expose entry as (first port, last port, protocol), not expanded."""
    if is_int(value):
        port = parse_port_number(value, "port")
        return port, port, "tcp"
    if not isinstance(value, str):
        raise BadValue(f"must be a port number or a string like '80/udp', not {kind(value)}")
    text, proto = value.strip(), "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        _check_protocol(proto)
    lo, hi = parse_port_range(text, "port")
    _check_range_size(lo, hi, value)
    return lo, hi, proto


def _volume_mode(text: str) -> tuple[bool, str]:
    """'ro', 'rw', 'z', 'ro,Z', ... -> (read_only, selinux label option)."""
    read_only, selinux, seen_access = False, "", False
    for opt in text.split(","):
        if opt in ("ro", "rw"):
            if seen_access:
                raise BadValue(f"invalid volume mode {text!r}: give ro or rw once")
            seen_access, read_only = True, opt == "ro"
        elif opt in ("z", "Z"):
            if selinux:
                raise BadValue(f"invalid volume mode {text!r}: give z or Z once")
            selinux = opt
        else:
            raise BadValue(f"invalid volume mode {opt!r}: use ro or rw (optionally with z or Z)")
    return read_only, selinux


def _check_target(target: Any) -> str:
    if not isinstance(target, str) or not target.startswith("/"):
        raise BadValue(f"the mount target must be an absolute path in the container, not {target!r}")
    return target


def is_relative_source(source: Any) -> bool:
    """Whether a bind source names a path of the repository (shipped to the node): '.', './x', '../x'."""
    return isinstance(source, str) and (source in (".", "..") or source.startswith(("./", "../")))


def _source_kind(source: str) -> str:
    """'bind' for an absolute path or a repository path ('./x', shipped), 'volume' for a volume name."""
    if source.startswith("/") or is_relative_source(source):
        return "bind"
    if source.startswith("~"):
        raise BadValue(f"'~' is not expanded in {source!r}: write the absolute path on the Docker host")
    if source.startswith(".") or "/" in source:
        raise BadValue(_RELATIVE_BIND)
    if not NAME_RE.fullmatch(source):
        raise BadValue(f"invalid volume name {source!r}")
    return "volume"


def parse_volume(value: Any) -> dict[str, Any]:
    """A service volumes entry (short string or long mapping) -> a normalized mount dict.

    Keys: type (volume|bind|tmpfs), source ('' for an anonymous volume), target, read_only, selinux,
    tmpfs_size, propagation, create_host_path (None: not written), nocopy.
    """
    mount: dict[str, Any] = {"selinux": "", "tmpfs_size": None, "propagation": "",
                             "create_host_path": None, "nocopy": False, "relative": False}  # fmt: skip
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 1:  # an anonymous volume: '/data'
            return {**mount, "type": "volume", "source": "", "target": _check_target(value), "read_only": False}
        if len(parts) > 3:
            raise BadValue(f"invalid volume {value!r}: write 'source:target[:ro|rw]'")
        source, target = parts[0], parts[1]
        read_only, selinux = _volume_mode(parts[2]) if len(parts) == 3 else (False, "")
        if not source:
            raise BadValue(f"invalid volume {value!r}: the source is empty")
        mount_type = _source_kind(source)
        return {**mount, "type": mount_type, "source": source, "target": _check_target(target),
                "read_only": read_only, "selinux": selinux,
                "relative": is_relative_source(source)}  # fmt: skip
    if not isinstance(value, dict):
        raise BadValue(f"must be a string like 'data:/var/lib/data' or a mapping with 'type', not {kind(value)}")
    mount_type = value.get("type")
    if mount_type not in ("volume", "bind", "tmpfs"):
        if mount_type in ("npipe", "cluster", "image"):
            why = {"npipe": "named pipes exist on Windows engines", "cluster": "cluster volumes are for Swarm",
                   "image": "image mounts need Docker API 1.47; the engines here speak 1.41"}[mount_type]
            raise BadValue(f"type {mount_type} is not supported: {why}")
        raise BadValue(f"type must be volume, bind or tmpfs, not {mount_type!r}")
    target = _check_target(value.get("target"))
    read_only = value.get("read_only", False)
    if not is_bool(read_only):
        raise BadValue(f"read_only must be true or false, not {kind(read_only)}")
    mount.update(type=mount_type, target=target, read_only=bool(read_only))
    for key in ("tmpfs", "bind", "volume"):
        if key in value and key != mount_type:
            raise BadValue(f"'{key}' options are only for type {key}")
        if value.get(key) is not None and not isinstance(value[key], dict):
            raise BadValue(f"{key} must be a mapping, not {kind(value[key])}")
    opts = value.get(mount_type) or {}
    allowed = {"tmpfs": VOLUME_TMPFS_KEYS, "bind": VOLUME_BIND_KEYS, "volume": VOLUME_VOLUME_KEYS}[mount_type]
    extra = sorted(k for k in opts if not str(k).startswith("x-") and k not in allowed)
    if extra:
        raise BadValue(f"unsupported key {extra[0]!r} in {mount_type}: use {', '.join(sorted(allowed))}")
    source = value.get("source")
    if mount_type == "tmpfs":
        if source not in (None, ""):
            raise BadValue("a tmpfs mount has no source")
        if opts.get("size") is not None:
            mount["tmpfs_size"] = parse_bytes(opts["size"])
        if opts.get("mode") is not None:
            # Compose reads `mode: 1777` as the decimal number 1777 and `mode: 01777` as octal, and refuses
            # "1777"; both YAML readers here read 01777 as 1777, so which one was written cannot be known
            raise BadValue("tmpfs.mode cannot be read as Compose reads it (1777 is decimal there, 01777 octal): "
                           "use the service's tmpfs key, '/path:mode=1777', which both read as octal")
        mount["source"] = None
        return mount
    if mount_type == "volume" and source in (None, ""):
        mount["source"] = ""  # anonymous
    else:
        if source in (None, ""):
            raise BadValue("a bind mount needs a source")
        if not isinstance(source, str):
            raise BadValue(f"source must be a string, not {kind(source)}")
        actual = _source_kind(source)
        if actual != mount_type:
            raise BadValue(
                f"source {source!r} is a volume name, but type is bind: bind sources are absolute paths "
                "or repository paths starting with './'"
                if mount_type == "bind"
                else f"source {source!r} is a path, but type is volume: write a volume name or use type bind"
            )
        mount["source"] = source
        mount["relative"] = is_relative_source(source)
    if mount_type == "bind":
        prop = opts.get("propagation")
        if prop is not None:
            if prop not in PROPAGATIONS:
                raise BadValue(f"invalid propagation {prop!r}: use {', '.join(PROPAGATIONS)}")
            mount["propagation"] = prop
        if opts.get("create_host_path") is not None:
            if not is_bool(opts["create_host_path"]):
                raise BadValue(f"create_host_path must be true or false, not {kind(opts['create_host_path'])}")
            mount["create_host_path"] = bool(opts["create_host_path"])
        if opts.get("selinux") is not None:
            if opts["selinux"] not in ("z", "Z"):
                raise BadValue(f"invalid selinux option {opts['selinux']!r}: use z or Z")
            mount["selinux"] = opts["selinux"]
        if mount["selinux"] and mount["create_host_path"] is False:
            raise BadValue("selinux relabelling is an option of bind strings, which create a missing host path: "
                           "drop create_host_path: false or selinux")
        if opts.get("recursive") not in (None, "enabled"):
            raise BadValue("recursive other than 'enabled' needs Docker API 1.44; the engines here speak 1.41")
    else:
        if opts.get("subpath") is not None:
            raise BadValue("subpath needs Docker API 1.45; the engines here speak 1.41")
        if opts.get("labels") is not None:
            raise BadValue("volume labels here are not applied by Docker Compose either: "
                           "label the volume under the top-level volumes")
        if opts.get("nocopy") is not None:
            if not is_bool(opts["nocopy"]):
                raise BadValue(f"nocopy must be true or false, not {kind(opts['nocopy'])}")
            mount["nocopy"] = bool(opts["nocopy"])
    return mount


def needs_mount_api(mount: Mapping[str, Any]) -> bool:
    """Whether a parsed volume is given to the engine as a Mount rather than a 'source:target:mode' bind string.

    Mounts for tmpfs and anonymous volumes (as Docker Compose v2), and for a bind with create_host_path:
    false (an engine creates a missing bind source only for a bind string). Propagation, SELinux labels and
    nocopy are options of the bind string ('src:dst:ro,rshared,z', 'vol:dst:rw,nocopy')."""
    if mount["type"] == "tmpfs" or (mount["type"] == "volume" and not mount["source"]):
        return True
    return mount["create_host_path"] is False


def parse_tmpfs(value: Any) -> tuple[str, str]:
    """A tmpfs entry "/run" or "/run:size=64m,mode=1777" -> (path, options)."""
    if not isinstance(value, str):
        raise BadValue(f"must be a string like '/run' or '/run:size=64m', not {kind(value)}")
    path, _, options = value.partition(":")
    return _check_target(path), options


def split_assignment(item: Any, what: str) -> tuple[str, str | None]:
    """'K=V' -> (K, V), 'K' -> (K, None)."""
    if not isinstance(item, str):
        raise BadValue(f"must be a string like 'KEY=value', not {kind(item)}")
    key, eq, val = item.partition("=")
    if not key or key != key.strip():
        raise BadValue(f"invalid {what} {item!r}: the name is empty or has surrounding spaces")
    return key, (val if eq else None)


def env_pairs(env: Any) -> list[tuple[str, str | None]]:
    """environment (list or mapping) -> (name, value or None for 'take from the deployer's environment')."""
    if env is None:
        return []
    if isinstance(env, list):
        return [split_assignment(item, "environment variable") for item in env]
    return [(str(k), None if v is None else scalar_str(v)) for k, v in env.items()]


def label_pairs(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if isinstance(labels, list):
        out = {}
        for item in labels:
            k, v = split_assignment(item, "label")
            out[k] = v or ""
        return out
    return {str(k): scalar_str(v) for k, v in labels.items()}


def parse_restart(value: Any) -> dict[str, Any] | None:
    """restart -> the engine's RestartPolicy, or None for 'no'."""
    if value is False or value is None:  # `restart: no` read as YAML 1.1
        return None
    if not isinstance(value, str):
        raise BadValue(f"must be one of {', '.join(RESTART_POLICIES)} or on-failure:N, not {kind(value)}")
    if value == "no":
        return None
    if value in ("always", "unless-stopped"):
        return {"Name": value}
    m = re.fullmatch(r"on-failure(?::(\d{1,18}))?", value)  # a count Python and the engine can read
    if m:
        return {"Name": "on-failure", "MaximumRetryCount": int(m.group(1) or 0)}
    raise BadValue(f"invalid restart policy {value!r}: use no, always, on-failure[:N] or unless-stopped")


_OPERATOR_CHARS = set("&|;<>()")


def _shell_operator(value: str) -> str | None:
    """The first shell operator (&&, |, ;, >, ...) or comment (#) outside quotes in ``value``, else None."""
    lex = shlex.shlex(value, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""
    for token in lex:
        if token and set(token) <= _OPERATOR_CHARS:
            return token
    try:
        words = shlex.split(value)
    except ValueError:
        return None
    # '#' starting a word that is not quoted: Compose's splitter drops the rest of the line as a comment
    plain = shlex.shlex(value, posix=False)
    plain.whitespace_split = True
    plain.commenters = ""
    return "#" if words and any(t.startswith("#") for t in plain) else None


def parse_command(value: Any) -> list[str]:
    """command/entrypoint: a string (split like a shell, without operators) or a list -> list of arguments.

    A string with a shell operator or comment outside quotes is refused: Compose's splitter stops or
    splits at it where a shell would run it, and shell-style splitting would keep it as an argument;
    neither is what a reader of the file expects."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise BadValue(f"cannot split {value!r} into arguments: {exc}") from None
        op = _shell_operator(value)
        if op is not None:
            raise BadValue(f"{value!r} has {op!r} outside quotes, which a shell would run (or read as a comment), "
                           f"but no shell runs it: write a list of arguments, or ['sh', '-c', {value!r}] "
                           "to have a shell run it")
        return words
    if isinstance(value, list):
        out = []
        for i, arg in enumerate(value):
            if not isinstance(arg, (str, int, float)) or is_bool(arg):
                raise BadValue(f"argument [{i}] must be a string, not {kind(arg)}")
            out.append(scalar_str(arg))
        return out
    raise BadValue(f"must be a string or a list of strings, not {kind(value)}")


def parse_healthcheck_test(value: Any) -> list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise BadValue("the test command is empty")
        return ["CMD-SHELL", value]
    if not isinstance(value, list):
        raise BadValue(f"must be a string or a list like ['CMD', 'curl', ...], not {kind(value)}")
    if not value:
        raise BadValue("must not be empty: leave test out to keep the image's own check")
    if not all(isinstance(x, str) for x in value):
        raise BadValue("every element must be a string")
    head, args = value[0], value[1:]
    if head == "NONE":
        if args:
            raise BadValue("['NONE'] takes no arguments")
    elif head == "CMD":
        if not args:
            raise BadValue("['CMD', ...] needs the command to run")
    elif head == "CMD-SHELL":
        if len(args) != 1:
            raise BadValue("['CMD-SHELL', ...] takes exactly one shell command string")
    else:
        raise BadValue(f"must start with CMD, CMD-SHELL or NONE, not {head!r}")
    return [str(x) for x in value]


def parse_mode(value: Any) -> int:
    """A file mode written in octal: 0440, '0440', '440'. 0o440 is refused (see below)."""
    if isinstance(value, OctalInt):
        # the plain data handed to container_spec cannot tell 0o640 from 640, so one notation only
        raise BadValue(f"write the mode as octal digits with a leading 0, like 0{value:o}, not 0o{value:o}")
    if is_int(value):
        digits = str(int(value))
    elif isinstance(value, str):
        digits = value.strip()
    else:
        raise BadValue(f"must be an octal file mode like 0440, not {kind(value)}")
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise BadValue(f"invalid file mode {value!r}: write octal digits, like 0440")
    return int(digits, 8)


def extra_host_pairs(value: Any) -> list[tuple[str, str]]:
    """extra_hosts (a list of 'host:ip' / 'host=ip', or a mapping of host -> ip or list of ips) -> (host, ip).

    An IPv6 address may be written in brackets ('v6=[::1]'), as Compose allows; the brackets are dropped,
    since the engine takes the bare address."""
    if value is None:
        return []
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            for ip in (v if isinstance(v, list) else [v]):
                out.append((str(k), _unbracket(scalar_str(ip))))
        return out
    out = []
    for item in value:
        if not isinstance(item, str):
            raise BadValue(f"must be a string like 'host=10.0.0.1', not {kind(item)}")
        sep = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
        if sep <= 0:
            raise BadValue(f"invalid extra host {item!r}: write 'hostname=ip'")
        out.append((item[:sep], _unbracket(item[sep + 1 :])))
    return out


def _unbracket(ip: str) -> str:
    return ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip


def check_extra_host(hostname: str, ip: str) -> None:
    if not hostname or re.search(r"\s", hostname):
        raise BadValue(f"invalid host name {hostname!r}")
    if ip != "host-gateway":
        check_ip(ip)


def as_list(value: Any) -> list[Any]:
    """A value that may be one item or a list (tmpfs, dns) -> a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def secret_target(name: str, target: str | None) -> str:
    """Where a service's secret is mounted: ``target`` (absolute, or relative to /run/secrets), else /run/secrets/<name>."""
    if not target:
        return f"{SECRETS_DIR}/{name}"
    return target if target.startswith("/") else f"{SECRETS_DIR}/{target}"
