"""What actually runs on a Docker engine, read into plain data (the "facts").

Only reads. The containers the deployer manages carry ``deployer.*`` labels
(dc, node, service, config hash), which is how actual state is matched to what
the repository says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployer.engine.connect import import_docker
from deployer.labels import LABEL_CONFIG_HASH, LABEL_DC, LABEL_IMAGE, LABEL_NODE, LABEL_REPLICA, LABEL_SERVICE

docker = import_docker()  # without docker-py's SSH support until an ssh:// node needs it (engine.connect)


@dataclass
class ContainerState:
    id: str
    name: str
    image: str  # the reference the container was created from
    image_id: str
    status: str  # created | running | restarting | exited | paused | dead
    health: str | None  # None when the container has no healthcheck
    exit_code: int
    restart_count: int
    labels: dict[str, str]
    host: dict[str, Any] = field(default_factory=dict)  # the live HostConfig fields 'docker update' can change
    # The host ports the engine bound (NetworkSettings.Ports): "80/tcp" -> [(host ip, host port), ...], an
    # ephemeral port as assigned at start; [] for a port exposed but not published. Empty unless it runs.
    ports: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    healthcheck: dict[str, Any] | None = None  # the effective Config.Healthcheck (the image's, or compose's)
    # The inspect's Mounts (fixed at create: a replacement carries its anonymous volumes over); None when the
    # container was only listed, not inspected
    mounts: list[dict[str, Any]] | None = None

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def dc(self) -> str | None:
        return self.labels.get(LABEL_DC)

    @property
    def node(self) -> str | None:
        return self.labels.get(LABEL_NODE)

    @property
    def service(self) -> str | None:
        return self.labels.get(LABEL_SERVICE)

    @property
    def config_hash(self) -> str | None:
        return self.labels.get(LABEL_CONFIG_HASH)

    @property
    def image_written(self) -> str | None:
        return self.labels.get(LABEL_IMAGE)

    @property
    def replica(self) -> int:
        """Which replica of its service (LABEL_REPLICA; replica 1 carries none)."""
        text = self.labels.get(LABEL_REPLICA) or "1"
        return int(text) if text.isdigit() and int(text) > 0 else 1

    @property
    def completed(self) -> bool:
        """Exited with code 0: a one-shot container that did its job."""
        return self.status == "exited" and self.exit_code == 0

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def ok(self) -> bool:
        """Running, and healthy if it has a healthcheck."""
        return self.running and self.health in (None, "healthy")

    @property
    def publishes_ports(self) -> bool:
        """Whether it holds a fixed host port (an ephemeral one, "" or "0", frees nothing a successor needs)."""
        return any(b.get("HostPort") not in (None, "", "0")
                   for binds in (self.host.get("port_bindings") or {}).values() for b in (binds or []))

    def describe(self) -> str:
        if self.status != "running":
            return f"{self.status} (exit code {self.exit_code})" if self.status in ("exited", "dead") else self.status
        return self.health or "running"


@dataclass
class NodeState:
    """The containers on one engine: those the deployer manages for this node, and every name in use."""

    managed: list[ContainerState]
    names: dict[str, ContainerState]  # every container on the engine, by name

    def for_service(self, service: str) -> list[ContainerState]:
        return [c for c in self.managed if c.service == service]


def _published(ports: dict[str, Any] | None) -> dict[str, list[tuple[str, int]]]:
    """NetworkSettings.Ports -> container port/proto -> [(host ip, host port)]; unassigned bindings left out."""
    out: dict[str, list[tuple[str, int]]] = {}
    for key, bindings in (ports or {}).items():
        out[key] = [(b.get("HostIp") or "", int(b["HostPort"])) for b in bindings or ()
                    if str(b.get("HostPort") or "").isdigit()]
    return out


def inspect_to_state(info: dict[str, Any]) -> ContainerState:
    state = info.get("State") or {}
    config = info.get("Config") or {}
    host = info.get("HostConfig") or {}
    health = (state.get("Health") or {}).get("Status")
    return ContainerState(
        id=info["Id"],
        name=info.get("Name", "").lstrip("/"),
        image=config.get("Image", ""),
        image_id=info.get("Image", ""),
        status=state.get("Status", "unknown"),
        health=health,
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(info.get("RestartCount") or 0),
        labels=dict(config.get("Labels") or {}),
        host={
            "restart_policy": host.get("RestartPolicy") or {},
            "memory": host.get("Memory") or 0,
            "nano_cpus": host.get("NanoCpus") or 0,
            "port_bindings": host.get("PortBindings") or {},
        },
        ports=_published((info.get("NetworkSettings") or {}).get("Ports")),
        healthcheck=config.get("Healthcheck") or None,
        mounts=list(info.get("Mounts") or []),
    )


def read_container(client: "docker.DockerClient", ident: str) -> ContainerState:
    return inspect_to_state(client.api.inspect_container(ident))


def read_node(client: "docker.DockerClient", dc: str, node: str) -> NodeState:
    """Every container on the engine by name, and the ones labelled for this dc/node."""
    names: dict[str, ContainerState] = {}
    managed: list[ContainerState] = []
    for summary in client.api.containers(all=True):
        labels = summary.get("Labels") or {}
        name = (summary.get("Names") or ["/"])[0].lstrip("/")
        if labels.get(LABEL_DC) == dc and labels.get(LABEL_NODE) == node:
            try:
                state = read_container(client, summary["Id"])
            except Exception as exc:  # removed between list and inspect
                if getattr(exc, "status_code", None) == 404:
                    continue
                raise
            managed.append(state)
            names[name] = state
        else:
            names[name] = ContainerState(
                id=summary["Id"], name=name, image=summary.get("Image", ""), image_id=summary.get("ImageID", ""),
                status=summary.get("State", "unknown"), health=None, exit_code=0, restart_count=0, labels=dict(labels),
            )
    managed.sort(key=lambda c: (c.service or "", c.name))
    return NodeState(managed=managed, names=names)


def image_id(client: "docker.DockerClient", ref: str) -> str | None:
    """The id the reference resolves to on this engine, or None when it is not there."""
    try:
        return client.api.inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.NotFound:
        return None
