"""engine/plan.py plan_rollout: a replicated service against the containers that run (state fixtures built
from the specs, as read_node makes them of a real engine's inspect JSON), and its status row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from deployer.engine.plan import CREATE, NONE, REMOVE, REPLACE, SCALE, TIDY, plan_rollout, plan_service
from deployer.engine.state import ContainerState
from deployer.labels import LABEL_REPLICA
from deployer.ops.fleet import status_row
from deployer.spec import NEXT_SUFFIX, ContainerSpec, Rollout
from tests.support.compose import spec_of

IMAGE_ID = "sha256:" + "a" * 64

TEXT = """
    services:
      web:
        image: registry.example/web:1.0
        ports: ["80"]
        healthcheck: {test: ["CMD", "true"], interval: 1s}
"""


def web(tmp_path: Path, replicas: int = 3, image: str = "registry.example/web:1.0") -> ContainerSpec:
    spec = spec_of(TEXT.replace("registry.example/web:1.0", image), "web", tmp_path)
    return replace(spec, rollout=Rollout(replicas=replicas))


def running(spec: ContainerSpec, *, name: str | None = None, health: str = "healthy", n: int = 0) -> ContainerState:
    """The container an engine reports for ``spec`` (what read_node reads: labels, state, host settings)."""
    ident = f"{spec.replica:02d}{n:02d}" + "0" * 60
    return ContainerState(
        id=ident, name=name or spec.name, image=spec.image, image_id=IMAGE_ID, status="running", health=health,
        exit_code=0, restart_count=0, labels=spec.all_labels(),
        host={"restart_policy": spec.host.get("restart_policy") or {}, "memory": 0, "nano_cpus": 0,
              "port_bindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]}},
    )


def test_replica_names_keep_the_single_container_name_for_replica_one(tmp_path):
    spec = web(tmp_path)
    assert [spec.for_replica(i).name for i in (1, 2, 3)] == ["n1-web", "n1-web-2", "n1-web-3"]
    assert LABEL_REPLICA not in spec.for_replica(1).labels and spec.for_replica(3).labels[LABEL_REPLICA] == "3"
    assert spec.for_replica(1) is spec


def test_one_replica_plans_exactly_as_one_container(tmp_path):
    spec = web(tmp_path, replicas=1)
    containers = [running(spec)]
    assert plan_rollout(spec, containers, IMAGE_ID) == plan_service(spec, containers, IMAGE_ID)
    assert plan_rollout(spec, containers, IMAGE_ID).parts == []


def test_three_replicas_from_nothing_are_three_creates(tmp_path):
    change = plan_rollout(web(tmp_path), [], IMAGE_ID)
    assert change.action == CREATE
    assert [(p.replica, p.action, p.spec.name) for p in change.parts] == [
        (1, CREATE, "n1-web"), (2, CREATE, "n1-web-2"), (3, CREATE, "n1-web-3")]
    assert (change.ready, change.wanted) == (0, 3)
    assert change.reasons == ["scale 0 -> 3", "replicas 1, 2, 3: no container"]
    row = status_row(change.spec, change)
    assert (row.state, row.replicas, row.match) == ("missing", "0/3", False)


def test_three_healthy_replicas_plan_none_and_show_3_of_3(tmp_path):
    spec = web(tmp_path)
    change = plan_rollout(spec, [running(spec.for_replica(i)) for i in (1, 2, 3)], IMAGE_ID)
    assert change.action == NONE and [p.action for p in change.parts] == [NONE] * 3
    row = status_row(spec, change)
    assert (row.state, row.replicas, row.match) == ("healthy", "3/3", True)
    assert change.to_json()["ready"] == 3 and [r["replica"] for r in change.to_json()["replicas"]] == [1, 2, 3]


def test_scaling_one_to_three_keeps_the_running_container(tmp_path):
    one = web(tmp_path, replicas=1)
    change = plan_rollout(web(tmp_path), [running(one)], IMAGE_ID)
    assert change.action == SCALE
    assert [(p.replica, p.action) for p in change.parts] == [(1, NONE), (2, CREATE), (3, CREATE)]
    assert change.reasons == ["scale 1 -> 3", "replicas 2, 3: no container"]


def test_scaling_down_removes_the_highest_replicas(tmp_path):
    spec = web(tmp_path)
    containers = [running(spec.for_replica(i)) for i in (1, 2, 3)]
    change = plan_rollout(web(tmp_path, replicas=1), containers, IMAGE_ID)
    assert change.action == SCALE
    assert [(p.replica, p.action, p.reasons) for p in change.parts] == [
        (1, NONE, []), (2, REMOVE, ["scaled to 1"]), (3, REMOVE, ["scaled to 1"])]
    assert change.current.name == "n1-web" and change.reasons == ["scale 3 -> 1"]
    row = status_row(change.spec, change)
    assert (row.replicas, row.match) == ("1/1", False)


def test_a_new_image_replaces_every_replica_and_says_so_once(tmp_path):
    old = web(tmp_path)
    new = web(tmp_path, image="registry.example/web:2.0")
    change = plan_rollout(new, [running(old.for_replica(i)) for i in (1, 2, 3)], IMAGE_ID)
    assert change.action == REPLACE and [p.action for p in change.parts] == [REPLACE] * 3
    assert change.reasons == ["replicas 1, 2, 3: image registry.example/web:1.0 -> registry.example/web:2.0"]
    assert [p.current.name for p in change.parts] == ["n1-web", "n1-web-2", "n1-web-3"]


def test_one_unhealthy_replica_is_replaced_alone(tmp_path):
    spec = web(tmp_path)
    containers = [running(spec.for_replica(1)), running(spec.for_replica(2), health="unhealthy"),
                  running(spec.for_replica(3))]
    change = plan_rollout(spec, containers, IMAGE_ID)
    assert [p.action for p in change.parts] == [NONE, REPLACE, NONE]
    assert change.reasons == ["replica 2: container unhealthy"]
    row = status_row(spec, change)
    assert (row.state, row.replicas) == ("drifted", "2/3")


def test_a_leftover_next_of_a_replica_is_tidied_with_that_replica(tmp_path):
    spec = web(tmp_path)
    second = spec.for_replica(2)
    containers = [running(spec.for_replica(1)), running(second, name=second.name + NEXT_SUFFIX, n=1),
                  running(spec.for_replica(3))]
    change = plan_rollout(spec, containers, IMAGE_ID)
    assert change.action == TIDY
    assert change.parts[1].action == TIDY and change.parts[1].reasons == ["rename n1-web-2-next to n1-web-2"]


def test_zero_replicas_remove_all(tmp_path):
    spec = web(tmp_path)
    change = plan_rollout(web(tmp_path, replicas=0), [running(spec.for_replica(i)) for i in (1, 2)], IMAGE_ID)
    assert [p.action for p in change.parts] == [REMOVE, REMOVE] and change.wanted == 0
    zero = plan_rollout(web(tmp_path, replicas=0), [], IMAGE_ID)
    assert zero.action == NONE
    row = status_row(zero.spec, zero)
    assert (row.state, row.replicas, row.match) == ("none", "0/0", True)


def test_a_one_shot_that_exited_0_is_done_and_one_that_failed_is_run_again(tmp_path):
    text = """
        services:
          migrate: {image: busybox}
          api:
            image: api
            depends_on: {migrate: {condition: service_completed_successfully}}
    """
    spec = spec_of(text, "migrate", tmp_path)
    assert spec.rollout.one_shot
    done = replace(running(spec), status="exited", health=None, exit_code=0)
    change = plan_rollout(spec, [done], IMAGE_ID)
    assert change.action == NONE
    assert status_row(spec, change).state == "completed"
    failed = replace(done, exit_code=3)
    change = plan_rollout(spec, [failed], IMAGE_ID)
    assert change.action == REPLACE and change.reasons == ["container exited (exit code 3)"]
