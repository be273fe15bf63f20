"""Node locks: which lock each node gets, the order they are taken in, and ``deployer lock``.

A command that changes containers takes the lock of every node it changes before
the repository is pulled (the repository transaction enters ``NodeLocks`` right
after its own flock)::

    flock .git/deployer.lock -> node locks, sorted by dc/node -> pull -> load -> edit -> apply
        -> commit -> push -> release the node locks -> unlock

* where the node's datacenter names a Consul (``datacenter.yml consul:``), the node's
  lock is a Consul session lock (``discovery.consul_lock``); ``--no-consul`` (Consul
  is down, or must not be used) takes the engine lock instead;
* elsewhere it lives on the node's engine (``engine.node_lock``).

The locks are first tried all at once without waiting (one thread per node, up
to ``--parallel``): a deployer that never waits while it holds a lock cannot be
part of a deadlock, so no order is needed there, and 20 nodes cost about what one
does. When one of them is held by another deployer, every lock this command took
is released; without ``--wait`` the command then fails naming the holder
(NodeLockHeld). With ``--wait`` it takes them again in the sorted order, one after
the other, each waiting up to ``--wait``: two multi-node deploys then never hold
one node each while waiting for the other's. A lock that cannot be had within
``--wait`` fails the command naming its holder, and the locks already taken are
released. While held, ``guard(node)`` is what the Applier calls before each
container step: it raises LockLost when the node's lock is gone, so the deployer
stops before touching a container it no longer has the right to touch.

Every container a locked command creates carries ``deployer.lock.id``, the
command's lock id, so whoever finds it later knows which deploy made it; only a
holder of the node's lock removes a leftover (the Applier's leftovers are removed
under the lock, and checked with ``guard`` first).

One engine session per node per command: an engine lock is taken over the node's
``EngineSession`` (connected, its state not read yet), and ``session(node)`` hands
the command that same session for its work on the node, so the lock, its renewals
and the command's container steps share one connection (one connect, one ping).
The sessions are closed after the locks are released. A node whose engine URL
changed with the pull gets a session of its own.
"""

from __future__ import annotations

import datetime as _dt
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from deployer.engine.connect import DEFAULT_TIMEOUT
from deployer.engine.node_lock import DEFAULT_TTL as ENGINE_TTL
from deployer.engine.node_lock import (EngineLock, describe_holder, force_release, lock_name, new_lock_id,
                                       process_identity, read_lock)
from deployer.engine.session import EngineSession
from deployer.errors import DeployerError, HostError, LockError, NodeLockHeld
from deployer.gitrepo.lock import command_line, default_owner_info
from deployer.model import Datacenter, Infrastructure, Node
from deployer.ops.targets import DEFAULT_PARALLEL, node_failure, run_parallel

KIND_CONSUL = "consul"
KIND_ENGINE = "engine"
LOCK_TIMEOUT = 15  # seconds for one engine call of the lock


