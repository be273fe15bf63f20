"""``AlertService``: the Consul health watch, the rules, the sinks, the drift watch and the leader election
together, as one object that ``deployer alerts watch`` runs alone and ``deployer serve`` runs in its lifespan.

::

    svc = AlertService(root, self_heal=False, leader=True)
    svc.subscribe(broker_publish)   # alert / drift / health events go there
    svc.start()
    svc.publish({"type": "deploy", ...})   # deploy / rollback / lock events come in: announced once each
    svc.stop()

* one ``HealthWatch`` per Consul the datacenters name (``datacenter.yml consul:``); a ticker
  (every ``tick`` seconds) feeds what they hold to the ``Rules``: each check by
  ``(Consul, node, check id)``, and the watch itself (Consul ``up`` or ``lost``), so the
  watcher losing Consul is announced after the threshold like any other change, and so
  is its return; while Consul is lost its checks are frozen (nothing is announced from
  data nobody can read) and the ``health`` event says ``lost`` (health unknown);
* deploy / rollback events are announced once per commit (or, without one, per job and
  result): ``OncePer``; with ``history`` the repository's deploy log (its published commits:
  the upstream's) is read too, so deploys made with the CLI or pushed from other clones are
  announced, each commit once whichever way it was seen first: every ``history_interval``
  seconds alone, and inside serve from its job worker's ``sync`` / ``deploy`` / ``rollback``
  events (between its transactions, never in the middle of a commit, push or pull);
* ``locks.LockWatch`` follows the node locks (Consul's keys with a blocking query, engine
  locks every ``lock_interval``): manual ones taken / released, expired ones, once per (node,
  lock id, state); serve's own lock jobs that worked are left to it (one message);
* inside serve the health watches are serve's (``serve.health_watches()``, duck-typed): one
  set of blocking queries per Consul for the page and the rules;
* with ``leader=True``, only the instance holding the Consul session lock
  ``deployer/leader/alerts/<dcs>`` sends (``discovery.consul_lock.lead``). The others compute
  the same alerts and hold them until they see a leader's key, which means it sent them; an
  instance that becomes leader sends what it holds that is newer than the last leader it
  saw. The last leader keeps sending while Consul itself is unreachable (nobody can be
  elected then, and "lost Consul" must still go out); the others never send that one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from deployer.alerts.config import AlertsConfig, load_alerts
from deployer.alerts.drift import DriftWatch
from deployer.alerts.health import LOST, UP, HealthWatch
from deployer.alerts.locks import LockSeen, LockWatch, lock_text, once_key
from deployer.alerts.messages import alert, consul_alert, health_alert
from deployer.alerts.rules import OncePer, Rules
from deployer.alerts.sinks import Sinks
from deployer.errors import DeployerError

log = logging.getLogger(__name__)
HOLD_LIMIT = 200


def event_alert(event: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A deploy / rollback / lock event of ``serve``'s broker -> (its once-key, its alert); None for others."""
    kind = event.get("type")
    if kind not in ("deploy", "rollback", "lock"):
        return None
    targets = event.get("targets") or ([event["target"]] if event.get("target") else [])
    if isinstance(targets, str):
        targets = [targets]
    where = ", ".join(str(t) for t in targets) or "?"
    who = event.get("author") or event.get("who") or event.get("token")
    by = f" by {who}" if who else ""
    reason = event.get("reason")
    why = f": {reason}" if reason else ""
    ident = event.get("commit") or event.get("job") or event.get("id") or ""
    if kind == "lock":
        state = str(event.get("state") or event.get("action") or "taken")
        if state == "failed" or event.get("ok") is False:
            state = "failed"
            text = f"lock request on {where}{by} failed: {event.get('error') or '?'}"
        else:
            text = f"lock {'released' if state == 'released' else 'taken'} on {where}{by}{why}"
        return f"lock:{ident or where}:{state}:{event.get('t')}", alert("lock", state, text, targets=targets,
                                                                         job=event.get("job"))
    ok = event.get("ok")
    state = str(event.get("state") or ("ok" if ok else "failed" if ok is not None else "ok"))
    good = state in ("ok", "succeeded", "done", "success")
    image = event.get("image")
    what = f" {image}" if image else ""
    commit = f" (commit {str(event['commit'])[:12]})" if event.get("commit") else ""
    if kind == "rollback":
        text = (f"rolled back {where} to{what}{commit}{by}{why}" if good
                else f"rollback of {where} failed{by}: {event.get('error') or event.get('line') or state}")
    else:
        text = (f"deploy of{what} to {where} succeeded{commit}{by}{why}" if good
                else f"deploy of{what} to {where} failed{by}: {event.get('error') or event.get('line') or state}")
    # keyed by commit alone when there is one: a job's event and the deploy log's entry of the same commit are
    # one announcement, whatever each says of the result (a partial deploy: the job says failed, the log has it)
    key = f"{kind}:{event['commit']}" if event.get("commit") else f"{kind}:job:{ident}:{'ok' if good else 'failed'}"
    return key, alert(
        kind, "ok" if good else "failed", text, targets=targets, image=image, commit=event.get("commit"),
        job=event.get("job"))


