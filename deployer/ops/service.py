"""exec and restart: touch one running service through the node's normal connection.

``exec_target`` resolves a target that must name one service on one node and
opens its engine session; the CLI runs the command over it (engine.containers).

``restart`` is a route through the layers, inside one repository transaction
that never commits (the repository did not change; the lock keeps it from
running while a deploy of the same repository does)::

    RepoTransaction: lock -> finish an interrupted commit -> pull   (gitrepo.transaction)
      load the repository under the lock                          (config.loader.load)
      choose the services                                         (ops.targets.selection)
      node after node, container after container:
        EngineSession: connect, read the node once                (engine.session)
        restart the container, wait until healthy                 (engine.apply.Applier.wait_healthy)
      the first one that is not healthy stops the restart         (HealthCheckFailed)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from deployer.config import loader
from deployer.config.compose_spec import container_spec
from deployer.engine.apply import SwapOptions
from deployer.engine.session import EngineSession
from deployer.engine.state import ContainerState, read_container
from deployer.errors import HealthCheckFailed, NotRunning, TargetError
from deployer.gitrepo.transaction import RepoTransaction
from deployer.model import Infrastructure
from deployer.ops.locks import NodeLocks
from deployer.ops.targets import node_failure, selection

RESTART_STOP_TIMEOUT = 10  # seconds the container gets to stop before it is killed, as docker restart


@dataclass
class Restarted:
    """One container restarted and healthy again."""

    target: str
    container: str
    state: str
    seconds: float


def exec_target(root: Path, infra: Infrastructure, text: str) -> tuple[EngineSession, ContainerState]:
    """The entered session of the node and the running container of the one service ``text`` names.

    TargetError (naming the candidates) unless ``text`` names one service on one node; NotRunning
    when it has no running container. The caller closes the session."""
    resolved = infra.resolve(text)
    if resolved.service is None:
        candidates = [s.target for s in infra.select(resolved)]
        raise TargetError(f"exec needs one service on one node: write dc/node/service (candidates for {text}: "
                          f"{', '.join(candidates) or 'none'})")
    node = infra.node(resolved.dc, resolved.node)
    session = EngineSession(node, root)
    try:
        session.__enter__()
    except Exception as exc:
        raise node_failure(node, exc) from None
    try:
        return session, running_container(session, resolved.service, str(resolved))
    except BaseException:
        session.close()
        raise


def running_container(session: EngineSession, service: str, target: str) -> ContainerState:
    found = session.state.for_service(service) if session.state else []
    running = [c for c in found if c.running]
    if not running:
        raise NotRunning(f"{target} is not running ({found[0].describe() if found else 'no container'})")
    return running[0]


def restart(root: Path, targets: list[str], *, wait: float = 0, swap: SwapOptions | None = None,
            progress: Callable[[str], None] | None = None) -> list[Restarted]:
    """Restart the targets' containers one at a time, each health-gated; no commit."""
    say = progress or (lambda msg: None)
    done: list[Restarted] = []
    before = loader.load(root)
    locks = NodeLocks(root, before, [n for n, svcs, _ in selection(before, targets) if svcs], wait=wait, progress=say)
    with RepoTransaction(root, wait=wait, progress=say, node_locks=locks):  # no deploy of these nodes meanwhile
        infra = loader.load(root)  # under the lock
        for node, services, _ in selection(infra, targets):
            if not services:
                continue
            try:
                with locks.session(node) as session:
                    for svc in services:
                        target = f"{node.target}/{svc.name}"
                        containers = session.state.for_service(svc.name)
                        if not any(c.running for c in containers):
                            raise NotRunning(f"{target} is not running "
                                             f"({containers[0].describe() if containers else 'no container'})")
                        spec = container_spec(node, svc, root)
                        applier = session.applier(swap, progress=say)
                        for c in containers:
                            if not c.running:
                                continue
                            started = time.monotonic()
                            say(f"{target}: restarting {c.name}")
                            session.client.api.restart(c.id, timeout=RESTART_STOP_TIMEOUT)
                            try:
                                state = applier.wait_healthy(c.id, spec)
                            except HealthCheckFailed:
                                now = read_container(session.client, c.id)
                                raise HealthCheckFailed(f"{target}: {c.name} did not become healthy after the "
                                                        f"restart (now {now.describe()})", c.name) from None
                            done.append(Restarted(target, c.name, state.describe(), time.monotonic() - started))
                            say(f"{target}: {c.name} is {state.describe()}")
            except Exception as exc:
                raise node_failure(node, exc) from None
    return done
