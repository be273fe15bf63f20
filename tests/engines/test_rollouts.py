"""Fleet rollouts on four real nodes: batches and --max-fail, --on-failure rollback, --canary, and
rollback --commit of a deploy where one node had failed.

A node is made to fail a deploy for real: on that node the tag web:2 names the unhealthy image, so the
health gate refuses the new container there and the old one keeps serving, exactly as a broken build would.
"""

from __future__ import annotations

import json
from contextlib import closing, contextmanager

import pytest

from tests.support.images import STANDARD_WEB_IMAGES, copy_image
from tests.support.repos import WEB_SERVICE, cli, git, run

WEB1, WEB2, SICK = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:sick"
NAMES = ["ro1", "ro2", "ro3", "ro4"]


@pytest.fixture(scope="module")
def nodes(fleet, engine):
    started = fleet.add_nodes(*(dict(name=n) for n in NAMES))
    with closing(engine.client()) as src:
        for node in started:
            with closing(node.client()) as dst:
                copy_image(src, dst, "deployer-test/busybox:base", *STANDARD_WEB_IMAGES)
    yield dict(zip(NAMES, started))
    for node in started:
        node.stop()


@pytest.fixture
def repo(nodes, tmp_path):
    """dc/ro1..ro4, each running web:1 (applied); containers removed after the test."""
    root = tmp_path / "infra"
    for name, node in nodes.items():
        (root / f"datacenters/dc/{name}").mkdir(parents=True)
        (root / f"datacenters/dc/{name}/node.yml").write_text(f"docker: {node.unix_url}\n")
        (root / f"datacenters/dc/{name}/docker-compose.yml").write_text(
            "services:\n" + WEB_SERVICE.format(image=WEB1))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "four nodes")
    result = cli(root, "apply", "-q")
    assert result.exit_code == 0, result.output
    yield root
    for node in nodes.values():
        node.reset()


@contextmanager
def broken(node):
    """On this node web:2 is the unhealthy image until the block ends."""
    with closing(node.client()) as client:
        good = client.images.get(WEB2).id
        client.images.get(SICK).tag(WEB2)
        try:
            yield
        finally:
            client.api.tag(good, "deployer-test/web", "2", force=True)


def running(nodes) -> dict[str, tuple[str, str]]:
    """node -> (image the web container runs, its container id)."""
    out = {}
    for name, node in nodes.items():
        with closing(node.client()) as client:
            (c,) = [c for c in client.containers.list() if c.labels.get("deployer.service") == "web"]
            out[name] = (c.labels["deployer.image"], c.id)
    return out


def status_rows(root) -> dict[str, dict]:
    result = cli(root, "status", "--json")
    rows = {r["target"]: r for r in json.loads(result.output)}
    assert result.exit_code == 0, rows  # what the repository says is what runs
    return rows


def committed_images(root) -> dict[str, str]:
    rows = status_rows(root)
    return {t.split("/")[1]: r["image"] for t, r in rows.items()}


def test_batch_two_max_fail_zero_stops_after_the_failing_batch(repo, nodes):
    before = running(nodes)
    with broken(nodes["ro2"]):
        result = run(repo, "deploy", WEB2, "dc", "--batch", "2", "--max-fail", "0")
    assert result.returncode == 1, result.stderr
    assert "1 of 4 targets failed: dc/ro2/web" in result.stderr
    assert "not attempted: dc/ro3/web, dc/ro4/web" in result.stderr
    assert "stopping: 1 failed (--max-fail 0); 2 not attempted" in result.stderr
    now = running(nodes)
    assert now["ro1"][0] == WEB2 and now["ro2"] == before["ro2"]  # the failed node kept its container
    assert now["ro3"] == before["ro3"] and now["ro4"] == before["ro4"]  # never touched
    assert committed_images(repo) == {"ro1": WEB2, "ro2": WEB1, "ro3": WEB1, "ro4": WEB1}
    trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)").splitlines()
    assert "Deployer-Target: dc/ro1/web" in trailers and "Deployer-Failed: dc/ro2/web" in trailers
    assert not any(t.startswith("Deployer-Target: dc/ro2") for t in trailers)


