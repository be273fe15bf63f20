"""status, plan and apply across nodes: the repository against what runs, one engine session per node.

Each node is worked on in its own session (connect once, read once), nodes in
parallel. A node that cannot be reached is reported as such and never stops the
others. ``apply`` runs inside the repository transaction its caller holds (for
the lock: apply changes containers, not files).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from deployer.config.compose_spec import container_spec, node_resources, start_order
from deployer.engine.apply import Hooks, SwapOptions
from deployer.engine.plan import CREATE, NONE, TIDY, Change
from deployer.engine.session import EngineSession
from deployer.errors import DeployerError, HostError
from deployer.model import Datacenter, Infrastructure, Node, Service
from deployer.ops.locks import node_session
from deployer.ops.results import AppliedChange, NodeApply, NodePlan, StatusRow
from deployer.ops.targets import node_failure, prune_changes, run_parallel, selection
from deployer.spec import ContainerSpec

#: Seconds for one engine API call while reading a node.
READ_TIMEOUT = 30


def ordered_specs(root: Path, node: Node, services: list[Service]) -> list[ContainerSpec]:
    """The container specs of the selected services, in the node's start order (depends_on first)."""
    order = {name: i for i, name in enumerate(start_order(node.services))}
    return [container_spec(node, s, root) for s in sorted(services, key=lambda s: order[s.name])]


# -- status ---------------------------------------------------------------------------


def status(root: Path, infra: Infrastructure, targets: list[str] | None, parallel: int) -> list[StatusRow]:
    chosen = [(n, svcs) for n, svcs, _ in selection(infra, targets) if svcs]
    rows: dict[str, list[StatusRow]] = {}
    run_parallel(lambda item: rows.__setitem__(item[0].target, node_status(root, *item)), chosen, parallel)
    return [row for node, _ in chosen for row in rows[node.target]]


def node_status(root: Path, node: Node, services: list[Service]) -> list[StatusRow]:
    try:
        specs = ordered_specs(root, node, services)
        with EngineSession(node, root, timeout=READ_TIMEOUT) as session:
            changes = session.plan(specs)
    except HostError as exc:
        return [StatusRow(s.target, s.image, None, None, "unreachable", False, exc.one_line()) for s in services]
    return [status_row(spec, change) for spec, change in zip(specs, changes)]


def status_row(spec: ContainerSpec, change: Change) -> StatusRow:
    """One service's status word from its plan: healthy/running, missing, stopped, unhealthy, starting, drifted;
    completed for a one-shot; a replicated service's with its count (``replicated_row``)."""
    if change.parts or spec.rollout.replicas != 1:
        return replicated_row(spec, change)
    cur = change.current
    if change.action == NONE:
        word = "completed" if spec.rollout.one_shot and cur.completed else (cur.health or "running")
        return StatusRow(change.target, spec.image, cur.name, cur.image, word, True)
    if change.action == CREATE:
        return StatusRow(change.target, spec.image, None, None, "missing", False, "no container")
    same = cur.config_hash == spec.config_hash()
    if change.action != TIDY and same and not cur.running:
        word = "stopped"
    elif change.action != TIDY and same and cur.health in ("unhealthy", "starting"):
        word = cur.health
    else:
        word = "drifted"
    return StatusRow(change.target, spec.image, cur.name, cur.image, word, False, "; ".join(change.reasons))


def replicated_row(spec: ContainerSpec, change: Change) -> StatusRow:
    """A replicated service: ``3/3`` ready of wanted; healthy/running only when every replica is."""
    ready, wanted = change.ready, change.wanted
    count = f"{ready}/{wanted}"
    current = [p.current for p in change.parts if p.current is not None and p.action != "remove"]
    first = current[0] if current else None
    images = sorted({c.image for c in current})
    running_image = images[0] if len(images) == 1 else (", ".join(images) if images else None)
    if change.action == NONE:
        if first is None:
            word = "none"  # replicas: 0, and none runs
        else:
            word = "completed" if spec.rollout.one_shot else (first.health or "running")
        return StatusRow(change.target, spec.image, first.name if first else None, running_image, word, True,
                         replicas=count)
    word = "missing" if not current else "drifted"
    return StatusRow(change.target, spec.image, first.name if first else None, running_image, word, False,
                     "; ".join(change.reasons), replicas=count)


