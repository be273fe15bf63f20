"""Wanted (the repository) against actual (the engine): the changes to make.

Pure functions over plain data: no Docker calls, no git. ``apply.py`` carries
the changes out.

``plan_service`` plans one container; ``plan_rollout`` a whole service: a
service of one replica (and no other replica left over) is exactly
``plan_service``; a replicated one is one Change whose ``parts`` are the
changes of its replicas (replica i against the containers labelled as replica
i), then removals of the replicas beyond the count (scaled down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deployer.labels import LABEL_CONFIG
from deployer.spec import ContainerSpec
from deployer.values import parse_bytes
from deployer.engine.state import ContainerState, NodeState

CREATE = "create"
REPLACE = "replace"
REMOVE = "remove"
TIDY = "tidy"  # the right container runs; leftovers of an interrupted deploy go, the name is restored
SCALE = "scale"  # a replicated service: replicas are added or removed, none replaced
NONE = "none"


@dataclass
class Change:
    target: str  # dc/node/service
    action: str
    reasons: list[str] = field(default_factory=list)
    spec: ContainerSpec | None = None
    current: ContainerState | None = None  # the container that serves now (replaced or kept)
    stale: list[ContainerState] = field(default_factory=list)  # other managed containers of the service
    replica: int | None = None  # which replica, in the parts of a replicated service's change
    parts: list["Change"] = field(default_factory=list)  # a replicated service: one change per replica

    @property
    def changes_anything(self) -> bool:
        return self.action != NONE

    @property
    def wanted(self) -> int:
        """How many containers the service should run (its replicas)."""
        if not self.parts:
            return min(self.spec.rollout.replicas, 1) if self.spec is not None else 0
        return sum(1 for p in self.parts if p.action != REMOVE)

    @property
    def ready(self) -> int:
        """How many of them run as written now (healthy, or completed for a one-shot)."""
        if not self.parts:
            return self.wanted if self.action == NONE else 0
        return sum(1 for p in self.parts if p.action == NONE)

    def summary(self) -> str:
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"{self.action} {self.target}{why}"

    def to_json(self) -> dict[str, Any]:
        data = self._json()
        if self.replica is not None:
            data["replica"] = self.replica
        if self.parts:
            data["replicas"] = [p.to_json() for p in self.parts]
            data["ready"], data["wanted"] = self.ready, self.wanted
        return data

    def _json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "action": self.action,
            "reasons": self.reasons,
            "image": self.spec.image if self.spec else None,
            "container": self.spec.name if self.spec else (self.current.name if self.current else None),
            "current": self.current.short_id if self.current else None,
            "current_image": self.current.image if self.current else None,
            "stale": [c.short_id for c in self.stale],
        }


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def config_fields_differing(spec: ContainerSpec, container: ContainerState) -> list[str]:
    """Which fields of the written config differ from the one the container was created with."""
    recorded = container.labels.get(LABEL_CONFIG)
    if not recorded:
        return ["configuration (container has no recorded config)"]
    try:
        old = flatten(json.loads(recorded))
    except ValueError:
        return ["configuration (recorded config unreadable)"]
    new = flatten(json.loads(spec.config_json()))
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def created_with(spec: ContainerSpec, container: ContainerState) -> dict[str, Any]:
    """The host settings the container was created with: the spec's when its hash matches, else the recorded ones."""
    if container.config_hash == spec.config_hash():
        return spec.host
    try:
        recorded = json.loads(container.labels.get(LABEL_CONFIG) or "")
    except ValueError:
        return spec.host
    host = recorded.get("host") if isinstance(recorded, dict) else None
    return host if isinstance(host, dict) else spec.host


def _host_drift(spec: ContainerSpec, container: ContainerState) -> list[str]:
    """Fields changed on the host with 'docker update' (the labels cannot see those).

    Compared with what the container was created with, not with what the repository
    wants now: a limit changed in the repository is a changed field, not host drift.
    """
    created = created_with(spec, container)
    reasons = []
    want_restart = created.get("restart_policy") or {}
    have_restart = container.host.get("restart_policy") or {}
    if (want_restart.get("Name") or "no") != (have_restart.get("Name") or "no"):
        reasons.append(f"restart policy changed on the host ({have_restart.get('Name') or 'no'})")
    want_mem = created.get("mem_limit")
    want_mem = parse_bytes(want_mem) if want_mem else 0
    if want_mem != (container.host.get("memory") or 0):
        reasons.append("memory limit changed on the host")
    if (created.get("nano_cpus") or 0) != (container.host.get("nano_cpus") or 0):
        reasons.append("cpu limit changed on the host")
    return reasons


