"""The drift watch's announcements on a fake deployer and a fake clock: held for the threshold, once per change,
busy nodes, unreadable nodes, self-heal only of announced drift and never while locked."""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.alerts.drift import DriftWatch, drift_of
from deployer.engine.plan import Change
from deployer.errors import NodeLockHeld
from deployer.ops.results import AppliedChange, NodeApply, NodePlan


@dataclass
class Lock:
    target: str
    held: bool = False
    holder: dict = field(default_factory=dict)
    error: str | None = None


class FakeDeployer:
    def __init__(self):
        self.plans: dict[str, NodePlan] = {}
        self.applied: list[str] = []
        self.refuse = False

    def plan(self, targets=None, prune=False):
        return [p for n, p in sorted(self.plans.items()) if targets is None or n in targets]

    def load(self):
        return None

    def apply(self, targets, prune=False, wait=0):
        if self.refuse:
            raise NodeLockHeld(targets[0], "bob@h2 (deployer deploy)")
        self.applied += targets
        for t in targets:
            self.plans[t] = NodePlan(t, [])
        return [NodeApply(t, [AppliedChange(f"{t}/web", "create", "ok", "created")]) for t in targets]


def plan(node, *actions, error=None):
    return NodePlan(node, [Change(f"{node}/web", a, [why]) for a, why in actions], error)


def make(monkeypatch, threshold=2.0, self_heal=False, locks=None):
    clock = [0.0]
    out: list[dict] = []
    d = FakeDeployer()
    watch = DriftWatch("/nowhere", self_heal=self_heal, emit=out.append, deployer=d, threshold=threshold,
                       clock=lambda: clock[0])
    import deployer.ops.locks as ops_locks

    monkeypatch.setattr(ops_locks, "lock_status",
                        lambda root, infra, nodes: [(locks or {}).get(n, Lock(n)) for n in nodes])
    return watch, d, clock, out


def alerts(out):
    return [e["text"] for e in out if e["type"] == "alert"]


def test_drift_of():
    assert drift_of([plan("dc/a", ("none", "")), plan("dc/b", ("create", "no container")),
                     plan("dc/c", error="unreachable")]) == {
        "dc/a": (), "dc/b": ("create dc/b/web (no container)",), "dc/c": None}


def test_announced_once_after_the_threshold_and_a_passing_state_is_not(monkeypatch):
    watch, d, clock, out = make(monkeypatch)
    d.plans["dc/a"] = plan("dc/a", ("replace", "container removing"))
    watch.run_once()
    clock[0] = 1.0
    d.plans["dc/a"] = plan("dc/a", ("create", "no container"))  # it changed before it held
    watch.run_once()
    clock[0] = 2.5
    watch.run_once()
    assert alerts(out) == []  # "create" is only 1.5 s old
    clock[0] = 3.0
    watch.run_once()
    clock[0] = 10.0
    watch.run_once()
    assert alerts(out) == ["drift on dc/a: create dc/a/web (no container)"]
    events = [e for e in out if e["type"] == "drift"]
    assert [e["state"] for e in events] == ["drifted", "drifted"]  # one event per change, not per pass
    d.plans["dc/a"] = plan("dc/a", ("none", ""))
    clock[0] = 11.0
    watch.run_once()
    clock[0] = 13.0
    watch.run_once()
    assert alerts(out)[-1] == "dc/a matches the repository again"


def test_busy_and_unreadable_nodes_are_not_drift(monkeypatch):
    busy = Lock("dc/a", held=True, holder={"who": "ci", "command": "deployer deploy"})
    watch, d, clock, out = make(monkeypatch, threshold=0.0, locks={"dc/a": busy})
    d.plans = {"dc/a": plan("dc/a", ("tidy", "remove leftover a-web-next")), "dc/b": plan("dc/b", error="gone")}
    watch.run_once()
    assert alerts(out) == [] and {e["node"]: e["state"] for e in out} == {"dc/a": "unknown", "dc/b": "unknown"}


def test_self_heal_acts_on_announced_drift_never_while_locked_and_converges(monkeypatch):
    manual = Lock("dc/a", held=True, holder={"who": "ann", "host": "h", "manual": True, "reason": "disk"})
    locks = {"dc/a": manual}
    watch, d, clock, out = make(monkeypatch, threshold=1.0, self_heal=True, locks=locks)
    d.plans["dc/a"] = plan("dc/a", ("create", "no container"))
    watch.run_once()
    assert d.applied == [] and alerts(out) == []  # not held yet: nothing to heal
    clock[0] = 1.0
    watch.run_once()
    clock[0] = 2.0
    watch.run_once()
    assert d.applied == []
    assert alerts(out) == ["drift on dc/a: create dc/a/web (no container)",
                           "self-heal of dc/a skipped: its lock is held by a manual lock of ann@h: disk"]  # once
    locks.clear()
    d.refuse = True  # taken between the look and the apply
    clock[0] = 3.0
    watch.run_once()
    assert alerts(out)[-1] == "self-heal of dc/a skipped: node dc/a is locked by bob@h2 (deployer deploy)"
    d.refuse = False
    clock[0] = 4.0
    watch.run_once()
    assert d.applied == ["dc/a"]
    assert alerts(out)[-2:] == ["self-heal applied the repository to dc/a: create dc/a/web: ok",
                                "dc/a matches the repository again"]
