"""A release hook's job: build exactly the pushed commit of the hook's source, push it, deploy it.

``run(state, job, progress)`` is what ``jobs`` calls for a ``release`` job
(queued by ``POST /api/v1/hooks/NAME`` of an ``action: release`` hook,
``webhook.Hook.release_for``). In order:

1. the source: a local repository as configured, or the bare clone of a URL
   kept in the service's own directory (``sources/HOOK/NAME.git``); its branch is
   fetched when it has a remote, and the pushed sha must then be a commit of
   it (else the job fails with one line, nothing built);
2. a manual lock on a target's node fails the job before building (the
   deploy checks every lock again under its own node locks);
3. ``ops.release.release`` on a clean checkout of that commit (never a
   working tree): the targets checked as a dry run, the image built on the
   hook's ``engine`` (else the datacenter's ``builder:``, else the local
   socket), tagged ``REGISTRY/APP:VERSION`` the way ``deployer release`` tags
   it (the commit's tag, else its short sha), pushed, then deployed through
   the repository transaction and the node locks, committed with the hook's
   name as author and a message naming the source's URL and sha.

A build that fails leaves the infrastructure repository and every
container as they were; its compiler output's last lines are the job's last
progress lines.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from deployer.config import loader
from deployer.errors import BuildFailed, DeployerError, NodeLockHeld, SourceError

OUTPUT_LINES = 40  # lines of a failed build's compiler output shown as progress


class BuildLines:
    """Docker's build and push events as a job's progress lines: statuses, the build steps, one line per
    pushed layer's final status (the compiler's output only when the build fails)."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say

    def __call__(self, phase: str, event: dict) -> None:
        if "error" in event or "aux" in event:
            return
        status, stream = event.get("status"), event.get("stream")
        if phase == "push":
            if status and (not event.get("id") or status in ("Pushed", "Layer already exists")
                           or status.startswith("Mounted from")):
                self.say(f"push: {event['id']}: {status}" if event.get("id") else f"push: {status}")
            return
        if status and not event.get("id"):
            self.say(f"{phase}: {status}")
        elif stream and phase in ("builder", "image") and stream.startswith(("Step ", "Successfully")):
            self.say(f"{phase}: {stream.rstrip()}")


def source_repo(state: Any, hook: Any):
    """The hook's source as a ``SourceRepo`` (a URL: its bare clone in the service's own directory)."""
    from deployer.gitrepo.source import SourceRepo, bare_clone

    spec = hook.release
    path = spec.source
    if spec.is_url:
        # named as the repository is (the image's name comes from it, as a clone's directory would give it)
        base = spec.source.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or "source"
        base = base[:-4] if base.endswith(".git") and len(base) > 4 else base
        path = bare_clone(spec.source, state.settings.own_dir / "sources" / hook.name / f"{base}.git")
    return SourceRepo(path, spec.branch, spec.app)


def _refuse_manual_locks(state: Any, infra: Any, targets: list[str]) -> None:
    from deployer.ops.locks import lock_status

    for row in lock_status(state.root, infra, targets, consul=state.settings.consul):
        if row.held and row.holder.get("manual"):
            raise NodeLockHeld(row.target, row.describe(), row.holder)


def _build_client(spec: Any, infra: Any, targets: list[str], root: Any):
    """As ``deployer release``: the hook's engine (or DOCKER_HOST), else the datacenter's builder, else local."""
    import os

    from deployer.ops.build_engine import build_client, datacenter_builder

    if spec.engine or os.environ.get("DOCKER_HOST"):
        return build_client(spec.engine)
    node = datacenter_builder(infra, targets=targets)
    return build_client(node=node, root=root) if node is not None else build_client()


def run(state: Any, job: Any, progress: Callable[[str], None]) -> Any:
    """Release the job's commit (``job.params``: hook, sha, ref, targets); the release's result as JSON."""
    from deployer.build import builders
    from deployer.ops.release import ReleaseOptions, release

    p = job.params
    hook = state.hooks.hooks[p["hook"]]
    spec = hook.release
    sha = p["sha"]
    repo = source_repo(state, hook)
    progress(f"source {spec.source}: fetching {spec.branch}" if repo.remote else f"source {spec.source}")
    repo.head()  # fetched from the remote when the branch has one; SourceError when the branch is missing
    if not repo.has_commit(sha):
        raise SourceError(f"{spec.source}: no commit {sha} (pushed to {p['ref']}): nothing built")
    progress(f"building {sha[:12]} ({repo.subject(sha)})")
    infra = loader.load(state.root)
    targets = list(p["targets"])
    _refuse_manual_locks(state, infra, targets)
    checkout = ""
    try:
        with contextlib.closing(_build_client(spec, infra, targets, state.root)) as client, \
                repo.checkout(sha, builders.cache_root() / "checkouts") as app_dir:
            checkout = str(app_dir)
            options = ReleaseOptions(app_dir, targets, state.root, builder=spec.builder, registry=spec.registry,
                                     service=spec.service, batch=spec.batch, wait=0, message=job.reason,
                                     author=job.author, consul=state.settings.consul)
            result = release(client, options, progress=progress, build_progress=BuildLines(progress),
                             on_image=lambda image: progress(f"image {image.ref}: "
                                                             + ("built" if image.built else "already built")
                                                             + (", pushed" if image.pushed else "")))
    except DeployerError as exc:
        if not checkout:
            raise
        output = getattr(exc, "output", "") or ""
        for line in output.rstrip().splitlines()[-OUTPUT_LINES:]:
            progress(f"  {line}")
        where = f"{spec.source} at {sha[:12]}"
        if isinstance(exc, BuildFailed):
            raise BuildFailed(exc.one_line().replace(checkout, where), output, exc.exit_status) from None
        if checkout in exc.one_line():
            raise SourceError(exc.one_line().replace(checkout, where)) from None
        raise
    return result.to_json()
