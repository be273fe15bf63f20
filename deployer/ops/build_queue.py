"""The build queue of ``deployer watch-builds``: every new commit of every watched branch, once, in order.

* ``BuildState`` is the record, ``<git dir>/deployer-builds.json`` by default
  (``--state FILE``): per ``branch:app``, the last head seen and one record per
  commit (``pending``, ``built`` or ``failed``), written with
  ``deployer.files.atomic_write`` (temp file, fsync, rename, fsync of the
  directory) after every change, so a watcher killed at any point (``kill -9``,
  a power cut) finds the file as it was before or after its last change. One
  process at a time works on a state file (``deployer-builds.lock`` beside it, a
  flock the kernel drops when the process dies).
* ``BuildQueue.poll()`` looks at every watched branch, appends its new commits
  (the first-parent line since the last head seen, oldest first: every one of
  them, no cap; the first run of a branch, or a rewritten history, queues the head
  only) to the record as ``pending`` with a sequence number, then builds the
  pending ones in that order with at most ``jobs`` builds at a time. A failed
  build (the source's fault) is recorded ``failed`` and the queue goes on; a
  ``retry`` (registry or engine away) stops starting new builds until the next
  poll. Restarted, the queue resumes with the pending records: a build that was
  running when the watcher died is built again, and ``build_image`` finds its
  tag in the registry (or its image on the engine) if it got that far, so no
  image is built or pushed twice.
* ``Claims`` make two watchers of one source repository (separate records: two
  clones, two machines) build each commit once: a commit is built only by the
  watcher that holds its claim; a commit claimed by another watcher stays
  pending and is looked at again on the next poll (by then the registry has its
  image, or the failure marker says it failed). ``NoClaims`` grants every claim
  (one watcher); ``ops.build_claims.EngineClaims`` keeps them on the build engine.
* ``BuildEvents`` is the hook point for alerts: ``subscribe(callback)`` gets
  every event as a dict (``event``: ``build.queued``, ``build.started``,
  ``build.built``, ``build.failed``, ``build.retry``, ``build.elsewhere``,
  ``deploy.done``, ``deploy.failed``, ``deploy.retry``), with ``branch``, ``app``,
  ``revision`` and what the event says. A subscriber that raises is reported once
  on the progress line and does not stop the queue.

Nothing here talks to Docker or git directly: the repository (``SourceRepo``-like),
the build and the claims are handed in, which is what the unit tests fake.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from deployer.errors import DeployerError, SourceError
from deployer.files import atomic_write

STATE_FILE = "deployer-builds.json"
STATE_LOCK = "deployer-builds.lock"
STATE_VERSION = 1
KEEP_RECORDS = 200  # finished records per branch kept in the state file (pending ones always stay)

Progress = Callable[[str], None]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def one_line(exc: BaseException) -> str:
    if isinstance(exc, DeployerError):
        return exc.one_line()
    return " ".join(str(exc).split()) or type(exc).__name__


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- the record


class BuildState:
    """``<git dir>/deployer-builds.json``: per branch and app, the last head seen and each commit's record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(STATE_LOCK) if self.path.name == STATE_FILE \
            else self.path.with_name(self.path.name + ".lock")
        self._save_lock = threading.Lock()  # the queue's build threads save through one writer

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
            raise SourceError(f"{self.path}: unreadable build state ({one_line(exc)}); fix or remove it "
                              "(without it the branch head is built again)") from None
        if not isinstance(data, dict) or not isinstance(data.get("watches"), dict):
            raise SourceError(f"{self.path}: not a deployer build state; remove it")
        return data

    def save(self, data: dict[str, Any]) -> None:
        with self._save_lock:
            text = json.dumps(data, indent=2) + "\n"
            atomic_write(self.path, text.encode("utf-8"))

    def watch(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        return data["watches"].setdefault(key, {"head": None, "commits": {}})


def watch_key(repo: Any) -> str:
    """What the state file records a watch under: the branch and the app directory."""
    return f"{repo.branch}:{repo.app}"


def claim_name(repo: Any) -> str:
    """The name two watchers of one source repository agree on: the repository's name (and app directory)."""
    name = getattr(repo, "name", "") or "app"
    if repo.app not in ("", "."):
        name += "-" + repo.app.replace("/", "-")
    return name


def trim(commits: dict[str, Any], keep: int = KEEP_RECORDS) -> None:
    """Forget the oldest finished records beyond ``keep`` (pending ones stay)."""
    extra = len(commits) - keep
    for sha in [s for s, r in commits.items() if r.get("status") != "pending"][:max(0, extra)]:
        del commits[sha]


# --------------------------------------------------------------------------- outcomes, events


@dataclass
class CommitOutcome:
    """What the watcher did with one commit."""

    revision: str
    subject: str = ""
    status: str = "pending"  # built | failed | retry (tried again next poll) | elsewhere (another watcher has it)
    ref: str = ""
    built: bool = False  # False: the registry had it already, or an image built before was pushed
    pushed: bool = False
    seconds: float = 0.0
    error: str = ""
    output: str = ""  # the compiler's (or docker build's) output of a failed build
    deploy: str = ""  # "" (none asked for this commit) | deployed | unchanged | failed | retry
    deploy_commit: str = ""
    deploy_error: str = ""
    branch: str = ""
    app: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("built", "elsewhere") and self.deploy in ("", "deployed", "unchanged")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PollResult:
    head: str  # the first watched branch's head
    outcomes: list[CommitOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    heads: dict[str, str] = field(default_factory=dict)  # watch key -> head

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


class BuildEvents:
    """Subscribers to the queue's events: ``subscribe(callback)`` returns the function that unsubscribes."""

    def __init__(self, progress: Progress | None = None):
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        self._progress = progress or _quiet
        self._broken: set[int] = set()

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def publish(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": now(), **fields}
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(record)
            except Exception as exc:  # noqa: BLE001 - an alert sink's failure never stops the builds
                if id(callback) not in self._broken:
                    self._broken.add(id(callback))
                    self._progress(f"a build event subscriber failed: {one_line(exc)}")
        return record


# --------------------------------------------------------------------------- claims


class Claim(Protocol):
    def release(self) -> None: ...


class Claims(Protocol):
    """Who builds a commit when several watchers follow one source repository."""

    def claim(self, app: str, sha: str) -> tuple[Claim | None, str]:
        """(the claim, "") when this watcher may build ``sha``; (None, who holds it) otherwise."""

    def failed(self, app: str, sha: str) -> str | None:
        """The error another watcher recorded for ``sha``, None when none did."""

    def mark_failed(self, app: str, sha: str, error: str) -> None:
        """Tell the other watchers that ``sha`` fails to build (so they record it, not rebuild it)."""


class _Granted:
    def release(self) -> None:
        pass


class NoClaims:
    """One watcher: every claim is granted, no failure is known elsewhere."""

    def claim(self, app: str, sha: str) -> tuple[Claim | None, str]:
        return _Granted(), ""

    def failed(self, app: str, sha: str) -> str | None:
        return None

    def mark_failed(self, app: str, sha: str, error: str) -> None:
        pass


# --------------------------------------------------------------------------- the queue


Builder = Callable[[Any, str, dict], CommitOutcome]  # (repo, sha, record) -> outcome; updates the record


@dataclass
class _Job:
    repo: Any
    key: str
    sha: str
    record: dict[str, Any]


class BuildQueue:
    """Every new commit of ``repos`` (SourceRepo-like: branch, app, head(), new_commits(), subject()), built
    once, in order, ``jobs`` at a time, by ``build`` (which fills in the record and returns the outcome)."""

    def __init__(self, state: BuildState, repos: Sequence[Any], build: Builder, *, jobs: int = 1,
                 claims: Claims | None = None, events: BuildEvents | None = None,
                 progress: Progress | None = None, report: Callable[[CommitOutcome], None] | None = None,
                 stop: threading.Event | None = None, on_error: Callable[[Exception], None] | None = None,
                 backlog: int | None = None):
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.state = state
        self.repos = list(repos)
        self.build = build
        self.jobs = jobs
        self.claims = claims or NoClaims()
        self.progress = progress or _quiet
        self.events = events or BuildEvents(self.progress)
        self.report = report or (lambda outcome: None)
        self.stop = stop or threading.Event()
        self.on_error = on_error
        self.backlog = backlog  # None: every new commit; N: the newest N of one poll (older ones skipped)
        self._lock = threading.Lock()  # the state's dict, shared by the build threads

    # -- queueing ----------------------------------------------------------------

    def enqueue(self, data: dict[str, Any], result: PollResult) -> None:
        """Append every branch's new commits to the record (pending, numbered in order)."""
        for repo in self.repos:
            key = watch_key(repo)
            watch = self.state.watch(data, key)
            try:
                head = repo.head()
            except Exception as exc:
                if self.on_error is None or len(self.repos) == 1:
                    raise
                self.on_error(exc)  # one branch gone (or its fetch failing) does not stop the others
                continue
            result.heads[key] = head
            if head == watch["head"]:
                continue
            new, skipped = repo.new_commits(watch["head"], head, self.backlog)
            result.skipped.extend(skipped)
            commits: dict[str, dict[str, Any]] = watch["commits"]
            for sha in new:
                if sha in commits:  # built (or failed) before: never again
                    continue
                data["seq"] = data.get("seq", 0) + 1
                commits[sha] = {"status": "pending", "subject": repo.subject(sha), "seen": now(), "seq": data["seq"]}
                self.events.publish("build.queued", branch=repo.branch, app=repo.app, revision=sha,
                                    subject=commits[sha]["subject"], position=data["seq"])
            watch["head"] = head
            trim(commits)
            self.state.save(data)

    def pending(self, data: dict[str, Any]) -> list[_Job]:
        """The pending records of every watched branch, in the order they were queued."""
        jobs = []
        for repo in self.repos:
            key = watch_key(repo)
            for sha, record in self.state.watch(data, key)["commits"].items():
                if record.get("status") == "pending":
                    jobs.append(_Job(repo, key, sha, record))
        return sorted(jobs, key=lambda j: j.record.get("seq", 0))

    # -- building ----------------------------------------------------------------

    def poll(self) -> tuple[PollResult, dict[str, Any]]:
        """Queue what is new, build what is pending. Returns the result and the state (still locked by
        the caller: call inside ``self.state.locked()``)."""
        data = self.state.load()
        result = PollResult("")
        self.enqueue(data, result)
        result.head = result.heads.get(watch_key(self.repos[0]), "") if self.repos else ""
        self.drain(data, result)
        return result, data

    def drain(self, data: dict[str, Any], result: PollResult) -> None:
        """Build the pending commits in order, at most ``jobs`` at a time. Each is claimed and marked
        started here, on the caller's thread, so builds start in queue order; the build itself runs on
        a worker thread."""
        todo = self.pending(data)
        if not todo:
            return
        halted = False
        running: dict[Future, _Job] = {}

        def finished(outcome: CommitOutcome) -> None:
            nonlocal halted
            result.outcomes.append(outcome)
            if outcome.status == "retry":
                halted = True  # the registry or the engine is away: the rest waits for the next poll
            self.report(outcome)

        if self.jobs == 1:  # on this thread: Ctrl-C stops the build at hand at once
            while todo and not halted and not self.stop.is_set():
                job = todo.pop(0)
                started = self._start(job, data)
                finished(started if isinstance(started, CommitOutcome) else self._run(job, data, started))
            return
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="build") as pool:
            while todo or running:
                while todo and len(running) < self.jobs and not halted and not self.stop.is_set():
                    job = todo.pop(0)
                    started = self._start(job, data)
                    if isinstance(started, CommitOutcome):
                        finished(started)  # another watcher has it, or recorded its failure
                    else:
                        running[pool.submit(self._run, job, data, started)] = job
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f].record.get("seq", 0)):
                    running.pop(future)
                    finished(future.result())

    def _start(self, job: _Job, data: dict[str, Any]) -> CommitOutcome | Claim:
        """The commit's claim (the build may start), or the outcome when it is not this watcher's to build."""
        repo, sha, record = job.repo, job.sha, job.record
        base = {"branch": repo.branch, "app": repo.app, "revision": sha}
        app = claim_name(repo)
        try:
            claim, holder = self.claims.claim(app, sha)
        except Exception as exc:  # noqa: BLE001 - the build engine is away: this poll builds nothing more
            self.events.publish("build.retry", **base, error=f"cannot claim {sha[:12]}: {one_line(exc)}")
            return CommitOutcome(sha, record.get("subject", ""), "retry", branch=repo.branch, app=repo.app,
                                 error=f"cannot claim {sha[:12]} on the build engine: {one_line(exc)}")
        if claim is None:
            self.events.publish("build.elsewhere", **base, holder=holder)
            return CommitOutcome(sha, record.get("subject", ""), "elsewhere", branch=repo.branch, app=repo.app,
                                 error=f"another watcher is building it ({holder})")
        try:
            failed = self.claims.failed(app, sha)
            if failed is not None:
                with self._lock:
                    record.update(status="failed", error=failed, output="", finished=now(), elsewhere=True)
                    self.state.save(data)
                self.events.publish("build.failed", **base, error=failed, output="", elsewhere=True)
                claim.release()
                return CommitOutcome(sha, record.get("subject", ""), "failed", error=failed,
                                     branch=repo.branch, app=repo.app)
            with self._lock:
                record["started"] = now()
                record["attempts"] = record.get("attempts", 0) + 1
                self.state.save(data)
        except BaseException:
            claim.release()
            raise
        self.events.publish("build.started", **base, subject=record.get("subject", ""))
        return claim

    def _run(self, job: _Job, data: dict[str, Any], claim: Claim) -> CommitOutcome:
        repo, sha, record = job.repo, job.sha, job.record
        base = {"branch": repo.branch, "app": repo.app, "revision": sha}
        try:
            work = dict(record)
            try:
                outcome = self.build(repo, sha, work)
            except Exception as exc:  # noqa: BLE001 - a builder bug is this commit's retry, not the queue's end
                outcome = CommitOutcome(sha, record.get("subject", ""), "retry", error=one_line(exc))
                work.update(error=outcome.error, tried=now())
            outcome.branch, outcome.app = repo.branch, repo.app
            if outcome.status == "failed":
                with contextlib.suppress(Exception):
                    self.claims.mark_failed(claim_name(repo), sha, outcome.error)
            with self._lock:
                record.clear()
                record.update(work)
                if outcome.status == "retry":
                    record["status"] = "pending"
                self.state.save(data)
        finally:
            claim.release()
        if outcome.status == "built":
            self.events.publish("build.built", **base, ref=outcome.ref, built=outcome.built,
                                pushed=outcome.pushed, seconds=round(outcome.seconds, 3))
        elif outcome.status == "failed":
            self.events.publish("build.failed", **base, error=outcome.error, output=outcome.output)
        else:
            self.events.publish("build.retry", **base, error=outcome.error)
        return outcome