def test_on_failure_rollback_returns_the_updated_nodes_to_the_old_image(repo, nodes):
    head = git(repo, "rev-parse", "HEAD")
    with broken(nodes["ro3"]):
        result = run(repo, "deploy", WEB2, "dc", "--batch", "2", "--on-failure", "rollback", "--json")
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    by_target = {t["target"]: t for t in out["targets"]}
    assert [by_target[f"dc/{n}/web"]["rolled_back"] for n in NAMES] == [True, True, False, True]
    assert by_target["dc/ro3/web"]["error"] and out["commit"] is None
    assert "rolled back: dc/ro1/web, dc/ro2/web, dc/ro4/web; nothing committed" in result.stderr
    assert {image for image, _ in running(nodes).values()} == {WEB1}
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == ""
    assert committed_images(repo) == {n: WEB1 for n in NAMES}


def test_a_failed_canary_touches_no_other_node_and_a_good_one_lets_the_rest_go(repo, nodes):
    before = running(nodes)
    with broken(nodes["ro1"]):
        result = run(repo, "deploy", WEB2, "dc", "--canary")
    assert result.returncode == 1
    assert "stopping: the canary failed; 3 not attempted" in result.stderr
    assert running(nodes) == before and git(repo, "rev-list", "--count", "HEAD") == "1"

    result = run(repo, "deploy", WEB2, "dc", "--canary", "--batch", "50%", "--pause", "100ms")
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines.index("canary: 1 node") < lines.index("batch 2/3: 2 nodes") < lines.index("batch 3/3: 1 node")
    assert {image for image, _ in running(nodes).values()} == {WEB2}
    assert git(repo, "rev-list", "--count", "HEAD") == "2"  # one command, one commit
    assert committed_images(repo) == {n: WEB2 for n in NAMES}


def test_rollback_commit_after_a_three_node_deploy_where_one_node_failed(repo, nodes):
    with broken(nodes["ro3"]):
        result = run(repo, "deploy", WEB2, "dc/ro1", "dc/ro2", "dc/ro3")
    assert result.returncode == 1 and "1 of 3 targets failed: dc/ro3/web" in result.stderr
    deploy_sha = git(repo, "rev-parse", "HEAD")
    assert git(repo, "log", "-1", "--format=%(trailers:key=Deployer-Target,valueonly)").split() == [
        "dc/ro1/web", "dc/ro2/web"]
    ro3 = running(nodes)["ro3"]

    result = run(repo, "rollback", "--commit", deploy_sha[:10])
    assert result.returncode == 0, result.stderr
    now = running(nodes)
    assert now["ro1"][0] == WEB1 and now["ro2"][0] == WEB1 and now["ro3"] == ro3
    assert committed_images(repo) == {n: WEB1 for n in NAMES}
    assert git(repo, "rev-list", "--count", "HEAD") == "3"  # init, deploy, rollback: one commit each
    trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)").splitlines()
    assert trailers[:4] == ["Deployer-Action: rollback", "Deployer-Target: dc/ro1/web", "Deployer-Target: dc/ro2/web",
                            f"Deployer-Image: {WEB1}"]
    assert f"Deployer-Rollback-To: {deploy_sha}" in trailers
    history = json.loads(cli(repo, "history", "--json", "-n", "1").output)
    assert history[0]["action"] == "rollback" and history[0]["targets"] == ["dc/ro1/web", "dc/ro2/web"]

    result = run(repo, "rollback", "--commit", deploy_sha)  # a second time: ro1 and ro2 run web:1 already
    assert result.returncode == 0, result.stderr
    assert git(repo, "rev-list", "--count", "HEAD") == "3"
