"""Compose files: which keys are supported, and what container a service becomes.

Two jobs, both pure (no Docker, no git):

* ``validate_compose(doc, path, repo_root)`` checks a parsed compose document
  (ruamel round-trip data, so every key knows its line) and returns every
  problem as a ConfigError naming file, line and field. A key the deployer does
  not support is an error, never silently ignored.
* ``container_spec(node, service, repo_root)`` turns one validated service into a
  ContainerSpec: exactly the arguments the Docker engine API is called with,
  plus the labels that identify the container and a hash of all of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

LABEL_DC = "deployer.dc"
LABEL_NODE = "deployer.node"
LABEL_SERVICE = "deployer.service"
LABEL_CONFIG_HASH = "deployer.config-hash"
LABEL_IMAGE = "deployer.image"


@dataclass
class SecretFile:
    """A file secret: read on the deployer's machine, mounted read-only in the container."""

    name: str
    source: str  # absolute path on the deployer's machine
    target: str  # absolute path in the container (/run/secrets/<name> by default)
    sha256: str  # of the file's content, so a changed secret changes the config hash


@dataclass
class VolumeSpec:
    """A named volume the node's engine must have."""

    name: str  # engine name
    driver: str = "local"
    driver_opts: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False


@dataclass
class NetworkSpec:
    """A user-defined network the node's engine must have."""

    name: str  # engine name
    driver: str = "bridge"
    options: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False


@dataclass
class ContainerSpec:
    """Everything the engine is asked for when this service's container is created.

    ``create`` holds keyword arguments of docker's ``APIClient.create_container``
    (without image, name, labels, host_config, networking_config), ``host`` those
    of ``APIClient.create_host_config``. ``networks`` lists (engine network name,
    aliases) to attach; the first is attached at create time, the rest before
    start. Empty when ``host['network_mode']`` is set.
    """

    dc: str
    node: str
    service: str
    name: str
    image: str
    create: dict[str, Any]
    host: dict[str, Any]
    networks: list[tuple[str, list[str]]]
    labels: dict[str, str]  # user labels and the deployer.* identity labels, without the hash
    secrets: list[SecretFile] = field(default_factory=list)
    stop_timeout: int = 10
    has_healthcheck: bool = False
    published_ports: bool = False

    def config_hash(self) -> str:
        """A stable hash of everything that defines the container."""
        data = asdict(self)
        data["secrets"] = [(s["name"], s["target"], s["sha256"]) for s in data["secrets"]]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def all_labels(self) -> dict[str, str]:
        return {**self.labels, LABEL_CONFIG_HASH: self.config_hash()}
