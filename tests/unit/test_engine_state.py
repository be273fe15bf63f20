"""engine/state.py: what runs on an engine, read from inspect JSON a real engine returned.

The fake fake_client (tests/unit/fakes.py) serves the fixtures captured by
tests/support/capture_engine_fixtures.py; ``read_node`` and ``image_id`` run
unchanged against it. No Docker engine is needed.
"""

from __future__ import annotations

import json

import docker
import pytest

from deployer.engine.state import ContainerState, NodeState, image_id, inspect_to_state, read_container, read_node
from deployer.labels import LABEL_CONFIG, LABEL_CONFIG_HASH, LABEL_DC, LABEL_IMAGE, LABEL_NODE, LABEL_SERVICE
from tests.unit.fakes import DC, NODE, FakeDockerClient, _response, capture_info, fixture

MANAGED = ["n1-api", "n1-api-next", "n1-cache-next", "n1-drift", "n1-flaky", "n1-job", "n1-old", "n1-retag",
           "n1-sick", "n1-slow", "n1-web"]  # sorted by (service, name)
UNMANAGED = ["n2-web", "stranger"]


def by_name(state: NodeState) -> dict[str, ContainerState]:
    return {c.name: c for c in state.managed}


# --------------------------------------------------------------------------
# the node: managed and unmanaged, the service mapping


def test_managed_are_the_containers_labelled_for_this_node_sorted_by_service(node_state):
    assert [c.name for c in node_state.managed] == MANAGED
    assert all(c.dc == DC and c.node == NODE for c in node_state.managed)


def test_names_hold_every_container_on_the_engine(node_state):
    assert sorted(node_state.names) == sorted(MANAGED + UNMANAGED)
    managed = by_name(node_state)
    for name in MANAGED:
        assert node_state.names[name] is managed[name]


def test_a_container_without_deployer_labels_is_not_managed(node_state):
    stranger = node_state.names["stranger"]
    assert stranger not in node_state.managed
    assert stranger.labels == {"owner": "someone else"}
    assert (stranger.dc, stranger.node, stranger.service, stranger.config_hash) == (None, None, None, None)
    # read from the list entry alone: what the list says, nothing it does not
    summary = next(s for s in fixture("containers.json") if s["Names"] == ["/stranger"])
    assert stranger.id == summary["Id"]
    assert stranger.image == "deployer-test/web:1"
    assert stranger.image_id == summary["ImageID"]
    assert stranger.status == "running"
    assert (stranger.health, stranger.exit_code, stranger.restart_count, stranger.host) == (None, 0, 0, {})


def test_a_container_of_another_node_is_not_managed_here_but_is_there(fake_client, node_state):
    other = node_state.names["n2-web"]
    assert other not in node_state.managed
    assert (other.dc, other.node, other.service) == ("dc1", "n2", "web")
    assert other.status == "created"
    there = read_node(fake_client, "dc1", "n2")
    assert [c.name for c in there.managed] == ["n2-web"]
    assert sorted(there.names) == sorted(MANAGED + UNMANAGED)
    assert read_node(fake_client, "dc2", "n1").managed == []


def test_for_service_maps_containers_to_their_service(node_state):
    assert [c.name for c in node_state.for_service("api")] == ["n1-api", "n1-api-next"]
    assert [c.name for c in node_state.for_service("cache")] == ["n1-cache-next"]
    assert [c.name for c in node_state.for_service("web")] == ["n1-web"]  # not n2-web
    assert node_state.for_service("nope") == []
    services = {c.service for c in node_state.managed}
    assert services == {"api", "cache", "drift", "flaky", "job", "old", "retag", "sick", "slow", "web"}


def test_the_node_is_read_with_one_list_and_one_inspect_per_managed_container(fake_client):
    read_node(fake_client, DC, NODE)
    assert fake_client.calls[0] == ("containers", {"all": True})
    inspected = [ident for call, ident in fake_client.calls[1:] if call == "inspect_container"]
    assert len(fake_client.calls) == 1 + len(MANAGED) == 1 + len(inspected)
    ids = {s["Names"][0].lstrip("/"): s["Id"] for s in fixture("containers.json")}
    assert sorted(inspected) == sorted(ids[n] for n in MANAGED)


