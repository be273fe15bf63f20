"""A catalog built from the Docker engines, for a datacenter without Consul.

``DockerCatalog`` implements ``catalog.Catalog`` from the nodes' running
containers, with the same registrations a Consul would hold (see
``registration.py``); ``catalog_for`` picks it, or the datacenter's Consul.
It keeps one engine connection per node.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from deployer.discovery.catalog import Instance, keep_valid
from deployer.discovery.registration import consul_for, node_address, registrations
from deployer.engine.connect import connect, describe
from deployer.engine.state import inspect_to_state
from deployer.errors import DeployerError, EnginesUnavailable, LabelError
from deployer.labels import LABEL_DC, LABEL_NODE

if TYPE_CHECKING:  # pragma: no cover
    from deployer.model import Datacenter, Node

log = logging.getLogger(__name__)


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
                container = inspect_to_state(info)
                if not container.running:
                    continue
                try:
                    regs = registrations(node.dc, node.name, address, container)
                except LabelError as exc:
                    log.warning("%s: not listing container %s: %s", node.target, container.name, exc.one_line())
                    continue
                status = "passing" if container.health in (None, "healthy") else "critical"
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
