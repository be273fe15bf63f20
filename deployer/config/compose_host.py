"""Compose keys that become one engine argument each: process, kernel, resource and device settings.

``HOST_KEYS`` maps each such service key to where its value goes — ``create``
(an argument of docker's ``APIClient.create_container``) or ``host`` (one of
``create_host_config``) — the argument's name, and the parser that checks the
compose value and returns what the engine is given. The compose check calls
the parser to report a bad value at the key's line; the spec builder calls
the same parser on validated data (``host_arguments``), so both read a value
the same way. Parsers take plain or ruamel data and raise ``values.BadValue``.

Keys whose value names another service (``pid``/``ipc: service:<name>``) are
resolved by the spec builder; here they are only checked.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from deployer.config.scalars import is_bool, is_int, scalar_str
from deployer.values import BadValue, kind, parse_bytes, parse_duration_ns


def boolean(value: Any) -> bool:
    if not is_bool(value):
        raise BadValue(f"must be true or false, not {kind(value)}")
    return bool(value)


def integer(value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number, written as a number or a string of digits, within lo..hi."""
    if is_int(value):
        n = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,19}\s*", value):
        n = int(value)
    else:
        raise BadValue(f"must be a whole number, not {kind(value)}")
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}")
        raise BadValue(f"must be {bounds}, not {n}")
    return n


def word(value: Any) -> str:
    """A non-empty string without whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise BadValue(f"must be a non-empty string, not {kind(value)}")
    if re.search(r"\s", value):
        raise BadValue(f"invalid value {value!r}: it contains whitespace")
    return value


def string_list(value: Any, one=word) -> list[str]:
    """A string or a list of strings (dns_search, ...), each checked by ``one``."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        try:
            out.append(one(item))
        except BadValue as exc:
            raise BadValue(f"[{i}]: {exc}" if isinstance(value, list) else str(exc)) from None
    return out


def _list_only(one=word) -> Callable[[Any], list[str]]:
    def parse(value: Any) -> list[str]:
        if not isinstance(value, list):
            raise BadValue(f"must be a list, not {kind(value)}")
        return string_list(value, one)

    return parse


def _group(value: Any) -> str:
    if is_int(value) and value >= 0:
        return str(int(value))
    return word(value)


def _any_string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadValue(f"must be a non-empty string, not {kind(value)}")
    return value


def bytes_or_unlimited(value: Any) -> int:
    """memswap_limit: a size, or -1 for unlimited swap."""
    if value == -1 or value == "-1":
        return -1
    return parse_bytes(value)


def sysctls(value: Any) -> dict[str, str]:
    """A list of 'name=value' or a mapping -> {name: value}."""
    out: dict[str, str] = {}
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise BadValue(f"must be a string like 'name=value', not {kind(item)}")
            key, eq, val = item.partition("=")
            if not eq or not key or key != key.strip():
                raise BadValue(f"invalid entry {item!r}: write 'name=value'")
            out[key] = val
    elif isinstance(value, dict):
        for key, val in value.items():
            if not isinstance(key, str) or not key:
                raise BadValue(f"names must be non-empty strings, not {kind(key)}")
            if val is None or isinstance(val, (dict, list)):
                raise BadValue(f"{key}: must be a string or number, not {kind(val)}")
            out[key] = scalar_str(val)
    else:
        raise BadValue(f"must be a list of 'name=value' or a mapping, not {kind(value)}")
    return dict(sorted(out.items()))


def string_map(value: Any) -> dict[str, str]:
    """storage_opt: a mapping of names to strings or numbers."""
    if not isinstance(value, dict):
        raise BadValue(f"must be a mapping, not {kind(value)}")
    return sysctls(value)


def ulimits(value: Any) -> list[dict[str, Any]]:
    """{nofile: 1024} or {nofile: {soft: 1024, hard: 2048}} -> the engine's Ulimits."""
    if not isinstance(value, dict):
        raise BadValue(f"must be a mapping of limit names, not {kind(value)}")
    out = []
    for name, limit in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z]+", name):
            raise BadValue(f"invalid ulimit name {name!r}")
        if isinstance(limit, dict):
            extra = set(limit) - {"soft", "hard"}
            if extra or "soft" not in limit or "hard" not in limit:
                raise BadValue(f"{name}: write a number, or a mapping with exactly 'soft' and 'hard'")
            soft, hard = integer(limit["soft"], -1), integer(limit["hard"], -1)
            if hard != -1 and (soft == -1 or soft > hard):
                raise BadValue(f"{name}: the soft limit {soft} is above the hard limit {hard}")
        else:
            try:
                soft = hard = integer(limit, -1)
            except BadValue as exc:
                raise BadValue(f"{name}: {exc}") from None
        out.append({"Name": name, "Soft": soft, "Hard": hard})
    return sorted(out, key=lambda u: u["Name"])


