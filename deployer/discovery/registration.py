"""Service discovery: containers registered in their datacenter's Consul.

What gets registered
--------------------
A running container the deployer manages (``deployer.dc``/``deployer.node``
labels) that publishes a TCP port on its host (compose ``ports: ["80"]`` or
``["8080:80"]``) is one Consul service instance per published port:

* name: the compose service name, or the ``deployer.consul.name`` label; with
  several published ports and no ``deployer.consul.port`` label picking one,
  ``<name>-<container port>``;
* address: the port binding's host IP when it is a specific one, else the
  node's ``address:`` (node.yml), else the host part of its ``docker:`` URL
  (``127.0.0.1`` for a unix socket);
* port: the PUBLISHED host port, read from the running container
  (``NetworkSettings.Ports``, in ``ContainerState.ports``), so ephemeral ports work;
* tags: ``deployer.consul.tags: "a,b"``;
* a check that the Consul agent runs against address:port:
  ``deployer.consul.check: http:/health`` (HTTP GET), ``tcp``, or ``none``;
  without the label one is derived from the compose healthcheck: an HTTP check
  when its command fetches ``http://localhost[:port]/path`` (curl, wget...),
  else a TCP check, with the healthcheck's interval and timeout (at least 1 s,
  Consul's minimum). ``deployer.consul.interval`` / ``deployer.consul.timeout``
  override them;
* id: ``<node>:<container id, 12 hex>:<container port>`` (stable across the
  rename a deploy does at its end);
* meta: ``managed-by=deployer``, ``deployer-dc``, ``deployer-node``,
  ``deployer-container`` (the full id) and ``deployer-service``. Only
  registrations carrying the first three for its own nodes are ever removed
  by the deployer or the registrator.

Other labels: ``deployer.consul.register: "false"`` opts out,
``deployer.consul.wait`` bounds how long a deploy waits for the check to pass,
``deployer.drain`` (default 2s) how long a retiring container keeps running
after it left the passing set. The labels are read and validated by
``label_settings.py``.

The pieces
----------
This module makes registrations from a container's state (``registrations``)
and talks to the Consul agent about them (``register``, ``maintenance``,
``deregister``, ``wait_passing``). Its users:

* ``hooks.deploy_hooks``: the Applier's ``Hooks`` for one node (the deploy
  calls it before touching any container; it checks that Consul has a leader).
* ``registrator.Registrator``: follows nodes' Docker events and resyncs
  periodically, so containers started or stopped outside the deployer are
  (de)registered.
* ``docker_catalog.DockerCatalog``: a ``catalog.Catalog`` built from the
  engines themselves, the default when a datacenter has no Consul.
* ``report.service_report``: what the catalog knows next to what the repo says.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from deployer.discovery.catalog import META_VALUE_RE, HealthQuery, valid_address, valid_name, valid_tag
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.label_settings import PATH_RE, Settings, parse_labels
from deployer.engine.state import ContainerState
from deployer.errors import ConsulError, ConsulUnavailable, DeployerError, LabelError
from deployer.labels import LABEL_CONSUL_NAME, LABEL_SERVICE
from deployer.values import format_duration

if TYPE_CHECKING:  # pragma: no cover
    from deployer.model import Datacenter, Node

# Meta written on every registration: what makes it the deployer's own.
META_OWNER = "managed-by"
OWNER = "deployer"
META_DC = "deployer-dc"
META_NODE = "deployer-node"
META_CONTAINER = "deployer-container"
META_SERVICE = "deployer-service"

DEFAULT_INTERVAL = 5.0  # seconds between Consul checks when nothing says otherwise
DEFAULT_TIMEOUT = 2.0
MIN_INTERVAL = 1.0  # Consul raises shorter intervals to 1s anyway

# An HTTP probe in a healthcheck command: curl/wget http://localhost[:port]/path
_PROBE_RE = re.compile(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::(\d{1,5}))?(/[^\s'\"|;&<>`]*)?")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Registration:
    """One Consul service instance for one published port of one container."""

    id: str
    name: str
    address: str
    port: int
    container_port: int
    tags: tuple[str, ...]
    meta: dict[str, str]
    check: dict[str, str] | None  # the Consul check definition, None for no check
    wait: float  # how long a deploy waits for the check to pass
    drain: float

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def describe_check(self) -> str:
        if not self.check:
            return "no check"
        target = self.check.get("http") or self.check.get("tcp")
        kind = "http" if "http" in self.check else "tcp"
        return f"{kind} check {target} every {self.check['interval']}"

    def same_as(self, entry: dict[str, Any]) -> bool:
        """Whether a registration the agent lists (``agent.services()``) says the same."""
        return (entry.get("Service") == self.name and entry.get("Address") == self.address
                and entry.get("Port") == self.port and tuple(entry.get("Tags") or ()) == self.tags
                and (entry.get("Meta") or {}) == self.meta)


def node_address(node: "Node") -> str:
    """Where other hosts reach the node's published ports: ``address:``, else the docker URL's host."""
    if node.address:
        return node.address.strip()
    if node.docker.startswith("unix://"):
        return "127.0.0.1"
    host = urllib.parse.urlsplit(node.docker).hostname
    return host or "127.0.0.1"



def _go(seconds: float) -> str:
    """A Go duration for Consul (1s, 1500ms, 1m30s), at least 1ms."""
    return format_duration(max(seconds, 0.001))


def published_tcp_ports(container: ContainerState) -> list[tuple[int, str, int]]:
    """(container port, host ip, host port) for each published TCP port of a container, from its state."""
    out: dict[int, tuple[int, str, int]] = {}
    for key, bindings in container.ports.items():
        number, _, proto = key.partition("/")
        if (proto or "tcp") != "tcp" or not bindings:
            continue
        for ip, host_port in bindings:
            if host_port == 0:
                continue
            current = out.get(int(number))
            # prefer an IPv4 or wildcard binding; docker lists 0.0.0.0 and :: for one port
            if current is None or (":" in current[1] and ":" not in ip):
                out[int(number)] = (int(number), ip, host_port)
    return [out[k] for k in sorted(out)]


def _derived_check(container: ContainerState, settings: Settings, container_port: int) -> tuple[str, float, float]:
    """(check, interval, timeout) from the labels, else the container's healthcheck."""
    hc = container.healthcheck or {}
    test = hc.get("Test") or []
    has_hc = bool(test) and test[0] != "NONE"
    ns = 1e9
    interval = settings.interval or ((hc.get("Interval") or 0) / ns if has_hc else 0) or DEFAULT_INTERVAL
    timeout = settings.timeout or ((hc.get("Timeout") or 0) / ns if has_hc else 0) or DEFAULT_TIMEOUT
    interval = max(MIN_INTERVAL, interval)
    timeout = max(0.1, min(timeout, 60.0))
    check = settings.check
    if check is None:
        check = "tcp"
        if has_hc:
            probe = _PROBE_RE.search(" ".join(str(a) for a in test[1:]))
            if probe and int(probe.group(1) or 80) == container_port:
                path = probe.group(2) or "/"
                check = f"http:{path}" if PATH_RE.match(path) else "tcp"
    return check, interval, timeout


