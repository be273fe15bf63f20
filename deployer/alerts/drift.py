"""Drift watch: every interval, ``plan`` across the fleet; drift is published and alerted once per change, and
with self-heal the repository's state is applied to the drifted nodes.

* ``drift_of(plans)``: node -> the pending changes' summaries (pure). A node that
  could not be read is *unknown*, not drifted (nothing is announced for it).
* a node whose lock a deploy (or apply) holds is *busy*: what the plan shows there is
  that command's own work (a ``-next`` container, say), so it counts as unknown; a
  manual lock (``deployer lock acquire``) does not hide drift;
* a ``drift`` event (node, state drifted / in-sync / unknown, changes) is published when
  a node's state or changes differ from the last event, not on every pass;
* a node's drift is announced when its set of pending changes differs from what
  was announced last (a new drift, a different one, or none any more: "matches the
  repository again") and has held for ``threshold`` seconds (alerts.yml's, like every
  other change: a container caught while Docker removes it is not a drift), so a drift
  that stays is announced once; self-heal acts on announced drift only;
* self-heal (``--self-heal``) runs ``Deployer.apply`` on the drifted nodes only:
  the same repository transaction and node locks as ``deployer apply``, without
  waiting for a lock (``wait=0``), and never pruning unless ``alerts.yml``
  ``drift: {prune: true}``. A node whose lock is held (a manual ``deployer lock``, a
  deploy under way) is not touched: ``lock_status`` is asked first, and a lock taken
  in between makes ``apply`` refuse (NodeLockHeld); either is published as skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from deployer.alerts.messages import alert, one_line
from deployer.engine.node_lock import describe_holder
from deployer.errors import DeployerError, LockHeld
from deployer.ops.results import NodePlan

log = logging.getLogger(__name__)


def drift_of(plans: list[NodePlan]) -> dict[str, tuple[str, ...] | None]:
    """node target -> sorted summaries of what apply would change (empty: in sync; None: unreadable)."""
    out: dict[str, tuple[str, ...] | None] = {}
    for p in plans:
        out[p.node] = None if p.error else tuple(sorted(c.summary() for c in p.pending))
    return out


class DriftWatch:
    """One drift pass at a time over the repository at ``root`` (see the module doc)."""

    def __init__(self, root: str | Path, *, self_heal: bool = False, prune: bool = False,
                 emit: Callable[[dict[str, Any]], None], deployer: Any = None, threshold: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        from deployer.ops.deploy import Deployer

        self.root = Path(root)
        self.self_heal = self_heal
        self.prune = prune
        self.emit = emit  # publishes an event (drift) or an alert (type alert)
        self.deployer = deployer or Deployer(self.root, progress=lambda msg: log.info("self-heal: %s", msg))
        self.threshold = threshold
        self.clock = clock
        self.announced: dict[str, tuple[str, ...]] = {}
        self.pending: dict[str, tuple[tuple[str, ...], float]] = {}  # node -> (changes, first seen)
        self.skipped: dict[str, str] = {}  # node -> why its last self-heal was skipped (announced once)
        self.last: dict[str, tuple[str, ...] | None] = {}
        self._published: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        self._lock = threading.Lock()

    def run_once(self) -> dict[str, tuple[str, ...] | None]:
        with self._lock:
            drift = drift_of(self.deployer.plan(prune=self.prune))
            locks = self._locks([n for n, d in sorted(drift.items()) if d])
            for node, status in locks.items():
                if status.held and not status.holder.get("manual"):
                    drift[node] = None  # a deploy (or apply) is under way: what it shows is its own work
            self._announce(drift)
            if self.self_heal:  # the drift that held (was announced), not a passing state of a node
                healed = [n for n, d in sorted(drift.items()) if d and d == self.announced.get(n)]
                if healed:
                    self._heal(healed, locks)
                    again = drift_of(self.deployer.plan(healed, prune=self.prune))
                    drift.update(again)
                    self._announce(again, at_once=True)  # the result of our own apply: no need to wait
            self.last = drift
            return drift

    def _announce(self, drift: dict[str, tuple[str, ...] | None], at_once: bool = False) -> None:
        now = self.clock()
        for node, changes in sorted(drift.items()):
            event = {"type": "drift", "node": node, "state": "unknown" if changes is None else (
                "drifted" if changes else "in-sync"), "changes": list(changes or ())}
            if self._published.get(node) != (event["state"], changes):  # a change only: no event per pass
                self._published[node] = (event["state"], changes)
                self.emit(event)
            if changes is None:
                continue
            before = self.announced.get(node, ())
            if changes == before:
                self.pending.pop(node, None)
                continue
            seen = self.pending.get(node)
            if seen is None or seen[0] != changes:
                seen = self.pending[node] = (changes, now)
            if not at_once and now - seen[1] < self.threshold:
                continue  # not held long enough yet (a container being removed, a restart under way)
            self.pending.pop(node, None)
            self.announced[node] = changes
            if changes:
                text = f"drift on {node}: {'; '.join(one_line(c, 200) for c in changes)}"
                self.emit(alert("drift", "drifted", text, node=node, changes=list(changes)))
            else:
                self.skipped.pop(node, None)
                self.emit(alert("drift", "in-sync", f"{node} matches the repository again", node=node, changes=[]))

    def _skip(self, node: str, why: str) -> None:
        self.emit({"type": "drift", "node": node, "state": "drifted", "heal": "skipped", "detail": why,
                   "changes": list(self.announced.get(node, ()))})
        if self.skipped.get(node) != why:
            self.skipped[node] = why
            self.emit(alert("drift", "heal-skipped", f"self-heal of {node} skipped: {why}", node=node))

    def _locks(self, nodes: list[str]) -> dict[str, Any]:
        """The lock of each drifted node (``ops.locks.lock_status``): none asked when nothing drifted."""
        if not nodes:
            return {}
        from deployer.ops.locks import lock_status

        return {s.target: s for s in lock_status(self.root, self.deployer.load(), nodes)}

    def _heal(self, nodes: list[str], locks: dict[str, Any]) -> None:
        free = []
        for status in (locks[n] for n in nodes):
            if status.held:
                self._skip(status.target, f"its lock is held by {describe_holder(status.holder)}")
            elif status.error:
                self._skip(status.target, f"its lock cannot be read ({status.error})")
            else:
                free.append(status.target)
        for node in free:
            try:
                results = self.deployer.apply([node], prune=self.prune, wait=0)
            except LockHeld as exc:
                self._skip(node, exc.one_line())
                continue
            except DeployerError as exc:
                self.emit(alert("drift", "heal-failed", f"self-heal of {node} failed: {exc.one_line()}", node=node))
                continue
            for r in results:
                done = [f"{i.action} {i.target}: {i.status}" for i in r.items if i.action != "none"]
                if r.ok:
                    text = f"self-heal applied the repository to {r.node}: {'; '.join(done) or 'nothing to do'}"
                    self.emit(alert("drift", "healed", text, node=r.node))
                else:
                    why = r.error or "; ".join(f"{i.target}: {i.detail}" for i in r.items if i.status == "failed")
                    self.emit(alert("drift", "heal-failed", f"self-heal of {r.node} failed: {one_line(why)}",
                                    node=r.node))
