"""Service discovery data: which instances of which service run where, and how healthy.

Three layers, after consul-template's ``watch/`` package:

* ``Instance`` and the ``Catalog`` protocol: plain data and the three reads a
  template needs (``services``, ``instances``, ``kv``). ``StaticCatalog`` is an
  in-memory catalog; ``ConsulCatalog`` reads a Consul agent over its HTTP API.
* Dependencies (``ServicesQuery``, ``HealthQuery``, ``KeyQuery``): one value
  each, hashable, fetched with ``ConsulCatalog.query(dep, index, wait)`` as a
  Consul *blocking query* (returns when the data changes or ``wait`` ends).
* ``Watcher``: one thread per dependency that follows it (blocking queries for
  Consul, polling for any other catalog), keeps the latest value, retries with
  capped exponential backoff, and records when it (re)connected, so that the
  template runner can distrust data that was read just after Consul came back.

Everything read from Consul is untrusted: anyone who can register a service can
choose its name, tags, address and meta. ``validate_instance`` checks every
field that can end up in a config file (names and node names against
``NAME_RE``, tags against ``TAG_RE``, the address is an IP or an RFC 1123 host
name, the port 1-65535); an instance that fails is dropped with a logged
warning and never reaches a template. Meta entries that are not plain tokens
are dropped one by one. That is what makes a service named
``x; } server { listen 81; }`` or an address ``1.2.3.4; evil`` harmless.
KV values are not validated here: templates pass them through a checking
filter (``port``, ``token``).

Heavy modules (``consul``, ``requests``) are imported inside functions.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Union, runtime_checkable

from deployer.errors import ConsulError, ConsulUnavailable, DeployerError

log = logging.getLogger(__name__)

STATUSES = ("passing", "warning", "critical")

# What may appear in a config file unquoted. Deliberately narrower than what
# Consul accepts: no whitespace, quotes, ';', '{', '}', '$', '#', '\' or controls.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # service and node names
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=/@+,-]{0,254}\Z")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}\Z")  # registrator ids: host:name:port
META_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
META_VALUE_RE = re.compile(r"[A-Za-z0-9._:=/@+,-]{0,512}\Z")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def valid_name(value: object) -> bool:
    """A service or node name that is safe to write into a config file."""
    return isinstance(value, str) and NAME_RE.match(value) is not None


def valid_tag(value: object) -> bool:
    return isinstance(value, str) and TAG_RE.match(value) is not None


def valid_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def valid_address(value: object) -> bool:
    """An IPv4/IPv6 address (no zone index) or an RFC 1123 host name."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return "%" not in value
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()  # "1.2.3" is a broken IP, not a host name


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


def _warn_once(message: str) -> None:
    """Warn about a bad value once per process (watch mode re-reads it on every change)."""
    with _warned_lock:
        first = message not in _warned
        if first:
            _warned.add(message)
    log.log(logging.WARNING if first else logging.DEBUG, "%s", message)


def _meta_ok(key: object, value: object) -> bool:
    return isinstance(key, str) and META_KEY_RE.match(key) is not None and (
        isinstance(value, str) and META_VALUE_RE.match(value) is not None
    )


def _safe_meta(meta: Any, where: str) -> dict[str, str]:
    """The meta entries safe to write into a config file; the others are dropped (logged)."""
    out: dict[str, str] = {}
    for key, value in (meta or {}).items():
        if _meta_ok(key, value):
            out[key] = value
        else:
            _warn_once(f"{where}: dropped unsafe meta entry {key!r}={value!r}")
    return out


def keep_valid(instances: Iterable[Instance], source: str = "catalog") -> list[Instance]:
    """The safe instances, sorted by (service, node, id); each dropped one is logged."""
    out = []
    for inst in instances:
        reason = validate_instance(inst)
        if reason:
            _warn_once(f"{source}: dropped instance {inst.id!r} of service {inst.service!r}: {reason}")
        else:
            out.append(inst)
    return sorted(out, key=lambda i: (i.service, i.node, i.id))