def devices(value: Any) -> list[str]:
    """'/dev/x', '/dev/x:/dev/y', '/dev/x:/dev/y:rwm' or {source, target, permissions} -> 'src:dst:perm'."""
    if not isinstance(value, list):
        raise BadValue(f"must be a list, not {kind(value)}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            extra = set(item) - {"source", "target", "permissions"}
            if extra:
                raise BadValue(f"[{i}]: unsupported key {sorted(extra)[0]!r}")
            src = item.get("source")
            dst = item.get("target") or src
            perm = item.get("permissions") or "rwm"
        elif isinstance(item, str):
            parts = item.split(":")
            if len(parts) > 3:
                raise BadValue(f"[{i}]: invalid device {item!r}: write 'host path[:container path[:rwm]]'")
            src = parts[0]
            dst = parts[1] if len(parts) > 1 and parts[1] else src
            perm = parts[2] if len(parts) > 2 else "rwm"
            if len(parts) == 2 and re.fullmatch(r"[rwm]{1,3}", parts[1]):  # '/dev/x:rw'
                dst, perm = src, parts[1]
        else:
            raise BadValue(f"[{i}]: must be a string like '/dev/ttyUSB0' or a mapping with 'source', not {kind(item)}")
        if not isinstance(src, str) or "=" in src:
            raise BadValue(f"[{i}]: CDI device names need API 1.44; the engines here speak 1.41: "
                           "write the device's path")
        for path in (src, dst):
            if not isinstance(path, str) or not path.startswith("/"):
                raise BadValue(f"[{i}]: the device paths must be absolute, not {path!r}")
        if not isinstance(perm, str) or not re.fullmatch(r"(?!.*(.).*\1)[rwm]{1,3}", perm):
            raise BadValue(f"[{i}]: invalid permissions {perm!r}: use a combination of r, w and m")
        out.append(f"{src}:{dst}:{perm}")
    return out


def _blkio_device(items: Any, what: str, rate: Callable[[Any], int]) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise BadValue(f"{what}: must be a list of {{path, ...}}, not {kind(items)}")
    out = []
    key = "weight" if what == "weight_device" else "rate"
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"path", key}:
            raise BadValue(f"{what}[{i}]: must be a mapping with 'path' and '{key}'")
        path = item["path"]
        if not isinstance(path, str) or not path.startswith("/"):
            raise BadValue(f"{what}[{i}].path: must be an absolute device path, not {path!r}")
        try:
            value = rate(item[key])
        except BadValue as exc:
            raise BadValue(f"{what}[{i}].{key}: {exc}") from None
        out.append({"Path": path, ("Weight" if key == "weight" else "Rate"): value})
    return out


BLKIO_KEYS = {
    "weight": "blkio_weight", "weight_device": "blkio_weight_device",
    "device_read_bps": "device_read_bps", "device_write_bps": "device_write_bps",
    "device_read_iops": "device_read_iops", "device_write_iops": "device_write_iops",
}  # fmt: skip


def blkio_config(value: Any) -> dict[str, Any]:
    """blkio_config -> several create_host_config arguments (a dict of them)."""
    if not isinstance(value, dict):
        raise BadValue(f"must be a mapping, not {kind(value)}")
    out: dict[str, Any] = {}
    for key, sub in value.items():
        if key not in BLKIO_KEYS:
            raise BadValue(f"unsupported key {key!r}: use {', '.join(sorted(BLKIO_KEYS))}")
        if key == "weight":
            try:
                out["blkio_weight"] = integer(sub, 10, 1000)
            except BadValue as exc:
                raise BadValue(f"weight: {exc}") from None
        elif key == "weight_device":
            out[BLKIO_KEYS[key]] = _blkio_device(sub, key, lambda v: integer(v, 10, 1000))
        elif key.endswith("_bps"):
            out[BLKIO_KEYS[key]] = _blkio_device(sub, key, parse_bytes)
        else:
            out[BLKIO_KEYS[key]] = _blkio_device(sub, key, lambda v: integer(v, 0))
    return out


