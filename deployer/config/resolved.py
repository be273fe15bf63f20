"""A node's compose file as the deployer reads it: after interpolation, ``include`` and ``extends``.

``resolved_document(node)`` is what ``deployer config dc/node`` prints, the way
``docker compose config`` prints a project: the project ``name`` first, then
``services`` (by name), ``networks``, ``volumes``, ``secrets`` and ``configs``,
the keys of each service in alphabetical order (Compose prints them in the
order of its model, which is alphabetical but for a few keys), environment
entries as a mapping (as Compose prints them). The other values are as the file
writes them once resolved: Compose rewrites short syntax (ports, volumes) into
its long form, the deployer prints the form the compose check read.

Pure: the node was loaded (``loader``).
"""

from __future__ import annotations

from typing import Any

from deployer.config.compose_keys import env_pairs, parse_mode
from deployer.model import Node

TOP_ORDER = ("networks", "volumes", "secrets", "configs")


def _service(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(config):
        value = config[key]
        if key == "environment" and value is not None:
            value = {name: v for name, v in sorted(env_pairs(value))}
        elif key in ("secrets", "configs") and isinstance(value, list):
            value = [_with_octal_mode(entry) for entry in value]
        out[key] = value
    return out


def _with_octal_mode(entry: Any) -> Any:
    """A long-syntax secret or config with its mode as the deployer applies it, written "0440".

    The loaded number has lost its leading 0 (YAML 1.2 reads 0440 as 440), and a bare 440 is
    decimal to Compose: the string with the leading 0 is octal to both.
    """
    if isinstance(entry, dict) and entry.get("mode") is not None:
        return {**entry, "mode": f"0{parse_mode(entry['mode']):o}"}
    return entry


def resolved_document(node: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": node.project}
    doc["services"] = {name: _service(node.services[name].config) for name in sorted(node.services)}
    for section in TOP_ORDER:
        value = getattr(node, section, None)
        if value:
            doc[section] = {name: value[name] for name in sorted(value)}
    return doc
