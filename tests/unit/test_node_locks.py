"""The node locks' pure parts: engine lease arithmetic and clocks, holder lines, lock names, datacenter.yml lock:,
and the repository transaction taking the node locks after its flock and before the pull (real git, no engine)."""

from __future__ import annotations

import email.utils

import pytest

from deployer.config import loader
from deployer.engine.node_lock import (MARGIN, LockObject, describe_holder, expiry_of, http_date, lock_name,
                                       parse_engine_time)
from deployer.errors import ValidationFailed
from deployer.gitrepo.transaction import RepoTransaction
from tests.support.repos import git


def test_engine_times_are_read_in_the_engines_clock():
    assert parse_engine_time("2026-12-01T12:00:00.5Z") == parse_engine_time("2026-12-01T13:00:00.5+01:00")
    assert parse_engine_time("2026-12-01T12:00:00.123456789Z") % 1 == pytest.approx(0.1234568)
    assert parse_engine_time("0001-01-01T00:00:00Z") is None and parse_engine_time("garbage") is None
    when = 1796126400.0
    assert http_date({"Date": email.utils.formatdate(when, usegmt=True)}) == when
    assert http_date({}) is None


def test_the_expiry_is_created_plus_ttl_until_a_renewal_pushes_it_and_a_manual_lock_has_none():
    assert expiry_of(1000.0, 30, None) == 1030.0
    assert expiry_of(1000.0, 30, {"expires": 1100.0}) == 1100.0
    assert expiry_of(1000.0, 30, {"expires": 900.0}) == 1030.0  # an old lease never shortens it
    assert expiry_of(1000.0, 30, {"expires": "soon"}) == 1030.0
    assert expiry_of(1000.0, 0, {"expires": 1100.0}) is None


def test_a_lock_may_be_broken_only_after_its_expiry_and_the_margin():
    held = LockObject("c1", {}, 30, expires=1030.0, engine_now=1030.0 + MARGIN)
    assert not held.expired()
    assert LockObject("c1", {}, 30, expires=1030.0, engine_now=1030.0 + MARGIN + 1).expired()
    assert not LockObject("c1", {}, 0, expires=None, engine_now=10**10).expired()  # manual: never


def test_the_holder_line_names_who_where_what_and_why():
    info = {"who": "ana", "host": "ci-7", "pid": 42, "command": "deployer deploy web:2 dev/dev1",
            "since": "2026-12-01T12:00:00+00:00"}
    assert describe_holder(info) == "ana@ci-7 pid 42 (deployer deploy web:2 dev/dev1) since 2026-12-01T12:00:00+00:00"
    manual = {**info, "manual": True, "reason": "db migration", "command": "deployer lock acquire dev"}
    assert describe_holder(manual).startswith("a manual lock of ana@ci-7 pid 42 (deployer lock acquire dev)")
    assert describe_holder(manual).endswith(": db migration")
    assert describe_holder(None) == "another deployer (its details are unreadable)"


def test_lock_names_are_per_node():
    assert lock_name("dev/dev1") == "deployer-lock.dev.dev1" != lock_name("dev/dev2")


def _repo(tmp_path, dc_yml: str | None):
    root = tmp_path / "infra"
    (root / "datacenters/dev/dev1").mkdir(parents=True)
    (root / "datacenters/dev/dev1/node.yml").write_text("docker: unix:///nonexistent.sock\n")
    if dc_yml is not None:
        (root / "datacenters/dev/datacenter.yml").write_text(dc_yml)
    return root


def test_datacenter_lock_settings_go_through_the_value_grammar(tmp_path):
    dc = loader.load(_repo(tmp_path, "lock:\n  ttl: 1m30s\n  delay: 500ms\n")).datacenters["dev"]
    assert (dc.lock_ttl, dc.lock_delay) == (90.0, 0.5)


@pytest.mark.parametrize("text, message", [
    ("lock:\n  ttl: 5s\n", "datacenters/dev/datacenter.yml:2: lock.ttl: must be at least 10s"),
    ("lock:\n  ttl: soon\n", "datacenters/dev/datacenter.yml:2: lock.ttl: invalid duration"),
    ("lock:\n  tll: 10s\n", "datacenters/dev/datacenter.yml:2: lock.tll: unsupported key 'tll'"),
    ("lock: 10s\n", "datacenters/dev/datacenter.yml:1: lock: must be a mapping"),
])
def test_bad_lock_settings_are_refused_with_file_line_and_field(tmp_path, text, message):
    with pytest.raises(ValidationFailed) as caught:
        loader.load(_repo(tmp_path, text))
    assert message in str(caught.value)


class _Locks:
    def __init__(self, events, fail=None):
        self.events, self.fail = events, fail

    def __enter__(self):
        self.events.append("node locks")
        if self.fail:
            raise self.fail
        return self

    def __exit__(self, *exc):
        self.events.append("release node locks")


