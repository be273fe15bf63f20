"""Release an app (build, image, push, deploy), and do it for every new commit of a branch.

* ``release(client, ReleaseOptions(source, targets, infra_root))`` is ``deployer release``:
  the registry comes from the targets' ``datacenter.yml`` (``registry:``)
  unless one is given; the targets are checked first as a dry-run deploy
  (unknown target, no matching service, unreachable node: cheap errors before
  a long build); then ``build.image.build_image`` compiles, ``docker build``s, tags
  and pushes ``REGISTRY/APP:VERSION``, and ``Deployer.deploy`` deploys that
  pushed reference. A failed build or push raises before anything is
  deployed; a node that lacks the image pulls it from the registry.

* ``BuildWatcher`` is ``deployer watch-builds``: it follows one branch of a
  source repository by polling (``git fetch`` when the branch has a remote,
  else the local branch head, which is what a post-receive hook in a bare
  repository sees), and builds and pushes every new commit exactly once, each
  from a clean checkout of that commit (never the working tree). With deploy
  targets it then deploys the branch head's image. What was built is recorded
  in ``<git dir>/deployer-builds.json`` (written atomically, one watcher at a
  time under ``deployer-builds.lock`` beside it), so a restarted watcher, or
  the next hook run, builds nothing twice:

  - a compile error (BuildFailed and other errors of the source itself) is
    recorded as ``failed`` with the compiler's output and never retried; a
    later commit is built as usual;
  - a push, registry or engine failure leaves the commit ``pending``: it is
    retried on the next poll (the image is not rebuilt, only pushed);
  - on its first run the watcher builds only the branch head, not the history;
    when more than ``backlog`` commits arrive at once the older ones are
    skipped;
  - a deploy that fails is recorded and not retried; one that could not reach
    the node (or waited in vain for the deploy lock) is retried.

The source repository is read through ``gitrepo.source`` (``SourceRepo``):
every git process it starts leaves out the variables git exports to hooks
(GIT_DIR and friends). A long-running process started by a hook still calls
``gitrepo.git.forget_hook_env()`` first, for everything else it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import docker

from deployer.build import builders
from deployer.build import image as image_builder
from deployer.build import registry as _registry
from deployer.engine.apply import SwapOptions
from deployer.errors import (
    BuildError,
    BuildFailed,
    ConfigError,
    DeployerError,
    DockerfileMissing,
    HostError,
    LockHeld,
    PartialDeploy,
    RegistryError,
    SourceError,
    TargetError,
    UnknownBuilder,
)
from deployer.files import atomic_write
from deployer.gitrepo.source import SourceRepo
from deployer.ops.deploy import Deployer

DEFAULT_DOCKER = "unix:///var/run/docker.sock"
STATE_FILE = "deployer-builds.json"
STATE_LOCK = "deployer-builds.lock"
STATE_VERSION = 1
DEFAULT_BACKLOG = 10  # at most this many new commits are built in one go; older ones are skipped
KEEP_RECORDS = 200  # per branch, in the state file
OUTPUT_KEPT = 8000  # characters of compiler output kept in the state file

Progress = Callable[[str], None]

# A build that fails for these reasons fails the same way next time: record it, don't retry.
_SOURCE_ERRORS = (BuildFailed, SourceError, ConfigError, DockerfileMissing, UnknownBuilder)


def _quiet(_: str) -> None:
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DeployerError):
        return exc.one_line()
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- engine, registry


def build_client(url: str | None = None, timeout: float = 120):
    """A client of the Docker engine that builds: ``url``, else ``DOCKER_HOST``, else the local socket.

    The builders bind-mount this machine's directories, so the engine must
    share its filesystem (a unix socket, or a daemon on this machine).
    """
    url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER
    if not url.startswith(("unix://", "tcp://", "http://")):
        raise BuildError(f"build engine {url}: unsupported URL (unix:///path/docker.sock or tcp://host:port)")
    if url.startswith("unix://") and not os.path.exists(url[len("unix://"):]):
        raise BuildError(f"build engine {url}: no such socket {url[len('unix://'):]}: is dockerd running? "
                         "(--docker URL or DOCKER_HOST names the engine)")
    client = None
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout)  # asks the engine its API version
        client.api.trust_env = False  # no proxy for the local engine
        client.api.ping()
    except Exception as exc:
        if client is not None:
            client.close()
        reason = _one_line(exc)
        for marker in ("No such file or directory", "Connection refused", "Permission denied", "timed out"):
            if marker in reason:
                reason = marker.lower()
                break
        raise BuildError(f"build engine {url}: cannot connect: {reason}") from None
    return client


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
                                      progress=build_progress, credentials_file=credentials)
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


# --------------------------------------------------------------------------- the state file


def _watch_key(repo: SourceRepo) -> str:
    """What the state file records a watch under: the branch and the app directory."""
    return f"{repo.branch}:{repo.app}"


class BuildState:
    """``<git dir>/deployer-builds.json``: per branch and app, the last head seen and each commit's record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(STATE_LOCK) if self.path.name == STATE_FILE \
            else self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One watcher at a time on this state file (others wait: the hook behind a running watcher)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": STATE_VERSION, "watches": {}}
        except (OSError, ValueError) as exc:
            raise SourceError(f"{self.path}: unreadable build state ({_one_line(exc)}); fix or remove it "
                              "(without it the branch head is built again)") from None
        if not isinstance(data, dict) or not isinstance(data.get("watches"), dict):
            raise SourceError(f"{self.path}: not a deployer build state; remove it")
        return data

    def save(self, data: dict[str, Any]) -> None:
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    def watch(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        return data["watches"].setdefault(key, {"head": None, "commits": {}})


# --------------------------------------------------------------------------- the watcher


@dataclass
class CommitOutcome:
    """What the watcher did with one commit."""

    revision: str
    subject: str = ""
    status: str = "pending"  # built | failed | retry (not done; tried again next poll)
    ref: str = ""
    built: bool = False  # False: the registry had it already, or an image built before was pushed
    pushed: bool = False
    seconds: float = 0.0
    error: str = ""
    output: str = ""  # the compiler's (or docker build's) output of a failed build
    deploy: str = ""  # "" (none asked for this commit) | deployed | unchanged | failed | retry
    deploy_commit: str = ""
    deploy_error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "built" and self.deploy in ("", "deployed", "unchanged")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PollResult:
    head: str
    outcomes: list[CommitOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


class BuildWatcher:
    """Build, push and optionally deploy each new commit of a branch, once."""

    def __init__(self, client, source: str | os.PathLike, *, registry: str, branch: str = "main",
                 app: str | None = None, deploy: Sequence[str] = (), infra_root: str | os.PathLike | None = None,
                 service: str | None = None, builder: str | None = None, ca: str | os.PathLike | None = None,
                 wait: float = 0, message: str | None = None, author: str | None = None,
                 swap: SwapOptions | None = None, consul: bool = True,
                 state_path: str | os.PathLike | None = None, backlog: int = DEFAULT_BACKLOG,
                 progress: Progress | None = None, build_progress: builders.Progress | None = None,
                 report: Callable[[CommitOutcome], None] | None = None,
                 credentials_file: str | os.PathLike | None = None):
        self.client = client
        self.credentials_file = credentials_file  # the datacenter's registry_credentials, for checks and pushes
        self.repo = SourceRepo(source, branch, app)
        _registry.split_registry_url(registry)
        self.registry = registry
        self.targets = list(deploy)
        if self.targets and infra_root is None:
            raise TargetError("deploying needs the infrastructure repository (--repo)")
        self.infra_root = infra_root
        self.service = service
        self.builder = builder
        self.ca = ca
        self.deploy_options = {"wait": wait, "author": author, "swap": swap}
        self.message = message
        self.consul = consul
        self.state = BuildState(state_path or self.repo.git_dir / STATE_FILE)
        self.backlog = max(1, backlog)
        self.progress = progress or _quiet
        self.build_progress = build_progress
        self.report = report or (lambda outcome: None)
        self.stop = threading.Event()
        self.processed = 0  # commits built or deployed by this watcher

    # -- one pass ----------------------------------------------------------------

    def poll(self) -> PollResult:
        """Look at the branch once; build what is new (and pending); deploy the head if asked."""
        repo = self.repo
        with self.state.locked():
            data = self.state.load()
            watch = self.state.watch(data, _watch_key(repo))
            commits: dict[str, dict[str, Any]] = watch["commits"]
            head = repo.head()
            result = PollResult(head)
            if head != watch["head"]:
                new, skipped = repo.new_commits(watch["head"], head, self.backlog)
                if skipped:
                    self.progress(f"{len(skipped)} older new commits skipped; building the newest {len(new)}")
                    result.skipped = skipped
                for sha in new:
                    if sha not in commits:  # built (or failed) before: never again
                        commits[sha] = {"status": "pending", "subject": repo.subject(sha), "seen": _now()}
                watch["head"] = head
                _trim(commits)
                self.state.save(data)

            reported: set[str] = set()
            for sha, record in list(commits.items()):
                if record["status"] != "pending":
                    continue
                if self.stop.is_set():
                    break
                outcome = self._build(sha, record)
                self.state.save(data)
                result.outcomes.append(outcome)
                if not (self.targets and sha == head and outcome.status == "built"):
                    self.report(outcome)  # the head's build is reported with its deploy
                    reported.add(sha)
                if outcome.status == "retry":  # the registry or the engine is away: try again next poll
                    break

            record = commits.get(head)
            outcome = next((o for o in result.outcomes if o.revision == head), None)
            if self.targets and record and record["status"] == "built" and not self.stop.is_set() \
                    and (record.get("deploy") or {}).get("status") in (None, "pending", "retry"):
                if outcome is None:
                    outcome = self._outcome(head, record)
                    result.outcomes.append(outcome)
                self._deploy(head, record, data, outcome)
            if outcome is not None and head not in reported:
                self.report(outcome)
            self.processed += len(result.outcomes)
            return result

    def _outcome(self, sha: str, record: dict[str, Any]) -> CommitOutcome:
        return CommitOutcome(sha, record.get("subject", ""), record["status"], record.get("ref", ""),
                             bool(record.get("built")), bool(record.get("pushed")), 0.0,
                             record.get("error", ""), record.get("output", ""))

    def _build(self, sha: str, record: dict[str, Any]) -> CommitOutcome:
        outcome = CommitOutcome(sha, record.get("subject", ""))
        self.progress(f"{sha[:12]} {outcome.subject}: building")
        started = time.monotonic()
        checkout = ""
        try:
            with self.repo.checkout(sha, builders.cache_root() / "checkouts") as app_dir:
                checkout = str(app_dir)
                image = image_builder.build_image(self.client, app_dir, self.registry, builder=self.builder,
                                                  ca=self.ca, progress=self.build_progress,
                                                  credentials_file=self.credentials_file)
        except _SOURCE_ERRORS as exc:
            # name the source, not the temporary checkout (gone by now)
            where = str(self.repo.path / self.repo.app) if self.repo.app != "." else str(self.repo.path)
            outcome.status = "failed"
            outcome.error = exc.one_line().replace(checkout, f"{where} at {sha[:12]}") if checkout else exc.one_line()
            outcome.output = (getattr(exc, "output", "") or "")[-OUTPUT_KEPT:]
            record.update(status="failed", error=outcome.error, output=outcome.output, finished=_now())
        except Exception as exc:  # push, registry, engine: not the source's fault
            outcome.status, outcome.error = "retry", _one_line(exc)
            record.update(error=outcome.error, attempts=record.get("attempts", 0) + 1, tried=_now())
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
        otherwise such errors go to ``on_error`` and the next poll tries again.
        """
        ok = True
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


def _trim(commits: dict[str, Any]) -> None:
    """Forget the oldest finished records beyond KEEP_RECORDS (pending ones stay)."""
    extra = len(commits) - KEEP_RECORDS
    for sha in [s for s, r in commits.items() if r.get("status") != "pending"][:max(0, extra)]:
        del commits[sha]
