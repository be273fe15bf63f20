"""engine/plan.py: wanted (wanted from the compose file) against actual (captured engine state).

The actual side is what ``read_node`` makes of inspect JSON a real engine
returned (tests/unit/fixtures/engine, served by tests/unit/fakes.py); the
wanted side is built from the compose file deployed before the capture
(fixtures/engine/compose.yml), edited where a test says so. No Docker engine.
"""

from __future__ import annotations

import json

import pytest

from deployer.engine.plan import (
    CREATE,
    NONE,
    REMOVE,
    REPLACE,
    TIDY,
    Change,
    config_fields_differing,
    flatten,
    plan_node,
    plan_service,
)
from deployer.engine.state import image_id, read_node
from deployer.labels import LABEL_CONFIG, LABEL_CONFIG_HASH
from tests.unit.fakes import DC, NODE, capture_info, compose_doc, wanted_specs


def image_ids(fake_client, wanted) -> dict[str, str | None]:
    return {s.image: image_id(fake_client, s.image) for s in wanted.values()}


def plan(fake_client, state, wanted, service: str) -> Change:
    spec = wanted[service]
    return plan_service(spec, state.for_service(service), image_id(fake_client, spec.image))


def edited(service: str, **keys) -> dict:
    """The captured compose file with keys of one service replaced (None deletes a key)."""
    doc = compose_doc()
    for key, value in keys.items():
        if value is None:
            doc["services"][service].pop(key, None)
        else:
            doc["services"][service][key] = value
    return doc


def short(ident: str) -> str:
    return ident[7:19]


# --------------------------------------------------------------------------
# nothing to do


def test_the_compose_file_the_engine_runs_plans_none(fake_client, node_state, wanted):
    for service in ("web", "old"):
        change = plan(fake_client, node_state, wanted, service)
        assert (change.action, change.reasons, change.stale) == (NONE, [], [])
        assert change.current.name == f"n1-{service}"
        assert not change.changes_anything
        assert change.summary() == f"none dc1/n1/{service}"


def test_the_captured_containers_carry_the_hash_the_spec_builder_gives(node_state, wanted):
    """The recorded config hash is what today's container_spec computes: a deployer upgrade that changed it
    would replace every container of every node on the next deploy."""
    for c in node_state.managed:
        assert c.config_hash == wanted[c.service].config_hash(), c.name
        assert json.loads(c.labels[LABEL_CONFIG]) == json.loads(wanted[c.service].config_json()), c.name


def test_config_fields_differing_is_empty_when_equal(node_state, wanted):
    for c in node_state.managed:
        assert config_fields_differing(wanted[c.service], c) == [], c.name


def test_an_unknown_image_id_does_not_force_a_replace(node_state, wanted):
    """wanted_image_id None: the image is not on the engine (yet); the recorded config decides."""
    change = plan_service(wanted["retag"], node_state.for_service("retag"), None)
    assert change.action == NONE


# --------------------------------------------------------------------------
# create


def test_a_service_without_container_is_created(fake_client, node_state):
    doc = compose_doc()
    doc["services"]["fresh"] = {"image": "deployer-test/web:3"}
    wanted = wanted_specs(doc)
    change = plan(fake_client, node_state, wanted, "fresh")
    assert (change.action, change.reasons, change.current, change.stale) == (CREATE, ["no container"], None, [])
    assert change.spec is wanted["fresh"]
    assert change.to_json() == {
        "target": "dc1/n1/fresh", "action": "create", "reasons": ["no container"], "image": "deployer-test/web:3",
        "container": "n1-fresh", "current": None, "current_image": None, "stale": [],
    }


# --------------------------------------------------------------------------
# replace: the repository changed


def test_an_image_change_is_named_once(fake_client, node_state):
    wanted = wanted_specs(edited("web", image="deployer-test/web:2"))
    change = plan(fake_client, node_state, wanted, "web")
    assert change.action == REPLACE
    assert change.reasons == ["image deployer-test/web:1 -> deployer-test/web:2"]
    assert change.current.name == "n1-web"
    assert change.to_json()["current_image"] == "deployer-test/web:1"
    assert change.to_json()["image"] == "deployer-test/web:2"


def test_an_image_change_and_more_names_the_other_fields(fake_client, node_state):
    wanted = wanted_specs(edited("web", image="deployer-test/web:2", labels={"team": "backend"}))
    change = plan(fake_client, node_state, wanted, "web")
    assert change.reasons == ["image deployer-test/web:1 -> deployer-test/web:2", "changed: labels.team"]


