"""Node locks across machines: real engines, real Consul, real git remotes, real deployer processes.

Two clones of one repository play two operators' machines (a laptop and a CI
runner), each running the real ``deployer`` program. The node's lock is on its
engine (no Consul in the datacenter) or a Consul session lock (``consul:`` in
datacenter.yml); each race is run for both kinds where it applies.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import docker
import pytest

from deployer.config import loader
from deployer.engine.node_lock import LOCK_IMAGE, EngineLock, lock_name, read_lock
from deployer.errors import LockLost, NodeLockHeld
from deployer.labels import LABEL_LOCK_ID
from deployer.ops.locks import lock_status
from tests.support.consul import ConsulAgent
from tests.support.repos import (WEB_NO_HEALTH, cli, git, make_repo, managed, remove_node_containers, run,
                                 unique_node)

WEB1, WEB2, WEB3 = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:3"

SLOW_WEB = WEB_NO_HEALTH


@pytest.fixture
def engine_client(engine):
    with closing(engine.client()) as client:
        yield client


def _lock_objects(client):
    return client.api.containers(all=True, filters={"label": "deployer.lock=1"})


@pytest.fixture
def team(engine, engine_client, tmp_path):
    """make(kind, nodes=1) -> (remote, clone a, clone b, [node names]); the nodes' containers removed after."""
    made: list[str] = []

    def make(dc_yml: str | None = None, nodes: int = 1):
        names = [unique_node() for _ in range(nodes)]
        files = {f"datacenters/test/{n}/node.yml": f"docker: {engine.unix_url}\n" for n in names[1:]}
        files.update({f"datacenters/test/{n}/docker-compose.yml": SLOW_WEB.format(image=WEB1) for n in names[1:]})
        if dc_yml:
            files["datacenters/test/datacenter.yml"] = dc_yml
        seed, _ = make_repo(tmp_path / "seed", engine.unix_url, SLOW_WEB.format(image=WEB1), node=names[0],
                            extra_files=files)
        remote = tmp_path / "remote.git"
        git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
        git(seed, "push", "-q", str(remote), "main")
        clones = []
        for name in ("a", "b"):
            subprocess.run(["git", "clone", "-q", str(remote), str(tmp_path / name)], check=True)
            clones.append(tmp_path / name)
        made.extend(names)
        for n in names:  # what runs matches the repository at the start
            done = cli(clones[0], "deploy", WEB1, f"test/{n}", "--settle", "0.2", "--no-consul")
            assert done.exit_code == 0, done.output
        return remote, clones[0], clones[1], names

    yield make
    for n in made:
        remove_node_containers(engine_client, n)
    for c in _lock_objects(engine_client):
        if any(f".{n}" in (c.get("Names") or [""])[0] for n in made):
            engine_client.api.remove_container(c["Id"], force=True)


