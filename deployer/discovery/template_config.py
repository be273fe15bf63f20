"""The ``deployer templates watch`` config file: which templates go where, checked how, reloaded how.

``load_config(path)`` reads it (YAML) into a ``WatchConfig``: the Consul to
read (``ConsulSettings``), the quiescence and settle times, and one
``TemplateSpec`` per template. Durations are read by
``deployer.values.parse_duration`` (``2s``, ``250ms``, bare seconds). Every
problem is a ``ConfigError`` with the file, line and field.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from deployer.errors import ConfigError
from deployer.values import BadValue, parse_duration


@dataclass
class TemplateSpec:
    """One template: where it is, where it goes, how to validate and reload.

    ``check`` and ``reload`` are a command line (split like a shell would, no
    shell runs) or an argv list; ``{file}`` in ``check`` is the candidate.
    """

    source: Path
    destination: Path
    check: str | list[str] | None = None
    reload: str | list[str] | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    command_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.destination = Path(self.destination)


@dataclass
class ConsulSettings:
    address: str
    token: str | None = None
    datacenter: str | None = None
    blocking_wait: float = 60.0  # how long Consul holds each blocking query
    timeout: float = 5.0  # connect/read timeout of every request (plus the wait)
    backoff: float = 0.25  # first retry delay after a failure; doubles each time
    max_backoff: float = 30.0


@dataclass
class WatchConfig:
    templates: list[TemplateSpec]
    consul: ConsulSettings | None = None  # None: the caller passes a Catalog
    wait_min: float = 2.0  # quiescence: render after this long without a change...
    wait_max: float = 10.0  # ...but no later than this after the first change
    settle: float = 10.0  # distrust losses this long after Consul (re)connects
    poll_interval: float = 2.0  # how often a catalog without blocking queries is re-read
    path: str | None = None  # the config file, for messages


_TOP_KEYS = {"consul", "wait", "settle", "poll_interval", "templates"}
_CONSUL_KEYS = {"address", "token", "datacenter", "blocking_wait", "timeout", "retry"}
_RETRY_KEYS = {"backoff", "max_backoff"}
_TEMPLATE_KEYS = {"source", "destination", "check", "reload", "vars", "command_timeout"}


def load_config(path: str | Path) -> WatchConfig:
    """Read a ``deployer templates watch`` config file (YAML); ConfigError with file:line.

    ::

        consul:                       # or `consul: 127.0.0.1:8500`, or `consul: null`
          address: 127.0.0.1:8500     # host:port or http(s)://host:port
          blocking_wait: 60s
          retry: {backoff: 250ms, max_backoff: 30s}
        wait: {min: 2s, max: 10s}     # or `wait: 2s` (max = 4 x min)
        settle: 10s
        templates:
          - source: nginx.conf.j2     # relative to this file
            destination: /srv/nginx/nginx.conf
            check: nginx -t -q -e stderr -p /srv/nginx -c {file}
            reload: nginx -s reload -p /srv/nginx -c /srv/nginx/nginx.conf
            vars: {listen_port: 8080}
    """
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(shown, f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(shown, f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                          mark.line + 1 if mark else None) from None

    def line_of(node: Any, key: Any = None) -> int | None:
        try:
            if key is None:
                return node.lc.line + 1
            if isinstance(key, int):
                return node.lc.item(key)[0] + 1
            return node.lc.key(key)[0] + 1
        except Exception:  # noqa: BLE001 - plain values carry no position
            return None

    def fail(message: str, node: Any = None, key: Any = None, fld: str | None = None) -> ConfigError:
        return ConfigError(shown, message, line_of(node, key) if node is not None else None, fld)

    def mapping(node: Any, keys: set[str], fld: str, parent: Any = None, pkey: Any = None) -> dict:
        if not isinstance(node, dict):
            raise fail("must be a mapping", parent, pkey, fld)
        for key in node:
            if key not in keys:
                raise fail(f"unknown key {key!r} (known: {', '.join(sorted(keys))})", node, key, f"{fld}.{key}" if fld else str(key))
        return node

    def duration(node: dict, key: str, fld: str, default: float) -> float:
        if key not in node or node[key] is None:
            return default
        try:
            return parse_duration(node[key])
        except BadValue as exc:
            raise fail(f"invalid {fld}: {exc}", node, key, fld) from None

    if doc is None:
        doc = {}
    top = mapping(doc, _TOP_KEYS, "")
    base = path.parent

    consul = None
    raw = top.get("consul")
    if isinstance(raw, str):
        consul = ConsulSettings(address=raw)
    elif raw is not None:
        c = mapping(raw, _CONSUL_KEYS, "consul", top, "consul")
        if not isinstance(c.get("address"), str) or not c["address"].strip():
            raise fail("address is required (host:port)", c, None, "consul.address")
        retry = mapping(c.get("retry") or {}, _RETRY_KEYS, "consul.retry", c, "retry")
        consul = ConsulSettings(
            address=c["address"].strip(),
            token=c.get("token"),
            datacenter=c.get("datacenter"),
            blocking_wait=duration(c, "blocking_wait", "consul.blocking_wait", 60.0),
            timeout=duration(c, "timeout", "consul.timeout", 5.0),
            backoff=duration(retry, "backoff", "consul.retry.backoff", 0.25),
            max_backoff=duration(retry, "max_backoff", "consul.retry.max_backoff", 30.0),
        )
        if consul.blocking_wait <= 0:
            raise fail("must be positive", c, "blocking_wait", "consul.blocking_wait")
        if consul.backoff <= 0 or consul.max_backoff < consul.backoff:
            raise fail("need 0 < backoff <= max_backoff", c, "retry", "consul.retry")

    wait = top.get("wait")
    if wait is None:
        wait_min, wait_max = 2.0, 10.0
    elif isinstance(wait, dict):
        mapping(wait, {"min", "max"}, "wait", top, "wait")
        wait_min = duration(wait, "min", "wait.min", 0.0)
        wait_max = duration(wait, "max", "wait.max", wait_min * 4)
    else:
        wait_min = duration(top, "wait", "wait", 0.0)
        wait_max = wait_min * 4
    if wait_max < wait_min:
        raise fail("wait.max must not be less than wait.min", top, "wait", "wait")

    templates_node = top.get("templates")
    if not isinstance(templates_node, list) or not templates_node:
        raise fail("templates: a non-empty list is required", top, "templates" if "templates" in top else None, "templates")
    specs = []
    seen: dict[Path, int] = {}
    for i, item in enumerate(templates_node):
        fld = f"templates[{i}]"
        t = mapping(item, _TEMPLATE_KEYS, fld, templates_node, i)
        for key in ("source", "destination"):
            if not isinstance(t.get(key), str) or not t[key].strip():
                raise fail(f"{key} is required", templates_node, i, f"{fld}.{key}")
        for key in ("check", "reload"):
            value = t.get(key)
            ok = value is None or (isinstance(value, str) and value.strip()) or (
                isinstance(value, list) and value and all(isinstance(a, (str, int)) for a in value)
            )
            if not ok:
                raise fail("must be a command line or a list of arguments", t, key, f"{fld}.{key}")
            if isinstance(value, str):
                try:
                    shlex.split(value)
                except ValueError as exc:
                    raise fail(f"cannot split command: {exc}", t, key, f"{fld}.{key}") from None
        variables = t.get("vars") or {}
        if not isinstance(variables, dict):
            raise fail("must be a mapping", t, "vars", f"{fld}.vars")
        dest = (base / t["destination"]).absolute()
        if dest in seen:
            raise fail(f"destination {dest} is also written by templates[{seen[dest]}]", t, "destination", f"{fld}.destination")
        seen[dest] = i
        specs.append(
            TemplateSpec(
                source=(base / t["source"]).absolute(),
                destination=dest,
                check=list(map(str, t["check"])) if isinstance(t.get("check"), list) else t.get("check"),
                reload=list(map(str, t["reload"])) if isinstance(t.get("reload"), list) else t.get("reload"),
                vars=_plain(variables),
                command_timeout=duration(t, "command_timeout", f"{fld}.command_timeout", 30.0),
            )
        )
    return WatchConfig(
        templates=specs,
        consul=consul,
        wait_min=wait_min,
        wait_max=wait_max,
        settle=duration(top, "settle", "settle", 10.0),
        poll_interval=duration(top, "poll_interval", "poll_interval", 2.0) or 2.0,
        path=shown,
    )


def _plain(value: Any) -> Any:
    """ruamel's round-trip containers -> plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