def gpus(value: Any) -> list[dict[str, Any]]:
    """gpus: all, or a list of {driver, count, device_ids, capabilities, options} -> DeviceRequests."""
    if value == "all":
        return [{"driver": "", "count": -1, "device_ids": None, "capabilities": [["gpu"]], "options": {}}]
    if not isinstance(value, list):
        raise BadValue(f"must be 'all' or a list of mappings, not {kind(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadValue(f"[{i}]: must be a mapping, not {kind(item)}")
        extra = set(item) - {"driver", "count", "device_ids", "capabilities", "options"}
        if extra:
            raise BadValue(f"[{i}]: unsupported key {sorted(extra)[0]!r}")
        count = item.get("count")
        count = -1 if count == "all" else (0 if count is None else integer(count, 0))
        ids = string_list(item["device_ids"]) if item.get("device_ids") is not None else None
        if ids and count:
            raise BadValue(f"[{i}]: give count or device_ids, not both")
        caps = string_list(item["capabilities"]) if item.get("capabilities") is not None else []
        options = sysctls(item["options"]) if item.get("options") is not None else {}
        driver = word(item["driver"]) if item.get("driver") is not None else ""
        out.append({"driver": driver, "count": count, "device_ids": ids,
                    "capabilities": [sorted(set(caps) | {"gpu"})], "options": options})  # fmt: skip
    return out


def _mac(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", value):
        raise BadValue(f"invalid MAC address {value!r}: write six hex pairs like 02:42:ac:11:00:02")
    return value


def _platform(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+(/[a-z0-9_]+)?)?", value):
        raise BadValue(f"invalid platform {value!r}: write os[/arch[/variant]], like linux/amd64")
    return value


def _cpuset(value: Any) -> str:
    if is_int(value):
        value = str(int(value))
    if not isinstance(value, str) or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", value):
        raise BadValue(f"invalid CPU set {value!r}: write CPUs like 0-3 or 0,1")
    return value


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise BadValue(f"must be {' or '.join(choices)}, not {value!r}")
        return value

    return parse


def namespace_mode(what: str, plain: tuple[str, ...]) -> Callable[[Any], str]:
    """pid/ipc: one of ``plain``, container:<name> or service:<name> (resolved by the spec builder)."""
    def parse(value: Any) -> str:
        if isinstance(value, str):
            if value in plain:
                return value
            for prefix in ("container:", "service:"):
                if value.startswith(prefix) and re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", value[len(prefix):]):
                    return value
        raise BadValue(f"invalid {what} mode {value!r}: use {', '.join(plain)}, service:<name> or container:<name>")

    return parse


def _cpu_rt(value: Any) -> int:
    """cpu_rt_period/runtime: microseconds as a number, or a duration like 400ms."""
    if is_int(value) or (isinstance(value, str) and re.fullmatch(r"\d+", value.strip())):
        return integer(value, 0)
    return parse_duration_ns(value) // 1000


def _attach(value: Any) -> None:
    boolean(value)
    return None


# service key -> (where: 'create' | 'host' | 'several' | '', engine argument, parser)
# 'several': the parser returns a dict of create_host_config arguments; '': nothing goes to the engine.
HOST_KEYS: dict[str, tuple[str, str, Callable[[Any], Any]]] = {
    "stdin_open": ("create", "stdin_open", boolean),
    "tty": ("create", "tty", boolean),
    "domainname": ("create", "domainname", word),
    "mac_address": ("create", "mac_address", _mac),
    "platform": ("create", "platform", _platform),
    "pid": ("host", "pid_mode", namespace_mode("pid", ("host",))),
    "ipc": ("host", "ipc_mode", namespace_mode("ipc", ("host", "private", "shareable", "none"))),
    "uts": ("host", "uts_mode", _one_of("host")),
    "userns_mode": ("host", "userns_mode", _one_of("host")),
    "cgroup": ("host", "cgroupns", _one_of("host", "private")),
    "cgroup_parent": ("host", "cgroup_parent", word),
    "runtime": ("host", "runtime", word),
    "isolation": ("host", "isolation", _one_of("default")),
    "pids_limit": ("host", "pids_limit", lambda v: integer(v, -1)),
    "oom_score_adj": ("host", "oom_score_adj", lambda v: integer(v, -1000, 1000)),
    "oom_kill_disable": ("host", "oom_kill_disable", boolean),
    "mem_swappiness": ("host", "mem_swappiness", lambda v: integer(v, 0, 100)),
    "mem_reservation": ("host", "mem_reservation", parse_bytes),
    "memswap_limit": ("host", "memswap_limit", bytes_or_unlimited),
    "cpu_shares": ("host", "cpu_shares", lambda v: integer(v, 0)),
    "cpu_period": ("host", "cpu_period", lambda v: integer(v, 0)),
    "cpu_quota": ("host", "cpu_quota", lambda v: integer(v, -1)),
    "cpu_rt_period": ("host", "cpu_rt_period", _cpu_rt),
    "cpu_rt_runtime": ("host", "cpu_rt_runtime", _cpu_rt),
    "cpuset": ("host", "cpuset_cpus", _cpuset),
    "group_add": ("host", "group_add", _list_only(_group)),
    "dns_search": ("host", "dns_search", string_list),
    "dns_opt": ("host", "dns_opt", _list_only()),
    "security_opt": ("host", "security_opt", _list_only(_any_string)),
    "device_cgroup_rules": ("host", "device_cgroup_rules", _list_only(_any_string)),
    "storage_opt": ("host", "storage_opt", string_map),
    "sysctls": ("host", "sysctls", sysctls),
    "ulimits": ("host", "ulimits", ulimits),
    "devices": ("host", "devices", devices),
    "gpus": ("host", "device_requests", gpus),
    "blkio_config": ("several", "", blkio_config),
    "attach": ("", "", _attach),  # deploy never attaches to a container's output (like `up -d`)
}


def host_arguments(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(create_container arguments, create_host_config arguments) of a validated service's HOST_KEYS.

    pid/ipc ``service:<name>`` are returned as written: the spec builder resolves them.
    """
    create: dict[str, Any] = {}
    host: dict[str, Any] = {}
    for key, (where, arg, parse) in HOST_KEYS.items():
        value = config.get(key)
        if value is None:
            continue
        parsed = parse(value)
        if where == "create":
            create[arg] = parsed
        elif where == "host":
            host[arg] = parsed
        elif where == "several":
            host.update(parsed)
    return create, host
