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

from deployer import loader
from deployer.errors import RepoError, ServiceMatchError, TargetError
from deployer.model import Infrastructure, Node, Service, Target
from deployer.plan import NONE, Change

ACTION_DEPLOY = "deploy"
ACTION_ROLLBACK = "rollback"


@dataclass
class DeployResult:
    action: str
    target: str
    previous_image: str | None
    image: str
    image_id: str | None = None
    commit: str | None = None  # None when nothing was committed
    change: Change | None = None
    steps: list[str] = field(default_factory=list)
    diff: str = ""
    dry_run: bool = False
    rollback_to: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "previous_image": self.previous_image,
            "image": self.image,
            "image_id": self.image_id,
            "commit": self.commit,
            "container_action": self.change.action if self.change else None,
            "reasons": self.change.reasons if self.change else [],
            "steps": self.steps,
            "dry_run": self.dry_run,
            "rollback_to": self.rollback_to,
            "seconds": round(self.seconds, 3),
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

    def __init__(self, root: str | Path, progress: Callable[[str], None] | None = None):
        self.root = Path(root).resolve()
        self.progress = progress or (lambda msg: None)

    # -- reading -----------------------------------------------------------------

    def load(self) -> Infrastructure:
        return loader.load(self.root)

    def repo(self):
        from deployer.history import InfraRepo

        return InfraRepo.open(self.root)

    def history(self, target: str | None = None, limit: int | None = None):
        prefix = None
        if target:
            prefix = str(self.load().resolve(target))
        with self.repo() as repo:
            return repo.deploy_log(prefix, limit)

    # -- deploy --------------------------------------------------------------------

    def deploy(self, image: str, target: str, service: str | None = None, *, wait: float = 0,
               dry_run: bool = False, author: str | None = None, message: str | None = None,
               settle: float | None = None, health_timeout: float | None = None) -> DeployResult:
        from deployer.imageref import ImageRef

        ref = ImageRef.parse(image)
        infra = self.load()
        resolved = infra.resolve(target)
        if resolved.node is None:
            raise TargetError(f"deploy needs a node: {target!r} is a datacenter; write {resolved.dc}/NODE")
        node = infra.node(resolved.dc, resolved.node)
        if resolved.service and service and resolved.service != service:
            raise TargetError(f"target names service {resolved.service} but --service says {service}")
        name, _ = pick_service(node, ref.repository, ref.familiar_repository, service or resolved.service)
        return self._deploy(Target(node.dc, node.name, name), str(ref), ACTION_DEPLOY, wait=wait, dry_run=dry_run,
                            author=author, message=message, settle=settle, health_timeout=health_timeout)

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
        return self._deploy(resolved, image, ACTION_ROLLBACK, rollback_to=commit, wait=wait, dry_run=dry_run,
                            author=author, message=message, settle=settle, health_timeout=health_timeout)

    def _deploy(self, target: Target, image: str, action: str, *, rollback_to: str | None = None, wait: float = 0,
                dry_run: bool = False, author: str | None = None, message: str | None = None,
                settle: float | None = None, health_timeout: float | None = None) -> DeployResult:
        import time

        from deployer import compose, yamledit
        from deployer.apply import DEFAULT_SETTLE, Applier
        from deployer.hosts import connect
        from deployer.lock import DeployLock
        from deployer.plan import plan_service
        from deployer.state import image_id, read_node

        started = time.monotonic()
        if not dry_run:
            self._refuse_project_repo()
        with self.repo() as repo, _maybe(DeployLock(Path(repo.git_dir), owner_info(" ".join(["deployer", *sys.argv[1:]]))),
                                         not dry_run, wait) as lock:
            if not dry_run:
                self._recover(repo, lock)
            infra = self.load()  # again, under the lock: someone may have deployed meanwhile
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
            spec = compose.container_spec(new_node, new_node.services[target.service], self.root)
            result = DeployResult(action, str(target), old_image, image, dry_run=dry_run, rollback_to=rollback_to,
                                  diff=yamledit.yaml_diff(old_text, new_text, rel) if new_text != old_text else "")

            client = connect(node, self.root)
            try:
                state = read_node(client, node.dc, node.name)
                change = plan_service(spec, state.for_service(target.service), image_id(client, image))
                result.change = change
                if dry_run:
                    return result
                applier = Applier(client, settle=DEFAULT_SETTLE if settle is None else settle,
                                  health_timeout=health_timeout, progress=self.progress)
                if change.action != NONE:
                    applier.ensure_image(image)
                    volumes, networks = compose.node_resources(new_node)
                    applier.ensure_resources(volumes, networks)
                outcome = applier.apply(change, state)
                result.steps = outcome.steps
                result.image_id = outcome.container.image_id if outcome.container else None
            finally:
                client.close()

            if new_text != old_text:
                subject = f"{action} {target}: {old_image or '(new service)'} -> {image}"
                trailers = self._trailers(action, str(target), image, old_image, result.image_id, rollback_to)
                lock.journal_write({"file": rel, "sha256": _sha(new_text), "subject": subject,
                                    "message": message, "trailers": trailers, "author": author})
                result.commit = repo.commit_file(rel, new_text, _message(subject, message), trailers, author)
                lock.journal_clear()
            result.seconds = time.monotonic() - started
            return result

    @staticmethod
    def _trailers(action: str, target: str, image: str, previous: str | None, image_id: str | None,
                  rollback_to: str | None) -> list[tuple[str, str]]:
        from deployer import history as h

        trailers = [(h.TRAILER_ACTION, action), (h.TRAILER_TARGET, target), (h.TRAILER_IMAGE, image),
                    (h.TRAILER_PREVIOUS_IMAGE, previous or "none")]
        if image_id:
            trailers.append((h.TRAILER_IMAGE_ID, image_id))
        if rollback_to:
            trailers.append((h.TRAILER_ROLLBACK_TO, rollback_to))
        return trailers

    def _recover(self, repo, lock) -> None:
        """Finish the commit of a deployer that died after writing its file and before committing."""
        journal = lock.journal_read()
        if not journal:
            return
        path = self.root / journal["file"]
        if path.exists() and _sha(_read_text(path)) == journal["sha256"] and repo.is_dirty(journal["file"]):
            self.progress(f"finishing an interrupted deploy: committing {journal['file']}")
            repo.commit_file(journal["file"], _read_text(path),
                             _message(journal["subject"], journal.get("message")),
                             [tuple(t) for t in journal["trailers"]], journal.get("author"))
        lock.journal_clear()

    def _refuse_project_repo(self) -> None:
        setup = self.root / "setup.cfg"
        if setup.exists() and "name = deployer" in setup.read_text(encoding="utf-8", errors="replace") \
                and (self.root / "deployer" / "api.py").exists():
            raise RepoError(f"{self.root} is the deployer project itself; its datacenters/ is an example. "
                            "Make a repository of your own with 'deployer init DIR --example'")

    # -- status --------------------------------------------------------------------

    def status(self, target: str | None = None) -> list[StatusRow]:
        infra = self.load()
        resolved = infra.resolve(target) if target else None
        rows: list[StatusRow] = []
        for node in infra.select_nodes(resolved):
            services = [s for s in infra.select(resolved) if s.dc == node.dc and s.node == node.name]
            if services:
                rows.extend(self._node_status(node, services))
        return rows

    def _node_status(self, node: Node, services: list[Service]) -> list[StatusRow]:
        from deployer import compose
        from deployer.errors import HostError
        from deployer.hosts import connect
        from deployer.plan import CREATE, TIDY, plan_service
        from deployer.state import image_id, read_node

        try:
            client = connect(node, self.root, timeout=15)
        except HostError as exc:
            return [StatusRow(s.target, s.image, None, None, "unreachable", False, exc.message) for s in services]
        try:
            state = read_node(client, node.dc, node.name)
            rows = []
            ids: dict[str, str | None] = {}
            for svc in services:
                spec = compose.container_spec(node, svc, self.root)
                if svc.image not in ids:
                    ids[svc.image] = image_id(client, svc.image)
                change = plan_service(spec, state.for_service(svc.name), ids[svc.image])
                cur = change.current
                if change.action == NONE:
                    rows.append(StatusRow(svc.target, svc.image, cur.name, cur.image, cur.health or "running", True))
                elif change.action == CREATE:
                    rows.append(StatusRow(svc.target, svc.image, None, None, "missing", False, "no container"))
                else:
                    if change.action == TIDY:
                        word = "drifted"
                    elif cur.config_hash == spec.config_hash() and not cur.running:
                        word = "stopped"
                    elif cur.config_hash == spec.config_hash() and cur.health in ("unhealthy", "starting"):
                        word = cur.health
                    else:
                        word = "drifted"
                    rows.append(StatusRow(svc.target, svc.image, cur.name, cur.image, word, False,
                                          "; ".join(change.reasons)))
            return rows
        finally:
            client.close()


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
