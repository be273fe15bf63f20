"""Fleet rollouts in ops.deploy over its two seams, without Docker: a real repository transaction on a
temporary git repository of four nodes, and a fake engine session that remembers which image each node
was switched to (and fails on the nodes a test names, as a health gate would: the old container stays)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.engine.apply import Outcome
from deployer.engine.plan import plan_service
from deployer.engine.state import ContainerState, NodeState
from deployer.errors import HealthCheckFailed, PartialDeploy, RollbackError
from deployer.ops import deploy as ops_deploy
from deployer.ops.deploy import Deployer
from deployer.ops.rollout import CONTINUE, ROLLBACK, Rollout
from tests.support.repos import git
from tests.unit.fakes import FakeNodeLocks

NODES = ["n1", "n2", "n3", "n4"]
V1, V2, V3 = (f"registry.example.com/web:{v}" for v in (1, 2, 3))


def compose(node: str) -> str:
    return f"datacenters/dc/{node}/docker-compose.yml"


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "infra"
    for node in NODES:
        (root / f"datacenters/dc/{node}").mkdir(parents=True)
        (root / f"datacenters/dc/{node}/node.yml").write_text(f"docker: unix:///nonexistent/{node}.sock\n")
        (root / compose(node)).write_text(f"services:\n  web:\n    image: {V1}\n")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


class Engines:
    """What runs on each fake node, the order of switches, and which nodes fail which image."""

    def __init__(self):
        self.runs = {n: V1 for n in NODES}
        self.switches: list[tuple[str, str]] = []
        self.fail: set[tuple[str, str]] = set()  # (node, image) whose switch fails health


@pytest.fixture
def engines(monkeypatch):
    world = Engines()

    class Session:
        def __init__(self, node, root, **kw):
            self.node = node
            self.state = NodeState([], {})

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def image_id(self, ref):
            return "sha256:" + "ab" * 32

        def plan(self, specs):
            return [plan_service(spec, [], self.image_id(spec.image)) for spec in specs]

        def applier(self, options=None, hooks=None, progress=None, guard=None, lock_id=None):
            node = self.node.name

            class Applier:
                def ensure_image(self, ref, needed_by=None):
                    return "sha256:" + "ab" * 32

                def ensure_resources(self, volumes, networks):
                    pass

                def apply(self, change, state):
                    image = change.spec.image
                    world.switches.append((node, image))
                    if (node, image) in world.fail:
                        raise HealthCheckFailed(f"{node}: web did not become healthy; restored the old container")
                    world.runs[node] = image
                    running = ContainerState(id="c" * 64, name="web", image=image, image_id="sha256:" + "ab" * 32,
                                             status="running", health=None, exit_code=0, restart_count=0,
                                             labels=change.spec.all_labels())
                    return Outcome(change, running, 0.1, [f"{node} runs {image}"])

            return Applier()

    monkeypatch.setattr(ops_deploy, "EngineSession", Session)
    FakeNodeLocks.events, FakeNodeLocks.held_by = [], None
    monkeypatch.setattr(ops_deploy, "NodeLocks", FakeNodeLocks)  # the node locks are tested in test_ops_deploy
    return world


def written(root: Path) -> dict[str, str]:
    """The image each node's compose file says (the repository's side of 'what runs')."""
    return {n: (root / compose(n)).read_text().split("image: ")[1].strip() for n in NODES}


def trailers(root: Path, rev: str = "HEAD") -> list[str]:
    return git(root, "log", "-1", "--format=%(trailers:only,unfold)", rev).splitlines()


def test_batch_two_with_max_fail_zero_stops_after_the_failing_batch(root, engines):
    engines.fail = {("n2", V2)}
    with pytest.raises(PartialDeploy, match=r"1 of 4 targets failed: .*not attempted: dc/n3/web, dc/n4/web") as info:
        Deployer(root, consul=False).deploy(V2, "dc", rollout=Rollout(batch=(2, False), max_fail=0))
    assert sorted(n for n, _ in engines.switches) == ["n1", "n2"]
    assert engines.runs == {"n1": V2, "n2": V1, "n3": V1, "n4": V1}
    assert written(root) == engines.runs  # the commit holds what runs
    assert info.value.result.stopped == "1 failed (--max-fail 0); 2 not attempted"
    assert "Deployer-Target: dc/n1/web" in trailers(root) and "Deployer-Failed: dc/n2/web" in trailers(root)


def test_max_fail_one_goes_on_past_one_failure(root, engines):
    engines.fail = {("n1", V2)}
    with pytest.raises(PartialDeploy):
        Deployer(root, consul=False).deploy(V2, "dc", rollout=Rollout(batch=(1, False), max_fail=1))
    assert engines.runs == {"n1": V1, "n2": V2, "n3": V2, "n4": V2} == written(root)


def test_on_failure_rollback_switches_the_updated_nodes_back_and_commits_nothing(root, engines):
    engines.fail = {("n3", V2)}
    head = git(root, "rev-parse", "HEAD")
    with pytest.raises(PartialDeploy, match="rolled back: dc/n1/web, dc/n2/web, dc/n4/web; nothing committed") as info:
        Deployer(root, consul=False).deploy(V2, "dc", rollout=Rollout(batch=(2, False), on_failure=ROLLBACK))
    first, second, back = engines.switches[:2], engines.switches[2:4], engines.switches[4:]  # batches in parallel
    assert sorted(first) == [("n1", V2), ("n2", V2)] and sorted(second) == [("n3", V2), ("n4", V2)]
    assert sorted(back) == [("n1", V1), ("n2", V1), ("n4", V1)]
    assert engines.runs == {n: V1 for n in NODES} == written(root)
    assert git(root, "rev-parse", "HEAD") == head and git(root, "status", "--porcelain") == ""
    result = info.value.result
    assert [t.rolled_back for t in result.targets] == [True, True, False, True]


def test_a_node_that_cannot_be_rolled_back_is_committed_with_what_it_runs(root, engines):
    engines.fail = {("n2", V2), ("n1", V1)}  # n1 switches to 2, then its switch back fails: it runs 2
    with pytest.raises(PartialDeploy, match=r"could not roll back: dc/n1/web") as info:
        Deployer(root, consul=False).deploy(V2, ["dc/n1", "dc/n2"], rollout=Rollout(on_failure=ROLLBACK))
    assert engines.runs == {"n1": V2, "n2": V1, "n3": V1, "n4": V1} == written(root)
    assert info.value.result.commit == git(root, "rev-parse", "HEAD")
    assert "Deployer-Failed: dc/n2/web" in trailers(root)


def test_continue_runs_every_batch(root, engines):
    engines.fail = {("n1", V2), ("n3", V2)}
    with pytest.raises(PartialDeploy, match="2 of 4 targets failed"):
        Deployer(root, consul=False).deploy(V2, "dc", rollout=Rollout(batch=(1, False), on_failure=CONTINUE))
    assert engines.runs == {"n1": V1, "n2": V2, "n3": V1, "n4": V2} == written(root)


def test_a_failed_canary_touches_no_other_node(root, engines):
    engines.fail = {("n1", V2)}
    with pytest.raises(PartialDeploy, match="not attempted: dc/n2/web, dc/n3/web, dc/n4/web; nothing committed"):
        Deployer(root, consul=False).deploy(V2, "dc", rollout=Rollout(canary=True, max_fail=3))
    assert engines.switches == [("n1", V2)]


def test_the_canary_goes_first_then_the_rest(root, engines):
    result = Deployer(root, consul=False).deploy(V2, "dc", rollout=Rollout(canary=True, batch=(50, True)),
                                                 parallel=1)
    assert [n for n, _ in engines.switches] == NODES and result.stopped is None
    assert written(root) == {n: V2 for n in NODES}
    assert git(root, "rev-list", "--count", "HEAD") == "2"  # one command, one commit


def test_rollback_commit_returns_every_target_of_a_partly_failed_deploy(root, engines):
    d = Deployer(root, consul=False)
    engines.fail = {("n3", V2)}
    with pytest.raises(PartialDeploy):
        d.deploy(V2, ["dc/n1", "dc/n2", "dc/n3"])
    deploy_sha = git(root, "rev-parse", "HEAD")
    d.deploy(V3, "dc/n4")  # another deploy after it: not undone
    engines.switches.clear()
    result = d.rollback(commit=deploy_sha[:8])
    assert sorted(engines.switches) == [("n1", V1), ("n2", V1)]
    assert engines.runs == {"n1": V1, "n2": V1, "n3": V1, "n4": V3} == written(root)
    assert result.rollback_to == deploy_sha
    assert trailers(root) == ["Deployer-Action: rollback", "Deployer-Target: dc/n1/web", "Deployer-Target: dc/n2/web",
                              f"Deployer-Image: {V1}", f"Deployer-Previous-Image: {V2}",
                              f"Deployer-Previous-Image: {V2}", "Deployer-Image-Id: sha256:" + "ab" * 32,
                              f"Deployer-Rollback-To: {deploy_sha}"]


def test_rollback_of_a_dc_undoes_the_latest_deploy_there_each_to_its_own_image(root, engines):
    d = Deployer(root, consul=False)
    d.deploy(V2, "dc/n1")
    d.deploy(V3, ["dc/n1", "dc/n2"])
    result = d.rollback("dc")
    assert engines.runs == {"n1": V2, "n2": V1, "n3": V1, "n4": V1} == written(root)
    assert result.image == "(various)"
    assert f"Deployer-Image: {V2}" in trailers(root) and f"Deployer-Image: {V1}" in trailers(root)


def test_rollback_commit_refuses_what_is_not_a_deploy(root, engines):
    d = Deployer(root, consul=False)
    with pytest.raises(RollbackError, match="is not a deploy or rollback"):
        d.rollback(commit="HEAD")
    with pytest.raises(RollbackError, match="unknown revision nope"):
        d.rollback(commit="nope")
    assert engines.switches == []
