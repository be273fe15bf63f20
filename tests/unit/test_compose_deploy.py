"""config/compose_deploy.py: deploy:, scale, profiles and the depends_on options, checked and read into the spec."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deployer.config import loader
from deployer.errors import ValidationFailed
from tests.support.compose import COMPOSE, api_client, one_problem, problems, spec_of


def test_resources_map_as_compose_v2_maps_them(tmp_path: Path):
    spec = spec_of("""
        services:
          web:
            image: nginx
            deploy:
              resources:
                limits: {cpus: '0.5', memory: 256m, pids: 100}
                reservations: {memory: 64m}
    """, "web", tmp_path)
    assert spec.host["nano_cpus"] == 500_000_000
    assert spec.host["mem_limit"] == 256 * 1024**2
    assert spec.host["pids_limit"] == 100
    assert spec.host["mem_reservation"] == 64 * 1024**2
    # what the engine is sent: HostConfig Memory, NanoCpus, PidsLimit, MemoryReservation
    host = api_client().create_host_config(**spec.host)
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"], host["MemoryReservation"]) == (
        256 * 1024**2, 500_000_000, 100, 64 * 1024**2)


def test_the_same_value_written_twice_is_one_setting(tmp_path: Path):
    spec = spec_of("""
        services:
          web:
            image: nginx
            mem_limit: 256m
            cpus: 0.5
            deploy:
              resources:
                limits: {cpus: '0.5', memory: 268435456}
    """, "web", tmp_path)
    assert spec.host["mem_limit"] == 256 * 1024**2 and spec.host["nano_cpus"] == 500_000_000


def test_distinct_values_for_one_setting_are_refused_as_compose_refuses_them():
    assert problems("""
        services:
          web:
            image: nginx
            mem_limit: 512m
            cpus: 1
            deploy:
              resources:
                limits: {memory: 256m}
    """) == [
        f"{COMPOSE}:5: services.web.mem_limit: mem_limit and deploy.resources.limits.memory are one setting: write "
        "it once (docker compose refuses distinct values, and a limits block without memory counts as distinct)",
        f"{COMPOSE}:6: services.web.cpus: cpus and deploy.resources.limits.cpus are one setting: write it once "
        "(docker compose refuses distinct values, and a limits block without cpus counts as distinct)",
    ]


def test_restart_policy_maps_to_the_engine_policy(tmp_path: Path):
    def policy(text: str):
        return spec_of(f"""
            services:
              web:
                image: nginx
                deploy:
                  restart_policy: {text}
        """, "web", tmp_path).host.get("restart_policy")

    assert policy("{condition: on-failure, max_attempts: 3}") == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert policy("{condition: any}") == {"Name": "always"}
    assert policy("{}") == {"Name": "always"}  # the spec's default condition is any
    assert policy("{condition: none}") is None


def test_restart_policy_delay_and_window_are_refused_with_the_reason():
    assert problems("""
        services:
          web:
            image: nginx
            deploy:
              restart_policy: {condition: on-failure, delay: 5s, window: 1m}
    """) == [
        f"{COMPOSE}:6: services.web.deploy.restart_policy.delay: unsupported key 'delay': the engine has no restart "
        "delay (it backs off on its own); docker compose ignores it too",
        f"{COMPOSE}:6: services.web.deploy.restart_policy.window: unsupported key 'window': the engine has no "
        "restart window; docker compose ignores it too",
    ]


def test_restart_and_restart_policy_disagreeing_is_refused():
    assert one_problem("""
        services:
          web:
            image: nginx
            restart: always
            deploy:
              restart_policy: {condition: on-failure}
    """) == (f"{COMPOSE}:5: services.web.restart: restart and deploy.restart_policy disagree: write one of them "
             "(docker compose would silently use deploy.restart_policy)")


@pytest.mark.parametrize("key, value, why", [
    ("placement", "{constraints: [node.role == manager]}", "placement constraints choose a Swarm node"),
    ("endpoint_mode", "vip", "only Docker Swarm acts on it"),
    ("labels", "{a: b}", "deploy.labels label the Swarm service"),
    ("rollback_config", "{parallelism: 1}", "only Docker Swarm acts on it"),
])
def test_swarm_only_deploy_keys_are_refused_with_that_reason(key, value, why):
    found = one_problem(f"""
        services:
          web:
            image: nginx
            deploy:
              {key}: {value}
    """)
    assert found.startswith(f"{COMPOSE}:6: services.web.deploy.{key}: unsupported key '{key}': ") and why in found


def test_mode_global_is_swarm_and_reservations_cpus_is_refused():
    assert problems("""
        services:
          web:
            image: nginx
            deploy:
              mode: global
              resources:
                reservations: {cpus: '0.25'}
    """) == [
        f"{COMPOSE}:6: services.web.deploy.mode: mode global is Swarm's: only Docker Swarm acts on it; on one engine "
        "it would mean nothing; use replicas on each node",
        f"{COMPOSE}:8: services.web.deploy.resources.reservations.cpus: unsupported key 'cpus': a CPU reservation "
        "only means something to Swarm's scheduler (docker compose ignores it too); limit CPUs with limits.cpus",
    ]


@pytest.mark.parametrize("value, message", [
    ("-1", "must be a whole number from 0 to 64, not -1"),
    ("three", "must be a whole number from 0 to 64, not a string"),
    ("'3'", "must be a whole number from 0 to 64, not a string"),
    ("2.5", "must be a whole number from 0 to 64, not a number"),
    ("65", "must be a whole number from 0 to 64, not 65"),
])
def test_bad_replicas_are_refused(value, message):
    assert one_problem(f"""
        services:
          web:
            image: nginx
            deploy:
              replicas: {value}
    """) == f"{COMPOSE}:6: services.web.deploy.replicas: {message}"
    assert one_problem(f"""
        services:
          web:
            image: nginx
            scale: {value}
    """) == f"{COMPOSE}:5: services.web.scale: {message}"


def test_scale_and_replicas_disagreeing_is_refused():
    assert one_problem("""
        services:
          web:
            image: nginx
            scale: 2
            deploy: {replicas: 3}
    """) == (f"{COMPOSE}:5: services.web.scale: scale: 2 and deploy.replicas: 3 disagree: write one of them "
             "(docker compose refuses distinct values too)")


def test_replicas_cannot_share_a_container_name_or_a_fixed_host_port():
    assert problems("""
        services:
          web:
            image: nginx
            container_name: web
            ports: ["8080:80"]
            deploy: {replicas: 2}
    """) == [
        f"{COMPOSE}:7: services.web.deploy.replicas: 2 replicas cannot share one container_name: leave "
        "container_name out (replicas are named <node>-<service>, <node>-<service>-2, ...)",
        f"{COMPOSE}:7: services.web.deploy.replicas: 2 replicas cannot all publish host port 8080/tcp: publish an "
        "ephemeral port ('80') and reach them through Consul and a proxy",
    ]


def test_update_config_is_read_into_the_rollout_not_the_hash(tmp_path: Path):
    text = """
        services:
          web:
            image: nginx
            ports: ["80"]
            deploy:
              replicas: 3
              update_config: {parallelism: 2, delay: 1s, order: stop-first, failure_action: rollback,
                              monitor: 500ms, max_failure_ratio: 0.5}
    """
    spec = spec_of(text, "web", tmp_path)
    r = spec.rollout
    assert (r.replicas, r.parallelism, r.delay, r.order, r.failure_action, r.monitor, r.max_failure_ratio) == (
        3, 2, 1.0, "stop-first", "rollback", 0.5, 0.5)
    plain = spec_of("""
        services:
          web:
            image: nginx
            ports: ["80"]
    """, "web", tmp_path)
    assert plain.config_hash() == spec.config_hash()  # scaling and update settings replace no container
    assert plain.rollout.replicas == 1 and plain.rollout.failure_action == "pause"


def test_update_config_values_are_checked():
    assert problems("""
        services:
          web:
            image: nginx
            ports: ["8080:80"]
            deploy:
              update_config: {parallelism: -1, order: sideways, failure_action: retry, max_failure_ratio: 2,
                              delay: 5}
    """) == [
        f"{COMPOSE}:7: services.web.deploy.update_config.parallelism: must be a whole number of 0 (all at once) or "
        "more, not -1",
        f"{COMPOSE}:7: services.web.deploy.update_config.order: must be one of start-first, stop-first, not 'sideways'",
        f"{COMPOSE}:7: services.web.deploy.update_config.failure_action: must be one of pause, continue, rollback, "
        "not 'retry'",
        f"{COMPOSE}:7: services.web.deploy.update_config.max_failure_ratio: must be a number from 0 to 1, not 2",
        f"{COMPOSE}:8: services.web.deploy.update_config.delay: must be a duration with a unit, like '30s' or "
        "'1m30s', not an integer",
    ]


def test_start_first_with_a_fixed_host_port_is_refused():
    found = one_problem("""
        services:
          web:
            image: nginx
            ports: ["8080:80"]
            deploy:
              update_config: {order: start-first}
    """)
    assert found.startswith(f"{COMPOSE}:7: services.web.deploy.update_config.order: start-first cannot start")


def test_depends_on_required_false_allows_an_absent_service_and_options_are_booleans():
    assert problems("""
        services:
          web:
            image: nginx
            depends_on:
              cache: {condition: service_started, required: false}
              db: {condition: service_started, restart: yes please}
    """) == [
        f"{COMPOSE}:7: services.web.depends_on.db.restart: must be true or false, not a string",
        f"{COMPOSE}:7: services.web.depends_on.db: unknown service 'db' (services in this file: web)",
    ]


def test_one_shot_healthy_and_restart_dependants_are_read_from_the_dependants(tmp_path: Path):
    text = """
        services:
          migrate: {image: busybox}
          db: {image: postgres}
          api:
            image: api
            depends_on:
              migrate: {condition: service_completed_successfully}
              db: {condition: service_healthy, restart: true}
    """
    assert spec_of(text, "migrate", tmp_path).rollout.one_shot
    db = spec_of(text, "db", tmp_path).rollout
    assert db.healthcheck_required and not db.one_shot and db.restart_dependants == ("api",)
    assert not spec_of(text, "api", tmp_path).rollout.one_shot


# -- profiles ----------------------------------------------------------------------


def write_repo(root: Path, compose: str, node_yml: str = "docker: unix:///var/run/docker.sock\n") -> Path:
    node = root / "datacenters" / "dc1" / "n1"
    node.mkdir(parents=True)
    (node / "node.yml").write_text(node_yml)
    (node / "docker-compose.yml").write_text(compose)
    return root


COMPOSE_PROFILES = """\
services:
  web:
    image: nginx
  debug:
    image: busybox
    profiles: [debug]
  api:
    image: api
    depends_on:
      debug: {condition: service_started, required: false}
