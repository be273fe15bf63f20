"""Service discovery data: which instances of which service run where, and how healthy.

The first of three layers, after consul-template's ``watch/`` package (the
others: ``consul_catalog.ConsulCatalog`` reads a Consul agent, ``watcher.Watcher``
follows what templates read):

* ``Instance`` and the ``Catalog`` protocol: plain data and the three reads a
  template needs (``services``, ``instances``, ``kv``). ``StaticCatalog`` is an
  in-memory catalog.
* Dependencies (``ServicesQuery``, ``HealthQuery``, ``KeyQuery``): one value
  each, hashable, read from any catalog with ``dep.read(catalog)``, or from
  Consul as a *blocking query* with ``ConsulCatalog.query(dep, index, wait)``.

Everything read from Consul is untrusted: anyone who can register a service can
choose its name, tags, address and meta. ``validate_instance`` checks every
field that can end up in a config file (names and node names against
``NAME_RE``, tags against ``TAG_RE``: the labels' grammar of ``config.label_check``, the address is an IP or an RFC 1123 host
name, the port 1-65535); an instance that fails is dropped with a logged
warning and never reaches a template. Meta entries that are not plain tokens
are dropped one by one (``safe_meta``). That is what makes a service named
``x; } server { listen 81; }`` or an address ``1.2.3.4; evil`` harmless.
KV values are not validated here: templates pass them through a checking
filter (``port``, ``token``).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Union, runtime_checkable

from deployer.config.label_check import (  # noqa: F401 - the grammar, re-exported for discovery's modules
    META_KEY_RE,
    META_VALUE_RE,
    NAME_RE,
    TAG_RE,
    meta_ok,
    valid_address,
    valid_name,
    valid_tag,
)

log = logging.getLogger(__name__)

STATUSES = ("passing", "warning", "critical")

# The token rules (NAME_RE for service and node names, TAG_RE, the meta rules) are the
# labels' grammar, defined once in config.label_check (with valid_address, which node.yml's
# address: follows); ID_RE is Consul's side.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}\Z")  # registrator ids: host:name:port


def valid_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def endpoint(address: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Instance:
    """One registered instance of a service, as plain data."""

    service: str
    id: str
    node: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    status: str = "passing"  # passing | warning | critical

    @property
    def endpoint(self) -> str:
        return endpoint(self.address, self.port)


def validate_instance(inst: Instance) -> str | None:
    """Why ``inst`` must not reach a config file, or None when it is safe."""
    if not valid_name(inst.service):
        return f"unsafe service name {inst.service!r}"
    if not isinstance(inst.id, str) or not ID_RE.match(inst.id):
        return f"unsafe instance id {inst.id!r}"
    if not valid_name(inst.node):
        return f"unsafe node name {inst.node!r}"
    if not valid_address(inst.address):
        return f"invalid address {inst.address!r}"
    if not valid_port(inst.port):
        return f"invalid port {inst.port!r}"
    bad = [t for t in inst.tags if not valid_tag(t)]
    if bad:
        return f"unsafe tag {bad[0]!r}"
    if inst.status not in STATUSES:
        return f"unknown status {inst.status!r}"
    return None


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(message: str) -> None:
    """Warn about a bad value once per process (watch mode re-reads it on every change)."""
    with _warned_lock:
        first = message not in _warned
        if first:
            _warned.add(message)
    log.log(logging.WARNING if first else logging.DEBUG, "%s", message)


def safe_meta(meta: Any, where: str) -> dict[str, str]:
    """The meta entries safe to write into a config file; the others are dropped (logged)."""
    out: dict[str, str] = {}
    for key, value in (meta or {}).items():
        if meta_ok(key, value):
            out[key] = value
        else:
            warn_once(f"{where}: dropped unsafe meta entry {key!r}={value!r}")
    return out


def keep_valid(instances: Iterable[Instance], source: str = "catalog") -> list[Instance]:
    """The safe instances, sorted by (service, node, id); each dropped one is logged."""
    out = []
    for inst in instances:
        reason = validate_instance(inst)
        if reason:
            warn_once(f"{source}: dropped instance {inst.id!r} of service {inst.service!r}: {reason}")
        else:
            out.append(inst)
    return sorted(out, key=lambda i: (i.service, i.node, i.id))


def aggregate_status(statuses: Iterable[str]) -> str:
    """One status for an instance from its checks' statuses: the worst of them."""
    worst = "passing"
    for status in statuses:
        if status not in ("passing", "warning"):
            return "critical"  # critical, maintenance, or anything unknown
        if status == "warning":
            worst = "warning"
    return worst