@pytest.mark.parametrize("keys, fields", [
    ({"environment": {"MODE": "staging"}}, ["create.environment"]),
    ({"labels": {"team": "backend", "tier": "1"}}, ["labels.team", "labels.tier"]),
    ({"healthcheck": None}, ["create.healthcheck.Interval", "create.healthcheck.Retries",
                             "create.healthcheck.Test", "create.healthcheck.Timeout", "has_healthcheck"]),
    ({"ports": ["18081:80"]}, ["host.port_bindings.80/tcp"]),
    ({"command": ["httpd", "-f"]}, ["create.command"]),
])
def test_a_config_change_names_the_differing_fields(fake_client, node_state, keys, fields):
    wanted = wanted_specs(edited("web", **keys))
    change = plan(fake_client, node_state, wanted, "web")
    assert change.action == REPLACE
    assert change.reasons == ["changed: " + ", ".join(fields)]
    assert config_fields_differing(wanted["web"], change.current) == fields


def test_a_limit_changed_in_the_repository_is_named_as_a_field(fake_client, node_state):
    wanted = wanted_specs(edited("web", mem_limit="128m"))
    change = plan(fake_client, node_state, wanted, "web")
    assert change.action == REPLACE
    assert change.reasons == ["changed: host.mem_limit"]  # the repository changed it, not the host


def test_a_restart_policy_changed_in_the_repository_is_not_called_host_drift(fake_client, node_state):
    wanted = wanted_specs(edited("web", restart="always"))
    change = plan(fake_client, node_state, wanted, "web")
    assert change.action == REPLACE
    assert change.reasons == ["changed: host.restart_policy.Name"]


def test_more_than_six_differing_fields_are_cut_short(fake_client, node_state):
    wanted = wanted_specs(edited("web", labels={f"l{i}": "x" for i in range(8)}))
    change = plan(fake_client, node_state, wanted, "web")
    assert change.reasons == ["changed: labels.l0, labels.l1, labels.l2, labels.l3, labels.l4, labels.l5 ..."]


def test_a_replace_keeps_the_leftovers_as_stale(fake_client, node_state):
    wanted = wanted_specs(edited("api", image="deployer-test/web:3"))
    change = plan(fake_client, node_state, wanted, "api")
    assert change.action == REPLACE
    assert change.current.name == "n1-api"  # the one under the spec's name, running, goes first
    assert [c.name for c in change.stale] == ["n1-api-next"]
    assert change.to_json()["stale"] == [change.stale[0].short_id]


def test_a_hash_that_differs_with_the_same_recorded_config_still_replaces(fake_client, wanted):
    fake_client.edit("n1-old", lambda info: info["Config"]["Labels"].update({LABEL_CONFIG_HASH: "0" * 16}))
    state = read_node(fake_client, DC, NODE)
    change = plan(fake_client, state, wanted, "old")
    assert (change.action, change.reasons) == (REPLACE, ["container differs"])


# --------------------------------------------------------------------------
# replace: the engine changed


@pytest.mark.parametrize("service, reasons", [
    ("sick", ["container unhealthy"]),
    ("slow", ["container starting"]),
    ("job", ["container exited (exit code 3)"]),
    ("flaky", ["container exited (exit code 3)"]),
])
def test_a_container_that_is_not_ok_is_replaced(fake_client, node_state, wanted, service, reasons):
    change = plan(fake_client, node_state, wanted, service)
    assert (change.action, change.reasons) == (REPLACE, reasons)
    assert change.current.name == f"n1-{service}"
    assert change.summary() == f"replace dc1/n1/{service} ({'; '.join(reasons)})"


def test_a_tag_that_now_names_another_image_replaces(fake_client, node_state, wanted):
    now, before = capture_info()["tags"]["deployer-test/retag:1"], capture_info()["retag_before"]
    change = plan(fake_client, node_state, wanted, "retag")
    assert change.action == REPLACE
    assert change.reasons == [f"deployer-test/retag:1 now points to {short(now)} (container runs {short(before)})"]


def test_a_tag_moved_back_to_the_image_the_container_runs_plans_none(fake_client, node_state, wanted):
    fake_client.tag("deployer-test/retag:1", capture_info()["retag_before"])
    assert plan(fake_client, node_state, wanted, "retag").action == NONE


def test_docker_update_on_the_host_is_drift(fake_client, node_state, wanted):
    change = plan(fake_client, node_state, wanted, "drift")
    assert change.action == REPLACE
    assert change.reasons == [
        "restart policy changed on the host (no)",
        "memory limit changed on the host",
        "cpu limit changed on the host",
    ]
    assert config_fields_differing(wanted["drift"], change.current) == []  # the labels cannot see it


