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
  (``NetworkSettings.Ports``), so ephemeral ports work;
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
after it left the passing set.

Every label value is validated before anything reaches Consul (names with
``;``, ``}``, spaces... are refused), with the rules ``catalog.py`` applies to
what it reads back.

The pieces
----------
* ``deploy_hooks``: the Applier's ``Hooks`` for one node (``api.py`` calls it
  before touching any container; it checks that Consul has a leader).
  ``healthy`` registers the new container and waits until Consul says its check
  passes; ``retiring`` puts the old one in maintenance (it leaves the passing
  set, proxies re-render without it), waits the drain period, deregisters it;
  ``restored`` registers again an old container a failed deploy restarted.
* ``Registrator``: follows nodes' Docker events and resyncs periodically, so
  containers started or stopped outside the deployer are (de)registered.
* ``DockerCatalog``: a ``catalog.Catalog`` built from the engines themselves,
  the default when a datacenter has no Consul.
* ``service_report``: what the catalog knows next to what the repo says.

Heavy modules (docker, consul, requests) are imported inside functions.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from deployer.discovery.catalog import (
    ConsulCatalog,
    HealthQuery,
    Instance,
    META_VALUE_RE,
    keep_valid,
    parse_duration,
    valid_address,
    valid_name,
    valid_tag,
)
from deployer.labels import LABEL_DC, LABEL_NODE, LABEL_SERVICE
from deployer.errors import ConfigError, ConsulError, ConsulUnavailable, DeployerError, HealthCheckFailed

if TYPE_CHECKING:  # pragma: no cover
    from deployer.engine.apply import Hooks
    from deployer.model import Datacenter, Node
    from deployer.engine.state import ContainerState

log = logging.getLogger(__name__)

# --- labels ---------------------------------------------------------------------------

LABEL_CONSUL_NAME = "deployer.consul.name"
LABEL_CONSUL_TAGS = "deployer.consul.tags"
LABEL_CONSUL_CHECK = "deployer.consul.check"
LABEL_CONSUL_INTERVAL = "deployer.consul.interval"
LABEL_CONSUL_TIMEOUT = "deployer.consul.timeout"
LABEL_CONSUL_PORT = "deployer.consul.port"
LABEL_CONSUL_WAIT = "deployer.consul.wait"
LABEL_CONSUL_REGISTER = "deployer.consul.register"
LABEL_DRAIN = "deployer.drain"
KNOWN_LABELS = (LABEL_CONSUL_NAME, LABEL_CONSUL_TAGS, LABEL_CONSUL_CHECK, LABEL_CONSUL_INTERVAL, LABEL_CONSUL_TIMEOUT,
                LABEL_CONSUL_PORT, LABEL_CONSUL_WAIT, LABEL_CONSUL_REGISTER, LABEL_DRAIN)

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
DEFAULT_DRAIN = 2.0
NEXT_SUFFIX = "-next"  # apply.NEXT_SUFFIX (not imported: apply pulls in compose's heavy parts lazily anyway)