def _aggregate_status(statuses: Iterable[str]) -> str:
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
    (plugged in by the deploy path) a catalog built from the Docker engines."""

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


Dependency = Union[ServicesQuery, HealthQuery, KeyQuery]


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from ``1.5``, ``"250ms"``, ``"2s"``, ``"1m30s"``; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what} must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
        try:
            return parse_duration(float(text), what)
        except ValueError:
            pass
    raise ValueError(f"invalid {what} {value!r}: write seconds or a duration like 250ms, 2s, 1m30s")


def _go_duration(seconds: float) -> str:
    return f"{max(1, int(round(seconds * 1000)))}ms"


# --- Consul --------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConsulCatalog:
    """A Consul agent read (and written) over its HTTP API with py-consul.

    ``address`` is ``host:port``, ``host`` (port 8500), or an ``http://`` /
    ``https://`` URL. The token comes from ``token`` or CONSUL_HTTP_TOKEN.
    Reads use the default consistency mode, so a Consul without a leader
    answers with an error and never with an empty catalog.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        datacenter: str | None = None,
        verify: bool | str = True,
        timeout: float = 5.0,
    ):
        self.address = address
        text = address.strip()
        url = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
        try:
            port = url.port
        except ValueError:
            port = -1
        if url.scheme not in ("http", "https") or not url.hostname or port == -1 or url.path not in ("", "/"):
            raise ConsulError(address, "invalid address: write host:port or http(s)://host:port")
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = port or (443 if url.scheme == "https" else 8500)
        self.token = token
        self.datacenter = datacenter
        self.verify = verify
        self.timeout = timeout
        self._local = threading.local()  # a requests session is not shared between threads

    def __repr__(self) -> str:
        return f"ConsulCatalog({self.address!r})"

    # -- plumbing --

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import consul

            client = consul.Consul(
                host=self.host,
                port=self.port,
                scheme=self.scheme,
                token=self.token,
                dc=self.datacenter,
                verify=self.verify,
                connections_timeout=self.timeout,
            )
            # Like the Docker clients: ignore proxy and CA-bundle settings from the
            # environment, which would otherwise override ``verify``.
            client.http.session.trust_env = False
            self._local.client = client
        return client

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        import consul
        import requests

        try:
            return fn(self._client())
        except requests.exceptions.Timeout:
            raise ConsulUnavailable(self.address, f"{what}: timed out") from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc).lower()
            if "refused" in text:
                reason = "connection refused"
            elif "reset" in text or "aborted" in text or "remote end closed" in text:
                reason = "connection lost"
            elif "name or service not known" in text or "name resolution" in text:
                reason = f"cannot resolve {self.host}"
            else:
                reason = _one_line(str(exc), 160)
            raise ConsulUnavailable(self.address, f"{what}: {reason}") from None
        except requests.exceptions.RequestException as exc:
            raise ConsulUnavailable(self.address, f"{what}: {_one_line(exc)}") from None
        except consul.ConsulException as exc:
            text = _one_line(exc)
            if text.startswith("5") or "leader" in text or "No known Consul servers" in text:
                raise ConsulUnavailable(self.address, f"{what}: {text}") from None
            raise ConsulError(self.address, f"{what}: {text}") from None

    # -- blocking queries --

    def query(self, dep: Dependency, index: int | None = None, wait: float | None = None) -> tuple[int, Any]:
        """``(index, value)`` of ``dep``. With ``index``, a blocking query: Consul
        answers when the data's index passes ``index``, or after ``wait`` seconds
        with the same index (the value is then unchanged)."""
        kwargs: dict[str, Any] = {}
        if index:
            kwargs["index"] = str(index)
            if wait is not None:
                kwargs["wait"] = _go_duration(wait)
        if isinstance(dep, HealthQuery):
            if not valid_name(dep.service):
                raise ValueError(f"unsafe service name {dep.service!r}")
            if dep.tag is not None and not valid_tag(dep.tag):
                raise ValueError(f"unsafe tag {dep.tag!r}")
            new_index, entries = self._call(
                f"health of service {dep.service}",
                lambda c: c.health.service(dep.service, tag=dep.tag, passing=dep.passing_only, **kwargs),
            )
            value: Any = self._instances(entries or [], dep.service)
        elif isinstance(dep, ServicesQuery):
            new_index, raw = self._call("catalog services", lambda c: c.catalog.services(**kwargs))
            value = self._services(raw or {})
        elif isinstance(dep, KeyQuery):
            new_index, item = self._call(f"key {dep.key}", lambda c: c.kv.get(dep.key.lstrip("/"), **kwargs))
            raw_value = (item or {}).get("Value")
            value = None if item is None else (raw_value or b"").decode("utf-8", "replace")
        else:
            raise TypeError(f"not a dependency: {dep!r}")
        try:
            return int(new_index), value
        except (TypeError, ValueError):
            raise ConsulError(self.address, f"bad X-Consul-Index {new_index!r}") from None

    def _services(self, raw: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        out = {}
        for name in sorted(raw):
            if not valid_name(name):
                _warn_once(f"Consul at {self.address}: ignored service with unsafe name {name!r}")
                continue
            tags = set()
            for tag in raw[name] or ():
                if valid_tag(tag):
                    tags.add(tag)
                else:
                    _warn_once(f"Consul at {self.address}: ignored unsafe tag {tag!r} of service {name!r}")
            out[name] = tuple(sorted(tags))
        return out

    def _instances(self, entries: list[dict[str, Any]], service: str) -> list[Instance]:
        found = []
        for entry in entries:
            svc = entry.get("Service") or {}
            node = entry.get("Node") or {}
            where = f"Consul at {self.address}: service {svc.get('Service', service)!r} instance {svc.get('ID')!r}"
            found.append(
                Instance(
                    service=svc.get("Service", ""),
                    id=svc.get("ID", ""),
                    node=node.get("Node", ""),
                    address=svc.get("Address") or node.get("Address") or "",
                    port=svc.get("Port"),
                    tags=tuple(svc.get("Tags") or ()),
                    meta=_safe_meta(svc.get("Meta"), where),
                    status=_aggregate_status(c.get("Status", "critical") for c in entry.get("Checks") or ()),
                )
            )
        return keep_valid(found, f"Consul at {self.address}")

    # -- the Catalog protocol --

    def services(self) -> dict[str, tuple[str, ...]]:
        return self.query(ServicesQuery())[1]

    def instances(self, service: str, tag: str | None = None, passing_only: bool = True) -> list[Instance]:
        return self.query(HealthQuery(service, tag, passing_only))[1]

    def kv(self, key: str, default: Any = None) -> Any:
        value = self.query(KeyQuery(key))[1]
        return default if value is None else value

    # -- agent state --

    def leader(self) -> str:
        """The leader's address, or "" while the cluster has none."""
        return self._call("leader", lambda c: c.status.leader()) or ""

    def put_kv(self, key: str, value: str) -> None:
        self._call(f"put key {key}", lambda c: c.kv.put(key.lstrip("/"), value))

    # -- registration (the local agent's services) --

    def register_instance(
        self,
        service: str,
        instance_id: str,
        address: str,
        port: int,
        *,
        tags: Iterable[str] = (),
        meta: dict[str, str] | None = None,
        http_check: str | None = None,
        ttl: str | None = None,
        interval: str = "10s",
        deregister_after: str | None = None,
    ) -> None:
        """Register one instance with the local agent, with an HTTP or TTL check.

        Refuses values the catalog would drop anyway, so a registration never
        silently disappears from the rendered configs.
        """
        inst = Instance(service, instance_id, "local", address, port, tuple(tags), dict(meta or {}))
        reason = validate_instance(inst)
        bad_meta = [f"{k!r}={v!r}" for k, v in inst.meta.items() if not _meta_ok(k, v)]
        reason = reason or (f"unsafe meta entry {bad_meta[0]}" if bad_meta else None)
        if reason:
            raise ConsulError(self.address, f"refusing to register {service}/{instance_id}: {reason}")
        check: dict[str, Any] | None = None
        if http_check:
            check = {"http": http_check, "interval": interval}
        elif ttl:
            check = {"ttl": ttl}
        if check is not None and deregister_after:
            check["DeregisterCriticalServiceAfter"] = deregister_after
        self._call(
            f"register {service}/{instance_id}",
            lambda c: c.agent.service.register(
                service, service_id=instance_id, address=address, port=port, tags=list(inst.tags),
                meta=inst.meta or None, check=check,
            ),
        )

    def deregister(self, instance_id: str) -> None:
        self._call(f"deregister {instance_id}", lambda c: c.agent.service.deregister(instance_id))


# --- following dependencies ------------------------------------------------------------


class _View:
    """One dependency being followed by a thread (consul-template's ``View``)."""

    def __init__(self, watcher: "Watcher", dep: Dependency, index: int, value: Any):
        self.watcher = watcher
        self.dep = dep
        self.index = index
        self.value = value
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"watch {dep}", daemon=True)

    def _run(self) -> None:
        w = self.watcher
        blocking = hasattr(w.source, "query")
        index = self.index
        backoff = w.backoff
        failing = False
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if blocking:
                    new_index, value = w.source.query(self.dep, index=index or None, wait=w.blocking_wait)
                else:
                    if self.stop.wait(w.poll_interval):
                        return
                    new_index, value = 0, self.dep.read(w.source)
            except Exception as exc:  # noqa: BLE001 - a view must never die silently
                if self.stop.is_set():
                    return
                message = exc.one_line() if isinstance(exc, DeployerError) else f"{type(exc).__name__}: {exc}"
                w._failed(self, message, first=not failing)
                failing = True
                # After a failure, start again from a plain read: if Consul was restarted
                # its index went backwards, and a blocking query for an index it has not
                # reached yet would only answer after the whole wait.
                index = 0
                if self.stop.wait(backoff * random.uniform(0.8, 1.2)):
                    return
                backoff = min(backoff * 2, w.max_backoff)
                continue
            if self.stop.is_set():
                return
            backoff = w.backoff
            reset = blocking and bool(index) and new_index < index
            if reset:
                log.info("%s: Consul index went backwards (%s -> %s); Consul's state was reset", self.dep, index, new_index)
            w._succeeded(self, value, reconnected=failing or reset)
            failing = False
            if blocking:
                unchanged = new_index == index
                index = max(new_index, 1)
                if unchanged and time.monotonic() - started < w.min_query_interval:
                    # An answer that came back at once without a change: do not spin.
                    self.stop.wait(w.min_query_interval)