class AlertService:
    """See the module doc. ``health`` / ``drift`` switch the two watches; ``clock`` is the rules' clock."""

    def __init__(self, root: str | Path, *, config: AlertsConfig | None = None,
                 secrets_file: str | Path | None = None, self_heal: bool = False,
                 drift_interval: float | None = None, drift: bool = True, health: bool = True,
                 leader: bool = False, tick: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 blocking_wait: float = 30.0, leader_ttl: float = 10.0, history: bool = True,
                 history_interval: float = 3.0, locks: bool = True, lock_interval: float | None = None):
        from deployer.config.loader import load
        from deployer.discovery.registration import consul_for

        self.root = Path(root)
        self.config = config or load_alerts(self.root, secrets_file)
        self.infra = load(self.root)
        self.rules = Rules(self.config.threshold, self.config.reminder)
        self.clock = clock
        self.tick = tick
        self.once = OncePer()
        self.sinks = Sinks(self.config.sinks)
        self.drift_interval = drift_interval or self.config.drift_interval
        self.drift = DriftWatch(self.root, self_heal=self_heal, prune=self.config.drift_prune,
                                emit=self._emit_drift, threshold=self.config.threshold) if drift else None
        consuls: dict[str, list[str]] = {}
        for dc in sorted(self.infra.datacenters.values(), key=lambda d: d.name):
            if dc.consul:
                consuls.setdefault(dc.consul, []).append(dc.name)
        self.catalogs = {addr: consul_for(self.infra.datacenters[dcs[0]]) for addr, dcs in consuls.items()}
        self.watches = [HealthWatch(self.catalogs[addr], tuple(dcs), blocking_wait=blocking_wait)
                        for addr, dcs in sorted(consuls.items())] if health else []
        self.own_watches = True  # False inside serve: its live.HealthWake owns them (start(serve))
        self.history = history
        self.history_interval = history_interval
        self._history_seen: set[str] | None = None
        self._history_mutex = threading.Lock()
        self.lock_watch = LockWatch(self.root, self.infra, self._lock_changed,
                                    interval=lock_interval or self.config.lock_interval,
                                    blocking_wait=blocking_wait) if locks else None
        self.leader = leader and bool(consuls)
        self.leader_ttl = leader_ttl
        self.election = sorted(consuls)[0] if consuls else None
        self.leader_name = "alerts/" + "+".join(sorted(dc for dcs in consuls.values() for dc in dcs))
        self.leading = False
        self.was_last_leader = False
        self.leader_seen = 0.0  # wall time another instance was last seen leading
        self.sent: list[dict[str, Any]] = []  # what this instance sent (for tests and `watch --once`)
        self._held: list[dict[str, Any]] = []
        self._subs: list[Callable[[dict[str, Any]], None]] = []
        self._seen: dict[str, float] = {}
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the public face ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """``callback(event)`` for every alert, drift and health event; returns the unsubscribe function."""
        with self._mutex:
            self._subs.append(callback)

        def unsubscribe() -> None:
            with self._mutex:
                if callback in self._subs:
                    self._subs.remove(callback)
        return unsubscribe

    def publish(self, event: dict[str, Any]) -> None:
        """An event from outside (serve's broker): deploy / rollback / lock ones are announced once each. With
        the lock watch on, a lock job that worked is left to it (it sees the lock itself, with its id: one
        announcement); a failed one is announced here."""
        if event.get("type") == "lock" and self.lock_watch is not None and event.get("ok") is not False \
                and event.get("state") in ("taken", "released"):
            return
        found = event_alert(event)
        if found is None:
            return
        key, a = found
        with self._mutex:
            if self.once.first(key):
                self._alert(a)

    def _lock_changed(self, state: str, lock: LockSeen) -> None:
        a = alert("lock", state, lock_text(state, lock), targets=[lock.target], lock_id=lock.id,
                  manual=lock.manual, who=lock.holder.get("who"), host=lock.holder.get("host"),
                  reason=lock.holder.get("reason"))
        with self._mutex:
            if self.once.first(once_key(state, lock)):
                self._alert(a)

    def _broker_event(self, event: dict[str, Any]) -> None:
        """Inside serve, every broker event comes here, in the publishing thread. Deploy / rollback / lock
        events are announced; then, after serve's own deploys and after each pull of its clone (``sync``, both
        published by serve's one job worker, so never in the middle of a commit, a push or a pull), the deploy
        log is read for the commits others pushed."""
        self.publish(event)
        if self.history and event.get("type") in ("sync", "deploy", "rollback"):
            try:
                self._history_pass(seed_only=event.get("type") == "sync" and self._history_seen is None)
            except DeployerError as exc:
                log.warning("reading the deploy log: %s", exc.one_line())
            except Exception:  # noqa: BLE001 - the publisher goes on
                log.exception("reading the deploy log")

    def start(self, serve: Any = None) -> "AlertService":
        """Start the watches. ``serve`` (a ``deployer serve`` state, duck-typed: alerts never imports serve):
        alert / drift / health events go to its broker, and its deploy / rollback / lock events come here."""
        if serve is not None:
            broker = serve.broker
            self.subscribe(lambda e: broker.publish(e["type"], **{k: v for k, v in e.items() if k != "type"}))
            broker.listen(self._broker_event)
            shared = getattr(serve, "health_watches", None)
            if self.watches and shared is not None:
                # serve follows each Consul's health once (serve.live.HealthWake), for its page and for these
                # rules: these watches were never started, the shared ones are
                self.watches = list(shared())
                self.own_watches = False
        if self.own_watches:
            for w in self.watches:
                w.start()
        if self.lock_watch is not None:
            self.lock_watch.start()
        self._spawn("alerts ticker", self._tick_loop)
        if self.drift is not None:
            self._spawn("drift watch", self._drift_loop)
        if self.leader:
            self._spawn("alerts leader", self._lead)
        if self.history and serve is None:
            self._spawn("deploy log", self._history_loop)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop everything within about ``timeout`` seconds in all (the threads are daemons: one busy in a plan
        or a POST is left to end with the process)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self.own_watches:
            for w in self.watches:
                w.stop()
        if self.lock_watch is not None:
            self.lock_watch.stop()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.sinks.close(timeout=max(0.5, deadline - time.monotonic()))

    def check_once(self, wait: float = 10.0) -> list[dict[str, Any]]:
        """``watch --once``: read every Consul once, announce what is not normal now (no threshold), one drift pass."""
        before = len(self.sent)
        for w in self.watches:
            w.start()
        deadline = time.monotonic() + wait
        while any(w.snapshot()[0] not in (UP, LOST) for w in self.watches) and time.monotonic() < deadline:
            time.sleep(0.05)
        threshold, self.rules.threshold = self.rules.threshold, 0.0
        try:
            self._step()
        finally:
            self.rules.threshold = threshold
        if self.drift is not None:
            self.drift.threshold = 0.0  # what drifts now
            self._drift_pass()
        for w in self.watches:
            w.stop()
        for sink in self.sinks.sinks:
            sink.drain(30.0)
        return self.sent[before:]

    # -- internals ------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("t", time.time())
        with self._mutex:
            subs = list(self._subs)
        for cb in subs:
            try:
                cb(event)
            except Exception:  # noqa: BLE001 - a subscriber's failure is its own
                log.exception("alerts subscriber failed")

    def _emit_drift(self, event: dict[str, Any]) -> None:
        if event.get("type") == "alert":
            with self._mutex:
                self._alert(event)
        else:
            self._emit(event)

    def _sending(self) -> bool:
        if not self.leader or self.leading:
            return True
        return self.was_last_leader and self._election_lost()

    def _election_lost(self) -> bool:
        return any(w.address == self.election and w.snapshot()[0] == LOST for w in self.watches)

    def _alert(self, a: dict[str, Any]) -> None:
        a["sent"] = self._sending()
        if a["sent"]:
            self.sinks.send(a)
            self.sent.append(a)
        elif not (a.get("kind") == "consul" and a.get("state") == "lost"):
            self._held.append(a)
            del self._held[:-HOLD_LIMIT]
        log.debug("alert%s: %s", "" if a["sent"] else " (another instance sends)", a["text"])
        self._emit(a)

    def _tick_loop(self) -> None:
        next_leader_read = 0.0
        while not self._stop.wait(self.tick):
            try:
                self._step()
                if self.leader and not self.leading and time.monotonic() >= next_leader_read:
                    next_leader_read = time.monotonic() + 1.0
                    self._read_leader()
            except Exception:  # noqa: BLE001 - the ticker must go on
                log.exception("alerts ticker")

    def _step(self) -> None:
        now = self.clock()
        with self._mutex:
            for w in self.watches:
                state, error, checks = w.snapshot()
                key = f"consul:{w.address}"
                prefix = f"check:{w.address}:"
                info = {"address": w.address, "dcs": list(w.dcs), "error": error}
                if self._seen.get(w.address) != w.changed_at:
                    self._seen[w.address] = w.changed_at
                    self._emit(self._health_event(w, state, error, checks))
                if state == LOST:
                    self.rules.observe(key, "lost", now, normal="up", info=info)
                    for k in self.rules.keys():
                        if k.startswith(prefix):
                            self.rules.observe(k, self.rules.announced(k), now)
                elif state == UP:
                    self.rules.observe(key, "up", now, normal="up", info=info)
                    seen = set()
                    dc = w.dcs[0] if len(w.dcs) == 1 else None
                    for c in checks:
                        k = f"{prefix}{c.node}/{c.check_id}"
                        seen.add(k)
                        self.rules.observe(k, c.status, now, info={
                            "dc": dc, "Node": c.node, "CheckID": c.check_id, "Name": c.name, "Output": c.output,
                            "ServiceID": c.service_id, "ServiceName": c.service})
                    for k in self.rules.keys():
                        if k.startswith(prefix) and k not in seen:
                            self.rules.forget(k)
            # the watcher's own state first: "back on Consul" before the checks it can read again
            for tr in sorted(self.rules.tick(now), key=lambda tr: not tr.key.startswith("consul:")):
                self._alert(consul_alert(tr, now) if tr.key.startswith("consul:") else health_alert(tr, now))

    @staticmethod
    def _health_event(w: HealthWatch, state: str, error: str | None, checks) -> dict[str, Any]:
        return {"type": "health", "consul": w.address, "dcs": list(w.dcs),
                "state": "unknown" if state != UP else "known", "error": error,
                "checks": [{"node": c.node, "check": c.check_id, "name": c.name, "status": c.status,
                            "service": c.service, "service_id": c.service_id, "output": c.output[:300]}
                           for c in checks] if state == UP else []}

    def _drift_loop(self) -> None:
        while not self._stop.is_set():
            self._drift_pass()
            if self._stop.wait(self.drift_interval):
                return

    def _drift_pass(self) -> None:
        try:
            self.drift.run_once()
        except DeployerError as exc:
            self._emit({"type": "drift", "node": None, "state": "unknown", "error": exc.one_line()})
        except Exception as exc:  # noqa: BLE001 - the watch goes on
            log.exception("drift watch")
            self._emit({"type": "drift", "node": None, "state": "unknown", "error": f"{type(exc).__name__}: {exc}"})

    def _history_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._history_pass()
            except DeployerError as exc:
                log.warning("reading the deploy log: %s", exc.one_line())
            except Exception:  # noqa: BLE001 - the watch goes on
                log.exception("reading the deploy log")
            if self._stop.wait(self.history_interval):
                return

    def _history_pass(self, seed_only: bool = False) -> None:
        """New deploy / rollback commits of the repository (made by any deployer, this clone pulled or
        deployed from) as deploy / rollback events: keyed by commit like serve's own, so each is announced
        once whichever is seen first. What was there when the watch started is not announced. Only
        published commits are read (``deploy_log(published=True)``: the branch's upstream when the clone
        has a remote), each under the sha the remote has: a local commit that a push's or a pull's rebase
        rewrites is never announced under its old sha."""
        from deployer.gitrepo.repo import InfraRepo

        with self._history_mutex:
            with InfraRepo.open(self.root) as repo:
                entries = repo.deploy_log(None, 50, published=True)
            if self._history_seen is None or seed_only:
                self._history_seen = (self._history_seen or set()) | {e.commit for e in entries}
                return
            new = [e for e in reversed(entries) if e.commit not in self._history_seen]  # oldest first
            self._history_seen.update(e.commit for e in new)
        for entry in new:
            self.publish({"type": entry.action, "ok": True, "targets": list(entry.targets), "image": entry.image,
                          "commit": entry.commit, "who": entry.author, "reason": entry.reason.strip() or None,
                          "source": "deploy log"})

    # -- leader ---------------------------------------------------------------------------

    def _lead(self) -> None:
        from deployer.discovery.consul_lock import lead

        def work(leading: threading.Event) -> None:
            with self._mutex:
                self.leading = True
                self.was_last_leader = True
                held = [a for a in self._held if a["t"] > self.leader_seen]
                self._held.clear()
                for a in held:
                    a["sent"] = True
                    self.sinks.send(a)
                    self.sent.append(a)
                    log.info("alert (held until leading): %s", a["text"])
            leading.wait()
            with self._mutex:
                self.leading = False

        lead(self.catalogs[self.election], self.leader_name, self._stop, work, ttl=self.leader_ttl,
             command="deployer alerts watch --leader", progress=lambda msg: log.info("alerts: %s", msg))

    def _read_leader(self) -> None:
        from deployer.discovery.consul_lock import LEADER_PREFIX

        key = f"{LEADER_PREFIX}/{self.leader_name}"
        try:
            _, pair = self.catalogs[self.election].call(f"read {key}", lambda c: c.kv.get(key))
        except DeployerError:
            return
        if not pair or not pair.get("Session"):
            return
        try:
            holder = json.loads((pair.get("Value") or b"{}").decode("utf-8", "replace"))
        except ValueError:
            holder = {}
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            return
        with self._mutex:
            self.leader_seen = time.time()
            self.was_last_leader = False
            self._held = [a for a in self._held if a["t"] > self.leader_seen - 1.0]
