"""The watch-builds queue end to end: real builds (the Go worker), a real TLS registry, real git.

Shares the private build engine, registry and Go builder of tests/support/build_fixtures.py with
test_build.py and test_release.py. Each commit only changes a NOTES file, so every build compiles
the worker (warm Go cache), docker-builds a new image (a new revision label) and pushes it.

* 20 queued commits: built once each, in the order they were committed;
* a commit that fails to compile in the middle of a queue: reported, the next one built;
* a watcher killed with SIGKILL mid-queue, restarted: resumes, no commit built twice;
* two watchers (two clones, as on two machines) of one repository on one build engine:
  each commit built once; no claim is left on the engine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


from deployer.engine.node_lock import LOCK_PREFIX
from deployer.ops.build_claims import CLAIM_TTL
from tests.support.repos import cli, git
from tests.support.build_fixtures import break_main, commit, fix_main, report, source_repo

pytest_plugins = ["tests.support.build_fixtures"]



def outcomes(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def state(repo: Path) -> dict:
    return json.loads((repo / ".git" / "deployer-builds.json").read_text())["watches"]["main:."]["commits"]


def claims(client) -> dict[str, str]:
    """{id: name} of the build claims on the engine. The list call alone: docker-py's containers.list
    inspects each one after listing, which fails with 404 when a watcher removes its claim in between."""
    found = client.api.containers(all=True, filters={"name": f"{LOCK_PREFIX}.build."})
    return {c["Id"]: c["Names"][0].lstrip("/") for c in found
            if c["Names"] and c["Names"][0].lstrip("/").startswith(f"{LOCK_PREFIX}.build.")}


def claims_left(client) -> list[str]:
    return sorted(claims(client).values())


def watch_once(tmp_path: Path, src: Path, registry: str, url: str, *extra: str):
    return cli(tmp_path, "watch-builds", str(src), "--once", "--json", "--registry", registry, "--docker", url, *extra)


def test_twelve_queued_commits_are_built_once_each_in_order(client, go_builder, build_engine, registry, tmp_path,
                                                            capsys):
    # 12: past the old limit of 10 a poll (bench/bench_watch.py times 20)
    src = source_repo(tmp_path / "src")
    first = watch_once(tmp_path, src, registry, build_engine.url)
    assert first.exit_code == 0, first.output
    assert [o["revision"] for o in outcomes(first.stdout)] == [git(src, "rev-parse", "HEAD")]

    shas = [commit(src, f"change {i}") for i in range(12)]
    t = time.monotonic()
    r = watch_once(tmp_path, src, registry, build_engine.url, "--jobs", "2")
    seconds = time.monotonic() - t
    assert r.exit_code == 0, r.output
    done = outcomes(r.stdout)  # in the order they finished: two at a time
    assert sorted(o["revision"] for o in done) == sorted(shas)  # all 12 (the old limit was 10 a poll), once each
    records = state(src)
    started = [records[s]["started"] for s in shas]
    assert started == sorted(started)  # started oldest first
    assert all(o["status"] == "built" and o["built"] and o["pushed"] for o in done), done
    assert {o["revision"]: o["ref"] for o in done} == {s: f"{registry}/worker:{s[:12]}" for s in shas}
    for sha in shas:  # each one is an image on the engine, labelled with its own revision
        image = client.images.get(f"{registry}/worker:{sha[:12]}")
        assert image.labels["org.opencontainers.image.revision"] == sha
    assert [r["seq"] for r in records.values()] == list(range(1, 14)) and list(records)[1:] == shas
    again = watch_once(tmp_path, src, registry, build_engine.url)
    assert again.exit_code == 0 and again.stdout == "", again.output
    assert claims_left(client) == []
    each = sorted(v["seconds"] for v in state(src).values())
    report(capsys, f"watch-builds --once: 12 queued commits built and pushed in {seconds:.1f}s (--jobs 2; "
                   f"a commit {each[len(each) // 2]:.1f}s median)")


def test_a_failing_commit_in_the_queue_is_reported_and_the_next_built(client, go_builder, build_engine, registry,
                                                                      tmp_path):
    src = source_repo(tmp_path / "src")
    assert watch_once(tmp_path, src, registry, build_engine.url).exit_code == 0
    before = commit(src, "before")
    broken = break_main(src)
    fixed = fix_main(src)
    after = commit(src, "after")
    r = watch_once(tmp_path, src, registry, build_engine.url, "--jobs", "2")
    assert r.exit_code == 1, r.output  # --once: something failed
    done = {o["revision"]: o for o in outcomes(r.stdout)}
    assert list(done) != [] and set(done) == {before, broken, fixed, after}
    assert [done[s]["status"] for s in (before, broken, fixed, after)] == ["built", "failed", "built", "built"]
    assert "syntax error" in done[broken]["output"] and "go build of" in done[broken]["error"]
    assert done[broken]["ref"] == "" and not any(broken[:12] in t for i in client.images.list() for t in i.tags)
    record = state(src)
    assert record[broken]["status"] == "failed" and record[after]["status"] == "built"
    # the failure is recorded: the next run neither rebuilds nor reports it
    again = watch_once(tmp_path, src, registry, build_engine.url)
    assert again.exit_code == 0 and again.stdout == "", again.output


def test_a_watcher_killed_mid_queue_resumes_and_builds_nothing_twice(client, go_builder, build_engine, registry,
                                                                     tmp_path):
    src = source_repo(tmp_path / "src")
    assert watch_once(tmp_path, src, registry, build_engine.url).exit_code == 0
    shas = [commit(src, f"change {i}") for i in range(6)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer", "--repo", str(tmp_path), "watch-builds", str(src), "--json",
         "--interval", "1h", "--registry", registry, "--docker", build_engine.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240  # a bound for a loaded machine, not a timing
        while (len(lines) < 2 or not claims_left(client)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # two built (each line is flushed as it happens), the third claimed and building
        assert len(lines) >= 2, proc.stderr.read() if proc.poll() is not None else "too slow"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        reader.join(timeout=10)
        first_run = outcomes("".join(lines))
        assert len(first_run) < len(shas), "killed too late: the queue was done"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [o["revision"] for o in first_run] == shas[:len(first_run)]
    saved = state(src)
    assert [saved[s]["status"] for s in shas[:len(first_run)]] == ["built"] * len(first_run)

    # the claim the killed watcher held on the commit it was building: its process is gone, so the next
    # watcher breaks it at once; waited out, it would go only after CLAIM_TTL. Told by the engine's own
    # destroy event (a bound on the whole run would measure four builds on a loaded machine instead)
    orphans = claims(client)
    assert orphans, "the killed watcher held no claim"  # it was killed holding one (the wait above)
    started = time.time()
    r = watch_once(tmp_path, src, registry, build_engine.url)
    assert r.exit_code == 0, r.output
    destroyed = {e["id"]: e["time"] for e in client.events(since=int(started) - 1, until=int(time.time()) + 1,
                                                            filters={"type": "container", "event": "destroy"},
                                                            decode=True) if e.get("id") in orphans}
    assert set(destroyed) == set(orphans), (orphans, destroyed)
    late = {orphans[i]: round(at - started, 1) for i, at in destroyed.items() if at - started >= CLAIM_TTL}
    assert not late, f"claims waited out, not broken at once (seconds after the start): {late}"
    second_run = outcomes(r.stdout)
    assert [o["revision"] for o in first_run + second_run] == shas  # resumed: every commit once, in order
    built = [o["revision"] for o in first_run + second_run if o["built"]]
    assert len(built) == len(set(built))
    assert {v["status"] for v in state(src).values()} == {"built"}
    assert claims_left(client) == []


def test_two_watchers_of_one_repository_build_each_commit_once(client, go_builder, build_engine, registry, tmp_path,
                                                               capsys):
    upstream = tmp_path / "git" / "worker.git"
    upstream.mkdir(parents=True)
    git(upstream, "init", "-q", "--bare", "-b", "main")
    dev = source_repo(tmp_path / "dev")
    git(dev, "remote", "add", "origin", str(upstream))
    git(dev, "push", "-q", "origin", "main")
    clones = []
    for machine in ("a", "b"):  # two machines: two clones, two records
        (tmp_path / machine).mkdir()
        git(tmp_path / machine, "clone", "-q", str(upstream), "worker")
        clones.append(tmp_path / machine / "worker")
    for clone in clones:  # both have seen the head: from now on, every new commit is queued
        r = watch_once(tmp_path, clone, registry, build_engine.url)
        assert r.exit_code == 0, r.output
    shas = [commit(dev, f"change {i}") for i in range(8)]
    git(dev, "push", "-q", "origin", "main")

    procs = [subprocess.Popen(
        [sys.executable, "-m", "deployer", "--repo", str(tmp_path), "watch-builds", str(clone), "--json",
         "--interval", "300ms", "--registry", registry, "--docker", build_engine.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for clone in clones]
    try:
        deadline = time.monotonic() + 400  # a bound, not a timing: 10 builds on a loaded machine
        while time.monotonic() < deadline:
            done = [state(c) for c in clones]
            if all(d.get(s, {}).get("status") == "built" for d in done for s in shas):
                break
            time.sleep(0.3)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        runs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], runs
    per_watcher = [outcomes(out) for out, _ in runs]
    compiled = [o["revision"] for results in per_watcher for o in results if o["built"]]
    assert sorted(compiled) == sorted(shas), per_watcher  # every commit built, and by one watcher only
    for clone in clones:
        assert {state(clone)[s]["status"] for s in shas} == {"built"}
    assert claims_left(client) == []
    share = [len([o for o in results if o["built"]]) for results in per_watcher]
    report(capsys, f"two watchers, 8 commits: built {share[0]} + {share[1]}")