def holder_info(command: str | None = None, reason: str | None = None, lock_id: str | None = None,
                who: str | None = None) -> dict[str, Any]:
    """Who takes a lock: who (``who``, or the user), host, pid, command, since, reason, id (the value of the key /
    the label). ``deployer serve`` passes the token's name as ``who``."""
    own = default_owner_info()
    info = {"who": who or own["user"], "host": own["host"], "pid": own["pid"], "command": command or command_line(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "id": lock_id or new_lock_id()}
    proc = process_identity()
    if proc:
        info["proc"] = proc  # lets a deployer on this machine see that a holder died (engine.node_lock.holder_dead)
    if reason:
        info["reason"] = reason
    return info


def lock_kind(datacenter: Datacenter | None, consul: bool = True) -> str:
    return KIND_CONSUL if consul and datacenter is not None and datacenter.consul else KIND_ENGINE


def _catalog(datacenter: Datacenter):
    # Imported here: a datacenter without Consul never loads the Consul client (see ops.targets).
    from deployer.discovery.registration import consul_for

    return consul_for(datacenter)


def open_lock(root: Path, datacenter: Datacenter, node: Node, info: dict[str, Any], *, consul: bool = True,
              manual: bool = False, progress: Callable[[str], None] | None = None,
              session: EngineSession | None = None) -> Any:
    """The (not yet acquired) lock of one node: a ConsulLock, or an EngineLock over ``session``'s connection
    (connected here; without a session, one of its own that closing the lock closes)."""
    if lock_kind(datacenter, consul) == KIND_CONSUL:
        from deployer.discovery.consul_lock import DEFAULT_DELAY, DEFAULT_TTL, ConsulLock

        return ConsulLock(_catalog(datacenter), node.dc, node.name, info, manual=manual, progress=progress,
                          ttl=datacenter.lock_ttl or DEFAULT_TTL,
                          delay=DEFAULT_DELAY if datacenter.lock_delay is None else datacenter.lock_delay)
    owned = session is None
    session = (session or EngineSession(node, root, timeout=LOCK_TIMEOUT)).connect()
    lock = EngineLock(session.client, node.target, info, ttl=datacenter.lock_ttl or ENGINE_TTL, manual=manual,
                      progress=progress)
    lock.client_owned = owned
    return lock


def _close(lock: Any) -> None:
    if getattr(lock, "client_owned", False):
        try:
            lock.client.close()
        except Exception:  # noqa: BLE001 - closing only
            pass


class NodeLocks:
    """The node locks of one command, as a context manager (see the module doc)."""

    def __init__(self, root: str | Path, infra: Infrastructure, nodes: Iterable[Node], *, wait: float = 0,
                 consul: bool = True, command: str | None = None, progress: Callable[[str], None] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, parallel: int = DEFAULT_PARALLEL):
        self.root = Path(root)
        self.parallel = max(1, parallel)  # locks tried at once (the command's --parallel)
        self.timeout = timeout  # of each node's engine session (the lock's calls and the command's)
        self.infra = infra
        self.nodes = sorted({n.target: n for n in nodes}.values(), key=lambda n: (n.dc, n.name))
        self.wait = wait
        self.consul = consul
        self.info = holder_info(command)
        self.id = self.info["id"]
        self.progress = progress or (lambda msg: None)
        self.held: dict[str, Any] = {}
        self.sessions: dict[str, EngineSession] = {}  # dc/node -> the session its engine lock was taken over
        # nodes whose engine (or Consul) could not be reached to take the lock: the command reports them as it
        # reports an unreachable node, works on the others, and never touches these (problem()).
        self.unreachable: dict[str, DeployerError] = {}
        self._mutex = threading.Lock()

    def __enter__(self) -> "NodeLocks":
        try:
            if self.wait and len(self.nodes) == 1:  # nothing to try at once first
                self._in_order()
                return self
            conflict = self._try_all()
            if conflict is not None:
                self._release_held()  # hold nothing: a deployer waiting for one of these must not wait for us
                if not self.wait:
                    raise conflict
                self.progress(f"{conflict.node}: held by another deployer; taking the locks in order, "
                              f"waiting up to {self.wait:g}s for each")
                self._in_order()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _in_order(self) -> None:
        """Sorted, one after the other, each waiting up to --wait: no two waiting deploys wait for each other."""
        for node in self.nodes:
            if node.target not in self.unreachable:
                self._take(node, self.wait)

    def _try_all(self) -> NodeLockHeld | None:
        """Every lock at once, none waiting; the first node's NodeLockHeld (by dc/node) when some were held by
        another deployer (the others stay taken: the caller releases them), other errors raised."""
        failed: dict[str, BaseException] = {}

        def take(node: Node) -> None:
            try:
                self._take(node, 0)
            except BaseException as exc:  # noqa: BLE001 - raised below, the first node's first
                failed[node.target] = exc

        run_parallel(take, self.nodes, self.parallel)
        others = {t: e for t, e in failed.items() if not isinstance(e, NodeLockHeld)}
        if others:
            raise others[min(others)]
        return failed[min(failed)] if failed else None  # type: ignore[return-value]

    def _release_held(self) -> None:
        """Release the locks taken so far and close their sessions (a later try connects again)."""
        try:
            for target in sorted(self.held, reverse=True):
                self.held.pop(target).release()  # an engine lock's connection is its session's, closed below
        finally:
            for target in sorted(self.sessions):
                self.sessions.pop(target).close()

    def _take(self, node: Node, wait: float) -> None:
        """Take one node's lock, waiting up to ``wait``; a node that cannot be reached is recorded in
        ``unreachable``, not raised."""
        datacenter = self.infra.datacenters[node.dc]
        session = EngineSession(node, self.root, timeout=self.timeout, shared=True) \
            if lock_kind(datacenter, self.consul) == KIND_ENGINE else None
        try:
            lock = open_lock(self.root, datacenter, node, self.info, consul=self.consul,
                             progress=lambda msg: self.progress(f"{node.target}: {msg}"), session=session)
            lock.acquire(wait)
        except BaseException as exc:
            if session is not None:
                session.close()
            if isinstance(exc, HostError) or (isinstance(exc, Exception) and not isinstance(exc, DeployerError)):
                self.unreachable[node.target] = node_failure(node, exc)
                return
            raise
        with self._mutex:
            self.held[node.target] = lock
            if session is not None:
                self.sessions[node.target] = session

    def __exit__(self, *exc: object) -> None:
        self._release_held()

    def session(self, node: Node, timeout: float = DEFAULT_TIMEOUT) -> EngineSession:
        """The node's engine session for the command's work: the one its lock was taken over (same engine,
        same timeout: it stays open until the locks are released), else a session of its own."""
        held = self.sessions.get(node.target)
        if held is not None and held.timeout == timeout and _same_engine(held.node, node):
            held.node = node  # as loaded after the pull (its registry credentials, its services)
            return held
        return EngineSession(node, self.root, timeout=timeout)

    def problem(self, node: Node) -> DeployerError | None:
        """Why the command must not touch ``node`` (its lock could not be taken: unreachable), or None."""
        return self.unreachable.get(node.target)

    def guard(self, node: Node) -> Callable[[], None] | None:
        """What the Applier calls before each container step on ``node`` (LockLost when the lock is gone)."""
        lock = self.held.get(node.target)
        return None if lock is None else lock.check


def _same_engine(a: Node, b: Node) -> bool:
    """Whether two loads of a node reach its engine the same way (the pull may have changed node.yml)."""
    return (a.docker, a.tls, a.identity_file, a.known_hosts) == (b.docker, b.tls, b.identity_file, b.known_hosts)


def node_session(locks: "NodeLocks | None", node: Node, root: str | Path,
                 timeout: float = DEFAULT_TIMEOUT) -> EngineSession:
    """``locks.session(node)`` under node locks, else a session of its own (a dry run, an unlocked command)."""
    return locks.session(node, timeout) if locks is not None else EngineSession(node, root, timeout=timeout)


# -- deployer lock status / acquire / release ---------------------------------------------


@dataclass
class LockStatus:
    target: str  # dc/node
    kind: str  # consul | engine
    held: bool
    holder: dict[str, Any]
    expires_in: float | None = None  # seconds (engine lock), None: manual or not held
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "held": self.held, "holder": self.holder or None,
                "manual": bool(self.holder.get("manual")) if self.holder else False,
                "expires_in": None if self.expires_in is None else round(self.expires_in, 1), "error": self.error}

    def describe_released(self) -> str:
        return describe_holder(self.holder)

    def describe(self) -> str:
        if self.error:
            return self.error
        if not self.held:
            return "free"
        text = describe_holder(self.holder)
        if self.expires_in is not None:
            text += f" (expires in {max(self.expires_in, 0):.0f}s unless renewed)"
        return text


