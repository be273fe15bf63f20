"""deploy and rollback: an image onto services, health-gated, committed.

``deploy`` is a route through the layers, inside one repository transaction::

    RepoTransaction: lock -> node locks -> finish -> pull          (gitrepo.transaction, ops.locks)
      load the repository under the lock                          (config.loader.load)
      choose the services: one per node                           (ops.targets.deploy_targets)
      edit each compose text in memory -> its container spec      (config.yamledit, compose spec)
      per node, in batches (ops.rollout: --batch, --canary, --max-fail), nodes in parallel:
        EngineSession: connect, read the node once                (engine.session)
        plan the service                                          (engine.plan.plan_service)
        apply it, health-gated, Consul hooks around the switch    (engine.apply.Applier)
      stage the files of the targets that switched, commit, push  (gitrepo.transaction.commit)

The compose file is written only after the new container is healthy, so a
failed or interrupted deploy never leaves the repository claiming something
that did not happen. A crash between writing and committing is finished by
the next deployer that takes the lock (the transaction's journal).

``Deployer`` is the operations' front door for the CLI and for ``release``:
it holds the repository root, the progress callback and whether Consul is
used, and hands each operation to its module (this one, ``fleet``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deployer.config import loader, yamledit
from deployer.config.compose_spec import container_spec, node_resources
from deployer.engine.apply import SwapOptions
from deployer.engine.plan import NONE, REMOVE, Change
from deployer.engine.session import EngineSession
from deployer.errors import PartialDeploy, TargetError
from deployer.gitrepo.commit import ACTION_DEPLOY, ACTION_ROLLBACK, deployer_trailers
from deployer.gitrepo.repo import InfraRepo
from deployer.gitrepo.transaction import RepoTransaction
from deployer.imageref import ImageRef
from deployer.model import Datacenter, Infrastructure, Node, Target
from deployer.ops import fleet
from deployer.ops.rollout import Rollout, rollback_targets, run_batches
from deployer.ops.locks import NodeLocks
from deployer.ops.results import DeployResult, NodeApply, NodePlan, StatusRow, TargetResult
from deployer.ops.targets import (DEFAULT_PARALLEL, deploy_targets, discovery_hooks, node_failure, run_parallel,
                                  selection, target_progress)
from deployer.spec import ContainerSpec


@dataclass
class _Edit:
    """One target of a deploy: the compose edit and what applying it did."""

    target: Target
    node: Node
    new_node: Node
    rel: str
    old_text: str
    new_text: str
    spec: ContainerSpec
    result: TargetResult
    datacenter: Datacenter | None = None
    applied: bool = False
    exception: Exception | None = None


class Deployer:
    """Deploy, roll back, and inspect one infrastructure repository."""

    def __init__(self, root: str | Path, progress: Callable[[str], None] | None = None, consul: bool = True):
        self.root = Path(root).resolve()
        self.progress = progress or (lambda msg: None)
        self.consul = consul  # register containers in their datacenter's Consul (when it has one)
        self.locks: NodeLocks | None = None  # the node locks of the deploy under way

    # -- reading -----------------------------------------------------------------

    def load(self) -> Infrastructure:
        return loader.load(self.root)

    def repo(self) -> InfraRepo:
        return InfraRepo.open(self.root)

    def history(self, target: str | None = None, limit: int | None = None):
        prefix = str(self.load().resolve(target)) if target else None
        with self.repo() as repo:
            return repo.deploy_log(prefix, limit)

    # -- deploy and rollback ---------------------------------------------------------

    def deploy(self, image: str, targets: str | list[str], service: str | None = None, *, wait: float = 0,
               dry_run: bool = False, author: str | None = None, message: str | None = None,
               swap: SwapOptions | None = None, batch: int | tuple[int, bool] | None = None,
               parallel: int = DEFAULT_PARALLEL, rollout: Rollout | None = None) -> DeployResult:
        """Deploy ``image`` to one or more targets (dc/node, dc/node/service, or a whole dc).

        ``rollout`` says in which batches and what a failure does (``ops.rollout``); ``batch`` alone
        (a count, or (number, is_percent)) is the same as a rollout of that batch size."""
        ref = ImageRef.parse(image)
        infra = self.load()
        chosen = deploy_targets(infra, ref, [targets] if isinstance(targets, str) else list(targets), service)
        return self._deploy({t: str(ref) for t in chosen}, ACTION_DEPLOY, wait=wait, dry_run=dry_run, author=author,
                            message=message, swap=swap, parallel=parallel, rollout=_rollout(rollout, batch),
                            chosen_from=infra)

    def rollback(self, target: str | list[str] | None = None, *, steps: int = 1, to: str | None = None,
                 commit: str | None = None, wait: float = 0, dry_run: bool = False, author: str | None = None,
                 message: str | None = None, swap: SwapOptions | None = None, parallel: int = DEFAULT_PARALLEL,
                 rollout: Rollout | None = None) -> DeployResult:
        """Deploy the image each target ran before, found in git history (``ops.rollout.rollback_targets``):
        a service ``steps`` versions ago (or at commit ``to``); every target of deploy ``commit``, or of the
        latest deploy into a dc or node, to the image it had before that commit."""
        texts = [target] if isinstance(target, str) else list(target or [])
        infra = self.load()
        for text in texts:
            if commit is None and (steps != 1 or to is not None) and infra.resolve(text).service is None:
                raise TargetError(f"--steps and --to need a service: write dc/node/service (got {text!r})")
        with self.repo() as repo:
            images, undone = rollback_targets(infra, repo, texts, commit, steps=steps, to=to)
        return self._deploy(images, ACTION_ROLLBACK, rollback_to=undone, wait=wait, dry_run=dry_run,
                            author=author, message=message, swap=swap, parallel=parallel, rollout=rollout,
                            chosen_from=infra)

    def _deploy(self, images: dict[Target, str], action: str, *, rollback_to: str | None = None,
                wait: float = 0, dry_run: bool = False, author: str | None = None, message: str | None = None,
                swap: SwapOptions | None = None, parallel: int = DEFAULT_PARALLEL,
                rollout: Rollout | None = None, chosen_from: Infrastructure | None = None) -> DeployResult:
        """``chosen_from``: the load the targets were chosen from (before the lock), which also names the
        nodes to lock; the repository is read again under the lock for the edit itself."""
        started = time.monotonic()
        rollout = rollout or Rollout()
        shown = set(images.values())
        result = DeployResult(action, shown.pop() if len(shown) == 1 else "(various)", dry_run=dry_run,
                              rollback_to=rollback_to)
        locks = None if dry_run else self.node_locks([(t.dc, t.node) for t in images], wait, chosen_from,
                                                     parallel=parallel)
        with RepoTransaction(self.root, wait=wait, dry_run=dry_run, progress=self.progress, node_locks=locks) as tx:
            infra = self.load()  # under the locks, after the pull: someone may have deployed meanwhile
            edits = [self._edit(infra, t, image, tx) for t, image in images.items()]
            self.locks = locks
            result.targets = [e.result for e in edits]

            def work(group: list[_Edit]) -> None:
                run_parallel(lambda e: self._apply_edit(e, dry_run, swap, action), group, parallel)

            if dry_run:
                work(edits)
            else:
                run = run_batches(edits, rollout, work, lambda e: e.result.error is not None, say=self.progress)
                result.stopped = run.stopped
                if run.undo:
                    switched = [e for e in edits if e.applied and e.result.change is not None
                                and e.result.change.action != NONE]
                    run_parallel(lambda e: self._roll_back_edit(e, swap), switched, parallel)
            done = [e for e in edits if e.applied and e.new_text != e.old_text and not e.result.rolled_back]
            if done and not dry_run:
                result.commit = self._commit(tx, done, edits, action, rollback_to, message, author)
                for e in done:
                    e.result.committed = True
            result.seconds = time.monotonic() - started
        failed = result.failed
        if failed:
            if len(edits) == 1:
                raise edits[0].exception
            skipped = [e.result.target for e in edits if not e.applied and not e.result.error]
            back = [e.result.target for e in edits if e.result.rolled_back]
            stuck = [f"{e.result.target} ({e.result.rollback_error})" for e in edits if e.result.rollback_error]
            raise PartialDeploy(result, f"{len(failed)} of {len(edits)} targets failed: "
                                + "; ".join(f"{t.target}: {t.error}" for t in failed)
                                + (f"; not attempted: {', '.join(skipped)}" if skipped else "")
                                + (f"; rolled back: {', '.join(back)}" if back else "")
                                + (f"; could not roll back: {', '.join(stuck)}" if stuck else "")
                                + (f"; committed the ones that run {result.image} ({result.commit[:7]})"
                                   if result.commit else "; nothing committed"))
        return result

    def _edit(self, infra: Infrastructure, target: Target, image: str, tx: RepoTransaction) -> _Edit:
        """The compose edit for one target, in memory, and the container spec it gives."""
        node = infra.node(target.dc, target.node)
        rel = node.compose_path or f"{node.path}/{loader.COMPOSE_FILES[0]}"
        existing = node.services.get(target.service)
        old_image = existing.image if existing else None
        tx.require_clean(rel)
        path = self.root / rel
        old_text = path.read_bytes().decode("utf-8") if path.exists() else "services: {}\n"  # CRLF stays CRLF
        if existing is None:
            new_text = yamledit.add_service(old_text, target.service, image, path=rel)
        elif old_image != image:
            new_text = yamledit.set_service_image(old_text, target.service, image, path=rel)
        else:
            new_text = old_text
        new_node = loader.with_compose_text(self.root, node, new_text)
        spec = container_spec(new_node, new_node.services[target.service], self.root)
        diff = yamledit.yaml_diff(old_text, new_text, rel) if new_text != old_text else ""
        return _Edit(target, node, new_node, rel, old_text, new_text, spec,
                     TargetResult(str(target), old_image, diff=diff, image=image), infra.datacenters[target.dc])

    def _apply_edit(self, edit: _Edit, dry_run: bool, swap: SwapOptions | None, action: str = ACTION_DEPLOY) -> None:
        """Plan the edited service on its node and, unless a dry run, apply it over one engine session."""
        try:
            problem = self.locks.problem(edit.node) if self.locks and not dry_run else None
            if problem is not None:
                raise problem  # its lock could not be taken (unreachable): never touched
            hooks = None if dry_run else self._hooks(edit.datacenter, edit.new_node)  # labels as deployed
            with self._session(edit.node) as session:  # the one its engine lock was taken over
                have = session.image_id(edit.spec.image)
                change = session.plan([edit.spec])[0]
                edit.result.change = change
                if dry_run:
                    return
                locks = self.locks
                applier = session.applier(swap, hooks, self.node_progress(edit.node),
                                          guard=locks.guard(edit.node) if locks else None,
                                          lock_id=locks.id if locks else None)
                if change.action != NONE:
                    if have is None:
                        needed_by = "rollback" if action == ACTION_ROLLBACK else None
                        applier.ensure_image(edit.spec.image, needed_by=needed_by)
                    applier.ensure_resources(*node_resources(edit.new_node))
                outcome = applier.apply(change, session.state)
                edit.result.steps = outcome.steps
                edit.result.image_id = outcome.container.image_id if outcome.container else None
                edit.applied = True
        except Exception as exc:  # ours, or the engine refused or went away: one line naming the node
            edit.exception = node_failure(edit.node, exc)
            edit.result.error = edit.exception.one_line()

    def _roll_back_edit(self, edit: _Edit, swap: SwapOptions | None) -> None:
        """Switch a target this command updated back to what it ran (``--on-failure rollback``)."""
        svc = edit.target.service
        if svc in edit.node.services:
            back = _Edit(edit.target, edit.new_node, edit.node, edit.rel, edit.new_text, edit.old_text,
                         container_spec(edit.node, edit.node.services[svc], self.root),
                         TargetResult(str(edit.target), edit.result.image), edit.datacenter)
            self.node_progress(edit.node)(f"rolling back to {edit.result.previous_image}")
            self._apply_edit(back, False, swap, ACTION_ROLLBACK)
            error = back.result.error
            edit.result.steps += [f"rolled back: {step}" for step in back.result.steps]
        else:  # the deploy added this service: rolling back removes its container
            error = self._remove_added(edit)
        if error is None:
            edit.result.rolled_back = True
        else:
            edit.result.rollback_error = error

    def _remove_added(self, edit: _Edit) -> str | None:
        try:
            with self._session(edit.node) as session:
                hooks = self._hooks(edit.datacenter, edit.new_node)
                locks = self.locks
                applier = session.applier(None, hooks, self.node_progress(edit.node),
                                          guard=locks.guard(edit.node) if locks else None,
                                          lock_id=locks.id if locks else None)
                for c in session.state.managed:
                    if c.service == edit.target.service:
                        change = Change(str(edit.target), REMOVE, ["rolled back: new in this deploy"], None, c, [])
                        edit.result.steps += applier.apply(change, session.state).steps
            return None
        except Exception as exc:
            return node_failure(edit.node, exc).one_line()

    def _commit(self, tx: RepoTransaction, done: list[_Edit], edits: list[_Edit], action: str,
                rollback_to: str | None, message: str | None, author: str | None) -> str:
        olds = {e.result.previous_image for e in done}
        old = olds.pop() if len(olds) == 1 else "(various)"
        news = {e.result.image for e in done}
        image = news.pop() if len(news) == 1 else None
        subject = f"{action} {', '.join(str(e.target) for e in done)}: {old or '(new service)'} -> {image or '(various)'}"
        trailers = deployer_trailers(action, [str(e.target) for e in done], image=image,
                                     images=[] if image else [e.result.image for e in done],
                                     previous_images=[e.result.previous_image for e in done],
                                     image_ids=[e.result.image_id for e in done if e.result.image_id],
                                     rollback_to=rollback_to,
                                     failed=[str(e.target) for e in edits if e.result.error],
                                     rolled_back=[str(e.target) for e in edits if e.result.rolled_back])
        for e in done:
            tx.stage(e.rel, e.new_text)
        return tx.commit(subject, trailers, reason=message, author=author, world_changed=True).sha

    # -- fleet: status, plan, apply (ops.fleet) --------------------------------------

    def status(self, target: str | list[str] | None = None, parallel: int = DEFAULT_PARALLEL) -> list[StatusRow]:
        targets = [target] if isinstance(target, str) else target
        return fleet.status(self.root, self.load(), targets, parallel)

    def plan(self, targets: list[str] | None = None, prune: bool = False,
             parallel: int = DEFAULT_PARALLEL) -> list[NodePlan]:
        """What apply would do on every selected node; unreachable nodes are reported, not fatal."""
        return fleet.plan(self.root, self.load(), targets, prune, parallel)

    def apply(self, targets: list[str] | None = None, prune: bool = False, parallel: int = DEFAULT_PARALLEL, *,
              wait: float = 0, swap: SwapOptions | None = None) -> list[NodeApply]:
        """Converge the selected nodes to the repository, health-gated, nodes in parallel."""
        before = self.load()
        nodes = [(n.dc, n.name) for n, _, _ in selection(before, targets)]
        locks = self.node_locks(nodes, wait, before, parallel=parallel)
        with RepoTransaction(self.root, wait=wait, progress=self.progress, node_locks=locks):
            infra = self.load()
            return fleet.apply(self.root, infra, targets, prune, parallel, swap=swap,
                               hooks=lambda dc, node: self._hooks(dc, node), progress=self.node_progress,
                               locks=locks)

    # -- helpers ---------------------------------------------------------------------

    def node_locks(self, nodes: list[tuple[str, str]], wait: float, infra: Infrastructure | None = None, *,
                   parallel: int = DEFAULT_PARALLEL) -> NodeLocks:
        """The locks of these nodes (Consul or engine, ops.locks), for the transaction to take before the pull;
        tried ``parallel`` at a time."""
        infra = infra or self.load()
        return NodeLocks(self.root, infra, [infra.node(dc, name) for dc, name in nodes], wait=wait,
                         consul=self.consul, progress=self.progress, parallel=parallel)

    def _session(self, node: Node) -> EngineSession:
        """The node's engine session: under node locks the one its lock holds open (ops.locks), else its own."""
        return self.locks.session(node) if self.locks is not None else EngineSession(node, self.root)

    def _hooks(self, datacenter: Datacenter | None, node: Node) -> Any:
        return discovery_hooks(datacenter, node, self.consul, self.node_progress(node))

    def node_progress(self, node: Node) -> Callable[[str], None]:
        return target_progress(self.progress, node.target)


def _rollout(rollout: Rollout | None, batch: int | tuple[int, bool] | None) -> Rollout:
    if rollout is not None:
        return rollout
    return Rollout(batch=(batch, False) if isinstance(batch, int) else batch)