def test_the_transaction_takes_the_node_locks_after_its_flock_and_before_the_pull(tmp_path, monkeypatch):
    root = _repo(tmp_path, None)
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "-u", "origin", "main")
    events: list[str] = []
    from deployer.gitrepo import repo as repo_mod

    real_sync = repo_mod.InfraRepo.sync
    monkeypatch.setattr(repo_mod.InfraRepo, "sync", lambda self: (events.append("pull"), real_sync(self))[1])
    with RepoTransaction(root, node_locks=_Locks(events)) as tx:
        assert tx.lock.held
        events.append("work")
    assert events == ["node locks", "pull", "work", "release node locks"]
    assert not (root / ".git/deployer.lock").read_text()  # the flock released after the node locks


def test_a_node_lock_that_fails_releases_the_flock_and_pulls_nothing(tmp_path, monkeypatch):
    from deployer.errors import NodeLockHeld

    root = _repo(tmp_path, None)
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    events: list[str] = []
    with pytest.raises(NodeLockHeld):
        with RepoTransaction(root, node_locks=_Locks(events, NodeLockHeld("dev/dev1", "x"))):
            events.append("work")
    assert events == ["node locks"]
    with RepoTransaction(root) as tx:  # the flock is free again
        assert tx.lock.held
    with RepoTransaction(root, dry_run=True, node_locks=_Locks(events)):
        pass
    assert events == ["node locks"]  # a dry run takes none


def test_a_holder_is_dead_only_when_this_machine_can_prove_it():
    import subprocess

    from deployer.engine.node_lock import holder_dead, process_identity

    child = subprocess.Popen(["sleep", "30"])
    try:
        alive = {"proc": process_identity(child.pid)}
        assert not holder_dead(alive)
    finally:
        child.kill()
        child.wait()
    assert holder_dead(alive)  # same boot, same pid namespace, the pid gone
    reused = {"proc": {**process_identity(), "start": 1}}  # our pid, but another start time: a reused pid
    assert holder_dead(reused)
    assert not holder_dead({"proc": {**alive["proc"], "pidns": 1}})  # another pid namespace: cannot tell
    assert not holder_dead({"proc": {**alive["proc"], "boot": "another-machine"}})
    assert not holder_dead({"who": "ana"}) and not holder_dead(None)  # no proof: the TTL decides


def _infra(tmp_path, nodes):
    root = tmp_path / "infra"
    for n in nodes:
        (root / f"datacenters/dev/{n}").mkdir(parents=True)
        (root / f"datacenters/dev/{n}/node.yml").write_text("docker: unix:///nonexistent.sock\n")
    return root, loader.load(root)


class _FakeLock:
    taken: list[str] = []
    released: list[str] = []
    held_elsewhere: set[str] = set()

    def __init__(self, root, dc, node, info, **kw):
        self.target = node.target

    def acquire(self, wait):
        from deployer.errors import NodeLockHeld

        if self.target in _FakeLock.held_elsewhere:
            raise NodeLockHeld(self.target, "someone else")
        _FakeLock.taken.append(self.target)

    def release(self):
        _FakeLock.released.append(self.target)


@pytest.mark.parametrize("wait", [0, 5])
def test_node_locks_are_all_taken_and_all_released_when_one_is_held(tmp_path, monkeypatch, wait):
    from deployer.errors import NodeLockHeld
    from deployer.ops import locks

    monkeypatch.setattr(locks, "open_lock", _FakeLock)
    root, infra = _infra(tmp_path, ["n3", "n1", "n2", "n4"])
    _FakeLock.taken, _FakeLock.released, _FakeLock.held_elsewhere = [], [], set()
    with locks.NodeLocks(root, infra, list(infra.nodes()), wait=wait) as held:
        assert sorted(held.held) == ["dev/n1", "dev/n2", "dev/n3", "dev/n4"]
    assert sorted(_FakeLock.taken) == ["dev/n1", "dev/n2", "dev/n3", "dev/n4"]  # all at once, nobody else there
    assert sorted(_FakeLock.released) == sorted(_FakeLock.taken)
    _FakeLock.taken, _FakeLock.released, _FakeLock.held_elsewhere = [], [], {"dev/n3", "dev/n2"}
    with pytest.raises(NodeLockHeld, match="^node dev/n2 is locked"):  # the first held one, in node order
        with locks.NodeLocks(root, infra, list(infra.nodes()), wait=wait):
            pass
    assert sorted(_FakeLock.released) == sorted(_FakeLock.taken)  # nothing stays held
    tried_at_once = _FakeLock.taken[:2]
    assert sorted(tried_at_once) == ["dev/n1", "dev/n4"]  # the free ones, given back when two were held
    if wait:
        assert _FakeLock.taken[2:] == ["dev/n1"]  # then sorted, one after the other: stopped at the first one held
    else:
        assert len(_FakeLock.taken) == 2