class Watcher:
    """Follows every dependency it was asked for and keeps its latest value.

    ``get(dep)`` answers from memory once a dependency is known; the first time,
    it reads it at once (raising ``ConsulUnavailable`` and friends) and starts a
    thread that follows it. ``on_change`` is called (from those threads) when a
    value changes, when a dependency starts failing, and when it recovers.

    ``connected_at`` is the monotonic time of the first successful read;
    ``reconnected_at`` that of the latest reconnection: a success after
    failures, or Consul's index going backwards (its state was reset), None
    while there was none. ``failing()`` lists the dependencies whose last read
    failed; their values are the last good ones.
    """

    def __init__(
        self,
        source: Catalog,
        *,
        blocking_wait: float = 60.0,
        poll_interval: float = 2.0,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        min_query_interval: float = 0.05,
        on_change: Callable[[], None] | None = None,
    ):
        self.source = source
        self.blocking_wait = blocking_wait
        self.poll_interval = poll_interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.min_query_interval = min_query_interval
        self.on_change = on_change or (lambda: None)
        self.generation = 0  # bumped on every change of a value
        self.connected_at: float | None = None
        self.reconnected_at: float | None = None
        self._lock = threading.Lock()
        self._views: dict[Dependency, _View] = {}
        self._failing: dict[Dependency, str] = {}
        self._closed = False

    def get(self, dep: Dependency) -> Any:
        with self._lock:
            view = self._views.get(dep)
            if view is not None:
                return view.value
        if hasattr(self.source, "query"):
            index, value = self.source.query(dep)
        else:
            index, value = 0, dep.read(self.source)
        with self._lock:
            if dep in self._views:  # another caller got there first
                return self._views[dep].value
            if self.connected_at is None:
                self.connected_at = time.monotonic()
            view = _View(self, dep, index, value)
            self._views[dep] = view
            if not self._closed:
                view.thread.start()
        return value

    def retain(self, deps: Iterable[Dependency]) -> None:
        """Stop following every dependency not in ``deps``."""
        keep = set(deps)
        with self._lock:
            for dep in [d for d in self._views if d not in keep]:
                self._views.pop(dep).stop.set()
                self._failing.pop(dep, None)

    def failing(self) -> dict[Dependency, str]:
        with self._lock:
            return dict(self._failing)

    def dependencies(self) -> list[Dependency]:
        with self._lock:
            return list(self._views)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            views = list(self._views.values())
            self._views.clear()
        for view in views:
            view.stop.set()

    # -- called by views --

    def _failed(self, view: _View, message: str, first: bool) -> None:
        with self._lock:
            if self._views.get(view.dep) is not view:
                return
            self._failing[view.dep] = message
        if first:
            log.warning("watching %s: %s (retrying with backoff)", view.dep, message)
            self.on_change()
        else:
            log.debug("watching %s: still failing: %s", view.dep, message)

    def _succeeded(self, view: _View, value: Any, reconnected: bool) -> None:
        with self._lock:
            if self._views.get(view.dep) is not view:
                return
            changed = value != view.value
            if changed:
                view.value = value
                self.generation += 1
            if reconnected:
                self._failing.pop(view.dep, None)
                self.reconnected_at = time.monotonic()
        if reconnected:
            log.info("watching %s: connected again", view.dep)
        if changed or reconnected:
            self.on_change()