def _nodes(infra: Infrastructure, targets: list[str] | None) -> list[Node]:
    if not targets:
        return list(infra.nodes())
    found: dict[str, Node] = {}
    for text in targets:
        for node in infra.select_nodes(infra.resolve(text)):
            found[node.target] = node
    return sorted(found.values(), key=lambda n: (n.dc, n.name))


def lock_status(root: str | Path, infra: Infrastructure, targets: list[str] | None, *,
                consul: bool = True) -> list[LockStatus]:
    out = []
    for node in _nodes(infra, targets):
        dc = infra.datacenters[node.dc]
        kind = lock_kind(dc, consul)
        try:
            if kind == KIND_CONSUL:
                from deployer.discovery.consul_lock import read_consul_lock

                holder = read_consul_lock(_catalog(dc), node.dc, node.name)
                out.append(LockStatus(node.target, kind, holder is not None, holder or {}))
            else:
                with closing(EngineSession(node, Path(root), timeout=LOCK_TIMEOUT).connect()) as session:
                    current = read_lock(session.client.api, lock_name(node.target))
                out.append(LockStatus(node.target, kind, current is not None,
                                      current.holder if current else {},
                                      current.seconds_left() if current else None))
        except Exception as exc:  # noqa: BLE001 - one node's trouble is reported on its line
            out.append(LockStatus(node.target, kind, False, {}, error=node_failure(node, exc).one_line()))
    return out


def manual_lock(root: str | Path, infra: Infrastructure, targets: list[str], reason: str, *, consul: bool = True,
                progress: Callable[[str], None] | None = None, who: str | None = None) -> list[LockStatus]:
    """``deployer lock acquire``: a lock on each node that lasts until ``lock release`` (all or none)."""
    if not reason or not reason.strip():
        raise LockError("a manual lock needs a reason: -m REASON")
    nodes = _nodes(infra, targets)
    info = holder_info(reason=reason.strip(), who=who)
    taken: list[tuple[Node, Any]] = []
    try:
        for node in nodes:
            lock = open_lock(Path(root), infra.datacenters[node.dc], node, info, consul=consul, manual=True,
                             progress=progress)
            try:
                lock.acquire(0)
            except BaseException:
                _close(lock)
                raise
            taken.append((node, lock))
    except Exception as exc:
        for _, lock in taken:
            lock.release()
            _close(lock)
        if isinstance(exc, DeployerError):
            raise
        raise node_failure(nodes[len(taken)], exc) from None
    for _, lock in taken:
        lock.detach()
        _close(lock)
    holder = {**info, "manual": True}
    return [LockStatus(n.target, lock_kind(infra.datacenters[n.dc], consul), True, holder) for n, _ in taken]


def release_locks(root: str | Path, infra: Infrastructure, targets: list[str], *, force: bool = False,
                  consul: bool = True) -> list[LockStatus]:
    """``deployer lock release``: lift manual locks; with ``force``, break a running deploy's lock too."""
    out = []
    for node in _nodes(infra, targets):
        dc = infra.datacenters[node.dc]
        kind = lock_kind(dc, consul)
        try:
            if kind == KIND_CONSUL:
                from deployer.discovery.consul_lock import force_release_consul

                holder = force_release_consul(_catalog(dc), node.dc, node.name, force=force)
            else:
                with closing(EngineSession(node, Path(root), timeout=LOCK_TIMEOUT).connect()) as session:
                    current = force_release(session.client, node.target, force=force)
                holder = current.holder if current else None
        except DeployerError:
            raise
        except Exception as exc:
            raise node_failure(node, exc) from None
        out.append(LockStatus(node.target, kind, False, holder or {}))
    return out
