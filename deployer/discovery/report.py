"""What the catalog knows next to what the repository says (``deployer services``).

``service_report`` lists every instance the datacenter's catalog (Consul, or
the engines) knows, each as a ``ServiceRow``: passing, warning or critical
when the repository says it should be registered, ``extra`` when the deployer
registered it but the repository no longer says so, ``external`` when someone
else registered it, and ``missing`` for what the repository says and the
catalog lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer.config import compose_spec
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.docker_catalog import catalog_for
from deployer.discovery.label_settings import compose_labels, parse_labels
from deployer.discovery.registration import META_DC, META_NODE, META_OWNER, OWNER, require_leader
from deployer.errors import DeployerError, LabelError

if TYPE_CHECKING:  # pragma: no cover
    from deployer.model import Datacenter


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