@runtime_checkable
class Catalog(Protocol):
    """What templates read. Implemented by ``ConsulCatalog``, ``StaticCatalog``, and
    ``docker_catalog.DockerCatalog`` (built from the Docker engines)."""

    def services(self) -> dict[str, tuple[str, ...]]:
        """Every registered service name (whatever its health) -> its tags, sorted by name."""
        ...

    def instances(self, service: str, tag: str | None = None, passing_only: bool = True) -> list[Instance]:
        """The safe instances of ``service``, sorted; only passing ones unless told otherwise."""
        ...

    def kv(self, key: str, default: Any = None) -> Any:
        """The value stored at ``key`` (a str), or ``default`` when there is none."""
        ...


class StaticCatalog:
    """An in-memory catalog. ``replace`` swaps its content (a watcher polls it)."""

    def __init__(self, instances: Iterable[Instance] = (), kv: dict[str, str] | None = None):
        self._lock = threading.Lock()
        self._by_service: dict[str, list[Instance]] = {}  # a lookup per service keeps rendering linear
        self._kv: dict[str, str] = {}
        self.replace(instances, kv)

    def replace(self, instances: Iterable[Instance], kv: dict[str, str] | None = None) -> None:
        by_service: dict[str, list[Instance]] = {}
        for inst in keep_valid(instances, "static catalog"):
            by_service.setdefault(inst.service, []).append(inst)
        with self._lock:
            self._by_service = by_service
            if kv is not None:
                self._kv = dict(kv)

    def services(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            by_service = self._by_service
        return {name: tuple(sorted({t for inst in by_service[name] for t in inst.tags}))
                for name in sorted(by_service)}

    def instances(self, service: str, tag: str | None = None, passing_only: bool = True) -> list[Instance]:
        with self._lock:
            candidates = self._by_service.get(service, [])
        return [i for i in candidates
                if (tag is None or tag in i.tags) and (not passing_only or i.status == "passing")]

    def kv(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._kv.get(key, default)


# --- dependencies ------------------------------------------------------------------


@dataclass(frozen=True)
class ServicesQuery:
    """All service names and their tags (Consul: /v1/catalog/services)."""

    def read(self, catalog: Catalog) -> dict[str, tuple[str, ...]]:
        return catalog.services()

    @staticmethod
    def empty(value: Any) -> bool:
        # A Consul that just lost its state still lists itself.
        return not any(name != "consul" for name in (value or {}))

    def __str__(self) -> str:
        return "services()"


@dataclass(frozen=True)
class HealthQuery:
    """The instances of one service (Consul: /v1/health/service/<name>)."""

    service: str
    tag: str | None = None
    passing_only: bool = True

    def read(self, catalog: Catalog) -> list[Instance]:
        return catalog.instances(self.service, tag=self.tag, passing_only=self.passing_only)

    @staticmethod
    def empty(value: Any) -> bool:
        return not value

    def __str__(self) -> str:
        tag = f", tag={self.tag!r}" if self.tag else ""
        return f"service({self.service!r}{tag}{'' if self.passing_only else ', passing=False'})"


@dataclass(frozen=True)
class KeyQuery:
    """One key of the KV store (Consul: /v1/kv/<key>); its value is a str or None."""

    key: str

    def read(self, catalog: Catalog) -> str | None:
        return catalog.kv(self.key, None)

    @staticmethod
    def empty(value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return f"key({self.key!r})"


@dataclass(frozen=True)
class ChecksQuery:
    """Every health check of the datacenter with its status and output (Consul: /v1/health/state/any),
    as a tuple of ``Check``: what the alerts watcher follows. Only a Consul has checks to list."""

    def read(self, catalog: Catalog) -> tuple["Check", ...]:
        if not hasattr(catalog, "query"):
            raise TypeError(f"{catalog!r} has no health checks to list")
        return catalog.query(self)[1]  # type: ignore[attr-defined]

    @staticmethod
    def empty(value: Any) -> bool:
        return not value

    def __str__(self) -> str:
        return "checks()"


@dataclass(frozen=True)
class Check:
    """One health check as Consul lists it (strings from Consul: untrusted, shown escaped)."""

    node: str
    check_id: str
    name: str
    status: str  # passing | warning | critical (anything else Consul says is read as critical)
    output: str = ""
    service_id: str = ""
    service: str = ""


Dependency = Union[ServicesQuery, HealthQuery, KeyQuery, ChecksQuery]
