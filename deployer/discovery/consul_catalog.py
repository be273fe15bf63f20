"""A Consul agent as a ``Catalog``, read (and written) over its HTTP API with py-consul.

``ConsulCatalog.query(dep, index, wait)`` fetches one dependency
(``catalog.ServicesQuery``, ``HealthQuery``, ``KeyQuery``) as a Consul
*blocking query*: it returns when the data changes or ``wait`` ends. What
comes back is validated by the rules of ``catalog.py`` (unsafe instances,
names, tags and meta entries are dropped and logged) before anyone sees it.
Every failure is one line: ``ConsulUnavailable`` when Consul cannot be
reached or has no leader, ``ConsulError`` when it answered with an error.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any, Callable, Iterable

import consul
import requests

from deployer.discovery.catalog import (
    Check,
    ChecksQuery,
    Dependency,
    HealthQuery,
    Instance,
    KeyQuery,
    ServicesQuery,
    aggregate_status,
    keep_valid,
    meta_ok,
    safe_meta,
    valid_name,
    valid_tag,
    validate_instance,
    warn_once,
)
from deployer.errors import ConsulError, ConsulUnavailable
from deployer.values import format_duration

MIN_WAIT = 0.001  # a blocking query's shortest wait: Consul reads 0 as its default (minutes)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(raw: dict[str, Any]) -> Check:
    status = str(raw.get("Status") or "critical")
    return Check(node=str(raw.get("Node") or ""), check_id=str(raw.get("CheckID") or ""),
                 name=str(raw.get("Name") or ""), status=status if status in ("passing", "warning") else "critical",
                 output=str(raw.get("Output") or "")[:4000], service_id=str(raw.get("ServiceID") or ""),
                 service=str(raw.get("ServiceName") or ""))


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

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(py-consul client)``; every failure is one line: ConsulUnavailable (unreachable, no
        leader, a 5xx) or ConsulError (Consul answered with an error)."""
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
                kwargs["wait"] = format_duration(max(wait, MIN_WAIT))
        if isinstance(dep, HealthQuery):
            if not valid_name(dep.service):
                raise ValueError(f"unsafe service name {dep.service!r}")
            if dep.tag is not None and not valid_tag(dep.tag):
                raise ValueError(f"unsafe tag {dep.tag!r}")
            new_index, entries = self.call(
                f"health of service {dep.service}",
                lambda c: c.health.service(dep.service, tag=dep.tag, passing=dep.passing_only, **kwargs),
            )
            value: Any = self._instances(entries or [], dep.service)
        elif isinstance(dep, ServicesQuery):
            new_index, raw = self.call("catalog services", lambda c: c.catalog.services(**kwargs))
            value = self._services(raw or {})
        elif isinstance(dep, KeyQuery):
            new_index, item = self.call(f"key {dep.key}", lambda c: c.kv.get(dep.key.lstrip("/"), **kwargs))
            raw_value = (item or {}).get("Value")
            value = None if item is None else (raw_value or b"").decode("utf-8", "replace")
        elif isinstance(dep, ChecksQuery):
            new_index, raw = self.call("health checks", lambda c: c.health.state("any", **kwargs))
            value = tuple(sorted((_check(c) for c in raw or () if isinstance(c, dict)),
                                 key=lambda c: (c.node, c.check_id)))
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
                warn_once(f"Consul at {self.address}: ignored service with unsafe name {name!r}")
                continue
            tags = set()
            for tag in raw[name] or ():
                if valid_tag(tag):
                    tags.add(tag)
                else:
                    warn_once(f"Consul at {self.address}: ignored unsafe tag {tag!r} of service {name!r}")
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
                    meta=safe_meta(svc.get("Meta"), where),
                    status=aggregate_status(c.get("Status", "critical") for c in entry.get("Checks") or ()),
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
        return self.call("leader", lambda c: c.status.leader()) or ""

    def put_kv(self, key: str, value: str) -> None:
        self.call(f"put key {key}", lambda c: c.kv.put(key.lstrip("/"), value))

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
        bad_meta = [f"{k!r}={v!r}" for k, v in inst.meta.items() if not meta_ok(k, v)]
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
        self.call(
            f"register {service}/{instance_id}",
            lambda c: c.agent.service.register(
                service, service_id=instance_id, address=address, port=port, tags=list(inst.tags),
                meta=inst.meta or None, check=check,
            ),
        )

    def deregister(self, instance_id: str) -> None:
        self.call(f"deregister {instance_id}", lambda c: c.agent.service.deregister(instance_id))
