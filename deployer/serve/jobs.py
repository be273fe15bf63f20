"""Deploy, rollback, lock and release requests as jobs: queued, run one at a time in order, with progress and a result.

One worker thread runs every job, in the order they came, so two deploys of
one target (or of any two) never run at once in this service: the second
waits in the queue and then deploys on top of the first one's commit. The
same thread pulls the clone (``sync``) while idle and before each job, so a
pull never meets a job. Each job runs through the operations the CLI uses
(``ops.deploy.Deployer``, ``ops.locks.manual_lock`` / ``release_locks``), so
inside it is the repository transaction (its flock and journal) and the node
locks: a node lock held by anyone else, a manual lock included, fails the job
at once with the holder named, before any container is touched (the CLI's
behaviour without ``--wait``). A ``release`` job (``release_hook``) builds and
pushes first, then deploys the same way; it is announced as a ``deploy``.

Every commit a job makes has the token's name as its author and the request's
reason in its message. A job's progress lines, its state changes (queued,
running, ok, failed) and its result go to the event broker (``job`` events,
then a ``deploy`` / ``rollback`` / ``lock`` event) and stay readable at
``GET /api/v1/jobs/ID``. Jobs live in memory (the last ``KEEP``); a service
killed mid-job loses the job record, never the repository's consistency.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from deployer.config import loader
from deployer.errors import DeployerError, PartialDeploy
from deployer.ops.deploy import Deployer
from deployer.ops.locks import manual_lock, release_locks

KINDS = ("deploy", "rollback", "lock", "release")
KEEP = 1000
MAX_LINES = 2000
STOP_WAIT = 60.0  # seconds a stopping service waits for the running job


@dataclass
class Job:
    id: str
    kind: str
    params: dict[str, Any]
    who: str
    author: str
    reason: str
    state: str = "queued"  # queued | running | ok | failed
    lines: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    exit_code: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "params": self.params, "who": self.who, "reason": self.reason,
                "state": self.state, "lines": list(self.lines), "result": self.result, "error": self.error,
                "exit_code": self.exit_code, "created": self.created, "started": self.started,
                "finished": self.finished}


class JobQueue:
    def __init__(self, state: Any):
        self.state = state
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = f"{int(time.time()):x}"
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.current: Job | None = None

    # -- asking ----------------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any], identity: Any, reason: str) -> Job:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        job = Job(f"{self._prefix}-{next(self._ids)}", kind, dict(params), identity.name, identity.author, reason)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state in ("queued", "running"):
                    break
                del self._jobs[oldest]
        self._event(job, f"queued ({self._queue.qsize()} ahead)" if self._queue.qsize() else "queued")
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self, limit: int = 50) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())[-limit:]

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="serve-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Let a running job finish (up to ``timeout`` s), fail the queued ones, stop the worker."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.state == "queued":
                job.state, job.error, job.exit_code, job.finished = "failed", "the service stopped before it ran", 1, \
                    time.time()
                self._event(job, f"failed: {job.error}")
                job.done.set()

    def _run(self) -> None:
        self.state.sync.pull()
        self.state.fleet.refresh_soon()
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=self.state.settings.sync_interval)
            except queue.Empty:
                if self.state.sync.pull():
                    self.state.fleet.refresh_soon()
                continue
            if job is None or self._stopping.is_set():
                if job is not None:
                    self._queue.put(job)  # stop() fails it
                break
            self.current = job
            try:
                self.state.sync.pull()
                self._execute(job)
            finally:
                self.current = None
                self.state.fleet.refresh_soon()

    def _event(self, job: Job, line: str | None = None) -> None:
        if line is not None and len(job.lines) < MAX_LINES:
            job.lines.append(line)
        self.state.broker.publish("job", job=job.id, kind=job.kind, state=job.state, line=line, who=job.who)

    def _execute(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        self._event(job, f"started by {job.who}")
        progress = lambda line: self._event(job, line)  # noqa: E731
        try:
            job.result = run(self.state, job, progress)
            job.state, job.exit_code = "ok", 0
        except PartialDeploy as exc:
            job.result = exc.result.to_json()
            job.state, job.error, job.exit_code = "failed", exc.one_line(), exc.exit_code
        except DeployerError as exc:
            job.state, job.error, job.exit_code = "failed", exc.one_line(), exc.exit_code
        except Exception as exc:  # noqa: BLE001 - a bug fails the job, not the worker
            job.state, job.error, job.exit_code = "failed", f"internal error: {type(exc).__name__}: {exc}", 1
        job.finished = time.time()
        self._event(job, f"{job.state}: {job.error}" if job.error else "ok")
        job.done.set()
        self._announce(job)

    def _announce(self, job: Job) -> None:
        ok = job.state == "ok"
        if job.kind in ("deploy", "rollback", "release"):
            result = job.result or {}
            image = job.params.get("image")
            if job.kind == "release":  # the deploy of the built image
                image = (result.get("image") or {}).get("ref")
                result = result.get("deploy") or {}
            self.state.broker.publish("deploy" if job.kind == "release" else job.kind, ok=ok, job=job.id,
                                      who=job.who, reason=job.reason,
                                      targets=[t.get("target") for t in result.get("targets", [])]
                                      or job.params.get("targets") or [],
                                      image=image, commit=result.get("commit"), error=job.error)
        else:
            self.state.broker.publish("lock", ok=ok, job=job.id, who=job.who, reason=job.reason,
                                      target=job.params["target"],
                                      state=("taken" if job.params["action"] == "acquire" else "released")
                                      if ok else "failed", error=job.error)


def run(state: Any, job: Job, progress) -> Any:
    """Do ``job`` through the operations the CLI uses; its result as JSON data."""
    settings = state.settings
    p = job.params
    if job.kind == "release":
        from deployer.serve import release_hook

        return release_hook.run(state, job, progress)
    if job.kind == "lock":
        infra = loader.load(state.root)
        if p["action"] == "acquire":
            rows = manual_lock(state.root, infra, [p["target"]], job.reason, consul=settings.consul,
                               progress=progress, who=job.who)
        else:
            rows = release_locks(state.root, infra, [p["target"]], consul=settings.consul)
        return [r.to_json() for r in rows]
    api = Deployer(state.root, progress=progress, consul=settings.consul)
    if job.kind == "deploy":
        result = api.deploy(p["image"], p["targets"], p.get("service"), wait=0, author=job.author,
                            message=job.reason)
    else:
        result = api.rollback(p.get("targets") or None, commit=p.get("commit"), to=p.get("to"), wait=0,
                              author=job.author, message=job.reason)
    return result.to_json()