@pytest.mark.parametrize("host, reasons", [
    ({"RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}}, ["restart policy changed on the host (always)"]),
    ({"Memory": 0}, ["memory limit changed on the host"]),
    ({"NanoCpus": 250_000_000}, ["cpu limit changed on the host"]),
])
def test_each_kind_of_drift_alone(fake_client, wanted, host, reasons):
    fake_client.edit("n1-web", lambda info: info["HostConfig"].update(host))
    change = plan(fake_client, read_node(fake_client, DC, NODE), wanted, "web")
    assert (change.action, change.reasons) == (REPLACE, reasons)


def test_no_restart_policy_written_equals_restart_no_on_the_host(fake_client, wanted):
    fake_client.edit("n1-job", lambda info: info["HostConfig"].update({"RestartPolicy": {"Name": "no"}}))
    change = plan(fake_client, read_node(fake_client, DC, NODE), wanted, "job")
    assert change.reasons == ["container exited (exit code 3)"]  # no drift reason


# --------------------------------------------------------------------------
# tidy


def test_a_stray_next_container_beside_the_right_one_is_tidied(fake_client, node_state, wanted):
    change = plan(fake_client, node_state, wanted, "api")
    assert change.action == TIDY
    assert change.current.name == "n1-api"
    assert [c.name for c in change.stale] == ["n1-api-next"]
    assert change.reasons == ["remove leftover n1-api-next"]


def test_a_right_container_under_the_next_name_is_renamed(fake_client, node_state, wanted):
    change = plan(fake_client, node_state, wanted, "cache")
    assert change.action == TIDY
    assert change.current.name == "n1-cache-next"
    assert change.stale == []
    assert change.reasons == ["rename n1-cache-next to n1-cache"]


# --------------------------------------------------------------------------
# the node: order, removals, purity


def test_plan_node_one_change_per_spec_in_order_then_removals(fake_client, node_state, wanted):
    without_old = [s for name, s in wanted.items() if name != "old"]
    changes = plan_node(without_old, node_state, image_ids(fake_client, wanted), prune=True, dc=DC, node=NODE)
    assert [(c.target, c.action) for c in changes] == [
        ("dc1/n1/web", NONE), ("dc1/n1/sick", REPLACE), ("dc1/n1/slow", REPLACE), ("dc1/n1/job", REPLACE),
        ("dc1/n1/flaky", REPLACE), ("dc1/n1/api", TIDY), ("dc1/n1/cache", TIDY), ("dc1/n1/drift", REPLACE),
        ("dc1/n1/retag", REPLACE), ("dc1/n1/old", REMOVE),
    ]
    removal = changes[-1]
    assert (removal.reasons, removal.spec, removal.current.name, removal.stale) == (
        ["no longer in the repository"], None, "n1-old", [])
    assert removal.to_json()["container"] == "n1-old"


def test_without_prune_nothing_is_removed(fake_client, node_state, wanted):
    without_old = [s for name, s in wanted.items() if name != "old"]
    changes = plan_node(without_old, node_state, image_ids(fake_client, wanted))
    assert REMOVE not in [c.action for c in changes]
    assert len(changes) == len(without_old)


def test_prune_never_removes_what_the_deployer_does_not_manage_here(fake_client, node_state):
    changes = plan_node([], node_state, {}, prune=True, dc=DC, node=NODE)
    assert all(c.action == REMOVE for c in changes)
    # one removal per managed container of an unwritten service; not stranger, not n2-web
    assert sorted(c.current.name for c in changes) == sorted(c.name for c in node_state.managed)


def test_planning_asks_the_engine_nothing(fake_client, node_state, wanted):
    ids = image_ids(fake_client, wanted)
    before = list(fake_client.calls)
    plan_node(list(wanted.values()), node_state, ids, prune=True, dc=DC, node=NODE)
    assert fake_client.calls == before


# --------------------------------------------------------------------------
# config_fields_differing and flatten


def test_config_fields_differing_without_a_recorded_config(node_state, wanted):
    stranger = node_state.names["stranger"]
    assert config_fields_differing(wanted["web"], stranger) == ["configuration (container has no recorded config)"]


def test_config_fields_differing_with_an_unreadable_recorded_config(fake_client, wanted):
    fake_client.edit("n1-web", lambda info: info["Config"]["Labels"].update({LABEL_CONFIG: "{not json"}))
    web = read_node(fake_client, DC, NODE).names["n1-web"]
    assert config_fields_differing(wanted["web"], web) == ["configuration (recorded config unreadable)"]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, {"e": 2}]}}, "f": None}) == {"a.b": 1, "a.c.d": [1, {"e": 2}], "f": None}
    assert flatten(3) == {"": 3}
