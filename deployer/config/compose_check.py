"""The compose check: every problem in a compose file, with file:line.

``validate_compose(doc, path, repo_root)`` checks a parsed compose document
(ruamel round-trip data, so every key knows its line) and returns every
problem as a ConfigError naming file, line and field, ordered by line. A key
the deployer does not support is an error, never silently ignored.

This module checks the document around the services: the top-level keys, the
volumes, networks and secrets declared there, and what involves several
services (unknown or circular dependencies, a container name or host port used
twice). Each service itself is checked by ``compose_check_service``.

The one read outside the compose document: a secret file must pass the
secret-file policy (``secret_files``: in bounds, not tracked by git, small).
"""

from __future__ import annotations

import ipaddress
import os
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any, Sequence

from deployer.config.compose_check_service import At, ServiceChecker
from deployer.config.compose_keys import (
    CONTAINER_NAME_RE, NAME_RE, TOP_HINTS, TOP_KEYS, TOP_NETWORK_KEYS, TOP_SECRET_KEYS, TOP_VOLUME_KEYS,
)  # fmt: skip
from deployer.config.secret_files import open_secret_file, resolve_secret_file
from deployer.errors import ConfigError
from deployer.values import kind


class _Checker(ServiceChecker):
    """A whole compose document: the top level, each service, and the checks across services."""

    def __init__(self, path: str, repo_root: Path, secrets_dirs: Sequence[str] = ()):
        super().__init__(path, repo_root)
        self.secrets_dirs = tuple(secrets_dirs)

    # -- top level --------------------------------------------------------

    def check(self, doc: Any) -> list[ConfigError]:
        top = At(doc, None, 1)  # line 1 for keys merged into the top level (they have no line of their own)
        if not isinstance(doc, dict):
            self.errors.append(
                ConfigError(self.path, f"a compose file must be a mapping with a 'services' key, not {kind(doc)}", line=1)
            )
            return self.errors
        self.keys(top, TOP_KEYS, hints=TOP_HINTS)
        for key, at in top.entries():
            if key == "volumes":
                self.top_definitions(at, TOP_VOLUME_KEYS, self.volumes, "volume")
            elif key == "networks":
                self.top_definitions(at, TOP_NETWORK_KEYS, self.networks, "network")
            elif key == "secrets":
                self.top_secrets(at)
            elif key == "configs":
                self.top_configs(at)
            elif key == "name" and not isinstance(at.value, str):
                self.err(at, f"must be a string, not {kind(at.value)}")
        services = top.get("services")
        if services is None:
            self.errors.append(ConfigError(self.path, "missing required key 'services'", line=1))
        elif self.mapping(services):
            self.service_names = [k for k in services.value if isinstance(k, str)]
            for name, at in services.entries():
                self.service(name, at)
            self.cross_service_checks()
        return sorted(self.errors, key=lambda e: e.line or 0)

    def top_definitions(self, at: At, allowed: set[str], declared: dict[str, Any], what: str) -> None:
        if at.value is None:
            return
        if not self.mapping(at):
            return
        for name, child in at.entries():
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                self.err(child, f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-'")
                continue
            declared[name] = child.value
            if child.value is None:
                continue
            if not self.mapping(child):
                continue
            self.keys(child, allowed)
            external = False
            for key, sub in child.entries():
                if key == "driver":
                    self.string(sub)
                elif key == "driver_opts":
                    self.string_map(sub)
                elif key == "labels":
                    self.labels(sub)
                elif key in ("external", "internal"):
                    if self.boolean(sub) and key == "external":
                        external = bool(sub.value)
                elif key == "name":
                    if self.string(sub) and not CONTAINER_NAME_RE.fullmatch(sub.value):
                        self.err(sub, f"invalid {what} name {sub.value!r}")
            if external:
                for key, sub in child.entries():
                    if key in ("driver", "driver_opts", "labels", "internal"):
                        self.err(sub, f"an external {what} is not created by the deployer, so {key!r} cannot be set")

    def top_secrets(self, at: At) -> None:
        if at.value is None or not self.mapping(at):
            return
        for name, child in at.entries():
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                self.err(child, f"invalid secret name {name!r}")
                continue
            self.secrets.add(name)
            if not self.mapping(child):
                continue
            for key, sub in child.entries():
                if key == "environment":
                    self.err(sub, "secrets from 'environment' are not supported: it reads the operator's shell, "
                                  "so what runs would depend on who deploys: use 'file'")
                elif key == "external":
                    self.err(sub, "external secrets are for swarm and not supported: use 'file'")
            self.keys(child, TOP_SECRET_KEYS | {"environment", "external"})
            file_at = child.get("file")
            if file_at is None:
                if child.get("environment") is None and child.get("external") is None:
                    self.err(child, "missing required key 'file'")
                continue
            if self.string(file_at):
                self.secret_file(name, file_at)

    def secret_file(self, name: str, at: At) -> None:
        """The secret-file policy (``secret_files``): resolved, in bounds, untracked, small, and openable."""
        try:
            source = resolve_secret_file(
                at.value, name=name, compose_path=self.path, repo_root=self.repo_root,
                secrets_dirs=self.secrets_dirs, line=at.line,
            )
            os.close(open_secret_file(source, name=name, compose_path=self.path, line=at.line))
        except ConfigError as err:
            self.errors.append(err)

    # -- across services --------------------------------------------------

    def cross_service_checks(self) -> None:
        known = set(self.service_names)
        listing = ", ".join(sorted(known))
        edges: dict[str, list[tuple[str, At]]] = {}
        for name, facts in self.facts.items():
            for dep, at in facts.deps:
                if dep not in known and dep in facts.optional:
                    continue  # required: false: an absent dependency is no error (Compose warns)
                if dep not in known:
                    self.err(at, f"unknown service {dep!r} (services in this file: {listing})")
                else:
                    edges.setdefault(name, []).append((dep, at))
        self.cycles(edges)

        names: dict[str, str] = {}
        for name, facts in self.facts.items():
            if facts.container_name:
                cname, at = facts.container_name
                if cname in names:
                    self.err(at, f"container name {cname!r} is also used by service {names[cname]!r}")
                names[cname] = name

        published = _Published()
        for name, facts in self.facts.items():
            for (_, proto, ip, lo, count), at in facts.ports:
                if lo is None:
                    continue
                hi = lo + count - 1
                found = published.first_overlap(proto, ip, lo, hi)
                if found is not None:
                    a, b, (_, o_name, o_at) = found
                    ports = f"host port {a}/{proto} is" if a == b else f"host ports {a}-{b}/{proto} are"
                    self.err(at, f"{ports} already published by service {o_name!r} ({o_at.field})")
                published.add(proto, ip, lo, hi, (name, at))

    def cycles(self, edges: dict[str, list[tuple[str, At]]]) -> None:
        reported: set[tuple[str, ...]] = set()
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        stack: list[str] = []

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for dep, _ in sorted(edges.get(node, []), key=lambda e: e[0]):
                if state.get(dep) == 1:
                    cycle = stack[stack.index(dep) :]
                    first = cycle.index(min(cycle))
                    cycle = cycle[first:] + cycle[:first]
                    if tuple(cycle) not in reported:
                        reported.add(tuple(cycle))
                        at = next(a for d, a in edges[cycle[0]] if d == (cycle[1] if len(cycle) > 1 else cycle[0]))
                        self.err(at, "depends_on cycle: " + " -> ".join(cycle + [cycle[0]]))
                elif dep not in state:
                    visit(dep)
            stack.pop()
            state[node] = 2

        for node in sorted(edges):
            if node not in state:
                visit(node)


class _Ports:
    """Host ports taken, as sorted disjoint ranges, each with the first entry that took it."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.owners: list[Any] = []

    def first_overlap(self, lo: int, hi: int) -> tuple[int, int, Any] | None:
        """The lowest taken range meeting lo-hi, cut to lo-hi, with its owner."""
        i = bisect_left(self.ends, lo)
        if i < len(self.starts) and self.starts[i] <= hi:
            return max(lo, self.starts[i]), min(hi, self.ends[i]), self.owners[i]
        return None

    def add(self, lo: int, hi: int, owner: Any) -> None:
        """Take the ports of lo-hi that are free; taken ones keep their first owner."""
        i = bisect_left(self.ends, lo)
        j = bisect_right(self.starts, hi, lo=i)
        ranges = []  # ranges i..j-1 meet lo-hi: keep them, and take the gaps around them
        cur = lo
        for k in range(i, j):
            if self.starts[k] > cur:
                ranges.append((cur, self.starts[k] - 1, owner))
            ranges.append((self.starts[k], self.ends[k], self.owners[k]))
            cur = self.ends[k] + 1
        if cur <= hi:
            ranges.append((cur, hi, owner))
        self.starts[i:j] = [r[0] for r in ranges]
        self.ends[i:j] = [r[1] for r in ranges]
        self.owners[i:j] = [r[2] for r in ranges]


class _Published:
    """The fixed host ports published so far, to find a new entry's clash in time linear in the entries.

    Two bindings clash on the same protocol and port when their host IPs
    overlap: the same address, either one empty (every address), or one the
    unspecified address (0.0.0.0, ::) of the other's IP version. Each entry is
    kept in three maps: all of its protocol, all of its IP version, its exact
    address; a new entry asks the maps that hold every binding it overlaps.
    """

    def __init__(self) -> None:
        self.maps: dict[tuple, _Ports] = {}
        self.seq = 0

    def _keys(self, proto: str, ip: str) -> tuple[list[tuple], list[tuple]]:
        """(the maps an entry on ``ip`` goes into, the maps it must be checked against)."""
        if not ip:
            return [("all", proto), ("ip", proto, "")], [("all", proto)]
        addr = ipaddress.ip_address(ip)  # checked by the ports parsers
        unspecified = ipaddress.ip_address("0.0.0.0" if addr.version == 4 else "::")
        into = [("all", proto), ("version", proto, addr.version), ("ip", proto, addr)]
        if addr == unspecified:
            return into, [("version", proto, addr.version), ("ip", proto, "")]
        return into, [("ip", proto, addr), ("ip", proto, ""), ("ip", proto, unspecified)]

    def first_overlap(self, proto: str, ip: str, lo: int, hi: int) -> tuple[int, int, Any] | None:
        found = [hit for key in self._keys(proto, ip)[1] if key in self.maps
                 for hit in [self.maps[key].first_overlap(lo, hi)] if hit is not None]
        if not found:
            return None
        a, b, (_, name, at) = min(found, key=lambda hit: (hit[0], hit[2][0]))  # lowest port, then first entry
        return a, b, (None, name, at)

    def add(self, proto: str, ip: str, lo: int, hi: int, owner: tuple[str, At]) -> None:
        self.seq += 1
        for key in self._keys(proto, ip)[0]:
            self.maps.setdefault(key, _Ports()).add(lo, hi, (self.seq, *owner))


def validate_compose(doc: Any, path: str, repo_root: Path, *, secrets_dirs: Sequence[str] = ()) -> list[ConfigError]:
    """Every problem in a parsed compose document, ordered by line.

    ``doc`` is ruamel round-trip data (plain data works too, without lines);
    ``path`` is the file's repo-relative path, used in the errors and to find
    secret files (relative to the compose file's directory) under ``repo_root``;
    ``secrets_dirs`` are the datacenter's ``secrets_dir`` folders, where secret
    files outside the repository may lie.
    """
    return _Checker(path, Path(repo_root), secrets_dirs).check(doc)
