"""What a container's discovery labels say: ``Settings``, read and validated from its labels.

The labels (names in ``deployer.labels``) are the user's, written in compose
files: ``deployer.consul.register`` (opt out with ``"false"``),
``deployer.consul.name``, ``deployer.consul.tags`` (``"a,b"``),
``deployer.consul.check`` (``http:/path``, ``tcp`` or ``none``),
``deployer.consul.interval`` / ``deployer.consul.timeout`` (the check's),
``deployer.consul.port`` (which published container port),
``deployer.consul.wait`` (how long a deploy waits for the check to pass) and
``deployer.drain`` (default 2s: how long a retiring container keeps running
after it left the passing set). Durations are read by
``deployer.values.parse_duration`` (``1m30s``, ``250ms``, bare seconds).

Their grammar lives in ``config.label_check`` (pure), which the compose check
runs on every service, so ``deployer validate`` and every command that loads
the repository refuse a bad label with file:line before anything reaches
Consul. This module is discovery's side of it: ``parse_labels`` (re-exported)
reads a running container's labels (``LabelError`` naming the label), and
``check_node_labels`` runs the same checks on a loaded node as a
``ConfigError`` naming the compose file (the deploy hooks' guard).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deployer.config.compose_keys import label_pairs, parse_port, parse_port_long
from deployer.config.label_check import (
    DEFAULT_DRAIN,
    PATH_RE,
    Settings,
    label_problems,
    parse_labels,
    service_name_problem,
)
from deployer.errors import BadValue, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from deployer.model import Node

__all__ = ["DEFAULT_DRAIN", "PATH_RE", "Settings", "check_node_labels", "compose_labels", "parse_labels",
           "published_tcp_container_ports"]


def compose_labels(config: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``labels:`` (list of k=v or mapping) as the strings its container carries."""
    return label_pairs(config.get("labels"))


def published_tcp_container_ports(config: dict[str, Any]) -> list[int]:
    """The TCP container ports a (validated) compose service publishes on its host."""
    ports: set[int] = set()
    for entry in config.get("ports") or []:
        try:
            bindings = parse_port_long(entry) if isinstance(entry, dict) else parse_port(entry)
        except BadValue:
            continue
        ports.update(container for container, proto, _, _ in bindings if proto == "tcp")
    return sorted(ports)


def check_node_labels(node: "Node") -> None:
    """Refuse (ConfigError, file and label) any service of ``node`` whose discovery labels are unusable.

    The same checks as the compose check (``config.label_check``), on the loaded node."""
    for svc in node.services.values():
        path = node.compose_path or svc.location.path
        labels = compose_labels(svc.config)
        problems = label_problems(labels)
        if problems:
            raise ConfigError(path, problems[0].message, field=f"services.{svc.name}.labels.{problems[0].label}")
        why = service_name_problem(svc.name, parse_labels(labels), published_tcp_container_ports(svc.config))
        if why:
            raise ConfigError(path, why, field=f"services.{svc.name}")
