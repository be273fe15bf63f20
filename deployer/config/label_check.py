"""The grammar of the ``deployer.*`` labels a compose file may write, pure: no Consul, no engine.

The labels (names in ``deployer.labels.DISCOVERY_LABELS``) are read by
discovery: ``deployer.consul.register`` (``true``/``false``),
``deployer.consul.name``, ``deployer.consul.tags`` (``"a,b"``),
``deployer.consul.check`` (``http:/path``, ``tcp`` or ``none``),
``deployer.consul.interval`` / ``deployer.consul.timeout`` / ``deployer.consul.wait``
(more than 0) and ``deployer.drain`` (0 or more), durations read by
``values.parse_duration``; ``deployer.consul.port`` (a container port).

This module is where that grammar lives, once: the compose check calls it for
every service (``compose_check_service``, with file:line), and discovery reads
the labels through it (``discovery.label_settings``, which adds what only
Consul needs). The token rules (``NAME_RE``, ``TAG_RE``, the meta rules) are
also the ones ``discovery.catalog`` applies to what it reads back from Consul:
what may appear unquoted in a config file; ``valid_address`` too, which a
node.yml ``address:`` (where the node's registrations point) must follow.

* ``check_labels(labels)``: both at once (the compose check's call).
* ``label_problems(labels)``: every unusable discovery label (``LabelError``
  naming it), in a fixed order; an unknown ``deployer.consul.*`` label and a
  near miss of a known one (``deployer.drian``) are problems too.
* ``parse_labels(labels)``: the ``Settings`` they say, or the first problem with a
  known label raised (how discovery reads a running container's labels).
* ``service_name_problem(service, settings, tcp_ports)``: why the service's
  Consul names (``<name>`` or ``<name>-<port>``, see ``consul_names``) are unusable.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from deployer.errors import BadValue, LabelError
from deployer.labels import (
    DISCOVERY_LABELS,
    LABEL_CONSUL_CHECK,
    LABEL_CONSUL_INTERVAL,
    LABEL_CONSUL_NAME,
    LABEL_CONSUL_PORT,
    LABEL_CONSUL_REGISTER,
    LABEL_CONSUL_TAGS,
    LABEL_CONSUL_TIMEOUT,
    LABEL_CONSUL_WAIT,
    LABEL_DRAIN,
    RESERVED_LABELS,
)
from deployer.values import parse_duration

# What may appear in a config file unquoted. Deliberately narrower than what
# Consul accepts: no whitespace, quotes, ';', '{', '}', '$', '#', '\' or controls.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # service and node names
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=/@+,-]{0,254}\Z")
META_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
META_VALUE_RE = re.compile(r"[A-Za-z0-9._:=/@+,-]{0,512}\Z")
#: A URL path an HTTP check may probe (no spaces, quotes or shell characters).
PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1000}\Z")

DEFAULT_DRAIN = 2.0  # seconds a retiring container keeps running after it left the passing set

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_CONSUL_PREFIX = "deployer.consul."
_DURATIONS = ((LABEL_DRAIN, False), (LABEL_CONSUL_INTERVAL, True), (LABEL_CONSUL_TIMEOUT, True),
              (LABEL_CONSUL_WAIT, True))  # (label, must be more than 0)


def valid_name(value: object) -> bool:
    """A service or node name that is safe to write into a config file."""
    return isinstance(value, str) and NAME_RE.match(value) is not None


def valid_tag(value: object) -> bool:
    return isinstance(value, str) and TAG_RE.match(value) is not None


_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def valid_address(value: object) -> bool:
    """An IPv4/IPv6 address (no zone index) or an RFC 1123 host name: what a registration's address
    may be (node.yml ``address:``, and what Consul hands back)."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return "%" not in value
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if not all(_HOST_LABEL_RE.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()  # "1.2.3" is a broken IP, not a host name


def meta_ok(key: object, value: object) -> bool:
    return isinstance(key, str) and META_KEY_RE.match(key) is not None and (
        isinstance(value, str) and META_VALUE_RE.match(value) is not None
    )


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


# -- one label each: the value, or a LabelError ------------------------------------------


def _register(text: str) -> bool:
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise LabelError(LABEL_CONSUL_REGISTER, f"{text!r} is not true or false")
    return value


def _name(text: str) -> str:
    if not valid_name(text):
        raise LabelError(LABEL_CONSUL_NAME, f"unsafe service name {text!r}: use letters, digits, '.', '_' and '-' "
                                            "(at most 128, starting with a letter or digit)")
    return text


def _tags(text: str) -> tuple[str, ...]:
    tags: list[str] = []
    for tag in text.split(","):
        tag = tag.strip()
        if not tag:
            continue
        if not valid_tag(tag):
            raise LabelError(LABEL_CONSUL_TAGS, f"unsafe tag {tag!r}: no spaces, quotes, ';', '{{', '}}', '$', '#'")
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _check(text: str) -> str:
    check = text.strip()
    if check in ("http", "http:"):
        check = "http:/"
    if check.startswith("http:"):
        if not PATH_RE.match(check[5:]):
            raise LabelError(LABEL_CONSUL_CHECK, f"{check!r}: write http:/path (a URL path without spaces)")
    elif check not in ("tcp", "none"):
        raise LabelError(LABEL_CONSUL_CHECK, f"{check!r}: write http:/path, tcp or none")
    return check


def _port(text: str) -> int:
    number = text.strip().removesuffix("/tcp")
    if not number.isascii() or not number.isdigit() or not 1 <= int(number) <= 65535:
        raise LabelError(LABEL_CONSUL_PORT, f"{text!r} is not a container port")
    return int(number)


def _duration(label: str, text: str, positive: bool) -> float:
    try:
        value = parse_duration(text)
    except BadValue as exc:
        raise LabelError(label, f"invalid {label}: {exc}") from None
    if positive and value <= 0:
        raise LabelError(label, "must be more than 0")
    return value


def _unknown(label: str) -> LabelError | None:
    """A ``deployer.consul.*`` label discovery does not read, or a near miss of one it does (``deployer.drian``)."""
    if label in DISCOVERY_LABELS or label in RESERVED_LABELS or not label.startswith("deployer."):
        return None
    prefix = _CONSUL_PREFIX if label.startswith(_CONSUL_PREFIX) else "deployer."
    known = {name.removeprefix(prefix): name for name in DISCOVERY_LABELS if name.startswith(prefix)}
    close = difflib.get_close_matches(label.removeprefix(prefix).lower(), list(known), n=1, cutoff=0.8)
    if not close and not label.startswith(_CONSUL_PREFIX):
        return None  # another deployer.* label of the user's
    hint = f"did you mean {known[close[0]]!r}?" if close else f"known: {', '.join(DISCOVERY_LABELS)}"
    return LabelError(label, f"unknown discovery label ({hint})")


# -- every label --------------------------------------------------------------------------


_READERS = [(LABEL_CONSUL_REGISTER, _register), (LABEL_CONSUL_NAME, _name), (LABEL_CONSUL_TAGS, _tags),
            (LABEL_CONSUL_CHECK, _check), (LABEL_CONSUL_PORT, _port)] + [
    (label, lambda text, label=label, positive=positive: _duration(label, text, positive))
    for label, positive in _DURATIONS]


def _read(labels: Mapping[str, str]) -> tuple[dict, list[LabelError]]:
    """(label -> its value, every problem), in one fixed order."""
    values: dict = {}
    problems: list[LabelError] = []
    for label, read in _READERS:
        if label in labels:
            try:
                values[label] = read(labels[label])
            except LabelError as exc:
                problems.append(exc)
    return values, problems


def _settings(values: dict) -> Settings:
    drain = values.get(LABEL_DRAIN)
    return Settings(
        register=values.get(LABEL_CONSUL_REGISTER, True),
        name=values.get(LABEL_CONSUL_NAME),
        tags=values.get(LABEL_CONSUL_TAGS, ()),
        check=values.get(LABEL_CONSUL_CHECK),
        interval=values.get(LABEL_CONSUL_INTERVAL),
        timeout=values.get(LABEL_CONSUL_TIMEOUT),
        port=values.get(LABEL_CONSUL_PORT),
        wait=values.get(LABEL_CONSUL_WAIT),
        drain=DEFAULT_DRAIN if drain is None else drain,
    )


def check_labels(labels: Mapping[str, str]) -> tuple[Settings, list[LabelError]]:
    """(the settings, every problem) of the labels a compose service writes: ``label_problems`` and
    ``parse_labels`` in one reading (the settings mean something only without problems)."""
    if not any(label.startswith("deployer.") for label in labels):
        return Settings(), []
    values, problems = _read(labels)
    problems += [p for p in (_unknown(label) for label in sorted(labels)) if p is not None]
    return _settings(values), problems


def label_problems(labels: Mapping[str, str]) -> list[LabelError]:
    """Every unusable discovery label in ``labels`` (label -> the string the container carries), unknown
    ``deployer.consul.*`` labels and near misses included: what a compose file may not write."""
    return check_labels(labels)[1]


def parse_labels(labels: Mapping[str, str] | None) -> Settings:
    """The discovery settings in ``labels``; LabelError names the first bad one.

    Labels discovery does not know are ignored here (a running container is read as it is);
    ``label_problems`` refuses them in what a compose file writes."""
    values, problems = _read({str(k): str(v) for k, v in (labels or {}).items()})
    if problems:
        raise problems[0]
    return _settings(values)


# -- the names a service registers under ---------------------------------------------------


def consul_names(base: str, container_ports: list[int]) -> list[str]:
    """The Consul names of the registrations for these published TCP container ports: ``base`` for one,
    ``base-<port>`` each for several."""
    return [base] if len(container_ports) == 1 else [f"{base}-{port}" for port in container_ports]


def service_name_problem(service: str, settings: Settings, tcp_ports: Iterable[int] = ()) -> str | None:
    """Why ``service`` (with these labels and published TCP container ports) cannot be registered in Consul,
    or None. Nothing is registered with ``deployer.consul.register: false``."""
    if not settings.register:
        return None
    base = settings.name or service
    if not valid_name(base):
        return f"service name {service!r} cannot be a Consul service name; set {LABEL_CONSUL_NAME}"
    ports = sorted(set(tcp_ports))
    if settings.port is not None:
        ports = [p for p in ports if p == settings.port]
    for name in consul_names(base, ports):
        if not valid_name(name):
            return f"Consul service name {name!r} (one per published port) is too long; set a shorter " \
                   f"{LABEL_CONSUL_NAME} or pick one port with {LABEL_CONSUL_PORT}"
    return None
