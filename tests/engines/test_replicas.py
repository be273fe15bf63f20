"""Replicas, scale, one-shot dependencies and profiles against a real Docker engine and real git."""

from __future__ import annotations

import re

import pytest

from deployer.errors import HealthCheckFailed
from deployer.ops.deploy import Deployer
from tests.support.repos import WEB_PUBLISHED, cli, git, make_repo, managed, remove_node_containers

WEB1, WEB2, SICK = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:sick"
BASE = "deployer-test/busybox:base"

REPLICATED = WEB_PUBLISHED + """\
    deploy:
      replicas: 3
      update_config: {{parallelism: {parallelism}, failure_action: {failure_action}}}
"""


@pytest.fixture
def client(engine):
    c = engine.client()
    yield c
    c.close()


def running(client, node) -> dict[str, str]:
    """Container name -> image tag, of the running managed containers."""
    return {c.name: c.image.tags[0] for c in managed(client, node) if c.status == "running"}


def head(root):
    return git(root, "rev-parse", "HEAD")


def replicated_repo(engine, tmp_path, parallelism=1, failure_action="pause"):
    return make_repo(tmp_path / "infra", engine.unix_url,
                     REPLICATED.format(image=WEB1, parallelism=parallelism, failure_action=failure_action))


def order_of(lines: list[str], pattern: str) -> int:
    """The index of the first progress line matching ``pattern``."""
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no progress line matches {pattern!r}: {lines}")


def test_three_replicas_up_status_3_of_3_then_deploy_one_by_one_each_health_gated(engine, client, tmp_path):
    root, node = replicated_repo(engine, tmp_path)
    try:
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 0, result.output
        assert running(client, node) == {f"{node}-web": WEB1, f"{node}-web-2": WEB1, f"{node}-web-3": WEB1}
        labels = {c.name: c.labels.get("deployer.replica") for c in managed(client, node)}
        assert labels == {f"{node}-web": None, f"{node}-web-2": "2", f"{node}-web-3": "3"}
        status = cli(root, "status", f"test/{node}")
        assert status.exit_code == 0, status.output
        assert re.search(rf"test/{node}/web\s+{WEB1}\s+{WEB1}\s+healthy 3/3", status.stdout), status.stdout

        lines: list[str] = []
        result = Deployer(root, progress=lines.append).deploy(WEB2, f"test/{node}")
        assert result.commit
        assert running(client, node) == {f"{node}-web": WEB2, f"{node}-web-2": WEB2, f"{node}-web-3": WEB2}
        # parallelism 1: each replica healthy and its old container gone before the next one is created
        for a, b in ((f"{node}-web", f"{node}-web-2"), (f"{node}-web-2", f"{node}-web-3")):
            assert order_of(lines, rf"{a}-next is healthy") < order_of(lines, rf"removed {a}$") \
                < order_of(lines, rf"created {b}-next")
        assert "Deployer-Action: deploy" in git(root, "log", "-1", "--format=%(trailers:unfold,only)")
        assert cli(root, "status", f"test/{node}").exit_code == 0

        # a rollback of a replicated service works the same way
        result = Deployer(root).rollback(f"test/{node}/web")
        assert result.commit and set(running(client, node).values()) == {WEB1}
    finally:
        remove_node_containers(client, node)


def test_a_deploy_in_batches_of_two(engine, client, tmp_path):
    root, node = replicated_repo(engine, tmp_path, parallelism=2)
    try:
        assert cli(root, "apply", f"test/{node}").exit_code == 0
        lines: list[str] = []
        Deployer(root, progress=lines.append).deploy(WEB2, f"test/{node}")
        third = order_of(lines, rf"created {node}-web-3-next")
        # replicas 1 and 2 were replaced together, each health-gated, before replica 3 started
        for name in (f"{node}-web", f"{node}-web-2"):
            assert order_of(lines, rf"created {name}-next") < third
            assert order_of(lines, rf"{name}-next is healthy") < third
        assert set(running(client, node).values()) == {WEB2}
    finally:
        remove_node_containers(client, node)