def registrations(dc: str, node: str, address: str, container: ContainerState) -> list[Registration]:
    """The registrations for a container (empty when it publishes no TCP port), from its state alone.

    Raises LabelError when a discovery label is unusable."""
    labels = container.labels
    settings = parse_labels(labels)
    if not settings.register:
        return []
    ports = published_tcp_ports(container)
    if settings.port is not None:
        ports = [p for p in ports if p[0] == settings.port]
    base = settings.name or labels.get(LABEL_SERVICE) or ""
    if not valid_name(base):
        raise LabelError(LABEL_CONSUL_NAME, f"service name {base!r} is not safe; set {LABEL_CONSUL_NAME}")
    cid = container.id
    out = []
    for container_port, host_ip, host_port in ports:
        name = base if len(ports) == 1 else f"{base}-{container_port}"
        if not valid_name(name):
            raise LabelError(LABEL_CONSUL_NAME, f"service name {name!r} is too long")
        where = host_ip if host_ip not in _WILDCARDS else address
        if not valid_address(where):
            raise LabelError("address", f"{where!r} (node.yml address: or the docker URL's host) is not an IP "
                                        "address or host name")
        kind, interval, timeout = _derived_check(container, settings, container_port)
        ep = f"[{where}]:{host_port}" if ":" in where else f"{where}:{host_port}"
        check: dict[str, str] | None = None
        if kind == "tcp":
            check = {"tcp": ep}
        elif kind.startswith("http:"):
            check = {"http": f"http://{ep}{kind[5:]}"}
        if check is not None:
            check.update(interval=_go(interval), timeout=_go(timeout), name=f"deployer {kind} check")
        wait = settings.wait or max(10.0, 3 * interval + timeout + 5)
        meta = {META_OWNER: OWNER, META_DC: dc, META_NODE: node, META_CONTAINER: cid,
                META_SERVICE: labels.get(LABEL_SERVICE, "")}
        meta = {k: v for k, v in meta.items() if META_VALUE_RE.match(v)}
        out.append(Registration(f"{node}:{cid[:12]}:{container_port}", name, where, host_port, container_port,
                                settings.tags, meta, check, wait, settings.drain))
    return out


