"""The registrator: keeps the Consul registrations of some nodes equal to their running containers.

Containers started, stopped or restarted outside the deployer (by hand, by a
restart policy, by a crash) are (de)registered: ``Registrator.run`` follows
each node's Docker events (reconnecting with backoff) and resyncs every
``resync`` seconds; ``sync_node`` is one resync (``deployer registrator
--once``). It never touches what a deploy is switching (a ``-next`` container,
a registration in maintenance), and only ever removes registrations it owns
(their meta, see ``registration.py``). It keeps one engine connection per node.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import docker

from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.registration import (
    META_CONTAINER,
    Registration,
    agent_checks,
    agent_services,
    consul_for,
    deregister,
    in_maintenance,
    node_address,
    owned,
    register,
    registrations,
)
from deployer.spec import NEXT_SUFFIX
from deployer.engine.connect import connect, describe
from deployer.engine.state import ContainerState, read_container
from deployer.errors import ConfigError, DeployerError, LabelError
from deployer.labels import LABEL_DC, LABEL_NODE

if TYPE_CHECKING:  # pragma: no cover
    from deployer.model import Datacenter, Node

log = logging.getLogger(__name__)


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
                self._drop_client(node)
                report.error = f"node {node.target} ({node.docker}): {describe(exc)}"
        self.stats["syncs"] += 1
        if report.error:
            self.stats["errors"] += 1
            if self._failing.get(node.target) != report.error:
                log.warning("%s", report.error)
            self._failing[node.target] = report.error
        return report

    def _running(self, client, dc: str, node: "Node", only: str | None) -> dict[str, ContainerState]:
        if only is not None:
            try:
                found = [read_container(client, only)]
            except docker.errors.NotFound:
                return {}
        else:
            found = []
            for summary in client.api.containers(filters={"label": [f"{LABEL_DC}={dc}", f"{LABEL_NODE}={node.name}"]}):
                try:
                    found.append(read_container(client, summary["Id"]))
                except docker.errors.NotFound:
                    continue
        return {c.id: c for c in found if c.dc == dc and c.node == node.name and c.running}

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
        for container in running.values():
            try:
                regs = registrations(dc.name, node.name, address, container)
            except LabelError as exc:
                name = container.name
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
            container = running[cid]
            current = mine.get(sid)
            if current is not None:
                if current and not reg.same_as(current) and not in_maintenance(checks, sid):
                    register(catalog, reg, services)  # e.g. a new host port after a restart by hand
                    report.registered.append(sid)
                    log.info("%s: updated %s", node.target, sid)
                else:
                    report.kept += 1
                continue
            if container.name.endswith(NEXT_SUFFIX) or cid in self._retiring or container.health not in (None, "healthy"):
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
