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

Every value is validated before anything reaches Consul (names with ``;``,
``}``, spaces... are refused), with the rules ``catalog.py`` applies to what it
reads back: ``parse_labels`` raises ``LabelError`` naming the label, and
``check_node_labels`` turns that into a ``ConfigError`` naming the compose file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployer.discovery.catalog import valid_name, valid_tag
from deployer.errors import ConfigError, LabelError
from deployer.labels import (
    LABEL_CONSUL_CHECK,
    LABEL_CONSUL_INTERVAL,
    LABEL_CONSUL_NAME,
    LABEL_CONSUL_PORT,
    LABEL_CONSUL_REGISTER,
    LABEL_CONSUL_TAGS,
    LABEL_CONSUL_TIMEOUT,
    LABEL_CONSUL_WAIT,
    LABEL_DRAIN,
)
from deployer.values import BadValue, parse_duration

if TYPE_CHECKING:  # pragma: no cover
    from deployer.model import Node

DEFAULT_DRAIN = 2.0  # seconds a retiring container keeps running after it left the passing set

#: A URL path an HTTP check may probe (no spaces, quotes or shell characters).
PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1000}\Z")


@dataclass(frozen=True)
class Settings:
    """What a container's labels say about its registration."""

    register: bool = True
    name: str | None = None
    tags: tuple[str, ...] = ()
    check: str | None = None  # None (derive) | "none" | "tcp" | "http:/path"
    interval: float | None = None
    timeout: float | None = None
    port: int | None = None
    wait: float | None = None
    drain: float = DEFAULT_DRAIN


def _duration(labels: dict[str, str], label: str, positive: bool = True) -> float | None:
    if label not in labels:
        return None
    try:
        value = parse_duration(labels[label])
    except BadValue as exc:
        raise LabelError(label, f"invalid {label}: {exc}") from None
    if positive and value <= 0:
        raise LabelError(label, "must be more than 0")
    return value


def parse_labels(labels: dict[str, str]) -> Settings:
    """The discovery settings in ``labels``; LabelError names the first bad one."""
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    register = True
    if LABEL_CONSUL_REGISTER in labels:
        text = labels[LABEL_CONSUL_REGISTER].strip().lower()
        if text not in ("true", "false", "yes", "no", "1", "0"):
            raise LabelError(LABEL_CONSUL_REGISTER, f"{labels[LABEL_CONSUL_REGISTER]!r} is not true or false")
        register = text in ("true", "yes", "1")
    name = labels.get(LABEL_CONSUL_NAME)
    if name is not None and not valid_name(name):
        raise LabelError(LABEL_CONSUL_NAME, f"unsafe service name {name!r}: use letters, digits, '.', '_' and '-' "
                                            "(at most 128, starting with a letter or digit)")
    tags: list[str] = []
    for tag in (labels.get(LABEL_CONSUL_TAGS) or "").split(","):
        tag = tag.strip()
        if not tag:
            continue
        if not valid_tag(tag):
            raise LabelError(LABEL_CONSUL_TAGS, f"unsafe tag {tag!r}: no spaces, quotes, ';', '{{', '}}', '$', '#'")
        if tag not in tags:
            tags.append(tag)
    check = labels.get(LABEL_CONSUL_CHECK)
    if check is not None:
        check = check.strip()
        if check in ("http", "http:"):
            check = "http:/"
        if check.startswith("http:"):
            if not PATH_RE.match(check[5:]):
                raise LabelError(LABEL_CONSUL_CHECK, f"{check!r}: write http:/path (a URL path without spaces)")
        elif check not in ("tcp", "none"):
            raise LabelError(LABEL_CONSUL_CHECK, f"{check!r}: write http:/path, tcp or none")
    port = None
    if LABEL_CONSUL_PORT in labels:
        text = labels[LABEL_CONSUL_PORT].strip().removesuffix("/tcp")
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise LabelError(LABEL_CONSUL_PORT, f"{labels[LABEL_CONSUL_PORT]!r} is not a container port")
        port = int(text)
    drain = _duration(labels, LABEL_DRAIN, positive=False)
    return Settings(
        register=register,
        name=name,
        tags=tuple(tags),
        check=check,
        interval=_duration(labels, LABEL_CONSUL_INTERVAL),
        timeout=_duration(labels, LABEL_CONSUL_TIMEOUT),
        port=port,
        wait=_duration(labels, LABEL_CONSUL_WAIT),
        drain=DEFAULT_DRAIN if drain is None else drain,
    )


def compose_labels(config: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``labels:`` (list of k=v or mapping) as a dict."""
    raw = config.get("labels") or {}
    if isinstance(raw, list):
        out = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in raw.items()}


def check_node_labels(node: "Node") -> None:
    """Refuse (ConfigError, file and label) any service of ``node`` whose discovery labels are unusable."""
    for svc in node.services.values():
        try:
            settings = parse_labels(compose_labels(svc.config))
        except LabelError as exc:
            raise ConfigError(node.compose_path or svc.location.path, exc.message,
                              field=f"services.{svc.name}.labels.{exc.label}") from None
        if settings.name is None and not valid_name(svc.name):
            raise ConfigError(node.compose_path or svc.location.path,
                              f"service name {svc.name!r} cannot be a Consul service name; set {LABEL_CONSUL_NAME}",
                              field=f"services.{svc.name}")