def owned(entry: dict[str, Any], dc: str, node: str | None = None) -> bool:
    """Whether an agent service entry was registered by the deployer for ``dc`` (and ``node``)."""
    meta = entry.get("Meta") or {}
    return meta.get(META_OWNER) == OWNER and meta.get(META_DC) == dc and (node is None or meta.get(META_NODE) == node)


# --- Consul plumbing -----------------------------------------------------------------


def _consul(catalog: ConsulCatalog, what: str, fn: Callable[[Any], Any]) -> Any:
    return catalog.call(what, fn)  # one-line ConsulUnavailable/ConsulError for every failure


def agent_services(catalog: ConsulCatalog) -> dict[str, dict[str, Any]]:
    return _consul(catalog, "agent services", lambda c: c.agent.services()) or {}


def agent_checks(catalog: ConsulCatalog) -> dict[str, dict[str, Any]]:
    return _consul(catalog, "agent checks", lambda c: c.agent.checks()) or {}


def in_maintenance(checks: dict[str, dict[str, Any]], service_id: str) -> bool:
    return f"_service_maintenance:{service_id}" in checks


def register(catalog: ConsulCatalog, reg: Registration, existing: dict[str, dict[str, Any]] | None = None) -> None:
    """Register ``reg`` with the agent; refuses to replace a registration the deployer does not own."""
    if existing is None:
        existing = agent_services(catalog)
    current = existing.get(reg.id)
    if current is not None and (current.get("Meta") or {}).get(META_OWNER) != OWNER:
        raise ConsulError(catalog.address, f"service id {reg.id} is taken by a registration the deployer does not "
                                           "own; not replacing it")
    # The same rules as what is read back (catalog.validate_instance): refuse rather than be dropped later.
    problem = next((why for why in (
        None if valid_name(reg.name) else f"unsafe service name {reg.name!r}",
        None if valid_address(reg.address) else f"invalid address {reg.address!r}",
        next((f"unsafe tag {t!r}" for t in reg.tags if not valid_tag(t)), None),
    ) if why), None)
    if problem:
        raise ConsulError(catalog.address, f"refusing to register {reg.id}: {problem}")
    _consul(catalog, f"register {reg.name}/{reg.id}", lambda c: c.agent.service.register(
        reg.name, service_id=reg.id, address=reg.address, port=reg.port, tags=list(reg.tags), meta=reg.meta,
        check=reg.check))


def deregister(catalog: ConsulCatalog, service_id: str) -> None:
    _consul(catalog, f"deregister {service_id}", lambda c: c.agent.service.deregister(service_id))


def maintenance(catalog: ConsulCatalog, service_id: str, reason: str) -> None:
    _consul(catalog, f"maintenance {service_id}",
            lambda c: c.agent.service.maintenance(service_id, "true", reason))


def wait_passing(catalog: ConsulCatalog, regs: list[Registration], timeout: float,
                 stop: threading.Event | None = None) -> list[Registration]:
    """Wait until Consul's health view (what templates read) says every registration passes.

    Returns the ones that did not pass within ``timeout`` (empty: all passed)."""
    deadline = time.monotonic() + timeout
    pending = {r.id: r for r in regs}
    indexes: dict[str, int] = {}
    while pending:
        for name in sorted({r.name for r in pending.values()}):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return list(pending.values())
            dep = HealthQuery(name, None, False)
            index, instances = catalog.query(dep, indexes.get(name), wait=min(remaining, 2.0))
            indexes[name] = index
            for inst in instances:
                if inst.id in pending and inst.status == "passing":
                    pending.pop(inst.id)
        if stop is not None and stop.is_set():
            break
        if pending and time.monotonic() >= deadline:
            break
    return list(pending.values())


def check_output(catalog: ConsulCatalog, service_id: str) -> str:
    """The last output of the service's own check (for error messages), best effort."""
    try:
        checks = agent_checks(catalog)
    except DeployerError:
        return ""
    for check in checks.values():
        if check.get("ServiceID") == service_id and not str(check.get("CheckID", "")).startswith("_"):
            text = " ".join(str(check.get("Output") or "").split())
            return f"{check.get('Status')}: {text[:200]}" if text else str(check.get("Status") or "")
    return ""



def consul_for(datacenter: "Datacenter", timeout: float = 5.0) -> ConsulCatalog:
    return ConsulCatalog(datacenter.consul, timeout=timeout)


def require_leader(catalog: ConsulCatalog, hint: str = "") -> None:
    """ConsulUnavailable (one line, naming the address) unless Consul answers and has a leader."""
    try:
        leader = catalog.leader()
    except ConsulUnavailable as exc:
        raise ConsulUnavailable(catalog.address, f"{exc.message}{hint}") from None
    if not leader:
        raise ConsulUnavailable(catalog.address, f"no cluster leader{hint}")

