"""ops.deploy over its two seams, without Docker: a real repository transaction on a temporary git
repository, and a fake engine session standing in for the node (what the engine would say is
exercised by tests/engines/; here, what deploy does with it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.engine.apply import Outcome
from deployer.engine.plan import plan_service
from deployer.engine.state import ContainerState, NodeState
from deployer.errors import HealthCheckFailed, HostError, ServiceMatchError
from deployer.ops import deploy as ops_deploy
from deployer.ops.deploy import Deployer
from tests.support.repos import git
from tests.unit.fakes import FakeNodeLocks

NODE = "datacenters/dev/dev1"
COMPOSE = f"{NODE}/docker-compose.yml"


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "infra"
    (root / NODE).mkdir(parents=True)
    (root / NODE / "node.yml").write_text("docker: unix:///nonexistent/docker.sock\n")
    (root / COMPOSE).write_text("services:\n  web:\n    image: registry.example.com/web:1  # pinned\n")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


class FakeSession:
    """An engine session whose node runs nothing yet; ``fail`` makes the switch fail as a health gate would."""

    opened: list[str] = []
    applied: list[str] = []
    fail: Exception | None = None

    def __init__(self, node, root, **kw):
        self.node = node
        self.state = NodeState([], {})

    def __enter__(self):
        FakeSession.opened.append(self.node.target)
        return self

    def __exit__(self, *exc):
        return None

    def image_id(self, ref):
        return "sha256:" + "ab" * 32

    def plan(self, specs):
        return [plan_service(spec, [], self.image_id(spec.image)) for spec in specs]

    def applier(self, options=None, hooks=None, progress=None, guard=None, lock_id=None):
        FakeSession.guards.append((guard, lock_id))
        return FakeApplier()


class FakeApplier:
    def ensure_image(self, ref, needed_by=None):
        return "sha256:" + "ab" * 32

    def ensure_resources(self, volumes, networks):
        pass

    def apply(self, change, state):
        if FakeSession.fail is not None:
            raise FakeSession.fail
        FakeSession.applied.append(change.target)
        spec = change.spec
        running = ContainerState(id="c" * 64, name=spec.name, image=spec.image, image_id="sha256:" + "ab" * 32,
                                 status="running", health=None, exit_code=0, restart_count=0, labels=spec.all_labels())
        return Outcome(change, running, 0.1, ["created web", "web is running"])


@pytest.fixture
def fake_engine(monkeypatch):
    FakeSession.opened, FakeSession.applied, FakeSession.fail, FakeSession.guards = [], [], None, []
    FakeNodeLocks.events, FakeNodeLocks.held_by = [], None
    monkeypatch.setattr(ops_deploy, "EngineSession", FakeSession)
    monkeypatch.setattr(ops_deploy, "NodeLocks", FakeNodeLocks)
    return FakeSession


def test_the_node_locks_are_taken_for_the_targets_and_handed_to_the_applier(root, fake_engine):
    Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1")
    assert FakeNodeLocks.events == ["lock dev/dev1", "release dev/dev1"]
    ((guard, lock_id),) = fake_engine.guards
    assert lock_id == "lock-id-1"
    guard()
    assert FakeNodeLocks.events[-1] == "guard dev/dev1"


def test_a_node_lock_held_elsewhere_fails_before_any_container_and_commits_nothing(root, fake_engine):
    from deployer.errors import NodeLockHeld

    FakeNodeLocks.held_by = NodeLockHeld("dev/dev1", "root@ci pid 7 (deployer deploy web:3 dev/dev1)")
    with pytest.raises(NodeLockHeld, match=r"^node dev/dev1 is locked by root@ci pid 7"):
        Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1")
    assert fake_engine.opened == [] and fake_engine.applied == []
    assert git(root, "rev-list", "--count", "HEAD") == "1"
    assert not (root / ".git" / "deployer.journal").exists()


def test_a_deploy_reads_the_repository_twice_once_to_choose_and_once_under_the_lock(root, fake_engine, monkeypatch):
    """The targets and the nodes to lock come from one load before the lock; the edit from a load under it."""
    loads, events = [], FakeNodeLocks.events
    real = ops_deploy.loader.load

    def counting(where):
        loads.append(list(events))  # which lock events had happened when this load ran
        return real(where)

    monkeypatch.setattr(ops_deploy.loader, "load", counting)
    Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1")
    assert loads == [[], ["lock dev/dev1"]]


def test_a_dry_run_takes_no_node_lock(root, fake_engine):
    Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1", dry_run=True)
    assert FakeNodeLocks.events == []


def test_deploy_edits_applies_then_commits_with_trailers(root, fake_engine):
    result = Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1")
    assert fake_engine.opened == ["dev/dev1"] and fake_engine.applied == ["dev/dev1/web"]
    assert (root / COMPOSE).read_text() == "services:\n  web:\n    image: registry.example.com/web:2  # pinned\n"
    assert result.commit == git(root, "rev-parse", "HEAD")
    assert result.steps == ["created web", "web is running"]
    assert git(root, "log", "-1", "--format=%s") == \
        "deploy dev/dev1/web: registry.example.com/web:1 -> registry.example.com/web:2"
    assert git(root, "log", "-1", "--format=%(trailers:only,unfold)") == "\n".join([
        "Deployer-Action: deploy", "Deployer-Target: dev/dev1/web", "Deployer-Image: registry.example.com/web:2",
        "Deployer-Previous-Image: registry.example.com/web:1", "Deployer-Image-Id: sha256:" + "ab" * 32])
    assert git(root, "status", "--porcelain") == ""


def test_a_failed_switch_commits_nothing_and_leaves_the_file(root, fake_engine):
    fake_engine.fail = HealthCheckFailed("web did not become healthy; restored the old container")
    before = (root / COMPOSE).read_bytes()
    with pytest.raises(HealthCheckFailed, match="restored the old container"):
        Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1")
    assert (root / COMPOSE).read_bytes() == before
    assert git(root, "rev-list", "--count", "HEAD") == "1"


def test_an_engine_failure_becomes_one_line_naming_the_node(root, fake_engine):
    fake_engine.fail = ConnectionResetError("Connection reset by peer")
    with pytest.raises(HostError, match=r"^node dev/dev1 \(unix:///nonexistent/docker.sock\): "):
        Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1")


def test_dry_run_plans_without_switching_or_committing(root, fake_engine):
    result = Deployer(root, consul=False).deploy("registry.example.com/web:2", "dev/dev1", dry_run=True)
    assert result.change.action == "create" and result.commit is None
    assert fake_engine.applied == []
    assert "web:2" in result.diff and "web:1" in (root / COMPOSE).read_text()


def test_an_image_no_service_runs_is_refused_before_the_engine_is_reached(root, fake_engine):
    with pytest.raises(ServiceMatchError, match="no service on dev/dev1 runs registry.example.com/api"):
        Deployer(root, consul=False).deploy("registry.example.com/api:1", "dev/dev1")
    assert fake_engine.opened == []


def test_rollback_deploys_the_image_before_from_history(root, fake_engine):
    d = Deployer(root, consul=False)
    d.deploy("registry.example.com/web:2", "dev/dev1")
    result = d.rollback("dev/dev1/web")
    assert result.image == "registry.example.com/web:1"
    assert "image: registry.example.com/web:1  # pinned" in (root / COMPOSE).read_text()
    trailers = git(root, "log", "-1", "--format=%(trailers:only,unfold)")
    assert "Deployer-Action: rollback" in trailers and "Deployer-Rollback-To: " in trailers