_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1000}\Z")
# An HTTP probe in a healthcheck command: curl/wget http://localhost[:port]/path
_PROBE_RE = re.compile(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::(\d{1,5}))?(/[^\s'\"|;&<>`]*)?")
_WILDCARDS = ("", "0.0.0.0", "::")


class LabelError(DeployerError):
    """A discovery label with a value that cannot be used."""

    exit_code = 2

    def __init__(self, label: str, message: str):
        self.label = label
        self.message = message
        super().__init__(f"{label}: {message}")


@dataclass(frozen=True)
class Settings:
    """What a container's labels say about its registration."""

    register: bool = True
    name: str | None = None
    tags: tuple[str, ...] = ()
    check: str | None = None  # None (derive) | "none" | "tcp" | "http:/path"
    interval: float | None = None
    timeout: float | None = None
    port: int | None = None
    wait: float | None = None
    drain: float = DEFAULT_DRAIN


def _duration(labels: dict[str, str], label: str, positive: bool = True) -> float | None:
    if label not in labels:
        return None
    try:
        value = parse_duration(labels[label], label)
    except ValueError as exc:
        raise LabelError(label, str(exc)) from None
    if positive and value <= 0:
        raise LabelError(label, "must be more than 0")
    return value


def parse_labels(labels: dict[str, str]) -> Settings:
    """The discovery settings in ``labels``; LabelError names the first bad one."""
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    register = True
    if LABEL_CONSUL_REGISTER in labels:
        text = labels[LABEL_CONSUL_REGISTER].strip().lower()
        if text not in ("true", "false", "yes", "no", "1", "0"):
            raise LabelError(LABEL_CONSUL_REGISTER, f"{labels[LABEL_CONSUL_REGISTER]!r} is not true or false")
        register = text in ("true", "yes", "1")
    name = labels.get(LABEL_CONSUL_NAME)
    if name is not None and not valid_name(name):
        raise LabelError(LABEL_CONSUL_NAME, f"unsafe service name {name!r}: use letters, digits, '.', '_' and '-' "
                                            "(at most 128, starting with a letter or digit)")
    tags: list[str] = []
    for tag in (labels.get(LABEL_CONSUL_TAGS) or "").split(","):
        tag = tag.strip()
        if not tag:
            continue
        if not valid_tag(tag):
            raise LabelError(LABEL_CONSUL_TAGS, f"unsafe tag {tag!r}: no spaces, quotes, ';', '{{', '}}', '$', '#'")
        if tag not in tags:
            tags.append(tag)
    check = labels.get(LABEL_CONSUL_CHECK)
    if check is not None:
        check = check.strip()
        if check in ("http", "http:"):
            check = "http:/"
        if check.startswith("http:"):
            if not _PATH_RE.match(check[5:]):
                raise LabelError(LABEL_CONSUL_CHECK, f"{check!r}: write http:/path (a URL path without spaces)")
        elif check not in ("tcp", "none"):
            raise LabelError(LABEL_CONSUL_CHECK, f"{check!r}: write http:/path, tcp or none")
    port = None
    if LABEL_CONSUL_PORT in labels:
        text = labels[LABEL_CONSUL_PORT].strip().removesuffix("/tcp")
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise LabelError(LABEL_CONSUL_PORT, f"{labels[LABEL_CONSUL_PORT]!r} is not a container port")
        port = int(text)
    drain = _duration(labels, LABEL_DRAIN, positive=False)
    return Settings(
        register=register,
        name=name,
        tags=tuple(tags),
        check=check,
        interval=_duration(labels, LABEL_CONSUL_INTERVAL),
        timeout=_duration(labels, LABEL_CONSUL_TIMEOUT),
        port=port,
        wait=_duration(labels, LABEL_CONSUL_WAIT),
        drain=DEFAULT_DRAIN if drain is None else drain,
    )


def compose_labels(config: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``labels:`` (list of k=v or mapping) as a dict."""
    raw = config.get("labels") or {}
    if isinstance(raw, list):
        out = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in raw.items()}


def check_node_labels(node: "Node") -> None:
    """Refuse (ConfigError, file and label) any service of ``node`` whose discovery labels are unusable."""
    for svc in node.services.values():
        try:
            settings = parse_labels(compose_labels(svc.config))
        except LabelError as exc:
            raise ConfigError(node.compose_path or svc.location.path, exc.message,
                              field=f"services.{svc.name}.labels.{exc.label}") from None
        if settings.name is None and not valid_name(svc.name):
            raise ConfigError(node.compose_path or svc.location.path,
                              f"service name {svc.name!r} cannot be a Consul service name; set {LABEL_CONSUL_NAME}",
                              field=f"services.{svc.name}")


# --- registrations -------------------------------------------------------------------


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
    """A Go duration for Consul: 1s, 1500ms."""
    ms = max(1, int(round(seconds * 1000)))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def published_tcp_ports(info: dict[str, Any]) -> list[tuple[int, str, int]]:
    """(container port, host ip, host port) for each published TCP port of an inspected container."""
    ports = ((info.get("NetworkSettings") or {}).get("Ports")) or {}
    out: dict[int, tuple[int, str, int]] = {}
    for key, bindings in ports.items():
        number, _, proto = key.partition("/")
        if (proto or "tcp") != "tcp" or not bindings:
            continue
        for b in bindings:
            host_port = str(b.get("HostPort") or "")
            if not host_port.isdigit() or int(host_port) == 0:
                continue
            ip = b.get("HostIp") or ""
            current = out.get(int(number))
            # prefer an IPv4 or wildcard binding; docker lists 0.0.0.0 and :: for one port
            if current is None or (":" in current[1] and ":" not in ip):
                out[int(number)] = (int(number), ip, int(host_port))
    return [out[k] for k in sorted(out)]


def _derived_check(info: dict[str, Any], settings: Settings, container_port: int) -> tuple[str, float, float]:
    """(check, interval, timeout) from the labels, else the container's healthcheck."""
    hc = ((info.get("Config") or {}).get("Healthcheck")) or {}
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
                check = f"http:{path}" if _PATH_RE.match(path) else "tcp"
    return check, interval, timeout


def registrations(dc: str, node: str, address: str, info: dict[str, Any]) -> list[Registration]:
    """The registrations for an inspected container (empty when it publishes no TCP port).

    Raises LabelError when a discovery label is unusable."""
    config = info.get("Config") or {}
    labels = dict(config.get("Labels") or {})
    settings = parse_labels(labels)
    if not settings.register:
        return []
    ports = published_tcp_ports(info)
    if settings.port is not None:
        ports = [p for p in ports if p[0] == settings.port]
    base = settings.name or labels.get(LABEL_SERVICE) or ""
    if not valid_name(base):
        raise LabelError(LABEL_CONSUL_NAME, f"service name {base!r} is not safe; set {LABEL_CONSUL_NAME}")
    cid = info["Id"]
    out = []
    for container_port, host_ip, host_port in ports:
        name = base if len(ports) == 1 else f"{base}-{container_port}"
        if not valid_name(name):
            raise LabelError(LABEL_CONSUL_NAME, f"service name {name!r} is too long")
        where = host_ip if host_ip not in _WILDCARDS else address
        if not valid_address(where):
            raise LabelError("address", f"{where!r} (node.yml address: or the docker URL's host) is not an IP "
                                        "address or host name")
        kind, interval, timeout = _derived_check(info, settings, container_port)
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
    return catalog._call(what, fn)  # one-line ConsulUnavailable/ConsulError for every failure


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


# --- deploy hooks --------------------------------------------------------------------


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


class ConsulHooks:
    """Registration around the container switches of one node (see the module doc)."""

    def __init__(self, datacenter: "Datacenter", node: "Node", root: str | Path,
                 progress: Callable[[str], None] | None = None, catalog: ConsulCatalog | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.dc = datacenter.name
        self.node = node
        self.root = Path(root)
        self.address = node_address(node)
        self.catalog = catalog or consul_for(datacenter)
        self.progress = progress or (lambda msg: None)
        self.sleep = sleep

    def hooks(self) -> "Hooks":
        from deployer.engine.apply import Hooks

        return Hooks(healthy=self.healthy, retiring=self.retiring, restored=self.restored)

    def _inspect(self, cid: str) -> dict[str, Any]:
        from contextlib import closing

        from deployer.engine.connect import connect

        with closing(connect(self.node, self.root)) as client:
            return client.api.inspect_container(cid)

    def _registrations(self, cid: str) -> list[Registration]:
        try:
            return registrations(self.dc, self.node.name, self.address, self._inspect(cid))
        except LabelError as exc:
            raise ConfigError(self.node.compose_path or self.node.path, exc.message, field=exc.label) from None

    def healthy(self, spec, new: "ContainerState") -> None:
        """Register the new container, then wait until its check passes in Consul; on failure deregister it
        and raise HealthCheckFailed (the Applier then removes it and restores the old one)."""
        regs = self._registrations(new.id)
        if not regs:
            return
        target = f"{spec.dc}/{spec.node}/{spec.service}"
        try:
            existing = agent_services(self.catalog)
            for reg in regs:
                register(self.catalog, reg, existing)
                self.progress(f"registered {reg.name} ({reg.id}) at {reg.endpoint} in Consul at "
                              f"{self.catalog.address}; waiting for its {reg.describe_check()}")
            timeout = max(r.wait for r in regs)
            failing = wait_passing(self.catalog, regs, timeout)
            if failing:
                reg = failing[0]
                output = check_output(self.catalog, reg.id)
                raise HealthCheckFailed(
                    f"{target}: new container {spec.image} is healthy but its Consul {reg.describe_check()} "
                    f"did not pass within {timeout:g}s" + (f" ({output})" if output else "")
                    + "; restored the old container")
        except BaseException:
            for reg in regs:
                try:
                    deregister(self.catalog, reg.id)
                except DeployerError as exc:
                    self.progress(f"could not deregister {reg.id}: {exc.one_line()}")
            raise
        self.progress(f"{', '.join(r.name for r in regs)}: passing in Consul")

    def retiring(self, old: "ContainerState") -> None:
        """Take the old container out of the passing set, let proxies drain it, deregister it.

        Never raises for Consul trouble: the new container is healthy by now, and a
        leftover registration is removed by the registrator's resync."""
        try:
            services = agent_services(self.catalog)
        except DeployerError as exc:
            self.progress(f"could not read Consul to deregister {old.name}: {exc.one_line()}")
            return
        mine = [sid for sid, entry in services.items()
                if owned(entry, self.dc, self.node.name) and (entry.get("Meta") or {}).get(META_CONTAINER) == old.id]
        if not mine:
            return
        try:
            drain = parse_labels(old.labels).drain
        except LabelError:
            drain = DEFAULT_DRAIN
        for sid in mine:
            try:
                maintenance(self.catalog, sid, f"deployer: {old.name} is being replaced")
            except DeployerError as exc:
                self.progress(f"could not take {sid} out of service: {exc.one_line()}")
        if drain > 0:
            self.progress(f"{old.name}: out of the passing set in Consul; draining {drain:g}s")
            self.sleep(drain)
        for sid in mine:
            try:
                deregister(self.catalog, sid)
            except DeployerError as exc:
                self.progress(f"could not deregister {sid}: {exc.one_line()} (the registrator will)")
        self.progress(f"deregistered {', '.join(mine)}")

    def restored(self, old: "ContainerState") -> None:
        """A failed deploy restarted the old container (it had been retired): register it again."""
        try:
            regs = self._registrations(old.id)
            existing = agent_services(self.catalog)
            for reg in regs:
                register(self.catalog, reg, existing)
            if regs:
                self.progress(f"registered {old.name} again in Consul")
        except DeployerError as exc:
            self.progress(f"could not register {old.name} again: {exc.one_line()} (the registrator will)")


def deploy_hooks(datacenter: "Datacenter", node: "Node", root: str | Path,
                 progress: Callable[[str], None] | None = None) -> "Hooks":
    """The Applier hooks registering ``node``'s containers in ``datacenter``'s Consul.

    Called before any container is touched: refuses unusable discovery labels
    (ConfigError naming the compose file and label) and a Consul that does not
    answer or has no leader (ConsulUnavailable naming its address)."""
    check_node_labels(node)
    hooks = ConsulHooks(datacenter, node, root, progress)
    require_leader(hooks.catalog, "; nothing was changed (--no-consul deploys without registering)")
    return hooks.hooks()


# --- the registrator -------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one resync of one node did."""

    node: str
    registered: list[str] = field(default_factory=list)
    deregistered: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    kept: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_EVENTS = ("start", "restart", "die", "stop", "kill", "pause", "unpause", "destroy", "rename", "health_status")


class Registrator:
    """Keeps the Consul registrations of some nodes equal to their running containers.

    ``sync_node`` is one resync (``--once``); ``run`` follows each node's Docker
    events (reconnecting with backoff) and resyncs every ``resync`` seconds until
    ``stop`` is set. Only registrations it owns (meta) are ever removed.
    """

    def __init__(self, root: str | Path, nodes: Iterable[tuple["Datacenter", "Node"]], *, resync: float = 30.0,
                 backoff: float = 0.5, max_backoff: float = 30.0, event_window: float = 5.0,
                 on_change: Callable[[str, str], None] | None = None):
        self.root = Path(root)
        self.nodes = list(nodes)
        for dc, _ in self.nodes:
            if not dc.consul:
                raise ConfigError(dc.location.path if dc.location else f"{dc.path}/datacenter.yml",
                                  f"datacenter {dc.name} has no consul: nothing to register in", field="consul")
        self.resync = resync
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.event_window = event_window
        self.on_change = on_change or (lambda kind, detail: None)
        self._catalogs: dict[str, ConsulCatalog] = {}
        self._locks: dict[str, threading.Lock] = {n.target: threading.Lock() for _, n in self.nodes}
        self._clients: dict[str, Any] = {}
        self._retiring: set[str] = set()  # containers seen in maintenance: a deploy is replacing them
        self._failing: dict[str, str] = {}
        self.stats = {"syncs": 0, "events": 0, "registered": 0, "deregistered": 0, "errors": 0}

    def _catalog(self, dc: "Datacenter") -> ConsulCatalog:
        if dc.name not in self._catalogs:
            self._catalogs[dc.name] = consul_for(dc)
        return self._catalogs[dc.name]

    def _client(self, node: "Node"):
        client = self._clients.get(node.target)
        if client is None:
            from deployer.engine.connect import connect

            client = self._clients[node.target] = connect(node, self.root, timeout=30)
        return client

    def _drop_client(self, node: "Node") -> None:
        client = self._clients.pop(node.target, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def close(self) -> None:
        for _, node in self.nodes:
            self._drop_client(node)

    # -- one resync --

    def sync_node(self, dc: "Datacenter", node: "Node", only: str | None = None) -> SyncReport:
        """Register the node's running managed containers that are missing, deregister owned registrations
        whose container is gone. ``only``: just that container (an event)."""
        report = SyncReport(node.target)
        with self._locks[node.target]:
            try:
                self._sync(dc, node, only, report)
                if self._failing.pop(node.target, None):
                    log.info("%s: in sync again", node.target)
            except DeployerError as exc:
                report.error = exc.one_line()
            except Exception as exc:  # noqa: BLE001 - the engine went away mid-way
                from deployer.engine.connect import describe

                self._drop_client(node)
                report.error = f"node {node.target} ({node.docker}): {describe(exc)}"
        self.stats["syncs"] += 1
        if report.error:
            self.stats["errors"] += 1
            if self._failing.get(node.target) != report.error:
                log.warning("%s", report.error)
            self._failing[node.target] = report.error
        return report

    def _running(self, client, dc: str, node: "Node", only: str | None) -> dict[str, dict[str, Any]]:
        import docker

        if only is not None:
            try:
                infos = [client.api.inspect_container(only)]
            except docker.errors.NotFound:
                return {}
        else:
            infos = []
            for summary in client.api.containers(filters={"label": [f"{LABEL_DC}={dc}", f"{LABEL_NODE}={node.name}"]}):
                try:
                    infos.append(client.api.inspect_container(summary["Id"]))
                except docker.errors.NotFound:
                    continue
        out = {}
        for info in infos:
            labels = (info.get("Config") or {}).get("Labels") or {}
            state = info.get("State") or {}
            if labels.get(LABEL_DC) != dc or labels.get(LABEL_NODE) != node.name:
                continue
            if state.get("Status") == "running" and not state.get("Paused"):
                out[info["Id"]] = info
        return out

    def _sync(self, dc: "Datacenter", node: "Node", only: str | None, report: SyncReport) -> None:
        catalog = self._catalog(dc)
        client = self._client(node)
        running = self._running(client, dc.name, node, only)
        services = agent_services(catalog)
        checks = agent_checks(catalog)
        mine = {sid: e for sid, e in services.items() if owned(e, dc.name, node.name)
                and (only is None or (e.get("Meta") or {}).get(META_CONTAINER) == only)}
        address = node_address(node)
        wanted: dict[str, Registration] = {}
        for cid, info in running.items():
            try:
                regs = registrations(dc.name, node.name, address, info)
            except LabelError as exc:
                name = info.get("Name", "").lstrip("/")
                report.refused.append(f"{name}: {exc.one_line()}")
                log.warning("%s: not registering container %s: %s", node.target, name, exc.one_line())
                continue
            for reg in regs:
                wanted[reg.id] = reg
        for sid, entry in mine.items():
            cid = (entry.get("Meta") or {}).get(META_CONTAINER, "")
            if sid in wanted:
                if in_maintenance(checks, sid):
                    self._retiring.add(cid)  # a deploy is draining it: leave it alone
                continue
            deregister(catalog, sid)
            report.deregistered.append(sid)
            self.stats["deregistered"] += 1
            log.info("%s: deregistered %s (%s): its container is not running", node.target, sid, entry.get("Service"))
            self.on_change("deregistered", sid)
        for sid, reg in wanted.items():
            cid = reg.meta.get(META_CONTAINER, "")
            info = running[cid]
            current = mine.get(sid)
            if current is not None:
                if current and not reg.same_as(current) and not in_maintenance(checks, sid):
                    register(catalog, reg, services)  # e.g. a new host port after a restart by hand
                    report.registered.append(sid)
                    log.info("%s: updated %s", node.target, sid)
                else:
                    report.kept += 1
                continue
            name = info.get("Name", "").lstrip("/")
            health = ((info.get("State") or {}).get("Health") or {}).get("Status")
            if name.endswith(NEXT_SUFFIX) or cid in self._retiring or health not in (None, "healthy"):
                continue  # being switched in or out by a deploy (which registers it), or not healthy yet
            if sid in services:  # someone else's registration under our id
                report.refused.append(f"{sid}: id taken by a registration the deployer does not own")
                continue
            register(catalog, reg, services)
            report.registered.append(sid)
            self.stats["registered"] += 1
            log.info("%s: registered %s (%s) at %s", node.target, sid, reg.name, reg.endpoint)
            self.on_change("registered", sid)
        if only is None:
            alive = {(e.get("Meta") or {}).get(META_CONTAINER) for e in mine.values()} | set(running)
            self._retiring &= alive

    def sync_all(self) -> list[SyncReport]:
        return [self.sync_node(dc, node) for dc, node in self.nodes]

    # -- following --

    def run(self, stop: threading.Event) -> None:
        """Follow every node until ``stop`` is set."""
        threads = []
        for dc, node in self.nodes:
            for target, name in ((self._follow_events, "events"), (self._resync_loop, "resync")):
                t = threading.Thread(target=target, args=(dc, node, stop), name=f"registrator {name} {node.target}",
                                     daemon=True)
                t.start()
                threads.append(t)
        try:
            stop.wait()
        finally:
            stop.set()
            for t in threads:
                t.join(self.event_window + 2)
            self.close()

    def _resync_loop(self, dc: "Datacenter", node: "Node", stop: threading.Event) -> None:
        backoff = self.backoff
        while not stop.is_set():
            report = self.sync_node(dc, node)
            if report.error:
                delay = min(backoff, self.resync)
                backoff = min(backoff * 2, self.max_backoff)
            else:
                delay, backoff = self.resync, self.backoff
            stop.wait(delay)

    def _follow_events(self, dc: "Datacenter", node: "Node", stop: threading.Event) -> None:
        """Docker events of the node's managed containers, in windows of ``event_window`` seconds (a
        window's stream ends by itself, so this also works over SSH where streams cannot be cancelled)."""
        from deployer.engine.connect import connect, describe

        backoff = self.backoff
        since = int(time.time())
        client = None
        while not stop.is_set():
            try:
                if client is None:
                    client = connect(node, self.root, timeout=30)
                    if backoff != self.backoff:
                        log.info("%s: following Docker events again", node.target)
                        self.sync_node(dc, node)  # what happened while we were away
                until = int(time.time() + self.event_window)
                stream = client.api.events(since=since, until=until, decode=True, filters={
                    "type": "container", "label": [f"{LABEL_DC}={dc.name}", f"{LABEL_NODE}={node.name}"]})
                for event in stream:
                    if stop.is_set():
                        break
                    action = str(event.get("Action") or event.get("status") or "").split(":")[0]
                    if action in _EVENTS:
                        self.stats["events"] += 1
                        cid = event.get("id") or (event.get("Actor") or {}).get("ID")
                        if cid:
                            self.sync_node(dc, node, only=cid)
                since = until - 1  # overlap a second: an event seen twice is harmless
                backoff = self.backoff
            except Exception as exc:  # noqa: BLE001 - reconnect with backoff
                if stop.is_set():
                    break
                log.warning("%s: Docker events: %s; reconnecting in %.1fs", node.target,
                            exc.one_line() if isinstance(exc, DeployerError) else describe(exc), backoff)
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
                    client = None
                stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


# --- the catalog built from Docker engines -------------------------------------------------


class EnginesUnavailable(ConsulUnavailable):
    """A Docker engine a DockerCatalog reads could not be read (the catalog then keeps its last files)."""

    def __init__(self, where: str, message: str):
        self.address = where
        self.message = message
        DeployerError.__init__(self, f"{where}: {message}")


class DockerCatalog:
    """A ``catalog.Catalog`` read from the nodes' Docker engines, for a datacenter without Consul.

    Every running managed container that publishes a TCP port is an instance
    (named and tagged by the same labels as a Consul registration); Docker's
    health says its status: healthy or no healthcheck -> passing, starting or
    unhealthy -> critical. An unreachable engine is an error (never an empty
    catalog). Reads are cached for ``max_age`` seconds: a render reads many
    services, a watcher polls.
    """

    def __init__(self, nodes: Iterable["Node"], root: str | Path, *, max_age: float = 1.0, timeout: float = 10.0,
                 kv: dict[str, str] | None = None):
        self.nodes = list(nodes)
        self.root = Path(root)
        self.max_age = max_age
        self.timeout = timeout
        self._kv = dict(kv or {})
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._cached: tuple[float, list[Instance]] | None = None

    def __repr__(self) -> str:
        return f"DockerCatalog({', '.join(n.target for n in self.nodes)})"

    def _read_node(self, node: "Node") -> list[Instance]:
        from deployer.engine.connect import connect, describe

        client = self._clients.get(node.target)
        try:
            if client is None:
                client = self._clients[node.target] = connect(node, self.root, timeout=self.timeout)
            found = []
            address = node_address(node)
            labels = [f"{LABEL_DC}={node.dc}", f"{LABEL_NODE}={node.name}"]
            for summary in client.api.containers(filters={"label": labels}):
                try:
                    info = client.api.inspect_container(summary["Id"])
                except Exception as exc:  # noqa: BLE001 - removed between list and inspect
                    if getattr(exc, "status_code", None) == 404:
                        continue
                    raise
                state = info.get("State") or {}
                if state.get("Status") != "running" or state.get("Paused"):
                    continue
                try:
                    regs = registrations(node.dc, node.name, address, info)
                except LabelError as exc:
                    log.warning("%s: not listing container %s: %s", node.target, info.get("Name", "").lstrip("/"),
                                exc.one_line())
                    continue
                health = (state.get("Health") or {}).get("Status")
                status = "passing" if health in (None, "healthy") else "critical"
                for reg in regs:
                    found.append(Instance(reg.name, reg.id, node.name, reg.address, reg.port, reg.tags,
                                          dict(reg.meta), status))
            return found
        except DeployerError as exc:
            self._clients.pop(node.target, None)
            raise EnginesUnavailable(f"node {node.target} ({node.docker})", exc.one_line()) from None
        except Exception as exc:  # noqa: BLE001 - every transport failure, one line
            self._clients.pop(node.target, None)
            raise EnginesUnavailable(f"node {node.target} ({node.docker})", describe(exc)) from None

    def snapshot(self) -> list[Instance]:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.max_age:
                return self._cached[1]
            instances: list[Instance] = []
            for node in self.nodes:
                instances.extend(self._read_node(node))
            valid = keep_valid(instances, "docker catalog")
            self._cached = (time.monotonic(), valid)
            return valid

    def services(self) -> dict[str, tuple[str, ...]]:
        tags: dict[str, set[str]] = {}
        for inst in self.snapshot():
            tags.setdefault(inst.service, set()).update(inst.tags)
        return {name: tuple(sorted(tags[name])) for name in sorted(tags)}

    def instances(self, service: str, tag: str | None = None, passing_only: bool = True) -> list[Instance]:
        return [i for i in self.snapshot() if i.service == service and (tag is None or tag in i.tags)
                and (not passing_only or i.status == "passing")]

    def kv(self, key: str, default: Any = None) -> Any:
        return self._kv.get(key, default)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
            self._clients.clear()


def catalog_for(datacenter: "Datacenter", root: str | Path) -> Any:
    """The datacenter's Consul, or (no consul configured) the catalog built from its engines."""
    if datacenter.consul:
        return consul_for(datacenter)
    return DockerCatalog(datacenter.nodes.values(), root)


# --- what Consul knows next to what the repo says -----------------------------------------


@dataclass
class ServiceRow:
    dc: str
    service: str  # the Consul service name
    node: str | None  # the deployer node (from meta), None for registrations the deployer does not own
    instance: str | None
    endpoint: str | None
    state: str  # passing | warning | critical | missing | extra | external | error
    detail: str = ""
    source: str = ""  # consul at host:port | docker engines

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


PROBLEM_STATES = ("missing", "critical", "extra", "error")


def expected_services(datacenter: "Datacenter", root: str | Path) -> dict[tuple[str, str], str]:
    """(node, Consul service name) -> the compose service, for every service the repo says is registered."""
    from deployer.config import compose_spec

    out: dict[tuple[str, str], str] = {}
    for node in datacenter.nodes.values():
        for svc in node.services.values():
            try:
                settings = parse_labels(compose_labels(svc.config))
                spec = compose_spec.container_spec(node, svc, Path(root))
            except (LabelError, DeployerError, OSError, ValueError):
                continue
            if not settings.register:
                continue
            ports = sorted({int(k.split("/")[0]) for k in (spec.host.get("port_bindings") or {})
                            if k.partition("/")[2] in ("", "tcp")})
            if settings.port is not None:
                ports = [p for p in ports if p == settings.port]
            base = settings.name or svc.name
            for port in ports:
                out[(node.name, base if len(ports) == 1 else f"{base}-{port}")] = svc.name
    return out


def service_report(datacenter: "Datacenter", root: str | Path, catalog: Any = None) -> list[ServiceRow]:
    """Every instance the catalog knows for the datacenter beside what the repository says should run."""
    catalog = catalog or catalog_for(datacenter, root)
    source = f"consul at {catalog.address}" if isinstance(catalog, ConsulCatalog) else "docker engines"
    if isinstance(catalog, ConsulCatalog):
        require_leader(catalog)
    expected = expected_services(datacenter, root)
    rows: list[ServiceRow] = []
    seen: set[tuple[str, str]] = set()
    for name in catalog.services():
        if name == "consul":
            continue
        for inst in catalog.instances(name, passing_only=False):
            meta = inst.meta or {}
            if meta.get(META_OWNER) != OWNER:
                rows.append(ServiceRow(datacenter.name, name, None, inst.id, inst.endpoint, "external",
                                       "not registered by the deployer", source))
                continue
            if meta.get(META_DC) != datacenter.name:
                continue
            node = meta.get(META_NODE, "")
            key = (node, name)
            if key in expected:
                seen.add(key)
                rows.append(ServiceRow(datacenter.name, name, node, inst.id, inst.endpoint, inst.status,
                                       f"{datacenter.name}/{node}/{expected[key]}", source))
            else:
                rows.append(ServiceRow(datacenter.name, name, node, inst.id, inst.endpoint, "extra",
                                       "not in the repository", source))
    for (node, name), svc in sorted(expected.items()):
        if (node, name) not in seen:
            rows.append(ServiceRow(datacenter.name, name, node, None, None, "missing",
                                   f"{datacenter.name}/{node}/{svc} is written but not registered", source))
    rows.sort(key=lambda r: (r.service, r.node or "", r.instance or ""))
    return rows