def test_a_sick_deploy_pauses_or_rolls_back_as_failure_action_says(engine, client, tmp_path):
    root, node = replicated_repo(engine, tmp_path, failure_action="rollback")
    try:
        assert cli(root, "apply", f"test/{node}").exit_code == 0
        before = {c.name: c.id for c in managed(client, node)}
        commit = head(root)
        with pytest.raises(HealthCheckFailed, match="1 of 3 replicas failed.*rolled back"):
            Deployer(root).deploy(SICK, f"test/{node}", swap=None)
        assert head(root) == commit and git(root, "status", "--porcelain") == ""
        assert {c.name: c.id for c in managed(client, node) if c.status == "running"} == before
    finally:
        remove_node_containers(client, node)


def test_scale_down_to_one_and_up_to_three_are_commits(engine, client, tmp_path):
    root, node = replicated_repo(engine, tmp_path)
    compose = root / "datacenters" / "test" / node / "docker-compose.yml"
    try:
        assert cli(root, "apply", f"test/{node}").exit_code == 0
        first = {c.name: c.id for c in managed(client, node)}[f"{node}-web"]
        result = cli(root, "scale", f"test/{node}/web", "1")
        assert result.exit_code == 0, result.output
        assert f"scale test/{node}/web: 1 replicas [" in result.stdout
        assert {c.name: c.id for c in managed(client, node)} == {f"{node}-web": first}  # the first one stays
        assert "      replicas: 1\n" in compose.read_text()
        assert git(root, "show", "--name-only", "--format=", "HEAD") == f"datacenters/test/{node}/docker-compose.yml"
        assert git(root, "log", "-1", "--format=%s") == f"scale test/{node}/web: 3 -> 1 replicas"
        assert "Deployer-Action: scale" in git(root, "log", "-1", "--format=%(trailers:unfold,only)")

        result = cli(root, "scale", f"test/{node}/web", "3")
        assert result.exit_code == 0, result.output
        assert running(client, node) == {f"{node}-web": WEB1, f"{node}-web-2": WEB1, f"{node}-web-3": WEB1}
        assert {c.name: c.id for c in managed(client, node)}[f"{node}-web"] == first
        assert git(root, "log", "-1", "--format=%s") == f"scale test/{node}/web: 1 -> 3 replicas"
        assert git(root, "status", "--porcelain") == ""
        assert "nothing to do" in cli(root, "scale", f"test/{node}/web", "3").stdout
    finally:
        remove_node_containers(client, node)


def test_scale_refuses_what_cannot_run_and_commits_nothing(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, """\
        services:
          web:
            image: deployer-test/web:1
            ports: ["8080:80"]
    """)
    commit = head(root)
    result = cli(root, "scale", f"test/{node}/web", "2")
    assert result.exit_code == 3
    assert "2 replicas cannot all publish host port 8080/tcp" in result.output
    assert head(root) == commit and managed(client, node) == []


ONE_SHOT = """\
services:
  migrate:
    image: deployer-test/busybox:base
    command: ["sh", "-c", "echo migrating; echo done; exit {code}"]
  web:
    image: deployer-test/web:1
    init: true
    expose: ["80"]
    depends_on:
      migrate: {{condition: service_completed_successfully}}
  debug:
    image: deployer-test/web:1
    profiles: [debug]
"""


def test_a_one_shot_dependency_runs_to_completion_first(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, ONE_SHOT.format(code=0))
    try:
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 0, result.output
        states = {c.name: (c.status, c.attrs["State"]["ExitCode"]) for c in managed(client, node)}
        # the debug profile is not enabled on this node: not deployed, and not missing
        assert states == {f"{node}-migrate": ("exited", 0), f"{node}-web": ("running", 0)}
        status = cli(root, "status", f"test/{node}")
        assert status.exit_code == 0, status.output
        assert re.search(rf"test/{node}/migrate\s.*\scompleted", status.stdout), status.stdout
        assert "debug" not in status.stdout
        plan = cli(root, "plan", f"test/{node}")
        assert plan.exit_code == 0, plan.output
    finally:
        remove_node_containers(client, node)