def test_a_container_removed_between_list_and_inspect_is_skipped(fake_client):
    fake_client.vanish("n1-old")
    state = read_node(fake_client, DC, NODE)
    assert "n1-old" not in state.names
    assert [c.name for c in state.managed] == [n for n in MANAGED if n != "n1-old"]


def test_an_engine_error_other_than_not_found_is_raised(fake_client, monkeypatch):
    def broken(ident):
        raise docker.errors.APIError("500 Server Error", response=_response(500, "boom"), explanation="boom")

    monkeypatch.setattr(fake_client.api, "inspect_container", broken)
    with pytest.raises(docker.errors.APIError, match="500"):
        read_node(fake_client, DC, NODE)


def test_an_empty_engine():
    state = read_node(FakeDockerClient(containers=[], inspected={}), DC, NODE)
    assert (state.managed, state.names) == ([], {})


# --------------------------------------------------------------------------
# one container: status, health, exit code, restart count


@pytest.mark.parametrize("name, status, health, exit_code, restarts, ok, described", [
    ("n1-web", "running", "healthy", 0, 0, True, "healthy"),
    ("n1-sick", "running", "unhealthy", 0, 0, False, "unhealthy"),
    ("n1-slow", "running", "starting", 0, 0, False, "starting"),
    ("n1-job", "exited", None, 3, 0, False, "exited (exit code 3)"),
    ("n1-flaky", "exited", None, 3, 2, False, "exited (exit code 3)"),
    ("n1-api-next", "created", None, 0, 0, False, "created"),
    ("n1-cache-next", "running", "healthy", 0, 0, True, "healthy"),
    ("n1-old", "running", None, 0, 0, True, "running"),
])
def test_status_health_exit_code_and_restarts(node_state, name, status, health, exit_code, restarts, ok, described):
    c = by_name(node_state)[name]
    assert (c.status, c.health, c.exit_code, c.restart_count) == (status, health, exit_code, restarts)
    assert c.running is (status == "running")
    assert c.ok is ok
    assert c.describe() == described


def test_identity_and_labels(node_state):
    web = by_name(node_state)["n1-web"]
    info = fixture("container.n1-web.json")
    assert web.id == info["Id"] and web.short_id == info["Id"][:12]
    assert web.name == "n1-web"  # without the engine's leading slash
    assert (web.dc, web.node, web.service) == ("dc1", "n1", "web")
    assert web.image_written == web.image == "deployer-test/web:1"
    assert web.config_hash == info["Config"]["Labels"][LABEL_CONFIG_HASH]
    assert web.labels["team"] == "frontend"
    assert set(web.labels) == {"team", LABEL_DC, LABEL_NODE, LABEL_SERVICE, LABEL_IMAGE, LABEL_CONFIG_HASH, LABEL_CONFIG}
    recorded = json.loads(web.labels[LABEL_CONFIG])
    assert (recorded["service"], recorded["image"], recorded["name"]) == ("web", "deployer-test/web:1", "n1-web")
    # the environment value is fingerprinted in the label, not written out
    assert recorded["create"]["environment"][0].startswith("MODE=sha256:")
    assert "production" not in web.labels[LABEL_CONFIG]


def test_image_reference_and_image_id(fake_client, node_state):
    tags = capture_info()["tags"]
    web = by_name(node_state)["n1-web"]
    assert web.image == "deployer-test/web:1"
    assert web.image_id == tags["deployer-test/web:1"] == image_id(fake_client, "deployer-test/web:1")
    retag = by_name(node_state)["n1-retag"]
    assert retag.image == "deployer-test/retag:1"
    assert retag.image_id == capture_info()["retag_before"]
    assert image_id(fake_client, "deployer-test/retag:1") == tags["deployer-test/retag:1"] != retag.image_id


