"""Release an app (build, image, push, deploy), and do it for every new commit of a branch.

* ``release(client, ReleaseOptions(source, targets, infra_root))`` is ``deployer release``:
  the registry comes from the targets' ``datacenter.yml`` (``registry:``)
  unless one is given; the targets are checked first as a dry-run deploy
  (unknown target, no matching service, unreachable node: cheap errors before
  a long build); then ``build.image.build_image`` compiles, ``docker build``s, tags
  and pushes ``REGISTRY/APP:VERSION``, and ``Deployer.deploy`` deploys that
  pushed reference. A failed build or push raises before anything is
  deployed; a node that lacks the image pulls it from the registry.

* ``BuildWatcher`` is ``deployer watch-builds``: it follows one or more branches of
  a source repository by polling (``git fetch`` when the branch has a remote,
  else the local branch head, which is what a post-receive hook in a bare
  repository sees), and builds and pushes every new commit exactly once, in
  order, at most ``jobs`` at a time, each from a clean checkout of that commit
  (never the working tree): the queue, its record and the claims that let two
  watchers share one repository are ``ops.build_queue`` and ``ops.build_claims``.
  With deploy targets (one branch only) it then deploys the branch head's image.
  What was built is recorded in ``<git dir>/deployer-builds.json`` (written
  durably, one watcher at a time under ``deployer-builds.lock`` beside it), so a
  restarted watcher, or the next hook run, builds nothing twice:

  - a compile error (BuildFailed and other errors of the source itself) is
    recorded as ``failed`` with the compiler's output and never retried; a
    later commit is built as usual;
  - a push, registry or engine failure leaves the commit ``pending``: it is
    retried on the next poll (the image is not rebuilt, only pushed);
  - on its first run the watcher builds only the branch head, not the history;
    after that every new commit (``backlog`` caps one poll's, older ones skipped);
  - a deploy that fails is recorded and not retried; one that could not reach
    the node (or waited in vain for the deploy lock, a manual one included) is retried.

The source repository is read through ``gitrepo.source`` (``SourceRepo``):
every git process it starts leaves out the variables git exports to hooks
(GIT_DIR and friends). A long-running process started by a hook still calls
``gitrepo.git.forget_hook_env()`` first, for everything else it starts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from deployer.build import builders
from deployer.build import image as image_builder
from deployer.build import registry as _registry
from deployer.engine.apply import SwapOptions
from deployer.errors import (
    BuildFailed,
    ConfigError,
    DockerfileMissing,
    HostError,
    LockHeld,
    PartialDeploy,
    RegistryError,
    SourceError,
    TargetError,
    UnknownBuilder,
)
from deployer.gitrepo.source import SourceRepo
from deployer.ops.build_queue import (KEEP_RECORDS, STATE_FILE, STATE_LOCK, STATE_VERSION,  # noqa: F401 - re-exported
                                      BuildEvents, BuildQueue, BuildState, Claims, CommitOutcome, PollResult)
from deployer.ops.build_queue import now as _now
from deployer.ops.build_queue import one_line as _one_line
from deployer.ops.build_queue import watch_key as _watch_key
from deployer.ops.build_engine import build_client  # noqa: F401 - the CLI's way to it, as before
from deployer.ops.deploy import Deployer

DEFAULT_DOCKER = "unix:///var/run/docker.sock"
OUTPUT_KEPT = 8000  # characters of compiler output kept in the state file

Progress = Callable[[str], None]

# A build that fails for these reasons fails the same way next time: record it, don't retry.
_SOURCE_ERRORS = (BuildFailed, SourceError, ConfigError, DockerfileMissing, UnknownBuilder)


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- engine, registry


def registry_for(infra, *, targets: Sequence[str] = (), dc: str | None = None, explicit: str | None = None) -> str:
    """The registry images go to: ``explicit``, else the one ``datacenter.yml`` of ``dc``
    (or of every target's datacenter) names. All targets must agree on one."""
    if explicit:
        _registry.split_registry_url(explicit)  # RegistryError for a malformed one
        return explicit.strip()
    names = [infra.resolve(dc).dc] if dc else [infra.resolve(t).dc for t in targets]
    names = list(dict.fromkeys(names))
    if not names:
        raise TargetError("no registry to push to: pass --registry HOST:PORT, or --dc DC whose datacenter.yml "
                          "names one")
    found: dict[str, str] = {}
    for name in names:
        datacenter = infra.datacenters[name]
        path = f"{datacenter.path}/datacenter.yml"
        if not datacenter.registry:
            raise ConfigError(path, "no 'registry: HOST:PORT' here, so there is nowhere to push the image "
                                    "(add it, or pass --registry)")
        try:
            _registry.split_registry_url(datacenter.registry)
        except RegistryError as exc:
            raise ConfigError(path, exc.message, field="registry") from None
        found[name] = datacenter.registry.strip()
    if len(set(found.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in found.items())
        raise TargetError(f"the targets' datacenters push to different registries ({listing}); "
                          "release to one datacenter at a time, or pass --registry")
    return next(iter(found.values()))


def credentials_for(infra, *, targets: Sequence[str] = (), dc: str | None = None) -> str | None:
    """The ``registry_credentials`` file of ``dc`` (or of the targets' datacenters), None when none names one.
    The push uses one account: datacenters naming different files are refused."""
    if infra is None:
        return None
    names = [infra.resolve(dc).dc] if dc else [infra.resolve(t).dc for t in targets]
    files = {infra.datacenters[n].registry_credentials for n in dict.fromkeys(names)}
    if len(files) > 1:
        raise TargetError("the targets' datacenters name different registry_credentials files; "
                          "release to one datacenter at a time")
    return files.pop() if files else None


def image_to_json(result: image_builder.ImageResult) -> dict[str, Any]:
    build = result.build
    return {
        "ref": result.ref,
        "image_id": result.image_id,
        "digest": result.digest,
        "version": result.version,
        "revision": result.revision,
        "built": result.built,
        "pushed": result.pushed,
        "build_seconds": round(result.build_seconds, 3),
        "compile_seconds": round(build.seconds, 3) if build else None,
        "push_seconds": round(result.push_seconds, 3),
        "binaries": [str(p) for p in build.binaries] if build else [],
    }


# --------------------------------------------------------------------------- release


@dataclass
class ReleaseResult:
    registry: str
    image: image_builder.ImageResult
    deploy: Any  # api.DeployResult
    seconds: dict[str, float] = field(default_factory=dict)  # check, build, push, deploy, total

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "image": image_to_json(self.image),
            "deploy": self.deploy.to_json(),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def _source_note(url: str, revision: str, extra: str = "") -> str:
    return f"Built from {url} at commit {revision}{extra}."


def _reason(message: str | None, note: str) -> str:
    return f"{message.strip()}\n\n{note}" if message and message.strip() else note


@dataclass(frozen=True)
class ReleaseOptions:
    """What ``release`` builds, where it goes, and how it is deployed."""

    # what: an app directory in a git working tree, its image pushed and deployed
    source_dir: str | os.PathLike
    # where: targets (dc, dc/node or dc/node/service) of the infrastructure repository
    targets: Sequence[str]
    infra_root: str | os.PathLike
    # what, further: build uncommitted changes (VERSION-dirty); the builder (default: deployer.yml's, else detected)
    allow_dirty: bool = False
    builder: str | None = None
    # where, further: the registry (default: the targets' datacenter.yml) and its CA; the service to change
    registry: str | None = None
    ca: str | os.PathLike | None = None
    service: str | None = None
    # how to deploy: as ``Deployer.deploy`` takes it
    wait: float = 0
    message: str | None = None
    author: str | None = None
    swap: SwapOptions = SwapOptions()
    batch: int | None = None
    consul: bool = True
    # where missing builder images are made and moved from (ops.build_engine.ImagesFrom); None: the build engine
    images_from: Any = None


def release(client, options: ReleaseOptions, *, progress: Progress | None = None,
            build_progress: builders.Progress | None = None,
            on_image: Callable[[image_builder.ImageResult], None] | None = None) -> ReleaseResult:
    """Build ``options.source_dir``'s image, push it, deploy ``REGISTRY/APP:VERSION`` to ``options.targets``.

    Raises before building for bad targets, a missing registry, a dirty
    source (unless ``allow_dirty``), no matching service or an unreachable
    node; BuildFailed or PushFailed before deploying anything. ``on_image``
    is called with the pushed image before the deploy starts.
    """
    o = options
    say = progress or _quiet
    started = time.monotonic()
    targets = list(o.targets)
    if not targets:
        raise TargetError("release needs at least one target (dc, dc/node or dc/node/service)")
    deployer = Deployer(o.infra_root, progress=progress, consul=o.consul)
    infra = deployer.load()
    reg = registry_for(infra, targets=targets, explicit=o.registry)
    credentials = credentials_for(infra, targets=targets)
    src = Path(o.source_dir)
    app = builders.load_app_config(src)  # SourceError when it is not a directory
    if not app.dockerfile.is_file():
        raise DockerfileMissing(str(app.dockerfile), "no Dockerfile: the image builder needs one for the app")
    version = image_builder.source_version(src, o.allow_dirty)  # DirtySource unless allowed
    planned = image_builder.image_ref(reg, app.name, version)
    say(f"checking {', '.join(targets)} for {planned}")
    deployer.deploy(planned, targets, o.service, dry_run=True, batch=o.batch)
    checked = time.monotonic()

    image = image_builder.build_image(client, src, reg, o.allow_dirty, builder=o.builder, ca=o.ca,
                                      progress=build_progress, credentials_file=credentials,
                                      images_from=o.images_from)
    pushed = time.monotonic()
    if on_image is not None:
        on_image(image)
    note = _source_note(image_builder.source_info(src).url, image.revision)
    result = deployer.deploy(image.ref, targets, o.service, wait=o.wait, message=_reason(o.message, note),
                             author=o.author, swap=o.swap, batch=o.batch)
    done = time.monotonic()
    return ReleaseResult(reg, image, result, {
        "check": checked - started,
        "build": image.build_seconds,
        "push": image.push_seconds,
        "image": pushed - checked,  # build + push + the registry lookups around them
        "deploy": done - pushed,
        "total": done - started,
    })


# --------------------------------------------------------------------------- the watcher


class BuildWatcher:
    """Build, push and optionally deploy each new commit of one or more branches, once (``ops.build_queue``)."""

    def __init__(self, client, source: str | os.PathLike, *, registry: str, branch: str | Sequence[str] = "main",
                 app: str | None = None, deploy: Sequence[str] = (), infra_root: str | os.PathLike | None = None,
                 service: str | None = None, builder: str | None = None, ca: str | os.PathLike | None = None,
                 wait: float = 0, message: str | None = None, author: str | None = None,
                 swap: SwapOptions | None = None, consul: bool = True,
                 state_path: str | os.PathLike | None = None, backlog: int | None = None, jobs: int = 1,
                 claims: Claims | None = None, events: BuildEvents | None = None,
                 progress: Progress | None = None, build_progress: builders.Progress | None = None,
                 report: Callable[[CommitOutcome], None] | None = None,
                 credentials_file: str | os.PathLike | None = None):
        self.client = client
        self.credentials_file = credentials_file  # the datacenter's registry_credentials, for checks and pushes
        branches = [branch] if isinstance(branch, str) else list(dict.fromkeys(branch))
        if not branches:
            raise SourceError("no branch to watch")
        if jobs < 1:
            raise ValueError(f"jobs {jobs}: at least 1 build at a time")
        self.repos = [SourceRepo(source, b, app) for b in branches]
        self.repo = self.repos[0]
        _registry.split_registry_url(registry)
        self.registry = registry
        self.targets = list(deploy)
        if self.targets and infra_root is None:
            raise TargetError("deploying needs the infrastructure repository (--repo)")
        if self.targets and len(self.repos) > 1:
            raise TargetError(f"--deploy follows one branch's head; {len(self.repos)} branches are watched "
                           f"({', '.join(branches)}): run one watcher per deployed branch")
        self.infra_root = infra_root
        self.service = service
        self.builder = builder
        self.ca = ca
        self.deploy_options = {"wait": wait, "author": author, "swap": swap}
        self.message = message
        self.consul = consul
        self.state = BuildState(state_path or self.repo.git_dir / STATE_FILE)
        self.progress = progress or _quiet
        self.build_progress = build_progress
        self.report = report or (lambda outcome: None)
        self.events = events or BuildEvents(self.progress)
        self.stop = threading.Event()
        self.processed = 0  # commits built or deployed by this watcher
        self._head: str | None = None
        self.queue = BuildQueue(self.state, self.repos, self._build, jobs=jobs, claims=claims, events=self.events,
                                progress=self.progress, report=self._report_build, stop=self.stop,
                                backlog=backlog)

    @property
    def jobs(self) -> int:
        return self.queue.jobs

    def _report_build(self, outcome: CommitOutcome) -> None:
        # with --deploy the head's build is reported with its deploy, after the queue
        if not (self.targets and outcome.status == "built" and outcome.revision == self._head):
            self.report(outcome)

    # -- one pass ----------------------------------------------------------------

    def poll(self) -> PollResult:
        """Look at the branches once; queue what is new, build what is pending; deploy the head if asked."""
        with self.state.locked():
            self._head = None
            data = self.state.load()
            result = PollResult("")
            self.queue.enqueue(data, result)
            if result.skipped:
                self.progress(f"{len(result.skipped)} older new commits skipped (--backlog)")
            head = result.head = result.heads.get(_watch_key(self.repo), "")
            self._head = head
            self.queue.drain(data, result)

            commits = self.state.watch(data, _watch_key(self.repo))["commits"]
            record = commits.get(head)
            outcome = next((o for o in result.outcomes if o.revision == head), None)
            if self.targets and record and record["status"] == "built" and not self.stop.is_set() \
                    and (record.get("deploy") or {}).get("status") in (None, "pending", "retry"):
                if outcome is None:
                    outcome = self._outcome(head, record)
                    result.outcomes.append(outcome)
                self._deploy(head, record, data, outcome)
                self.report(outcome)
            elif outcome is not None and self.targets and outcome.status == "built":
                self.report(outcome)  # held back by _report_build, no deploy after all (stopped)
            self.processed += len(result.outcomes)
            return result

    def _outcome(self, sha: str, record: dict[str, Any]) -> CommitOutcome:
        return CommitOutcome(sha, record.get("subject", ""), record["status"], record.get("ref", ""),
                             bool(record.get("built")), bool(record.get("pushed")), 0.0,
                             record.get("error", ""), record.get("output", ""),
                             branch=self.repo.branch, app=self.repo.app)

    def _build(self, repo: SourceRepo, sha: str, record: dict[str, Any]) -> CommitOutcome:
        outcome = CommitOutcome(sha, record.get("subject", ""), branch=repo.branch, app=repo.app)
        self.progress(f"{sha[:12]} {outcome.subject}: building" + (f" ({repo.branch})" if len(self.repos) > 1 else ""))
        started = time.monotonic()
        checkout = ""
        try:
            with repo.checkout(sha, builders.cache_root() / "checkouts") as app_dir:
                checkout = str(app_dir)
                image = image_builder.build_image(self.client, app_dir, self.registry, builder=self.builder,
                                                  ca=self.ca, progress=self.build_progress,
                                                  credentials_file=self.credentials_file)
        except _SOURCE_ERRORS as exc:
            # name the source, not the temporary checkout (gone by now)
            where = str(repo.path / repo.app) if repo.app != "." else str(repo.path)
            outcome.status = "failed"
            outcome.error = exc.one_line().replace(checkout, f"{where} at {sha[:12]}") if checkout else exc.one_line()
            outcome.output = (getattr(exc, "output", "") or "")[-OUTPUT_KEPT:]
            record.update(status="failed", error=outcome.error, output=outcome.output, finished=_now())
        except Exception as exc:  # push, registry, engine: not the source's fault
            outcome.status, outcome.error = "retry", _one_line(exc)
            record.update(error=outcome.error, tried=_now())
        else:
            outcome.status, outcome.ref = "built", image.ref
            outcome.built, outcome.pushed = image.built, image.pushed
            record.update(status="built", ref=image.ref, version=image.version, image_id=image.image_id,
                          digest=image.digest, built=image.built, pushed=image.pushed, finished=_now())
            record.pop("error", None)
        outcome.seconds = time.monotonic() - started
        record["seconds"] = round(outcome.seconds, 3)
        return outcome

    def _deploy(self, sha: str, record: dict[str, Any], data: dict[str, Any], outcome: CommitOutcome) -> None:
        record["deploy"] = {"status": "pending", "targets": self.targets, "started": _now()}
        self.state.save(data)  # a watcher killed while deploying deploys again (idempotently) next time
        note = _source_note(self.repo.url, sha, f" on {self.repo.branch} ({json.dumps(record.get('subject', ''))})")
        deployer = Deployer(self.infra_root, progress=self.progress, consul=self.consul)
        entry = record["deploy"]
        try:
            result = deployer.deploy(record["ref"], self.targets, self.service,
                                     message=_reason(self.message, note), **self.deploy_options)
        except (HostError, LockHeld) as exc:
            entry.update(status="retry", error=exc.one_line())
        except PartialDeploy as exc:
            entry.update(status="failed", error=exc.one_line(), commit=exc.result.commit or "")
        except Exception as exc:
            entry.update(status="failed", error=_one_line(exc))
        else:
            entry.update(status="deployed" if result.commit else "unchanged", commit=result.commit or "")
        entry["finished"] = _now()
        self.state.save(data)
        outcome.deploy = entry["status"]
        outcome.deploy_commit = entry.get("commit", "")
        outcome.deploy_error = entry.get("error", "")

    # -- the loop ----------------------------------------------------------------

    def run(self, interval: float = 10.0, once: bool = False,
            on_error: Callable[[Exception], None] | None = None) -> bool:
        """Poll every ``interval`` seconds until ``self.stop`` is set (or once).

        Returns False when a build or deploy failed (or a poll did). With
        ``once``, a poll that cannot run (no branch, git fetch failing) raises;
        otherwise such errors go to ``on_error`` and the next poll tries again (with
        several branches, one that cannot be read goes there and the others are built).
        """
        ok = True
        self.queue.on_error = None if once else on_error
        while not self.stop.is_set():
            try:
                result = self.poll()
                ok = ok and result.ok
            except Exception as exc:
                if once or on_error is None:
                    raise
                ok = False
                on_error(exc)
            if once or self.stop.wait(interval):
                break
        return ok


