"""The operations a user asks for. The CLI is a thin shell over this module.

``deploy`` reads top to bottom:

    load the repo -> match the service -> lock -> edit the compose text (in memory)
    -> container spec -> read the engine -> plan -> apply (health-gated)
    -> write the file and commit it

The compose file is written only after the new container is healthy, so a
failed or interrupted deploy never leaves the repository claiming something
that did not happen. A crash between writing and committing is finished by
the next deployer that takes the lock (see ``_recover``).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from deployer.config import loader
from deployer.errors import PartialDeploy, RepoError, ServiceMatchError, TargetError
from deployer.model import Infrastructure, Node, Service, Target
from deployer.engine.plan import NONE, Change

ACTION_DEPLOY = "deploy"
ACTION_ROLLBACK = "rollback"
DEFAULT_PARALLEL = 8  # nodes worked on at once


@dataclass
class TargetResult:
    """What a deploy did (or would do) to one service on one node."""

    target: str
    previous_image: str | None
    change: Change | None = None
    steps: list[str] = field(default_factory=list)
    image_id: str | None = None
    diff: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "previous_image": self.previous_image,
            "image_id": self.image_id,
            "container_action": self.change.action if self.change else None,
            "reasons": self.change.reasons if self.change else [],
            "steps": self.steps,
            "error": self.error,
        }


@dataclass
class DeployResult:
    action: str
    image: str
    targets: list[TargetResult] = field(default_factory=list)
    commit: str | None = None  # None when nothing was committed
    dry_run: bool = False
    rollback_to: str | None = None
    seconds: float = 0.0

    # The single-target view, which is what most deploys are.
    @property
    def target(self) -> str:
        return ", ".join(t.target for t in self.targets)

    @property
    def previous_image(self) -> str | None:
        return self.targets[0].previous_image if self.targets else None

    @property
    def change(self) -> Change | None:
        return self.targets[0].change if len(self.targets) == 1 else None

    @property
    def steps(self) -> list[str]:
        return [step for t in self.targets for step in t.steps]

    @property
    def diff(self) -> str:
        return "".join(t.diff for t in self.targets)

    @property
    def failed(self) -> list[TargetResult]:
        return [t for t in self.targets if t.error]

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "image": self.image,
            "commit": self.commit,
            "dry_run": self.dry_run,
            "rollback_to": self.rollback_to,
            "seconds": round(self.seconds, 3),
            "targets": [t.to_json() for t in self.targets],
        }


@dataclass
class StatusRow:
    target: str
    image: str  # written in the repo
    container: str | None
    running_image: str | None
    state: str  # healthy | running | drifted | missing | stopped | unhealthy | starting | unreachable
    match: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class NodePlan:
    node: str
    changes: list[Change]
    error: str | None = None

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.changes_anything]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "error": self.error, "changes": [c.to_json() for c in self.changes]}


@dataclass
class AppliedChange:
    target: str
    action: str
    status: str  # ok | failed | skipped
    detail: str = ""


@dataclass
class NodeApply:
    node: str
    items: list[AppliedChange] = field(default_factory=list)
    error: str | None = None  # the node could not be worked on at all

    @property
    def ok(self) -> bool:
        return self.error is None and all(i.status == "ok" for i in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "ok": self.ok, "error": self.error, "changes": [i.__dict__ for i in self.items]}


def owner_info(command: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def pick_service(node: Node, image_repository: str, familiar: str, explicit: str | None) -> tuple[str, bool]:
    """The service an image is deployed to: (name, is_new)."""
    from deployer.imageref import ImageRef

    if explicit:
        return explicit, explicit not in node.services
    matches = []
    for svc in node.services.values():
        try:
            ref = ImageRef.parse(svc.image)
        except Exception:
            continue
        if ref.repository == image_repository or ref.familiar_repository == familiar:
            matches.append(svc.name)
    if len(matches) == 1:
        return matches[0], False
    listing = ", ".join(f"{s.name} ({s.image})" for s in node.services.values()) or "none"
    if not matches:
        raise ServiceMatchError(
            f"no service on {node.target} runs {image_repository}; services there: {listing}. "
            "Pick one with --service NAME (a new name adds a service)"
        )
    raise ServiceMatchError(
        f"{len(matches)} services on {node.target} run {image_repository}: {', '.join(sorted(matches))}; "
        "pick one with --service NAME"
    )


class Deployer:
    """Deploy, roll back, and inspect one infrastructure repository."""

    def __init__(self, root: str | Path, progress: Callable[[str], None] | None = None, consul: bool = True):
        self.root = Path(root).resolve()
        self.progress = progress or (lambda msg: None)
        self.consul = consul  # register containers in their datacenter's Consul (when it has one)

    # -- reading -----------------------------------------------------------------

    def load(self) -> Infrastructure:
        return loader.load(self.root)

    def repo(self):
        from deployer.gitrepo.history import InfraRepo

        return InfraRepo.open(self.root)

    def history(self, target: str | None = None, limit: int | None = None):
        prefix = None
        if target:
            prefix = str(self.load().resolve(target))
        with self.repo() as repo:
            return repo.deploy_log(prefix, limit)

    # -- deploy --------------------------------------------------------------------

    def deploy(self, image: str, targets: str | list[str], service: str | None = None, *, wait: float = 0,
               dry_run: bool = False, author: str | None = None, message: str | None = None,
               settle: float | None = None, health_timeout: float | None = None,
               batch: int | None = None, parallel: int = DEFAULT_PARALLEL) -> DeployResult:
        """Deploy ``image`` to one or more targets (dc/node, dc/node/service, or a whole dc)."""
        from deployer.imageref import ImageRef

        ref = ImageRef.parse(image)
        infra = self.load()
        chosen = self._deploy_targets(infra, ref, [targets] if isinstance(targets, str) else list(targets), service)
        return self._deploy(chosen, str(ref), ACTION_DEPLOY, wait=wait, dry_run=dry_run, author=author,
                            message=message, settle=settle, health_timeout=health_timeout, batch=batch,
                            parallel=parallel)

    @staticmethod
    def _deploy_targets(infra: Infrastructure, ref, texts: list[str], service: str | None) -> list[Target]:
        chosen: list[Target] = []
        for text in texts:
            resolved = infra.resolve(text)
            if resolved.service and service and resolved.service != service:
                raise TargetError(f"target {text} names service {resolved.service} but --service says {service}")
            if resolved.node is None:  # a whole datacenter: every node that runs the image's repository
                nodes = list(infra.datacenters[resolved.dc].nodes.values())
                found = []
                for node in nodes:
                    try:
                        name, new = pick_service(node, ref.repository, ref.familiar_repository, service)
                    except ServiceMatchError:
                        continue
                    if not new:
                        found.append(Target(node.dc, node.name, name))
                if not found:
                    raise ServiceMatchError(f"no node in {resolved.dc} runs {service or ref.repository}")
                chosen.extend(found)
                continue
            node = infra.node(resolved.dc, resolved.node)
            name, _ = pick_service(node, ref.repository, ref.familiar_repository, service or resolved.service)
            chosen.append(Target(node.dc, node.name, name))
        unique = list(dict.fromkeys(chosen))
        per_node = {(t.dc, t.node) for t in unique}
        if len(per_node) != len(unique):
            raise TargetError("one deploy changes one service per node; deploy the others separately")
        return unique

    def rollback(self, target: str, *, steps: int = 1, to: str | None = None, wait: float = 0,
                 dry_run: bool = False, author: str | None = None, message: str | None = None,
                 settle: float | None = None, health_timeout: float | None = None) -> DeployResult:
        infra = self.load()
        resolved = infra.resolve(target)
        if resolved.service is None:
            raise TargetError(f"rollback needs a service: write dc/node/service (got {target!r})")
        svc = infra.node(resolved.dc, resolved.node).services[resolved.service]
        with self.repo() as repo:
            image, commit = repo.resolve_rollback(
                svc.location.path, svc.name, svc.image, target=svc.target, steps=steps, to_rev=to
            )
        return self._deploy([resolved], image, ACTION_ROLLBACK, rollback_to=commit, wait=wait, dry_run=dry_run,
                            author=author, message=message, settle=settle, health_timeout=health_timeout)

    def _deploy(self, targets: list[Target], image: str, action: str, *, rollback_to: str | None = None,
                wait: float = 0, dry_run: bool = False, author: str | None = None, message: str | None = None,
                settle: float | None = None, health_timeout: float | None = None, batch: int | None = None,
                parallel: int = DEFAULT_PARALLEL) -> DeployResult:
        import time

        from deployer.gitrepo.lock import DeployLock

        started = time.monotonic()
        if not dry_run:
            self._refuse_project_repo()
        result = DeployResult(action, image, dry_run=dry_run, rollback_to=rollback_to)
        with self.repo() as repo, _maybe(DeployLock(Path(repo.git_dir), owner_info(" ".join(["deployer", *sys.argv[1:]]))),
                                         not dry_run, wait) as lock:
            remote = not dry_run and repo.has_remote()
            if not dry_run:
                self._recover(repo, lock)
                if remote:
                    self.progress("bringing the repository up to date")
                    repo.sync()
            infra = self.load()  # again, under the lock: someone may have deployed meanwhile
            edits = [self._edit(infra, t, image, repo, dry_run) for t in targets]
            result.targets = [e.result for e in edits]
            size = batch or len(edits)
            for i in range(0, len(edits), size):
                group = edits[i:i + size]
                _run_parallel(lambda e: self._apply_edit(e, dry_run, settle, health_timeout), group, parallel)
                if any(e.result.error for e in group):
                    break  # stop at the first failed batch
            if not dry_run:
                done = [e for e in edits if e.applied and e.new_text != e.old_text]
                if done:
                    result.commit = self._commit(repo, lock, done, action, image, rollback_to, message, author,
                                                 push=remote)
            result.seconds = time.monotonic() - started
        failed = result.failed
        if failed:
            if len(edits) == 1:
                raise edits[0].exception
            skipped = [e.result.target for e in edits if not e.applied and not e.result.error]
            raise PartialDeploy(result, f"{len(failed)} of {len(edits)} targets failed: "
                                + "; ".join(f"{t.target}: {t.error}" for t in failed)
                                + (f"; not attempted: {', '.join(skipped)}" if skipped else "")
                                + (f"; committed the ones that succeeded ({result.commit[:7]})" if result.commit else
                                   "; nothing committed"))
        return result

    def _edit(self, infra: Infrastructure, target: Target, image: str, repo, dry_run: bool) -> "_Edit":
        from deployer.config import compose_spec
        from deployer.config import yamledit

        node = infra.node(target.dc, target.node)
        rel = node.compose_path or f"{node.path}/{loader.COMPOSE_FILES[0]}"
        existing = node.services.get(target.service)
        old_image = existing.image if existing else None
        if not dry_run:
            repo.require_clean(rel)
        old_text = _read_text(self.root / rel) if (self.root / rel).exists() else "services: {}\n"
        if existing is None:
            new_text = yamledit.add_service(old_text, target.service, image, path=rel)
        elif old_image != image:
            new_text = yamledit.set_service_image(old_text, target.service, image, path=rel)
        else:
            new_text = old_text
        new_node = loader.with_compose_text(self.root, node, new_text)
        spec = compose_spec.container_spec(new_node, new_node.services[target.service], self.root)
        diff = yamledit.yaml_diff(old_text, new_text, rel) if new_text != old_text else ""
        return _Edit(target, node, new_node, rel, old_text, new_text, spec,
                     TargetResult(str(target), old_image, diff=diff), infra.datacenters[target.dc])

    def _apply_edit(self, edit: "_Edit", dry_run: bool, settle: float | None, health_timeout: float | None) -> None:
        from deployer.config import compose_spec
        from deployer.engine.apply import DEFAULT_SETTLE, Applier
        from deployer.errors import DeployerError
        from deployer.engine.connect import connect
        from deployer.engine.plan import plan_service
        from deployer.engine.state import image_id, read_node

        progress = self._node_progress(edit.node)
        try:
            hooks = None if dry_run else self._discovery_hooks(edit.datacenter, edit.new_node)  # labels as deployed
            client = connect(edit.node, self.root)
            try:
                state = read_node(client, edit.node.dc, edit.node.name)
                have = image_id(client, edit.spec.image)
                change = plan_service(edit.spec, state.for_service(edit.target.service), have)
                edit.result.change = change
                if dry_run:
                    return
                applier = Applier(client, settle=DEFAULT_SETTLE if settle is None else settle,
                                  health_timeout=health_timeout, hooks=hooks, progress=progress)
                if change.action != NONE:
                    if have is None:
                        applier.ensure_image(edit.spec.image)
                    applier.ensure_resources(*compose_spec.node_resources(edit.new_node))
                outcome = applier.apply(change, state)
                edit.result.steps = outcome.steps
                edit.result.image_id = outcome.container.image_id if outcome.container else None
                edit.applied = True
            finally:
                client.close()
        except DeployerError as exc:
            edit.exception = exc
            edit.result.error = exc.one_line()
        except Exception as exc:  # the engine refused or went away: one line naming the node
            from deployer.errors import HostError
            from deployer.engine.connect import describe

            edit.exception = HostError(edit.node.target, edit.node.docker, describe(exc))
            edit.result.error = edit.exception.one_line()

    def _commit(self, repo, lock, done: list["_Edit"], action: str, image: str, rollback_to: str | None,
                message: str | None, author: str | None, push: bool) -> str:
        from deployer.gitrepo import history as h
        from deployer.gitrepo.history import atomic_write

        olds = {e.result.previous_image for e in done}
        old = olds.pop() if len(olds) == 1 else "(various)"
        subject = f"{action} {', '.join(str(e.target) for e in done)}: {old or '(new service)'} -> {image}"
        trailers: list[tuple[str, str]] = [(h.TRAILER_ACTION, action)]
        trailers += [(h.TRAILER_TARGET, str(e.target)) for e in done]
        trailers.append((h.TRAILER_IMAGE, image))
        trailers += [(h.TRAILER_PREVIOUS_IMAGE, e.result.previous_image or "none") for e in done]
        ids = list(dict.fromkeys(e.result.image_id for e in done if e.result.image_id))
        trailers += [(h.TRAILER_IMAGE_ID, i) for i in ids]
        if rollback_to:
            trailers.append((h.TRAILER_ROLLBACK_TO, rollback_to))
        lock.journal_write({"files": [{"file": e.rel, "sha256": _sha(e.new_text)} for e in done],
                            "subject": subject, "message": message, "trailers": trailers, "author": author})
        for e in done:
            atomic_write(self.root / e.rel, e.new_text.encode("utf-8"))
        sha = repo.commit_paths([e.rel for e in done], _message(subject, message), trailers, author)
        lock.journal_clear()
        if push:
            self.progress("pushing the deploy commit")
            sha = repo.push_with_retry() or sha  # a rebase on push gives the commit a new sha
        return sha

    def _recover(self, repo, lock) -> None:
        """Finish the commit of a deployer that died after writing its files and before committing."""
        journal = lock.journal_read()
        if not journal:
            return
        files = journal.get("files") or []
        written = all((self.root / f["file"]).exists() and _sha(_read_text(self.root / f["file"])) == f["sha256"]
                      for f in files)
        if files and written and any(repo.is_dirty(f["file"]) for f in files):
            self.progress(f"finishing an interrupted deploy: committing {', '.join(f['file'] for f in files)}")
            repo.commit_paths([f["file"] for f in files], _message(journal["subject"], journal.get("message")),
                              [tuple(t) for t in journal["trailers"]], journal.get("author"))
        lock.journal_clear()

    def _discovery_hooks(self, datacenter, node: Node):
        """Consul registration around container switches, when the node's datacenter names a Consul.

        Consul must answer before any container is touched (``--no-consul`` skips it)."""
        if not self.consul or datacenter is None or not datacenter.consul:
            return None
        from deployer.discovery.registration import deploy_hooks

        return deploy_hooks(datacenter, node, self.root, progress=self._node_progress(node))

    def _node_progress(self, node: Node) -> Callable[[str], None]:
        return lambda msg: self.progress(f"{node.target}: {msg}")

    def _refuse_project_repo(self) -> None:
        setup = self.root / "setup.cfg"
        if setup.exists() and "name = deployer" in setup.read_text(encoding="utf-8", errors="replace") \
                and (self.root / "deployer" / "ops").is_dir():
            raise RepoError(f"{self.root} is the deployer project itself; its datacenters/ is an example. "
                            "Make a repository of your own with 'deployer init DIR --example'")

    # -- fleet: status, plan, apply ------------------------------------------------

    def _selection(self, infra: Infrastructure, targets: list[str] | None) -> list[tuple[Node, list[Service], bool]]:
        """(node, its selected services, whether the whole node was selected) for the targets, in order."""
        if not targets:
            return [(n, [n.services[k] for k in sorted(n.services)], True) for n in infra.nodes()]
        picked: dict[str, tuple[Node, dict[str, Service], bool]] = {}
        for text in targets:
            resolved = infra.resolve(text)
            for node in infra.select_nodes(resolved):
                whole = resolved.service is None
                entry = picked.setdefault(node.target, (node, {}, False))
                services = {s.name: s for s in infra.select(resolved) if s.dc == node.dc and s.node == node.name}
                entry[1].update(services)
                picked[node.target] = (node, entry[1], entry[2] or whole)
        order = {n.target: i for i, n in enumerate(infra.nodes())}
        return [(n, [svcs[k] for k in sorted(svcs)], whole)
                for n, svcs, whole in sorted(picked.values(), key=lambda e: order[e[0].target])]

    def status(self, target: str | list[str] | None = None, parallel: int = DEFAULT_PARALLEL) -> list[StatusRow]:
        infra = self.load()
        targets = [target] if isinstance(target, str) else target
        selection = [(n, svcs) for n, svcs, _ in self._selection(infra, targets) if svcs]
        rows: dict[str, list[StatusRow]] = {}
        _run_parallel(lambda item: rows.__setitem__(item[0].target, self._node_status(*item)), selection, parallel)
        return [row for node, _ in selection for row in rows[node.target]]

    def _read_node(self, node: Node, services: list[Service]):
        """Connect, read the engine, and plan every selected service. Returns (client, state, specs, changes)."""
        from deployer.config import compose_spec
        from deployer.engine.connect import connect
        from deployer.engine.plan import plan_service
        from deployer.engine.state import image_id, read_node

        client = connect(node, self.root, timeout=30)
        try:
            state = read_node(client, node.dc, node.name)
            order = {name: i for i, name in enumerate(compose_spec.start_order(node.services))}
            specs = [compose_spec.container_spec(node, s, self.root) for s in sorted(services, key=lambda s: order[s.name])]
            ids: dict[str, str | None] = {}
            for spec in specs:
                if spec.image not in ids:
                    ids[spec.image] = image_id(client, spec.image)
            changes = [plan_service(spec, state.for_service(spec.service), ids[spec.image]) for spec in specs]
            return client, state, specs, changes
        except BaseException:
            client.close()
            raise

    def _node_status(self, node: Node, services: list[Service]) -> list[StatusRow]:
        from deployer.errors import HostError
        from deployer.engine.plan import CREATE, TIDY

        try:
            client, _, specs, changes = self._read_node(node, services)
        except HostError as exc:
            return [StatusRow(s.target, s.image, None, None, "unreachable", False, exc.message) for s in services]
        client.close()
        rows = []
        for spec, change in zip(specs, changes):
            cur = change.current
            if change.action == NONE:
                rows.append(StatusRow(change.target, spec.image, cur.name, cur.image, cur.health or "running", True))
            elif change.action == CREATE:
                rows.append(StatusRow(change.target, spec.image, None, None, "missing", False, "no container"))
            else:
                same = cur.config_hash == spec.config_hash()
                if change.action != TIDY and same and not cur.running:
                    word = "stopped"
                elif change.action != TIDY and same and cur.health in ("unhealthy", "starting"):
                    word = cur.health
                else:
                    word = "drifted"
                rows.append(StatusRow(change.target, spec.image, cur.name, cur.image, word, False,
                                      "; ".join(change.reasons)))
        return rows

    def plan(self, targets: list[str] | None = None, prune: bool = False,
             parallel: int = DEFAULT_PARALLEL) -> list[NodePlan]:
        """What apply would do on every selected node; unreachable nodes are reported, not fatal."""
        infra = self.load()
        selection = self._selection(infra, targets)
        plans: dict[str, NodePlan] = {}
        _run_parallel(lambda item: plans.__setitem__(item[0].target, self._plan_node(*item, prune=prune)),
                      selection, parallel)
        return [plans[node.target] for node, _, _ in selection]

    def _plan_node(self, node: Node, services: list[Service], whole: bool, prune: bool) -> NodePlan:
        from deployer.errors import DeployerError
        from deployer.engine.plan import REMOVE

        try:
            client, state, _, changes = self._read_node(node, services)
        except DeployerError as exc:
            return NodePlan(node.target, [], exc.one_line())
        client.close()
        if prune and whole:
            written = set(node.services)
            for c in state.managed:
                if c.service not in written:
                    changes.append(Change(f"{node.target}/{c.service}", REMOVE, ["no longer in the repository"],
                                          None, c, []))
        return NodePlan(node.target, changes)

    def apply(self, targets: list[str] | None = None, prune: bool = False, parallel: int = DEFAULT_PARALLEL, *,
              wait: float = 0, settle: float | None = None, health_timeout: float | None = None) -> list[NodeApply]:
        """Converge the selected nodes to the repository, health-gated, nodes in parallel."""
        from deployer.gitrepo.lock import DeployLock

        with self.repo() as repo, _maybe(DeployLock(Path(repo.git_dir), owner_info(" ".join(["deployer", *sys.argv[1:]]))),
                                         True, wait) as lock:
            self._recover(repo, lock)
            if repo.has_remote():
                repo.sync()
            infra = self.load()
            selection = self._selection(infra, targets)
            results: dict[str, NodeApply] = {}
            _run_parallel(lambda item: results.__setitem__(
                item[0].target, self._apply_node(*item, datacenter=infra.datacenters[item[0].dc], prune=prune,
                                                 settle=settle, health_timeout=health_timeout)),
                selection, parallel)
            return [results[node.target] for node, _, _ in selection]

    def _apply_node(self, node: Node, services: list[Service], whole: bool, *, datacenter, prune: bool,
                    settle: float | None, health_timeout: float | None) -> NodeApply:
        from deployer.config import compose_spec
        from deployer.engine.apply import DEFAULT_SETTLE, Applier
        from deployer.errors import DeployerError
        from deployer.engine.plan import REMOVE

        result = NodeApply(node.target)
        progress = self._node_progress(node)
        try:
            hooks = self._discovery_hooks(datacenter, node)
            client, state, _, changes = self._read_node(node, services)
        except DeployerError as exc:
            result.error = exc.one_line()
            return result
        try:
            if prune and whole:
                for c in state.managed:
                    if c.service not in node.services:
                        changes.append(Change(f"{node.target}/{c.service}", REMOVE, ["no longer in the repository"],
                                              None, c, []))
            applier = Applier(client, settle=DEFAULT_SETTLE if settle is None else settle,
                              health_timeout=health_timeout, hooks=hooks, progress=progress)
            if any(c.action != NONE for c in changes):
                try:
                    applier.ensure_resources(*compose_spec.node_resources(node))
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
                    outcome = applier.apply(change, state)
                    result.items.append(AppliedChange(change.target, change.action, "ok", "; ".join(outcome.steps)))
                except DeployerError as exc:
                    failed = True
                    result.items.append(AppliedChange(change.target, change.action, "failed", exc.one_line()))
                except Exception as exc:  # a node going away mid-apply: report it for this node only
                    failed = True
                    from deployer.engine.connect import describe

                    result.items.append(AppliedChange(change.target, change.action, "failed",
                                                      f"node {node.target}: {describe(exc)}"))
        finally:
            client.close()
        return result

@dataclass
class _Edit:
    """One target of a deploy: the compose edit and what applying it did."""

    target: Target
    node: Node
    new_node: Node
    rel: str
    old_text: str
    new_text: str
    spec: Any
    result: TargetResult
    datacenter: Any = None
    applied: bool = False
    exception: Exception | None = None


def _run_parallel(work: Callable[[Any], None], items: list, parallel: int) -> None:
    """Run ``work`` over items, at most ``parallel`` at a time; exceptions propagate."""
    if len(items) <= 1 or parallel <= 1:
        for item in items:
            work(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()


class _maybe:
    """Take the lock unless this is a dry run."""

    def __init__(self, lock, enabled: bool, wait: float):
        self.lock, self.enabled, self.wait = lock, enabled, wait

    def __enter__(self):
        if self.enabled:
            self.lock.acquire(wait=self.wait)
        return self.lock

    def __exit__(self, *exc):
        if self.enabled:
            self.lock.release()
        return False


def _read_text(path: Path) -> str:
    """The file's text with its line endings as they are (CRLF stays CRLF)."""
    return path.read_bytes().decode("utf-8")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _message(subject: str, reason: str | None) -> str:
    return subject if not reason else f"{subject}\n\n{reason.strip()}"
