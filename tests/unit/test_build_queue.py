"""deployer.ops.build_queue: the watch-builds queue with a fake repository, builder and claims.

Order, the --jobs cap, a failure that does not block the queue, a retry that waits
for the next poll, resuming after a crash from the state file, several branches,
the event subscribers, and two watchers sharing claims building each commit once.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from deployer.ops.build_queue import BuildEvents, BuildQueue, BuildState, CommitOutcome, claim_name


class FakeRepo:
    """A branch whose first-parent line is ``commits`` (oldest first); push() adds commits."""

    def __init__(self, branch: str = "main", commits: list[str] | None = None, name: str = "worker"):
        self.branch, self.app, self.name = branch, ".", name
        self.commits = list(commits or [f"{branch}-c0"])

    def push(self, n: int) -> list[str]:
        new = [f"{self.branch}-c{len(self.commits) + i}" for i in range(n)]
        self.commits += new
        return new

    def head(self) -> str:
        return self.commits[-1]

    def new_commits(self, since, head, backlog=None):
        if since is None or since not in self.commits:
            return [head], []
        new = self.commits[self.commits.index(since) + 1:self.commits.index(head) + 1]
        if backlog is not None and len(new) > backlog:
            return new[-backlog:], new[:-backlog]
        return new, []

    def subject(self, sha: str) -> str:
        return f"subject of {sha}"


class FakeBuilder:
    """Records the order builds start in and how many run at once; fails/retries/crashes on request."""

    def __init__(self, seconds: float = 0.0, fail=(), retry=(), crash=(), registry: set | None = None,
                 gate: threading.Barrier | None = None):
        self.seconds = seconds
        self.gate = gate  # the next builds wait for each other here: they must run at the same time
        self.gated_from = 0
        self.fail, self.retry, self.crash = set(fail), set(retry), set(crash)
        self.started: list[str] = []
        self.built: list[str] = []  # commits actually compiled (not found in the registry)
        self.registry = registry if registry is not None else set()
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, repo, sha, record) -> CommitOutcome:
        with self.lock:
            self.started.append(sha)
            self.running += 1
            self.most = max(self.most, self.running)
            gated = self.gate is not None and len(self.started) - self.gated_from <= self.gate.parties
        try:
            if gated:
                self.gate.wait(timeout=30)
            time.sleep(self.seconds)
            if sha in self.crash:
                self.crash.discard(sha)
                raise KeyboardInterrupt  # the process dies mid-build (kill -9 in the engine tests)
            if sha in self.retry:
                self.retry.discard(sha)
                return CommitOutcome(sha, status="retry", error="registry away")
            if sha in self.fail:
                record.update(status="failed", error="go build failed (exit 1)", output="main.go:1: syntax error")
                return CommitOutcome(sha, status="failed", error="go build failed (exit 1)",
                                     output="main.go:1: syntax error")
            with self.lock:
                fresh = sha not in self.registry
                if fresh:
                    self.built.append(sha)
                    self.registry.add(sha)
            record.update(status="built", ref=f"reg/worker:{sha}", built=fresh, pushed=fresh)
            return CommitOutcome(sha, status="built", ref=f"reg/worker:{sha}", built=fresh, pushed=fresh)
        finally:
            with self.lock:
                self.running -= 1


class SharedClaims:
    """Claims two queues share, like EngineClaims on one build engine."""

    def __init__(self):
        self.held: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.lock = threading.Lock()
        self.taken = 0

    def for_watcher(self, who: str):
        shared = self

        class Claim:
            def __init__(self, key):
                self.key = key

            def release(self):
                with shared.lock:
                    del shared.held[self.key]

        class Claims:
            def claim(self, app, sha):
                key = f"{app}/{sha}"
                with shared.lock:
                    if key in shared.held:
                        return None, shared.held[key]
                    shared.held[key] = who
                    shared.taken += 1
                return Claim(key), ""

            def failed(self, app, sha):
                return shared.failures.get(f"{app}/{sha}")

            def mark_failed(self, app, sha, error):
                shared.failures[f"{app}/{sha}"] = error

        return Claims()


def queue(tmp_path, repos, builder, name="state.json", **kw) -> BuildQueue:
    return BuildQueue(BuildState(tmp_path / name), repos, builder, **kw)


def poll(q: BuildQueue):
    with q.state.locked():
        result, _ = q.poll()
    return result


def records(tmp_path, key="main:.", name="state.json") -> dict:
    return json.loads((tmp_path / name).read_text())["watches"][key]["commits"]


# --------------------------------------------------------------------------- order, cap


def test_the_first_poll_builds_the_head_then_every_new_commit_once_in_order(tmp_path):
    repo, builder = FakeRepo(), FakeBuilder()
    q = queue(tmp_path, [repo], builder)
    assert [o.revision for o in poll(q).outcomes] == ["main-c0"]
    new = repo.push(20)
    result = poll(q)
    assert builder.started == ["main-c0"] + new  # all 20, past the old 10-per-poll cap, in order
    assert [o.status for o in result.outcomes] == ["built"] * 20
    assert poll(q).outcomes == [] and builder.started == ["main-c0"] + new  # nothing twice
    saved = records(tmp_path)
    assert list(saved) == ["main-c0"] + new and {r["status"] for r in saved.values()} == {"built"}
    assert [r["seq"] for r in saved.values()] == list(range(1, 22))


def test_at_most_jobs_builds_run_at_once_started_in_order(tmp_path):
    repo = FakeRepo()
    builder = FakeBuilder(seconds=0.05)
    bus, events = BuildEvents(), []
    bus.subscribe(events.append)
    q = queue(tmp_path, [repo], builder, jobs=3, events=bus)
    repo.push(2)
    poll(q)  # the first poll queues the head only
    builder.gate, builder.gated_from = threading.Barrier(3), len(builder.started)
    new = repo.push(12)
    poll(q)
    assert builder.most == 3  # concurrent, and never more than --jobs
    assert [e["revision"] for e in events if e["event"] == "build.started"] == ["main-c2"] + new
    assert sorted(builder.started) == sorted(["main-c2"] + new)
    assert {r["status"] for r in records(tmp_path).values()} == {"built"}


def test_one_job_builds_one_at_a_time(tmp_path):
    repo = FakeRepo()
    builder = FakeBuilder(seconds=0.01)
    q = queue(tmp_path, [repo], builder)
    poll(q)
    repo.push(6)
    poll(q)
    assert builder.most == 1


def test_a_backlog_caps_one_poll_and_says_what_it_skipped(tmp_path):
    repo, builder = FakeRepo(), FakeBuilder()
    q = queue(tmp_path, [repo], builder, backlog=3)
    poll(q)
    new = repo.push(5)
    result = poll(q)
    assert result.skipped == new[:2] and builder.started == ["main-c0"] + new[2:]


# --------------------------------------------------------------------------- failures


def test_a_failed_build_is_reported_and_the_next_commit_built(tmp_path):
    repo = FakeRepo()
    q0 = queue(tmp_path, [repo], FakeBuilder())
    poll(q0)
    new = repo.push(4)
    builder = FakeBuilder(fail={new[1]})
    events, reported = [], []
    bus = BuildEvents()
    bus.subscribe(events.append)
    q = queue(tmp_path, [repo], builder, events=bus, report=reported.append)
    result = poll(q)
    assert [o.status for o in result.outcomes] == ["built", "failed", "built", "built"]
    assert [o.revision for o in reported] == new
    failed = [e for e in events if e["event"] == "build.failed"]
    assert len(failed) == 1 and failed[0]["revision"] == new[1] and failed[0]["error"] == "go build failed (exit 1)"
    assert failed[0]["output"] == "main.go:1: syntax error" and failed[0]["branch"] == "main"
    assert [e["event"] for e in events if e["revision"] == new[2]] == ["build.queued", "build.started", "build.built"]
    saved = records(tmp_path)
    assert saved[new[1]]["status"] == "failed" and saved[new[3]]["status"] == "built"
    poll(queue(tmp_path, [repo], builder))
    assert builder.started == new  # the failed one is not retried


def test_a_subscriber_that_raises_does_not_stop_the_queue(tmp_path):
    repo = FakeRepo()
    lines, bus = [], None
    bus = BuildEvents(progress=lines.append)
    bus.subscribe(lambda event: 1 / 0)
    got = []
    bus.subscribe(got.append)
    q = queue(tmp_path, [repo], FakeBuilder(), events=bus)
    poll(q)
    repo.push(3)
    poll(q)
    assert {r["status"] for r in records(tmp_path).values()} == {"built"}
    assert lines == ["a build event subscriber failed: division by zero"]  # said once, not per event
    assert len([e for e in got if e["event"] == "build.built"]) == 4


def test_unsubscribe(tmp_path):
    bus, got = BuildEvents(), []
    stop = bus.subscribe(got.append)
    bus.publish("build.queued", revision="a")
    stop()
    bus.publish("build.queued", revision="b")
    assert [e["revision"] for e in got] == ["a"]


def test_a_retry_stops_new_builds_until_the_next_poll(tmp_path):
    repo = FakeRepo()
    builder = FakeBuilder(retry={"main-c2"})
    q = queue(tmp_path, [repo], builder)
    poll(q)
    new = repo.push(4)
    result = poll(q)
    assert [o.status for o in result.outcomes] == ["built", "retry"]
    assert records(tmp_path)["main-c2"]["status"] == "pending"
    poll(q)
    assert builder.started == ["main-c0", "main-c1", "main-c2", "main-c2", "main-c3", "main-c4"]
    assert records(tmp_path)["main-c2"]["attempts"] == 2 and new[-1] == "main-c4"


def test_a_builder_that_raises_is_a_retry_not_the_end_of_the_watcher(tmp_path):
    repo = FakeRepo()

    def broken(repo, sha, record):
        raise RuntimeError("engine said no")

    q = queue(tmp_path, [repo], broken)
    (outcome,) = poll(q).outcomes
    assert outcome.status == "retry" and outcome.error == "engine said no"
    assert records(tmp_path)["main-c0"]["status"] == "pending"


# --------------------------------------------------------------------------- resume


def test_a_crash_mid_queue_resumes_where_it_stopped(tmp_path):
    repo = FakeRepo()
    poll(queue(tmp_path, [repo], FakeBuilder()))
    new = repo.push(8)
    first = FakeBuilder(crash={new[4]})
    with pytest.raises(KeyboardInterrupt):
        poll(queue(tmp_path, [repo], first))
    assert first.started == new[:5]
    saved = records(tmp_path)
    assert [saved[s]["status"] for s in new] == ["built"] * 4 + ["pending"] * 4  # durable up to the crash
    again = FakeBuilder(registry=set(first.registry))
    poll(queue(tmp_path, [repo], again))  # a new process on the same state file
    assert again.started == new[4:]  # the one that was building, then the rest; none of the built ones
    assert sorted(first.built + again.built) == sorted(new)  # each commit compiled once
    assert {r["status"] for r in records(tmp_path).values()} == {"built"}


def test_the_stop_event_starts_no_new_build(tmp_path):
    repo = FakeRepo()
    stop = threading.Event()
    builder = FakeBuilder()
    poll(queue(tmp_path, [repo], builder))
    new = repo.push(5)

    def report(outcome):
        if outcome.revision == new[1]:
            stop.set()

    poll(queue(tmp_path, [repo], builder, stop=stop, report=report))
    assert builder.started == ["main-c0"] + new[:2]
    assert [r["status"] for r in records(tmp_path).values()] == ["built"] * 3 + ["pending"] * 3


# --------------------------------------------------------------------------- branches


def test_several_branches_are_queued_in_the_order_their_commits_were_seen(tmp_path):
    main, dev = FakeRepo("main"), FakeRepo("dev")
    builder = FakeBuilder()
    q = queue(tmp_path, [main, dev], builder)
    poll(q)
    assert builder.started == ["main-c0", "dev-c0"]
    m, d = main.push(2), dev.push(3)
    poll(q)
    assert builder.started[2:] == m + d
    assert list(records(tmp_path, "dev:.")) == ["dev-c0"] + d


def test_one_branch_gone_does_not_stop_the_others(tmp_path):
    main, gone = FakeRepo("main"), FakeRepo("gone")

    def missing():
        raise RuntimeError("no branch gone")

    gone.head = missing
    errors = []
    builder = FakeBuilder()
    poll(queue(tmp_path, [main, gone], builder, on_error=errors.append))
    assert builder.started == ["main-c0"] and [str(e) for e in errors] == ["no branch gone"]


# --------------------------------------------------------------------------- two watchers


def test_two_watchers_sharing_claims_build_each_commit_once(tmp_path):
    upstream = FakeRepo()
    claims, registry = SharedClaims(), set()
    a, b = FakeBuilder(seconds=0.02, registry=registry), FakeBuilder(seconds=0.02, registry=registry)
    qa = queue(tmp_path, [upstream], a, name="a.json", claims=claims.for_watcher("watcher a"))
    qb = queue(tmp_path, [upstream], b, name="b.json", claims=claims.for_watcher("watcher b"))
    poll(qa), poll(qb)
    new = upstream.push(10)
    seen = {"a": [], "b": []}
    threads = [threading.Thread(target=lambda q=q, k=k: seen[k].extend(poll(q).outcomes)) for q, k in ((qa, "a"), (qb, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    poll(qa), poll(qb)  # what the other held is looked at again: in the registry by now
    assert sorted(a.built + b.built) == ["main-c0"] + sorted(new)  # each commit compiled once, by one of them
    assert a.built and b.built  # and they shared the work
    elsewhere = [o for o in seen["a"] + seen["b"] if o.status == "elsewhere"]
    assert all("another watcher is building it (watcher " in o.error for o in elsewhere)
    for name in ("a.json", "b.json"):
        assert {r["status"] for r in records(tmp_path, name=name).values()} == {"built"}


def test_a_failure_another_watcher_recorded_is_not_built_again(tmp_path):
    upstream = FakeRepo()
    claims = SharedClaims()
    a, b = FakeBuilder(fail={"main-c1"}), FakeBuilder()
    qa = queue(tmp_path, [upstream], a, name="a.json", claims=claims.for_watcher("a"))
    qb = queue(tmp_path, [upstream], b, name="b.json", claims=claims.for_watcher("b"))
    poll(qa), poll(qb)
    upstream.push(1)
    poll(qa)
    events = []
    qb.events.subscribe(events.append)
    poll(qb)
    assert "main-c1" not in b.started
    saved = records(tmp_path, name="b.json")["main-c1"]
    assert saved["status"] == "failed" and saved["error"] == "go build failed (exit 1)" and saved["elsewhere"]
    assert [e["event"] for e in events if e["revision"] == "main-c1"] == ["build.queued", "build.failed"]


def test_claim_names():
    assert claim_name(FakeRepo(name="worker")) == "worker"
    sub = FakeRepo(name="mono")
    sub.app = "apps/web"
    assert claim_name(sub) == "mono-apps-web"


def test_deploy_follows_one_branch_only(tmp_path):
    import subprocess

    from deployer.errors import TargetError
    from deployer.ops.release import BuildWatcher

    src = tmp_path / "worker"
    src.mkdir()
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "one"], ["branch", "dev"]):
        subprocess.run(["git", "-C", str(src), *args], check=True, capture_output=True)
    with pytest.raises(TargetError, match=r"--deploy follows one branch's head; 2 branches are watched \(main, dev\)"):
        BuildWatcher(None, src, registry="reg:5000", branch=["main", "dev"], deploy=["dc/node"], infra_root=tmp_path)
    watcher = BuildWatcher(None, src, registry="reg:5000", branch=["main", "dev", "main"], jobs=2)
    assert [r.branch for r in watcher.repos] == ["main", "dev"] and watcher.jobs == 2
    with pytest.raises(ValueError):
        BuildWatcher(None, src, registry="reg:5000", jobs=0)
