"""Node locks followed for the alerts: "lock taken", "lock released", "lock released (expired)".

Where a datacenter names a Consul, its locks are the KV keys ``deployer/lock/<dc>/<node>``
(``discovery.consul_lock``): one blocking query on the prefix per Consul (``?recurse&index=``)
sees every change within one round trip. Elsewhere the lock is a container on the node's
engine (``engine.node_lock``), read with ``ops.locks.lock_status`` (what ``deployer lock
status`` and serve's fleet snapshot read) every ``interval`` seconds.

What is announced (``worth_announcing``):

* a manual lock (``deployer lock acquire -m REASON``, or serve's lock job): taken and released,
  naming who, on which host, and the reason;
* the short lock a deploy takes while it runs: nothing (the deploy itself is announced), unless
  its holder died and the lock expired: "released (expired)". On an engine that is a lock
  container whose lease passed; in Consul a key left without a session (its session was
  invalidated: TTL expired, the agent left) for ``GRACE`` seconds (a clean release deletes the
  key right after releasing it, so a key seen for a moment without a session is not one).

``lock_changes(before, after)`` is the pure part: two readings (target -> ``LockSeen``) give
the changes, each ``(state, lock)``; the once-key of a change is ``(target, lock id, state)``,
so a lock is announced taken once and released once however many times it is read.
A source that could not be read keeps its last reading (nothing is announced from data
nobody could read).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deployer.errors import DeployerError

log = logging.getLogger(__name__)

TAKEN, RELEASED, EXPIRED = "taken", "released", "expired"
GRACE = 2.0  # seconds a Consul lock key must stay without a session to count as expired
WAIT = 30.0  # seconds of one blocking query


@dataclass(frozen=True)
class LockSeen:
    """One node's lock as read: its id, its holder (who, host, reason, ...), manual or a deploy's, expired."""

    target: str
    id: str
    holder: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    manual: bool = False
    expired: bool = False


def lock_changes(before: dict[str, LockSeen], after: dict[str, LockSeen]) -> list[tuple[str, LockSeen]]:
    """What changed between two readings, in target order: (``taken`` | ``released`` | ``expired``, lock)."""
    out: list[tuple[str, LockSeen]] = []
    for target in sorted(set(before) | set(after)):
        old, new = before.get(target), after.get(target)
        if old is not None and (new is None or new.id != old.id) and not old.expired:
            out.append((RELEASED, old))
        if new is None:
            continue
        fresh = old is None or new.id != old.id
        if fresh and not new.expired:
            out.append((TAKEN, new))
        if new.expired and (fresh or not old.expired):
            out.append((EXPIRED, new))
    return out


def worth_announcing(state: str, lock: LockSeen) -> bool:
    """Manual locks taken and released; any lock whose holder died and expired (see the module doc)."""
    return lock.manual or state == EXPIRED


def once_key(state: str, lock: LockSeen) -> str:
    return f"lock:{lock.target}:{lock.id}:{state}"


def lock_text(state: str, lock: LockSeen) -> str:
    """``lock taken on dc/node by who@host: REASON`` / ``lock released on ...`` / ``lock released (expired) ...``."""
    h = lock.holder
    who = f"{h.get('who') or '?'}@{h.get('host') or '?'}"
    reason = f": {h['reason']}" if h.get("reason") else ""
    if state == TAKEN:
        return f"lock taken on {lock.target} by {who}{reason}"
    if state == RELEASED:
        return f"lock released on {lock.target} (taken by {who}{reason})"
    what = "manual lock" if lock.manual else f"lock of {h.get('command') or 'a deploy'}"
    pid = f" pid {h['pid']}" if h.get("pid") else ""
    return f"lock released (expired) on {lock.target}: the {what} held by {who}{pid} was not renewed (its holder " \
           "died or lost its connection)"


def seen_from_holder(target: str, holder: dict[str, Any], *, expired: bool, lock_id: str | None = None) -> LockSeen:
    return LockSeen(target, str(holder.get("id") or lock_id or "?"), dict(holder), bool(holder.get("manual")),
                    expired)


def consul_reading(pairs: list[dict[str, Any]] | None, dcs: tuple[str, ...], now: float,
                   sessionless: dict[str, float]) -> dict[str, LockSeen]:
    """One recurse read of ``deployer/lock/`` -> target -> LockSeen (for the datacenters ``dcs``).

    ``sessionless`` (key -> when first seen without a session) is kept by the caller between reads: a key
    without a session is a held lock until it stayed so for ``GRACE`` seconds, then an expired one."""
    from deployer.discovery.consul_lock import KEY_PREFIX, _holder

    out: dict[str, LockSeen] = {}
    keys = set()
    for pair in pairs or ():
        key = pair.get("Key") or ""
        parts = key[len(KEY_PREFIX) + 1:].split("/") if key.startswith(KEY_PREFIX + "/") else []
        if len(parts) != 2 or parts[0] not in dcs:
            continue
        keys.add(key)
        target = "/".join(parts)
        holder = _holder(pair)
        if pair.get("Session"):
            sessionless.pop(key, None)
            expired = False
        else:
            since = sessionless.setdefault(key, now)
            expired = now - since >= GRACE
        out[target] = seen_from_holder(target, holder, expired=expired, lock_id=f"index-{pair.get('CreateIndex')}")
    for key in list(sessionless):
        if key not in keys:
            del sessionless[key]
    return out


class LockWatch:
    """Every node lock of the repository followed in the background; ``emit(state, lock)`` for each change
    worth announcing (once per (target, lock id, state): the caller's ``OncePer`` keys on ``once_key``)."""

    def __init__(self, root: str | Path, infra: Any, emit: Callable[[str, LockSeen], None], *,
                 interval: float = 15.0, blocking_wait: float = WAIT):
        self.root = Path(root)
        self.infra = infra
        self.emit = emit
        self.interval = interval
        self.blocking_wait = blocking_wait
        self.current: dict[str, LockSeen] = {}
        self.errors: dict[str, str] = {}  # source -> its last error (a source that answers again is removed)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.primed: dict[str, threading.Event] = {}
        consuls: dict[str, list[str]] = {}
        engine_nodes = []
        for dc in sorted(infra.datacenters.values(), key=lambda d: d.name):
            if dc.consul:
                consuls.setdefault(dc.consul, []).append(dc.name)
        for node in infra.nodes():
            if not infra.datacenters[node.dc].consul:
                engine_nodes.append(node.target)
        self.consuls = {addr: tuple(dcs) for addr, dcs in consuls.items()}
        self.engine_nodes = sorted(engine_nodes)

    def start(self) -> "LockWatch":
        for address, dcs in sorted(self.consuls.items()):
            self._spawn(f"consul:{address}", lambda a=address, d=dcs: self._follow_consul(a, d))
        if self.engine_nodes:
            self._spawn("engines", self._poll_engines)
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait_primed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in self.primed.values())

    def _spawn(self, source: str, target: Callable[[], None]) -> None:
        self.primed[source] = threading.Event()
        t = threading.Thread(target=target, name=f"locks {source}", daemon=True)
        self._threads.append(t)
        t.start()

    def apply(self, source: str, reading: dict[str, LockSeen], targets: set[str] | None = None) -> None:
        """A new reading of the targets one source covers (``targets``: all of them; default what it holds):
        the changes since the last one are emitted; the first reading of a source announces nothing."""
        first = not self.primed[source].is_set() if source in self.primed else False
        with self._mutex:
            covered = targets if targets is not None else set(reading)
            before = {t: v for t, v in self.current.items() if t in covered}
            for t in covered:
                self.current.pop(t, None)
            self.current.update(reading)
            self.errors.pop(source, None)
        if source in self.primed:
            self.primed[source].set()
        if first:
            return
        for state, lock in lock_changes(before, reading):
            if worth_announcing(state, lock):
                try:
                    self.emit(state, lock)
                except Exception:  # noqa: BLE001 - the watch goes on
                    log.exception("announcing a lock change")

    def _failed(self, source: str, error: str) -> None:
        with self._mutex:
            if self.errors.get(source) != error:
                log.warning("locks: %s: %s", source, error)
            self.errors[source] = error

    def _follow_consul(self, address: str, dcs: tuple[str, ...]) -> None:
        from deployer.discovery.consul_lock import KEY_PREFIX
        from deployer.discovery.registration import consul_for

        catalog = consul_for(self.infra.datacenters[dcs[0]], timeout=self.blocking_wait + 10)
        source = f"consul:{address}"
        index = None
        sessionless: dict[str, float] = {}
        covered: set[str] = set()
        while not self._stop.is_set():
            try:
                new, pairs = catalog.call("follow the node locks", lambda c: c.kv.get(
                    KEY_PREFIX + "/", recurse=True, index=index, wait=f"{int(self.blocking_wait)}s"))
            except DeployerError as exc:
                self._failed(source, exc.one_line())
                index = None
                self._stop.wait(1.0)
                continue
            reading = consul_reading(pairs, dcs, time.monotonic(), sessionless)
            self.apply(source, reading, covered | set(reading))
            covered = set(reading)
            new = int(new or 0)
            # an index that went backwards (Consul restarted) starts over, as Consul's docs say
            index = new if index is None or new >= index else None
            now = time.monotonic()
            if any(now - since < GRACE for since in sessionless.values()):
                self._stop.wait(GRACE)  # a key just left without a session: read it again after GRACE
                index = None

    def _poll_engines(self) -> None:
        from deployer.ops.locks import lock_status

        source = "engines"
        while not self._stop.is_set():
            try:
                rows = lock_status(self.root, self.infra, self.engine_nodes, consul=False)
            except Exception as exc:  # noqa: BLE001 - the watch goes on
                self._failed(source, f"{type(exc).__name__}: {exc}")
                rows = []
            reading: dict[str, LockSeen] = {}
            readable = set()
            for row in rows:
                if row.error:
                    self._failed(f"engine {row.target}", row.error)
                    continue
                readable.add(row.target)
                if row.held:
                    expired = row.expires_in is not None and row.expires_in < -_margin()
                    reading[row.target] = seen_from_holder(row.target, row.holder, expired=expired)
            if rows:
                self.apply(source, reading, readable)
            if self._stop.wait(self.interval):
                return


def _margin() -> float:
    from deployer.engine.node_lock import MARGIN

    return MARGIN
