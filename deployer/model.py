"""The infrastructure as plain data: datacenters, nodes, services.

Nothing in here touches disk, git or Docker. ``loader.py`` builds these objects
from the repository; everything else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from deployer.errors import TargetError


@dataclass(frozen=True)
class Location:
    """Where something is written: a repo-relative path and a 1-based line."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


@dataclass(frozen=True)
class TLSFiles:
    """Client TLS material for a tcp:// Docker engine (docker-machine style)."""

    ca: str
    cert: str
    key: str


@dataclass
class Service:
    """One compose service written for one node.

    ``config`` is the service's compose mapping as plain Python data (dicts,
    lists, str, int, ...), exactly as written; ``config.compose_spec`` turns it into a
    container spec.
    """

    dc: str
    node: str
    name: str
    image: str
    config: dict[str, Any]
    location: Location  # the compose file (lines are read on demand, for error messages)
    # the container spec the parse cache kept for exactly this text on this node (config.parse_cache),
    # handed out once; None: compose_spec.container_spec builds the spec from config
    cached_spec: Any = field(default=None, repr=False, compare=False)

    @property
    def target(self) -> str:
        return f"{self.dc}/{self.node}/{self.name}"

    @property
    def depends_on(self) -> list[str]:
        dep = self.config.get("depends_on") or []
        return list(dep.keys()) if isinstance(dep, dict) else list(dep)


@dataclass
class Node:
    """A Docker host: how to reach it, and the containers it must run."""

    dc: str
    name: str
    docker: str  # unix:///var/run/docker.sock | ssh://user@host[:port] | tcp://host:2376
    path: str  # repo-relative directory, datacenters/<dc>/<node>
    location: Location  # node.yml
    compose_path: str | None = None  # repo-relative; None when the node runs nothing
    tls: TLSFiles | None = None
    identity_file: str | None = None
    known_hosts: str | None = None  # repo-relative path of the node's pinned host keys
    address: str | None = None  # the address other hosts reach this node's ports on
    description: str = ""
    services: dict[str, Service] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # top-level compose configs
    # its datacenter's secrets_dir folders (copied by the loader): where secret files outside the repository may lie
    secrets_dirs: tuple[str, ...] = ()
    # its datacenter's registry_credentials file (copied by the loader): the account its pulls use
    registry_credentials: str | None = None
    # what the compose file is interpolated with: node.yml variables > .env > datacenter.yml variables
    variables: dict[str, str] = field(default_factory=dict)
    compose_name: str | None = None  # the compose file's top-level `name:` (the project name), when written
    # node.yml profiles: compose services with profiles run here only when one of theirs is listed
    profiles: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return f"{self.dc}/{self.name}"

    @property
    def project(self) -> str:
        """Prefix for the names of containers, networks and volumes on the engine: `name:` or the node's name."""
        return self.compose_name or self.name


@dataclass
class Datacenter:
    name: str
    path: str
    description: str = ""
    consul: str | None = None
    registry: str | None = None
    secrets_dirs: tuple[str, ...] = ()  # datacenter.yml secrets_dir: absolute folders secret files may come from
    registry_credentials: str | None = None  # datacenter.yml: an absolute path outside the repository (Docker auths JSON)
    variables: dict[str, str] = field(default_factory=dict)  # datacenter.yml variables: what every node shares
    location: Location | None = None  # datacenter.yml, when there is one
    nodes: dict[str, Node] = field(default_factory=dict)
    # datacenter.yml lock: {ttl, delay}: the node locks' TTL and (Consul) lock-delay, seconds; None: the defaults
    lock_ttl: float | None = None
    lock_delay: float | None = None
    builder: "Node | None" = None  # datacenter.yml builder: the engine its images are built on (config.builder_engine)


@dataclass(frozen=True)
class Target:
    """A parsed, resolved target: a datacenter, a node, or one service."""

    dc: str
    node: str | None = None
    service: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.dc, self.node, self.service) if p)


@dataclass
class Infrastructure:
    """The whole repository: every datacenter, node and service."""

    root: Path
    datacenters: dict[str, Datacenter] = field(default_factory=dict)

    def nodes(self) -> Iterator[Node]:
        for dc in sorted(self.datacenters):
            for name in sorted(self.datacenters[dc].nodes):
                yield self.datacenters[dc].nodes[name]

    def services(self) -> Iterator[Service]:
        for node in self.nodes():
            for name in sorted(node.services):
                yield node.services[name]

    def node(self, dc: str, name: str) -> Node:
        return self.datacenters[dc].nodes[name]

    def resolve(self, text: str) -> Target:
        """``dc``, ``dc/node``, ``dc/node/service``, or a node name that is unique."""
        parts = [p for p in text.strip().strip("/").split("/")]
        if not text.strip() or any(not p for p in parts) or len(parts) > 3:
            raise TargetError(f"invalid target {text!r}: write dc, dc/node or dc/node/service")
        if len(parts) == 1:
            (word,) = parts
            if word in self.datacenters:
                return Target(word)
            owners = [n for n in self.nodes() if n.name == word]
            if len(owners) == 1:
                return Target(owners[0].dc, word)
            if len(owners) > 1:
                raise TargetError(
                    f"node name {word!r} is ambiguous: " + ", ".join(n.target for n in owners)
                )
            raise TargetError(f"unknown target {word!r}: not a datacenter or node ({self._known()})")
        dc = parts[0]
        if dc not in self.datacenters:
            raise TargetError(f"unknown datacenter {dc!r} in {text!r} (known: {', '.join(sorted(self.datacenters)) or 'none'})")
        node_name = parts[1]
        nodes = self.datacenters[dc].nodes
        if node_name not in nodes:
            raise TargetError(
                f"unknown node {dc}/{node_name} (nodes in {dc}: {', '.join(sorted(nodes)) or 'none'})"
            )
        if len(parts) == 2:
            return Target(dc, node_name)
        service = parts[2]
        node = nodes[node_name]
        if service not in node.services:
            raise TargetError(
                f"unknown service {dc}/{node_name}/{service} (services on {dc}/{node_name}: "
                f"{', '.join(sorted(node.services)) or 'none'})"
            )
        return Target(dc, node_name, service)

    def select(self, target: Target | None) -> list[Service]:
        """The services a target covers, in a stable order."""
        out = []
        for svc in self.services():
            if target is None:
                out.append(svc)
            elif svc.dc == target.dc and (target.node is None or svc.node == target.node) and (
                target.service is None or svc.name == target.service
            ):
                out.append(svc)
        return out

    def select_nodes(self, target: Target | None) -> list[Node]:
        return [
            n
            for n in self.nodes()
            if target is None or (n.dc == target.dc and (target.node is None or n.name == target.node))
        ]

    def _known(self) -> str:
        dcs = ", ".join(sorted(self.datacenters)) or "none"
        return f"datacenters: {dcs}"
