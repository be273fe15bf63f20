"""The fleet: three real nodes (unix socket, SSH, TLS) in two datacenters; plan, apply, status, multi-node deploy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.images import STANDARD_WEB_IMAGES, copy_image
from tests.support.repos import WEB_SERVICE, cli, git, run

WEB1, WEB2, WEB3 = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:3"


@pytest.fixture(scope="module")
def nodes(fleet, engine):
    local, ssh, tls = fleet.add_nodes(dict(name="fa"), dict(name="fb", ssh=True), dict(name="fc", tls=True))
    with closing(engine.client()) as src:
        for node in (local, ssh, tls):
            with closing(node.client()) as dst:
                copy_image(src, dst, "deployer-test/busybox:base", *STANDARD_WEB_IMAGES)
    yield {"east/fa": local, "east/fb": ssh, "west/fc": tls}
    for node in (local, ssh, tls):
        node.stop()


def compose(image: str) -> str:
    return "services:\n" + WEB_SERVICE.format(image=image)


@pytest.fixture
def fleet_repo(nodes, tmp_path, git_env):
    """A repo describing the three nodes, each written to run web:1; nodes emptied after the test."""
    root = tmp_path / "infra"
    a, b, c = nodes["east/fa"], nodes["east/fb"], nodes["west/fc"]
    files = {
        "datacenters/east/fa/node.yml": f"docker: {a.unix_url}\n",
        "datacenters/east/fb/node.yml": f"docker: {b.ssh_url}\nidentity_file: {b.ssh_identity}\n",
        "datacenters/east/fb/known_hosts": b.ssh_host_key_line + "\n",
        "datacenters/west/fc/node.yml": (f"docker: {c.tls_url}\ntls:\n  ca: {c.tls_dir}/ca.pem\n"
                                         f"  cert: {c.tls_dir}/cert.pem\n  key: {c.tls_dir}/key.pem\n"),
    }
    for target in nodes:
        files[f"datacenters/{target}/docker-compose.yml"] = compose(WEB1)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    # The SSH node is verified against the repo's known_hosts, not the user's.
    (git_env / ".ssh" / "known_hosts").unlink(missing_ok=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fleet")
    yield root
    for node in nodes.values():
        if not node.is_link_up:
            node.link_up()
        node.reset()


def plan_json(root, *targets):
    result = cli(root, "plan", "--json", *targets)
    return result.exit_code, json.loads(result.output)


def test_plan_apply_status_across_three_transports(fleet_repo, nodes):
    root = fleet_repo
    code, plans = plan_json(root)
    assert code == 2
    assert {p["node"]: [c["action"] for c in p["changes"]] for p in plans} == {
        "east/fa": ["create"], "east/fb": ["create"], "west/fc": ["create"]}
    assert cli(root, "status").exit_code == 2  # drift: nothing runs yet

    result = cli(root, "apply")
    assert result.exit_code == 0, result.output
    for target, node in nodes.items():
        with closing(node.client()) as client:
            (c,) = client.containers.list(filters={"label": "deployer.service=web"})
            assert c.image.tags == [WEB1] and c.labels["deployer.dc"] == target.split("/")[0]

    code, plans = plan_json(root)
    assert code == 0 and all(c["action"] == "none" for p in plans for c in p["changes"])
    assert cli(root, "status").exit_code == 0
    assert git(root, "status", "--porcelain") == ""  # apply never changes the repository


def test_multi_node_deploy_makes_one_commit(fleet_repo, nodes):
    root = fleet_repo
    assert cli(root, "apply").exit_code == 0
    result = cli(root, "deploy", WEB2, "east", "west/fc")
    assert result.exit_code == 0, result.output
    assert git(root, "rev-list", "--count", "HEAD") == "2"
    trailers = git(root, "log", "-1", "--format=%(trailers:key=Deployer-Target,valueonly)").split()
    assert trailers == ["east/fa/web", "east/fb/web", "west/fc/web"]
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == [
        "datacenters/east/fa/docker-compose.yml", "datacenters/east/fb/docker-compose.yml",
        "datacenters/west/fc/docker-compose.yml"]
    rows = json.loads(cli(root, "status", "--json").output)
    assert {r["running_image"] for r in rows} == {WEB2}
    history = json.loads(cli(root, "history", "--json").output)
    assert history[0]["targets"] == ["east/fa/web", "east/fb/web", "west/fc/web"]


def test_unreachable_node_during_plan_apply_status_and_deploy(fleet_repo, nodes):
    root = fleet_repo
    nodes["east/fb"].link_down()
    started = time.monotonic()
    code, plans = plan_json(root)
    assert code == 1
    by_node = {p["node"]: p for p in plans}
    assert "east/fb" in by_node["east/fb"]["error"] and by_node["east/fb"]["changes"] == []
    assert [c["action"] for c in by_node["east/fa"]["changes"]] == ["create"]

    result = cli(root, "apply", "--json")
    assert result.exit_code == 1
    applied = {r["node"]: r for r in json.loads(result.output)}
    assert applied["east/fa"]["ok"] and applied["west/fc"]["ok"] and not applied["east/fb"]["ok"]

    status = cli(root, "status", "--json")
    assert status.exit_code == 1  # a node not read: 1, not the 2 of drift
    rows = {r["target"]: r for r in json.loads(status.output)}
    assert rows["east/fb/web"]["state"] == "unreachable" and rows["east/fa/web"]["state"] == "healthy"

    before = git(root, "rev-parse", "HEAD")
    result = run(root, "deploy", WEB2, "east/fb")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: node east/fb ({nodes['east/fb'].ssh_url}):"), line
    assert git(root, "rev-parse", "HEAD") == before and git(root, "status", "--porcelain") == ""
    assert time.monotonic() - started < 90


def test_multi_node_deploy_with_a_failing_node_commits_only_what_succeeded(fleet_repo, nodes):
    root = fleet_repo
    assert cli(root, "apply").exit_code == 0
    nodes["west/fc"].link_down()
    result = run(root, "deploy", WEB2, "east/fa", "west/fc")
    assert result.returncode == 1
    assert "1 of 2 targets failed: west/fc/web" in result.stderr
    assert git(root, "log", "-1", "--format=%s") == f"deploy east/fa/web: {WEB1} -> {WEB2}"
    assert git(root, "status", "--porcelain") == ""


def test_batches_stop_at_the_first_failed_batch(fleet_repo, nodes):
    root = fleet_repo
    assert cli(root, "apply").exit_code == 0
    result = run(root, "deploy", "deployer-test/web:sick", "east/fa", "east/fb", "west/fc", "--service", "web",
                 "--batch", "1")
    assert result.returncode == 1
    assert "not attempted: east/fb/web, west/fc/web" in result.stderr
    assert "nothing committed" in result.stderr
    assert git(root, "rev-list", "--count", "HEAD") == "1"


def test_hand_edited_container_is_drift_and_apply_repairs_it(fleet_repo, nodes):
    root = fleet_repo
    assert cli(root, "apply").exit_code == 0
    with closing(nodes["east/fa"].client()) as client:
        (c,) = client.containers.list(filters={"label": "deployer.service=web"})
        c.update(mem_limit="64m", memswap_limit="128m")
    code, plans = plan_json(root, "east/fa")
    assert code == 2
    (change,) = plans[0]["changes"]
    assert change["action"] == "replace" and "memory limit changed on the host" in change["reasons"]
    assert cli(root, "apply", "east/fa").exit_code == 0
    assert plan_json(root, "east/fa")[0] == 0


def test_unmanaged_container_with_the_same_name_is_refused_not_removed(fleet_repo, nodes):
    root = fleet_repo
    with closing(nodes["east/fa"].client()) as client:
        squatter = client.containers.create(WEB1, name="fa-web")
        result = cli(root, "apply", "--json", "east/fa")
        assert result.exit_code == 1
        (node,) = json.loads(result.output)
        assert node["changes"][0]["status"] == "failed" and "did not create" in node["changes"][0]["detail"]
        squatter.reload()
        assert squatter.status == "created"
        squatter.remove(force=True)


def test_prune_removes_only_managed_containers_no_longer_listed(fleet_repo, nodes):
    root = fleet_repo
    assert cli(root, "apply").exit_code == 0
    compose_file = Path(root) / "datacenters/east/fa/docker-compose.yml"
    compose_file.write_text("services: {}\n")
    git(root, "commit", "-qam", "remove web from fa")
    code, plans = plan_json(root, "east/fa")
    assert code == 0  # without --prune nothing is removed
    result = cli(root, "plan", "--json", "--prune", "east/fa")
    assert result.exit_code == 2 and json.loads(result.output)[0]["changes"][0]["action"] == "remove"
    assert cli(root, "apply", "--prune", "east/fa").exit_code == 0
    with closing(nodes["east/fa"].client()) as client:
        assert client.containers.list(all=True, filters={"label": "deployer.node=fa"}) == []


def test_node_going_away_mid_apply_fails_that_node_only(fleet_repo, nodes):
    """The SSH node's link goes down while apply waits for its new container to become healthy."""
    from tests.support.images import build_image

    root = fleet_repo
    ssh_node = nodes["east/fb"]
    with closing(ssh_node.client()) as client:  # the unix socket still works with the link down
        build_image(client, "deployer-test/web:slow", "FROM deployer-test/busybox:base\nCOPY www /www\n"
                    'CMD ["/bin/sh", "-c", "trap \'exit 0\' TERM; sleep 6; cp /www/body.html /www/index.html; '
                    'httpd -f -p 80 -h /www & wait"]\n', {"www/": b"", "www/body.html": "slow"})
        compose_file = Path(root) / "datacenters/east/fb/docker-compose.yml"
        compose_file.write_text(compose("deployer-test/web:slow").replace("retries: 2",
                                                                          "retries: 2\n      start_period: 30s"))
        git(root, "commit", "-qam", "fb runs the slow image")
        proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "apply", "--json", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.containers.list(filters={"label": "deployer.node=fb"},
                                                                     ignore_removed=True):
            time.sleep(0.05)
        ssh_node.link_down()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    results = {r["node"]: r for r in json.loads(out)}
    assert results["east/fa"]["ok"] and results["west/fc"]["ok"]
    assert not results["east/fb"]["ok"]
    failure = results["east/fb"]["error"] or results["east/fb"]["changes"][0]["detail"]
    assert "east/fb" in failure
    ssh_node.link_up()
    again = cli(root, "apply")
    assert again.exit_code == 0, again.output  # back: the next apply converges