def test_a_failed_one_shot_names_its_exit_code_and_logs_and_its_dependants_do_not_start(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, ONE_SHOT.format(code=3))
    try:
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 1, result.output
        assert "one-shot container deployer-test/busybox:base exited with code 3" in result.output
        assert "last log lines: migrating | done" in result.output
        assert re.search(rf"test/{node}/web: create skipped", result.output), result.output
        assert [c.name for c in managed(client, node)] == []  # the failed one-shot was removed
    finally:
        remove_node_containers(client, node)


def test_a_profile_enabled_in_node_yml_is_deployed(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, ONE_SHOT.format(code=0))
    node_yml = root / "datacenters" / "test" / node / "node.yml"
    node_yml.write_text(node_yml.read_text() + "profiles: [debug]\n")
    git(root, "commit", "-qam", "enable debug")
    try:
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 0, result.output
        assert f"{node}-debug" in running(client, node)
    finally:
        remove_node_containers(client, node)


DEPENDS = """\
services:
  db:
    image: deployer-test/web:1
    init: true
    expose: ["80"]
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 200ms
      retries: 2
  api:
    image: deployer-test/web:1
    init: true
    expose: ["80"]
    depends_on:
      db: {condition: service_healthy, restart: true}
"""


def test_restart_true_restarts_the_dependants_when_the_dependency_is_replaced(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, DEPENDS)
    try:
        assert cli(root, "apply", f"test/{node}").exit_code == 0
        api = client.containers.get(f"{node}-api")
        started = api.attrs["State"]["StartedAt"]
        result = cli(root, "deploy", WEB2, f"test/{node}", "--service", "db")
        assert result.exit_code == 0, result.output
        assert f"restarted {node}-api (api depends on db with restart: true)" in result.output
        api.reload()
        assert api.status == "running" and api.attrs["State"]["StartedAt"] != started  # the same container, restarted
        assert cli(root, "status", f"test/{node}").exit_code == 0
    finally:
        remove_node_containers(client, node)


def test_service_healthy_on_a_dependency_without_a_healthcheck_fails_clearly(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, """\
        services:
          db:
            image: deployer-test/busybox:base
            command: ["sleep", "600"]
          api:
            image: deployer-test/web:1
            depends_on: {db: {condition: service_healthy}}
    """)
    try:
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 1
        assert "has no healthcheck, and a service waits for it to be healthy" in result.output
        assert [c.name for c in managed(client, node)] == []
    finally:
        remove_node_containers(client, node)


def test_update_config_monitor_catches_a_container_that_dies_after_its_health_gate(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, """\
        services:
          web:
            image: deployer-test/web:1
            expose: ["80"]
            healthcheck:
              test: ["CMD", "test", "-f", "/www/index.html"]
              interval: 200ms
              retries: 2
            deploy:
              update_config: {monitor: 4s}
    """)
    compose = root / "datacenters" / "test" / node / "docker-compose.yml"
    try:
        assert cli(root, "apply", f"test/{node}").exit_code == 0
        (before,) = managed(client, node)
        # healthy within a second, then gone: without monitor this would pass the health gate
        compose.write_text(compose.read_text().replace(
            "    expose:", '    command: ["sh", "-c", "httpd -p 80 -h /www; sleep 2; exit 4"]\n    expose:'))
        git(root, "commit", "-qam", "a web that dies")
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 1, result.output
        assert "watching it 4s more (update_config.monitor)" in result.output
        assert "exited with code 4; restored the old container" in result.output
        (after,) = managed(client, node)
        assert after.id == before.id and after.status == "running"
    finally:
        remove_node_containers(client, node)


def test_a_sick_deploy_with_the_default_pause_stops_at_the_first_replica(engine, client, tmp_path):
    root, node = replicated_repo(engine, tmp_path)
    try:
        assert cli(root, "apply", f"test/{node}").exit_code == 0
        before = {c.name: c.id for c in managed(client, node)}
        commit = head(root)
        result = cli(root, "deploy", SICK, f"test/{node}")
        assert result.exit_code == 1
        assert "1 of 3 replicas failed (first: replica 1:" in result.output and "paused" in result.output
        assert head(root) == commit
        assert {c.name: c.id for c in managed(client, node) if c.status == "running"} == before
        assert cli(root, "status", f"test/{node}").exit_code == 0  # nothing was replaced: 3/3 as written
    finally:
        remove_node_containers(client, node)