# -- plan -----------------------------------------------------------------------------


def plan(root: Path, infra: Infrastructure, targets: list[str] | None, prune: bool, parallel: int) -> list[NodePlan]:
    chosen = selection(infra, targets)
    plans: dict[str, NodePlan] = {}
    run_parallel(lambda item: plans.__setitem__(item[0].target, plan_node(root, *item, prune=prune)), chosen, parallel)
    return [plans[node.target] for node, _, _ in chosen]


def plan_node(root: Path, node: Node, services: list[Service], whole: bool, prune: bool) -> NodePlan:
    try:
        specs = ordered_specs(root, node, services)
        with EngineSession(node, root, timeout=READ_TIMEOUT) as session:
            changes = session.plan(specs)
            if prune and whole:
                changes += prune_changes(node, session.state)
    except DeployerError as exc:
        return NodePlan(node.target, [], exc.one_line())
    return NodePlan(node.target, changes)


# -- apply ----------------------------------------------------------------------------


@contextmanager
def _leaving(session: EngineSession) -> Iterator[EngineSession]:
    """Leave a session that was entered already, however the block ends."""
    try:
        yield session
    finally:
        session.__exit__(None, None, None)


def apply(root: Path, infra: Infrastructure, targets: list[str] | None, prune: bool, parallel: int, *,
          swap: SwapOptions | None, hooks: Callable[[Datacenter, Node], Hooks | None],
          progress: Callable[[Node], Callable[[str], None]], locks=None) -> list[NodeApply]:
    chosen = selection(infra, targets)
    results: dict[str, NodeApply] = {}
    run_parallel(lambda item: results.__setitem__(
        item[0].target, apply_node(root, *item, datacenter=infra.datacenters[item[0].dc], prune=prune, swap=swap,
                                   hooks=hooks, progress=progress(item[0]), locks=locks)), chosen, parallel)
    return [results[node.target] for node, _, _ in chosen]


def apply_node(root: Path, node: Node, services: list[Service], whole: bool, *, datacenter: Datacenter, prune: bool,
               swap: SwapOptions | None, hooks: Callable[[Datacenter, Node], Hooks | None],
               progress: Callable[[str], None], locks=None) -> NodeApply:
    """Converge one node in one engine session; the first failed change skips the rest of the node."""
    result = NodeApply(node.target)
    problem = locks.problem(node) if locks is not None else None
    if problem is not None:  # its lock could not be taken (unreachable): never touched
        result.error = problem.one_line()
        return result
    try:
        node_hooks = hooks(datacenter, node)
        specs = ordered_specs(root, node, services)
        session = node_session(locks, node, root, READ_TIMEOUT).__enter__()  # the lock's, when it has one
    except DeployerError as exc:
        result.error = exc.one_line()
        return result
    with _leaving(session):  # entered once above (a second ``with session`` connected and read the node again)
        changes = session.plan(specs)
        if prune and whole:
            changes += prune_changes(node, session.state)
        applier = session.applier(swap, node_hooks, progress, guard=locks.guard(node) if locks else None,
                                  lock_id=locks.id if locks else None)  # the node locks (ops.locks)
        if any(c.action != NONE for c in changes):
            try:
                applier.ensure_resources(*node_resources(node))
            except DeployerError as exc:
                result.error = exc.one_line()
                return result
        failed = False
        for change in changes:
            if failed:
                result.items.append(AppliedChange(change.target, change.action, "skipped", "an earlier change failed"))
                continue
            if change.action == NONE:
                result.items.append(AppliedChange(change.target, change.action, "ok", "up to date"))
                continue
            progress(change.summary())
            try:
                if change.spec is not None:
                    applier.ensure_image(change.spec.image)
                outcome = applier.apply(change, session.state)
                result.items.append(AppliedChange(change.target, change.action, "ok", "; ".join(outcome.steps)))
            except Exception as exc:  # ours, or a node going away mid-apply: reported for this node only
                failed = True
                detail = exc.one_line() if isinstance(exc, DeployerError) \
                    else f"node {node.target}: {node_failure(node, exc).message}"
                result.items.append(AppliedChange(change.target, change.action, "failed", detail))
    return result