"""


def test_services_of_profiles_the_node_does_not_enable_are_not_deployed(tmp_path: Path):
    node = loader.load(write_repo(tmp_path, COMPOSE_PROFILES)).node("dc1", "n1")
    assert sorted(node.services) == ["api", "web"]


def test_a_node_enables_profiles_in_node_yml(tmp_path: Path):
    repo = write_repo(tmp_path, COMPOSE_PROFILES, "docker: unix:///var/run/docker.sock\nprofiles: [debug]\n")
    node = loader.load(repo).node("dc1", "n1")
    assert node.profiles == ("debug",) and sorted(node.services) == ["api", "debug", "web"]


def test_a_required_dependency_on_a_disabled_profile_is_refused(tmp_path: Path):
    repo = write_repo(tmp_path, COMPOSE_PROFILES.replace("required: false", "required: true"))
    with pytest.raises(ValidationFailed) as caught:
        loader.load(repo)
    assert caught.value.problems[0].render() == (
        f"{COMPOSE}:7: services.api.depends_on: needs service 'debug', whose profiles (debug) this node does not "
        "enable (node.yml profiles: none); enable one, or write required: false")
    assert caught.value.exit_code == 3


def test_bad_node_profiles_are_refused(tmp_path: Path):
    repo = write_repo(tmp_path, COMPOSE_PROFILES, "docker: unix:///var/run/docker.sock\nprofiles: debug\n")
    with pytest.raises(ValidationFailed) as caught:
        loader.load(repo)
    assert caught.value.problems[0].render() == (
        "datacenters/dc1/n1/node.yml:2: profiles: must be a list of profile names, not a string")


# -- bad input through the commands: one line with file:line, exit 3, nothing deployed or committed -------------


@pytest.mark.parametrize("deploy, message", [
    ("{replicas: -1}", "services.web.deploy.replicas: must be a whole number from 0 to 64, not -1"),
    ("{replicas: many}", "services.web.deploy.replicas: must be a whole number from 0 to 64, not a string"),
    ("{placement: {constraints: [node.role == manager]}}", "services.web.deploy.placement: unsupported key "
     "'placement': placement constraints choose a Swarm node"),
])
def test_bad_deploy_keys_stop_validate_deploy_and_scale(tmp_path: Path, deploy, message):
    from click.testing import CliRunner

    from deployer.cli.main import main
    from tests.support.compose import git

    compose = f"services:\n  web:\n    image: nginx\n    ports: ['80']\n    deploy: {deploy}\n"
    root = write_repo(tmp_path, compose, "docker: unix:///nonexistent/docker.sock\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial")
    def head() -> str:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout

    before = head()
    for args in (["validate"], ["deploy", "nginx:2", "dc1/n1"], ["scale", "dc1/n1/web", "2"]):
        result = CliRunner().invoke(main, ["--repo", str(root), *args])
        assert result.exit_code == 3, (args, result.output)
        assert f"{COMPOSE}:5: {message}" in result.output, (args, result.output)
    assert head() == before and before
    assert (root / COMPOSE).read_text() == compose


def test_a_replica_name_taken_by_another_service_is_refused(tmp_path: Path):
    repo = write_repo(tmp_path, "services:\n  web:\n    image: nginx\n    scale: 2\n  web-2:\n    image: nginx\n")
    with pytest.raises(ValidationFailed) as caught:
        loader.load(repo)
    assert caught.value.problems[0].render() == (
        f"{COMPOSE}:5: services.web-2.container_name: container name 'n1-web-2' is also used by service 'web'")