def deployer(root: Path, *args: str, elsewhere: bool = False) -> subprocess.Popen:
    """The real program; ``elsewhere``: in a pid namespace of its own, so that this machine cannot tell whether
    it is alive, as for a deployer on another machine (killing the returned process kills it: --kill-child)."""
    prefix = ["unshare", "--pid", "--fork", "--kill-child"] if elsewhere else []
    return subprocess.Popen([*prefix, sys.executable, "-m", "deployer", "--repo", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(what, predicate, timeout: float = 30.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def held(root: Path, node: str):
    rows = lock_status(root, loader.load(root), [f"test/{node}"])
    return rows[0].holder if rows[0].held else None


def running(client, node: str) -> list[str]:
    return sorted(f"{c.name}={c.labels['deployer.image']}" for c in managed(client, node) if c.status == "running")


def remote_image(remote: Path, node: str) -> str:
    text = git(remote, "show", f"main:datacenters/test/{node}/docker-compose.yml")
    return next(line.split("image:")[1].strip() for line in text.splitlines() if "image:" in line)


class _Consul:
    """A private Consul agent, started on first use (engine-lock tests need none), stopped after the test."""

    def __init__(self, workdir: Path):
        self.workdir, self.agent = workdir, None

    @property
    def address(self) -> str:
        if self.agent is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.agent = ConsulAgent(workdir=self.workdir).start()
        return self.agent.address

    def kill(self) -> None:
        self.agent.kill()


@pytest.fixture
def consul_dc(tmp_path):
    consul = _Consul(tmp_path / "consul")
    yield consul
    if consul.agent is not None:
        consul.agent.close()


def _dc_yml(kind: str, consul: _Consul) -> str | None:
    """datacenter.yml with short lock TTLs (10s: Consul's minimum); a Consul in it for the consul kind."""
    if kind == "engine":
        return "lock:\n  ttl: 10s\n"
    return f"consul: {consul.address}\nlock:\n  ttl: 10s\n  delay: 1s\n"


# -- the lock object on an engine ---------------------------------------------------------


def test_the_engine_lock_is_atomic_renewed_and_broken_only_once_expired(engine, engine_client):
    target = f"test/{unique_node()}"
    EngineLock(engine_client, target, {})._ensure_image()
    winners: list[int] = []

    def take(i: int) -> None:
        with closing(engine.client()) as client:
            lock = EngineLock(client, target, {"who": f"t{i}"}, ttl=6)
            try:
                lock.acquire(0)
            except NodeLockHeld:
                return
            winners.append(i)
            time.sleep(1)
            lock.release()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1  # eight racing creates, one name: one holder
    assert read_lock(engine_client.api, lock_name(target)) is None  # released

    first = EngineLock(engine_client, target, {"who": "first", "host": "a"}, ttl=6).acquire()
    time.sleep(7)  # past its TTL: the renewals kept it alive
    first.check()
    with pytest.raises(NodeLockHeld, match=rf"^node {target} is locked by first@a; retry or pass --wait SECONDS$"):
        EngineLock(engine_client, target, {"who": "second"}, ttl=6).acquire(0)
    first._stop.set()  # a holder that stops renewing (frozen, SIGSTOPped...)
    first._thread.join()
    second = EngineLock(engine_client, target, {"who": "second"}, ttl=6)
    started = time.monotonic()
    second.acquire(20)
    assert time.monotonic() - started > 2  # it waited for the expiry, then broke it
    with pytest.raises(LockLost, match="removed or replaced"):
        first.check()  # the old holder finds out before its next container step
    first.release()  # removes nothing: the lock is the second one's now
    second.check()
    second.release()
    assert read_lock(engine_client.api, lock_name(target)) is None


def test_the_first_create_that_misses_the_lock_image_imports_it(engine_client, monkeypatch):
    """The lock image is not looked up before each create: a create that gets 404 imports it and tries again."""
    target = f"test/{unique_node()}"
    try:
        engine_client.api.remove_image(LOCK_IMAGE, force=True)  # untags it even under a leftover lock container
    except docker.errors.NotFound:
        pass
    with pytest.raises(docker.errors.ImageNotFound):
        engine_client.api.inspect_image(LOCK_IMAGE)
    lock = EngineLock(engine_client, target, {"who": "first"}).acquire(0)
    try:
        assert engine_client.api.inspect_image(LOCK_IMAGE)["RepoTags"] == [LOCK_IMAGE]
        assert read_lock(engine_client.api, lock_name(target)).id == lock.cid
    finally:
        lock.release()
    assert read_lock(engine_client.api, lock_name(target)) is None
    looked_up: list[str] = []  # with the image there, a lock is one create and one inspect: no image lookup
    monkeypatch.setattr(engine_client.api, "inspect_image", lambda ref: looked_up.append(ref))
    with EngineLock(engine_client, target, {"who": "second"}).acquire(0) as second:
        second.check()
    assert looked_up == [] and read_lock(engine_client.api, lock_name(target)) is None


# -- two operators ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["engine", "consul"])
def test_two_clones_deploying_to_one_node_one_waits_or_fails_before_touching_a_container(team, engine_client,
                                                                                          consul_dc, kind):
    remote, a, b, (node,) = team(_dc_yml(kind, consul_dc))
    target = f"test/{node}"
    before = {c.id for c in managed(engine_client, node)}
    first = deployer(a, "deploy", WEB2, target, "--settle", "4")
    holder = wait_for("the first deployer's lock", lambda: held(a, node))
    assert "web:2" in holder["command"]

    # the second operator without --wait: fails at once, naming the holder; no container touched
    t0 = time.monotonic()
    fail = run(b, "deploy", WEB3, target, "--settle", "0.5")
    assert fail.returncode == 1, fail.stderr
    line = fail.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: node {target} is locked by ") and "deploy deployer-test/web:2" in line, line
    assert "retry or pass --wait SECONDS" in line
    assert time.monotonic() - t0 < 10
    lock_ids = {c.labels.get(LABEL_LOCK_ID) for c in managed(engine_client, node) if c.id not in before}
    assert lock_ids <= {holder["id"]}  # what is new on the node is the first deployer's

    # with --wait it waits, then sees the first one's commit and deploys on top of it
    second = deployer(b, "deploy", WEB3, target, "--settle", "0.5", "--wait", "60")
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "waiting for the lock of" in err2 and "web:2" in err2
    log = git(remote, "log", "--format=%s", "main").splitlines()
    assert log[0] == f"deploy {target}/web: {WEB2} -> {WEB3}"  # the second saw web:2 as the image before
    assert log[1] == f"deploy {target}/web: {WEB1} -> {WEB2}"  # no commit lost
    assert remote_image(remote, node) == WEB3 and running(engine_client, node) == [f"{node}-web={WEB3}"]
    git(a, "pull", "-q")
    status = run(a, "status", target)
    assert status.returncode == 0, status.stdout + status.stderr  # the repository says what runs
    assert held(a, node) is None


@pytest.mark.parametrize("kind", ["engine", "consul"])
def test_two_clones_deploying_to_different_nodes_both_succeed_without_waiting(team, engine_client, consul_dc, kind):
    remote, a, b, (n1, n2) = team(_dc_yml(kind, consul_dc), nodes=2)
    p1 = deployer(a, "deploy", WEB2, f"test/{n1}", "--settle", "3")
    wait_for("the first lock", lambda: held(a, n1))
    p2 = deployer(b, "deploy", WEB3, f"test/{n2}", "--settle", "1", "--wait", "60")
    (_, e1), (_, e2) = p1.communicate(timeout=120), p2.communicate(timeout=120)
    assert p1.returncode == 0 and p2.returncode == 0, e1 + e2
    assert "waiting for the lock" not in e1 + e2
    assert remote_image(remote, n1) == WEB2 and remote_image(remote, n2) == WEB3
    assert running(engine_client, n1) == [f"{n1}-web={WEB2}"] and running(engine_client, n2) == [f"{n2}-web={WEB3}"]


@pytest.mark.parametrize("kind", ["engine", "consul"])
def test_a_multi_node_deploy_that_meets_a_held_lock_gives_all_back_then_waits_in_sorted_order(team, engine_client,
                                                                                              consul_dc, kind):
    """The locks are tried all at once; one held elsewhere: every lock taken is released, and with --wait they
    are taken again one by one in dc/node order: while it waits, it holds only the nodes sorted before."""
    remote, a, b, names = team(_dc_yml(kind, consul_dc), nodes=3)
    first, middle, last = sorted(names)
    took = run(a, "lock", "acquire", f"test/{middle}", "-m", "maintenance")
    assert took.returncode == 0, took.stderr
    p = deployer(b, "deploy", WEB2, *(f"test/{n}" for n in names), "--settle", "0.2", "--wait", "60")
    try:
        wait_for("the sorted phase", lambda: (held(a, first) or {}).get("command", "").find("deploy") >= 0
                 and held(a, last) is None, timeout=60)
        time.sleep(1)  # still waiting: the node after the held one is not taken meanwhile
        assert held(a, last) is None and held(a, middle)["reason"] == "maintenance"
        assert running(engine_client, first) == [f"{first}-web={WEB1}"]  # nothing switched while waiting
        assert run(a, "lock", "release", f"test/{middle}").returncode == 0
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "taking the locks in order" in err and "waiting for the lock of" in err
    assert [remote_image(remote, n) for n in names] == [WEB2] * 3
    assert all(running(engine_client, n) == [f"{n}-web={WEB2}"] for n in names)
    assert git(remote, "log", "--format=%s", "main").splitlines()[0].startswith("deploy ")  # one commit on top
    assert all(held(a, n) is None for n in names)


# -- a holder that dies, a Consul that dies -------------------------------------------------


@pytest.mark.parametrize("kind", ["engine", "consul"])
def test_a_sigkilled_holder_s_lock_expires_and_the_next_deployer_converges(team, engine_client, consul_dc, kind):
    remote, a, b, (node,) = team(_dc_yml(kind, consul_dc))
    target = f"test/{node}"
    victim = deployer(a, "deploy", WEB2, target, "--settle", "60", elsewhere=True)
    holder = wait_for("the victim's lock", lambda: held(a, node))
    wait_for("its new container", lambda: [c for c in managed(engine_client, node)
                                          if c.labels.get(LABEL_LOCK_ID) == holder["id"] and c.status == "running"])
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    t0 = time.monotonic()
    done = run(b, "deploy", WEB3, target, "--settle", "0.5", "--wait", "90")
    waited = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert waited > 5, waited  # the lock outlived its holder until its TTL (10s) ran out
    if kind == "engine":
        assert "broke the expired lock of" in done.stderr
    assert "removed leftover" in done.stderr  # the victim's in-flight -next, tidied by the new holder
    assert running(engine_client, node) == [f"{node}-web={WEB3}"]
    assert len(managed(engine_client, node)) == 1
    assert remote_image(remote, node) == WEB3
    assert WEB2 not in git(remote, "log", "--format=%s", "main")  # the victim committed nothing
    assert run(b, "status", target).returncode == 0


def test_consul_killed_while_a_lock_is_held_stops_the_holder_before_its_next_container_step(team, engine_client,
                                                                                             consul_dc):
    remote, a, _b, (node,) = team(_dc_yml("consul", consul_dc))
    target = f"test/{node}"
    head = git(remote, "rev-parse", "main")
    old = {c.id for c in managed(engine_client, node)}
    holder_proc = deployer(a, "deploy", WEB2, target, "--settle", "5")
    holder = wait_for("the lock", lambda: held(a, node))
    wait_for("the new container", lambda: [c for c in managed(engine_client, node)
                                          if c.labels.get(LABEL_LOCK_ID) == holder["id"] and c.status == "running"])
    consul_dc.kill()
    _, err = holder_proc.communicate(timeout=60)
    assert holder_proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: lost the lock of node {target}: Consul does not answer"), line
    assert line.endswith("stopped before the next container step")
    # nothing half-done: the new container is gone, the old one runs, nothing committed
    assert {c.id for c in managed(engine_client, node)} == old
    assert running(engine_client, node) == [f"{node}-web={WEB1}"]
    assert git(remote, "rev-parse", "main") == head
    assert git(a, "status", "--porcelain") == "" and not (a / ".git/deployer.journal").exists()


# -- a manual lock ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["engine", "consul"])
def test_a_manual_lock_stops_every_deploy_until_released(team, engine_client, consul_dc, kind):
    remote, a, b, (node,) = team(_dc_yml(kind, consul_dc))
    target = f"test/{node}"
    took = run(a, "lock", "acquire", target, "-m", "database migration", "--json")
    assert took.returncode == 0, took.stderr
    assert json.loads(took.stdout)[0]["manual"] is True
    status = run(b, "lock", "status", target, "--json")
    (row,) = json.loads(status.stdout)
    assert row["held"] and row["holder"]["reason"] == "database migration" and row["kind"] == kind
    denied = run(b, "deploy", WEB2, target, "--settle", "0.2", "--wait", "2")
    assert denied.returncode == 1
    line = denied.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: node {target} is locked by a manual lock of ") and "database migration" in line
    assert f"'deployer lock release {target}' lifts it" in line
    assert run(b, "apply", target).returncode == 1
    assert running(engine_client, node) == [f"{node}-web={WEB1}"]
    released = run(b, "lock", "release", target)
    assert released.returncode == 0 and released.stdout.startswith(f"released {target} ({kind}): was a manual lock")
    done = run(b, "deploy", WEB2, target, "--settle", "0.2")
    assert done.returncode == 0, done.stderr
    assert remote_image(remote, node) == WEB2


def test_releasing_a_running_deploy_s_lock_needs_force(team, engine_client, consul_dc):
    remote, a, b, (node,) = team(_dc_yml("engine", consul_dc))
    target = f"test/{node}"
    first = deployer(a, "deploy", WEB2, target, "--settle", "4")
    wait_for("the lock", lambda: held(a, node))
    refused = run(b, "lock", "release", target)
    assert refused.returncode == 1 and "is held by a running deploy" in refused.stderr
    assert "pass --force to break it" in refused.stderr
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err


def test_the_deploy_of_watch_builds_is_retried_while_a_manual_lock_holds(team, engine_client, consul_dc,
                                                                        monkeypatch):
    """watch-builds --deploy goes through Deployer.deploy: a manual lock makes it a 'retry', not a deploy."""
    from deployer.ops import release as ops_release

    remote, a, b, (node,) = team(_dc_yml("engine", consul_dc))
    target = f"test/{node}"
    assert run(a, "lock", "acquire", target, "-m", "freeze").returncode == 0
    watcher = ops_release.BuildWatcher.__new__(ops_release.BuildWatcher)
    watcher.infra_root, watcher.progress, watcher.consul, watcher.service = Path(b), lambda m: None, True, None
    watcher.targets, watcher.message = [target], None
    watcher.deploy_options = {"wait": 0, "author": None, "swap": None}
    watcher.repo = type("Repo", (), {"url": "file:///src", "branch": "main"})()
    saved: list[dict] = []
    watcher.state = type("State", (), {"save": lambda self, data: saved.append(json.loads(json.dumps(data)))})()
    record = {"ref": WEB2, "subject": "new build"}
    outcome = ops_release.CommitOutcome("c" * 40, "new build")
    watcher._deploy("c" * 40, record, {"commits": {}}, outcome)
    assert outcome.deploy == "retry" and "is locked by a manual lock" in outcome.deploy_error
    assert "freeze" in outcome.deploy_error
    assert running(engine_client, node) == [f"{node}-web={WEB1}"]
    assert run(a, "lock", "release", target).returncode == 0
    watcher._deploy("c" * 40, record, {"commits": {}}, outcome)
    assert outcome.deploy == "deployed", outcome.deploy_error
    assert running(engine_client, node) == [f"{node}-web={WEB2}"]


# -- one leader among several instances (registrator --leader) -------------------------------


def test_one_leader_among_three_instances_and_a_takeover_when_it_stops(consul_dc):
    from deployer.discovery.consul_catalog import ConsulCatalog
    from deployer.discovery.consul_lock import lead

    catalog = ConsulCatalog(consul_dc.address)
    active: list[int] = []
    leaders: list[int] = []
    mutex = threading.Lock()
    stops = [threading.Event() for _ in range(3)]

    def instance(i: int) -> None:
        def work(leading: threading.Event) -> None:
            with mutex:
                active.append(i)
                leaders.append(i)
            leading.wait()
            with mutex:
                active.remove(i)

        lead(catalog, "test/leader", stops[i], work, ttl=10, delay=0)

    threads = [threading.Thread(target=instance, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for("a leader", lambda: leaders)
        time.sleep(3)
        assert len(active) == 1 and len(leaders) == 1  # the other two wait
        first = leaders[0]
        stops[first].set()  # the leader stops: its key is released, another takes over at once
        wait_for("the takeover", lambda: len(leaders) == 2, timeout=15)
        time.sleep(1)
        assert len(active) == 1 and leaders[1] != first
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(timeout=30)
    assert active == []


def test_registrator_leader_is_refused_with_once(team, consul_dc):
    _remote, a, _b, (node,) = team(_dc_yml("consul", consul_dc))
    done = run(a, "registrator", f"test/{node}", "--leader", "--once")
    assert done.returncode == 3 and "--leader needs TARGETS whose datacenters name one Consul" in done.stderr


def test_two_registrators_with_leader_one_acts_and_the_other_takes_over(team, consul_dc):
    _remote, a, b, (node,) = team(_dc_yml("consul", consul_dc))
    first = deployer(a, "registrator", f"test/{node}", "--leader", "--resync", "1")
    lines: dict[str, list[str]] = {"first": [], "second": []}

    def read(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            lines[name].append(line.strip())

    threading.Thread(target=read, args=("first", first), daemon=True).start()
    try:
        wait_for("the first to lead", lambda: any("registrator: leading" in x for x in lines["first"]))
        second = deployer(b, "registrator", f"test/{node}", "--leader", "--resync", "1")
        threading.Thread(target=read, args=("second", second), daemon=True).start()
        try:
            wait_for("the second to wait", lambda: any("another instance leads" in x for x in lines["second"]))
            assert not any("leading" in x for x in lines["second"])
            first.send_signal(signal.SIGTERM)  # the leader stops: it releases its key
            first.wait(timeout=30)
            wait_for("the takeover", lambda: any("registrator: leading" in x for x in lines["second"]), timeout=20)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