def test_host_fields_as_written(node_state):
    web = by_name(node_state)["n1-web"]
    assert web.host == {
        "restart_policy": {"MaximumRetryCount": 0, "Name": "unless-stopped"},
        "memory": 64 * 1024 * 1024,
        "nano_cpus": 500_000_000,
        "port_bindings": {"80/tcp": [{"HostIp": "", "HostPort": "18080"}]},
    }
    assert web.publishes_ports
    flaky = by_name(node_state)["n1-flaky"]
    assert flaky.host["restart_policy"] == {"MaximumRetryCount": 2, "Name": "on-failure"}


def test_host_fields_after_docker_update(node_state):
    drift = by_name(node_state)["n1-drift"]
    assert capture_info()["docker_update"][2:] == ["--restart", "no", "--memory", "16m", "--memory-swap", "32m",
                                                  "--cpus", "1", "n1-drift"]
    assert drift.host["restart_policy"]["Name"] == "no"
    assert drift.host["memory"] == 16 * 1024 * 1024
    assert drift.host["nano_cpus"] == 1_000_000_000
    assert drift.host["port_bindings"] == {}


def test_an_ephemeral_host_port_frees_nothing(node_state):
    api = by_name(node_state)["n1-api"]
    assert api.host["port_bindings"] == {"80/tcp": [{"HostIp": "", "HostPort": ""}]}
    assert not api.publishes_ports
    assert not by_name(node_state)["n1-old"].publishes_ports  # no ports at all


def test_read_container_by_name_or_id(fake_client):
    info = fixture("container.n1-sick.json")
    assert read_container(fake_client, "n1-sick") == read_container(fake_client, info["Id"]) == inspect_to_state(info)
    with pytest.raises(docker.errors.NotFound) as caught:
        read_container(fake_client, "nope")
    assert caught.value.status_code == 404


def test_inspect_to_state_defaults_for_missing_fields():
    c = inspect_to_state({"Id": "0123456789abcdef"})
    assert (c.name, c.image, c.image_id, c.status, c.health, c.exit_code, c.restart_count, c.labels) == (
        "", "", "", "unknown", None, 0, 0, {})
    assert c.host == {"restart_policy": {}, "memory": 0, "nano_cpus": 0, "port_bindings": {}}
    assert not c.publishes_ports and not c.running and not c.ok
    assert c.describe() == "unknown"


# --------------------------------------------------------------------------
# image_id


def test_image_id_by_tag_and_by_id(fake_client):
    tags = capture_info()["tags"]
    for ref, ident in tags.items():
        assert image_id(fake_client, ref) == ident
    web1 = tags["deployer-test/web:1"]
    assert image_id(fake_client, web1) == web1
    assert image_id(fake_client, capture_info()["retag_before"]) == capture_info()["retag_before"]  # untagged now


def test_image_id_of_a_missing_image_is_none(fake_client):
    assert image_id(fake_client, "deployer-test/web:404") is None
    assert image_id(fake_client, "registry.example:5000/nothing") is None
    assert fake_client.calls == [("inspect_image", "deployer-test/web:404"),
                            ("inspect_image", "registry.example:5000/nothing")]


def test_image_id_follows_a_tag_moved_on_the_engine(fake_client):
    tags = capture_info()["tags"]
    fake_client.tag("deployer-test/web:1", tags["deployer-test/web:2"])
    assert image_id(fake_client, "deployer-test/web:1") == tags["deployer-test/web:2"]


def test_a_managed_container_s_mounts_are_read_with_the_node_and_a_listed_one_s_are_not(fake_client):
    """A replacement carries the old container's anonymous volumes over (engine.apply): the mounts come with
    the node's one inspect per managed container, so the switch asks the engine for nothing more."""
    volume = {"Type": "volume", "Name": "a" * 64, "Destination": "/data", "Driver": "local", "RW": True}
    fake_client.edit("n1-web", lambda info: info.update(Mounts=[volume]))
    state = read_node(fake_client, DC, NODE)
    assert by_name(state)["n1-web"].mounts == [volume]
    assert by_name(state)["n1-api"].mounts == []
    assert state.names["stranger"].mounts is None  # only listed: engine.apply inspects it if it ever needs them