def plan_service(spec: ContainerSpec, containers: list[ContainerState], wanted_image_id: str | None) -> Change:
    """What to do so that exactly one healthy container matching ``spec`` runs."""
    target = f"{spec.dc}/{spec.node}/{spec.service}"
    if not containers:  # nothing runs it: nothing to match, rank or remove
        return Change(target, CREATE, ["no container"], spec, None, [])
    want_hash = spec.config_hash()

    one_shot = spec.rollout.one_shot

    def matches(c: ContainerState) -> bool:
        done = c.completed if one_shot else c.ok  # a one-shot that exited 0 did its job
        return (c.config_hash == want_hash and done and not _host_drift(spec, c)
                and (wanted_image_id is None or c.image_id == wanted_image_id))

    def rank(c: ContainerState) -> tuple:
        return (c.name != spec.name, not c.running)

    good = sorted((c for c in containers if matches(c)), key=rank)
    if good:
        keep = good[0]
        stale = [c for c in containers if c.id != keep.id]
        if stale or keep.name != spec.name:
            reasons = [f"remove leftover {c.name}" for c in stale]
            if keep.name != spec.name:
                reasons.append(f"rename {keep.name} to {spec.name}")
            return Change(target, TIDY, reasons, spec, keep, stale)
        return Change(target, NONE, [], spec, keep, [])

    current = sorted(containers, key=rank)[0]
    stale = [c for c in containers if c.id != current.id]
    reasons: list[str] = []
    if current.config_hash != want_hash:
        differing = config_fields_differing(spec, current)
        if current.image_written and current.image_written != spec.image:
            reasons.append(f"image {current.image_written} -> {spec.image}")
            differing = [f for f in differing if f != "image"]
        if differing:
            reasons.append("changed: " + ", ".join(differing[:6]) + (" ..." if len(differing) > 6 else ""))
    elif wanted_image_id is not None and current.image_id != wanted_image_id:
        reasons.append(f"{spec.image} now points to {wanted_image_id[7:19]} (container runs {current.image_id[7:19]})")
    if one_shot and current.status == "exited" and current.exit_code == 0:
        pass  # completed: what else differs is said above
    elif not current.running:
        reasons.append(f"container {current.describe()}")
    elif current.health not in (None, "healthy"):
        reasons.append(f"container {current.health}")
    reasons.extend(_host_drift(spec, current))
    return Change(target, REPLACE, reasons or ["container differs"], spec, current, stale)


def plan_rollout(spec: ContainerSpec, containers: list[ContainerState], wanted_image_id: str | None) -> Change:
    """What to do so that the service runs ``spec.rollout.replicas`` healthy containers matching ``spec``."""
    count = spec.rollout.replicas
    extra = [c for c in containers if c.replica > count]
    if count == 1 and not extra:
        return plan_service(spec, containers, wanted_image_id)
    extra.sort(key=lambda c: (c.replica, c.name))
    target = f"{spec.dc}/{spec.node}/{spec.service}"
    parts = []
    for index in range(1, count + 1):
        part = plan_service(spec.for_replica(index), [c for c in containers if c.replica == index], wanted_image_id)
        part.replica = index
        parts.append(part)
    for c in extra:
        parts.append(Change(target, REMOVE, [f"scaled to {count}"], None, c, [], replica=c.replica))
    actions = {p.action for p in parts}
    if not parts or actions == {NONE}:
        action = NONE
    elif actions == {CREATE}:
        action = CREATE
    elif actions <= {NONE, TIDY}:
        action = TIDY
    elif REPLACE in actions:
        action = REPLACE
    else:
        action = SCALE
    running = {c.replica for c in containers}
    reasons = []
    if len(running) != count:
        reasons.append(f"scale {len(running)} -> {count}")
    grouped: dict[str, list[int]] = {}
    for p in parts:
        if p.action not in (NONE, REMOVE) and p.reasons:
            grouped.setdefault("; ".join(p.reasons), []).append(p.replica or 1)
    for why, replicas in grouped.items():
        which = f"replica {replicas[0]}" if len(replicas) == 1 else f"replicas {', '.join(map(str, replicas))}"
        reasons.append(f"{which}: {why}")
    first = parts[0] if parts and parts[0].action != REMOVE else None
    return Change(target, action, reasons, spec, first.current if first else None, [], parts=parts)


def plan_node(
    specs: list[ContainerSpec],
    state: NodeState,
    image_ids: dict[str, str | None],
    prune: bool = False,
    dc: str = "",
    node: str = "",
) -> list[Change]:
    """One Change per written service, in start order, then removals of unlisted managed containers."""
    changes = [plan_rollout(s, state.for_service(s.service), image_ids.get(s.image)) for s in specs]
    if prune:
        written = {s.service for s in specs}
        for c in state.managed:
            if c.service not in written:
                changes.append(Change(f"{dc}/{node}/{c.service}", REMOVE, ["no longer in the repository"], None, c, []))
    return changes
