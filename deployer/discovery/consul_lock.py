"""The node lock as a Consul session lock, for datacenters whose ``datacenter.yml`` names a Consul.

One KV key per node, ``deployer/lock/<dc>/<node>``, held by a session:

* the session: ``Behavior: release``, a TTL (datacenter.yml ``lock: {ttl: ...}``,
  default 30s, Consul's minimum 10s) renewed every TTL/2 by a thread while held,
  the agent's ``serfHealth`` check (the default), and a lock-delay (``lock:
  {delay: ...}``, default 5s) during which, after the session is invalidated,
  nobody can acquire the key: a holder that lost its session but has not noticed
  yet gets that long to stop before another one starts.
* acquire: ``PUT /v1/kv/<key>?acquire=<session>`` with the holder as the value
  (JSON: who, host, pid, command, since, reason, id) and Consul's lock flag. False
  means another session holds it (read it: wait with a blocking query on the key,
  or fail naming the holder; a holder that provably died on this very machine,
  ``engine.node_lock.holder_dead``, is released at once) or the key is in its
  lock-delay (retry shortly).
* hold: ``check()``, called before every container step, reads the key once: it
  must still carry our session. A Consul that does not answer is a lost lock too
  (we cannot know whether the session lives), and so is a renewal Consul refused
  (the session is gone: TTL expired, invalidated, destroyed with ``--force``).
* release: ``?release=<session>``, delete the key with a CAS on the index we
  read (so a new holder's key is never deleted), destroy the session.

A manual lock (``deployer lock acquire``) is a session without TTL and without
checks: it lives until ``deployer lock release`` destroys it.

What was taken from Consul's ``api/lock.go`` (``consul lock``) and Terraform's
Consul backend is in docs/design.md ("Node locks").
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.engine.node_lock import describe_holder, holder_dead, new_lock_id
from deployer.errors import ConsulError, ConsulUnavailable, LockError, LockLost, NodeLockHeld

KEY_PREFIX = "deployer/lock"
LOCK_FLAG = 0x2DDCCBC058A50C18  # the flag Consul's own lock API puts on lock keys
DEFAULT_TTL = 30.0
MIN_TTL = 10.0  # Consul refuses shorter session TTLs
DEFAULT_DELAY = 5.0
BLOCK = 3.0  # seconds of one blocking query while waiting (under the client's 5 s timeout)
RETRY = 0.25  # seconds between attempts while the key is in its lock-delay


def lock_key(dc: str, node: str) -> str:
    return f"{KEY_PREFIX}/{dc}/{node}"


def _holder(pair: dict[str, Any] | None) -> dict[str, Any]:
    try:
        value = json.loads(((pair or {}).get("Value") or b"{}").decode("utf-8", "replace"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class ConsulLock:
    """The lock of one node in its datacenter's Consul (see the module doc)."""

    kind = "consul"

    def __init__(self, catalog: ConsulCatalog, dc: str, node: str, info: dict[str, Any], *,
                 ttl: float = DEFAULT_TTL, delay: float = DEFAULT_DELAY, manual: bool = False,
                 progress: Callable[[str], None] | None = None, key: str | None = None):
        self.catalog = catalog
        self.target = f"{dc}/{node}" if key is None else key
        self.key = key or lock_key(dc, node)
        self.manual = manual
        self.ttl = 0.0 if manual else max(float(ttl), MIN_TTL)
        self.delay = max(0.0, float(delay))
        self.id = info.get("id") or new_lock_id()
        self.info = {**info, "id": self.id, "ttl": self.ttl, "manual": manual, "key": self.key}
        self.progress = progress or (lambda msg: None)
        self.session: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring -------------------------------------------------------------

    def acquire(self, wait: float = 0) -> "ConsulLock":
        deadline = time.monotonic() + max(0.0, float(wait or 0))
        name = f"deployer lock {self.target}" + (" (manual)" if self.manual else "")
        try:
            self.session = self.catalog.call(f"create a session to lock {self.target}", lambda c: c.session.create(
                name=name, ttl=int(self.ttl) if self.ttl else None, lock_delay=int(round(self.delay)),
                behavior="release", checks=[] if self.manual else None))
        except ConsulUnavailable as exc:
            raise ConsulUnavailable(self.catalog.address, f"{exc.message}; nothing was changed (--no-consul "
                                    "deploys without Consul, with the lock on the node's engine)") from None
        if self.ttl:  # renewed from now on, waiting included (a wait longer than the TTL would lose it)
            self._thread = threading.Thread(target=self._renew_loop, name=f"lock-{self.target}", daemon=True)
            self._thread.start()
        value = json.dumps(self.info, sort_keys=True, default=str)
        said = False
        try:
            while True:
                if self.catalog.call(f"acquire {self.key}", lambda c: c.kv.put(
                        self.key, value, acquire=self.session, flags=LOCK_FLAG)):
                    break
                index, pair = self.catalog.call(f"read {self.key}", lambda c: c.kv.get(self.key))
                held = bool(pair and pair.get("Session"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = _holder(pair) if held else {}
                    what = describe_holder(holder) if held else (
                        f"a holder whose session just ended (Consul's lock-delay of {self.delay:g}s)")
                    hint = "; retry or pass --wait SECONDS" if not wait else f"; still held after waiting {wait:g}s"
                    if holder.get("manual"):
                        hint += f"; 'deployer lock release {self.target}' lifts it"
                    raise NodeLockHeld(self.target, what + hint, holder)
                if held and not _holder(pair).get("manual") and holder_dead(_holder(pair)):
                    # its holder died on this machine: release the key with the dead session, no lock-delay
                    dead = pair["Session"]
                    self.catalog.call(f"release {self.key}", lambda c: c.kv.put(self.key, "", release=dead))
                    self.catalog.call("destroy a dead holder's session", lambda c: c.session.destroy(dead))
                    self.progress(f"released the lock of {describe_holder(_holder(pair))}: that process is gone")
                    continue
                if held:
                    if not said:
                        said = True
                        self.progress(f"waiting for the lock of {self.target}, held by {describe_holder(_holder(pair))}")
                    block = max(1.0, min(BLOCK, remaining))
                    self.catalog.call(f"watch {self.key}", lambda c: c.kv.get(
                        self.key, index=index, wait=f"{block:.0f}s"))
                else:
                    time.sleep(min(RETRY, remaining))
        except BaseException:
            self._stop.set()
            self._destroy()
            raise
        return self

    # -- holding ---------------------------------------------------------------

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 2):
            try:
                entry = self.catalog.call("renew the lock session", lambda c: c.session.renew(self.session))
            except ConsulError as exc:
                self.lost = f"renewing its Consul session failed ({exc.message})"
                continue  # it may come back before the TTL; check() decides meanwhile
            if entry is None:
                self.lost = f"its Consul session {self.session} is gone (TTL {self.ttl:g}s expired or invalidated)"
                return
            self.lost = None

    def check(self) -> None:
        """LockLost unless the key still carries this deployer's session (one Consul read)."""
        if self.session is None:
            raise LockLost(self.target, "it is not held")
        try:
            _, pair = self.catalog.call(f"read {self.key}", lambda c: c.kv.get(self.key))
        except ConsulUnavailable as exc:
            raise LockLost(self.target, f"Consul does not answer, so the session may be gone ({exc.one_line()})") \
                from None
        if not pair or pair.get("Session") != self.session:
            raise LockLost(self.target, self.lost or f"its Consul session ended (TTL {self.ttl:g}s expired, "
                           "the agent left, or the lock was forced)")

    # -- releasing -------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.session is None:
            return
        try:
            self.catalog.call(f"release {self.key}", lambda c: c.kv.put(self.key, "", release=self.session))
            index, pair = self.catalog.call(f"read {self.key}", lambda c: c.kv.get(self.key))
            if pair is not None and not pair.get("Session"):
                self.catalog.call(f"delete {self.key}", lambda c: c.kv.delete(self.key, cas=pair["ModifyIndex"]))
        except ConsulError as exc:
            self.progress(f"could not release the lock of {self.target} in Consul ({exc.one_line()}); "
                          f"it is released when its session ends (TTL {self.ttl:g}s)")
        self._destroy()

    def _destroy(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        try:
            self.catalog.call("destroy the lock session", lambda c: c.session.destroy(session))
        except ConsulError:
            pass  # its TTL ends it

    def detach(self) -> None:
        """Leave a manual lock in place: its session has no TTL and no checks."""
        self._stop.set()
        self.session = None

    def __enter__(self) -> "ConsulLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_consul_lock(catalog: ConsulCatalog, dc: str, node: str) -> dict[str, Any] | None:
    """The holder written in the node's key while a session holds it (plus ``session``), else None."""
    _, pair = catalog.call(f"read {lock_key(dc, node)}", lambda c: c.kv.get(lock_key(dc, node)))
    if not pair or not pair.get("Session"):
        return None
    return {**_holder(pair), "session": pair["Session"]}


def force_release_consul(catalog: ConsulCatalog, dc: str, node: str, *, force: bool) -> dict[str, Any] | None:
    """Destroy the session holding the node's key: a manual lock always, a deploy's only with ``force``."""
    holder = read_consul_lock(catalog, dc, node)
    if holder is None:
        return None
    if not holder.get("manual") and not force:
        raise LockError(f"the lock of {dc}/{node} is held by a running deploy ({describe_holder(holder)}); "
                        "pass --force to break it")
    key = lock_key(dc, node)
    if holder.get("manual"):
        # released cleanly first, as its holder would: no lock-delay for the next deployer
        catalog.call(f"release {key}", lambda c: c.kv.put(key, "", release=holder["session"]))
    # a running deploy's session is destroyed instead: the key then keeps its lock-delay, the time its
    # holder gets to see the lock gone before anyone else can take it
    catalog.call("destroy the lock session", lambda c: c.session.destroy(holder["session"]))
    index, pair = catalog.call(f"read {key}", lambda c: c.kv.get(key))
    if pair is not None and not pair.get("Session"):
        catalog.call(f"delete {key}", lambda c: c.kv.delete(key, cas=pair["ModifyIndex"]))
    return holder


# -- one leader among several instances ---------------------------------------------------

LEADER_PREFIX = "deployer/leader"


def leader_info() -> dict[str, Any]:
    """who, host, pid, since and the process identity of this instance, as a leader key's value."""
    import datetime as _dt
    import getpass
    import os
    import socket

    from deployer.engine.node_lock import process_identity

    try:
        who = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry
        who = str(os.getuid())
    info = {"who": who, "host": socket.gethostname(), "pid": os.getpid(), "command": "leader",
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    proc = process_identity()
    if proc:
        info["proc"] = proc
    return info


def lead(catalog: ConsulCatalog, name: str, stop: threading.Event, work: Callable[[threading.Event], None], *,
         ttl: float = 15.0, delay: float = DEFAULT_DELAY, progress: Callable[[str], None] | None = None,
         command: str = "leader") -> None:
    """Run ``work(leading)`` only while this instance holds the session lock ``deployer/leader/<name>``.

    The same session mechanism as the node locks: a waiting instance blocks on the key; the leader's
    session is renewed every TTL/2 and its key checked every TTL/4; when it is lost (Consul gone, session
    expired) ``leading`` is set, ``work`` must return, and the instance campaigns again. Ends when
    ``stop`` is set (``leading`` is set too)."""
    say = progress or (lambda msg: None)
    key = f"{LEADER_PREFIX}/{name}"
    said = False
    while not stop.is_set():
        lock = ConsulLock(catalog, "", "", {**leader_info(), "command": command}, ttl=ttl, delay=delay, key=key)
        try:
            lock.acquire(wait=BLOCK)
        except NodeLockHeld as exc:
            if not said:
                said = True
                say(f"another instance leads ({exc.message.split(';')[0]}); waiting to take over")
            continue
        except ConsulError as exc:
            say(f"cannot campaign for {key}: {exc.one_line()}; trying again")
            stop.wait(min(ttl / 2, 5.0))
            continue
        said = False
        say(f"leading ({key})")
        leading = threading.Event()

        def watch() -> None:
            while not stop.is_set() and not leading.is_set():
                try:
                    lock.check()
                except LockLost as exc:
                    say(f"no longer leading: {exc.message}")
                    break
                stop.wait(ttl / 4)
            leading.set()

        watcher = threading.Thread(target=watch, name=f"leader {name}", daemon=True)
        watcher.start()
        try:
            work(leading)
        finally:
            leading.set()
            watcher.join(timeout=ttl)
            lock.release()
