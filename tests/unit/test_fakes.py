"""tests/unit/fakes.py: the fake engine answers as docker-py and the captured engine do.

If the fake drifted from docker-py, the state and plan tests would test the fake.
"""

from __future__ import annotations

import docker
import pytest
import requests

from tests.unit.fakes import FakeDockerClient, _response, capture_info, fixture, wanted_specs


def docker_py_error(status: int, message: str) -> Exception:
    """What docker-py itself raises for this HTTP answer."""
    try:
        docker.errors.create_api_error_from_http_exception(requests.HTTPError(response=_response(status, message)))
    except docker.errors.APIError as exc:
        return exc
    raise AssertionError("docker-py raised nothing")


def test_the_list_is_the_engines_and_without_all_holds_only_running(fake_client):
    assert fake_client.api.containers(all=True) == fixture("containers.json")
    running = fake_client.api.containers()
    assert {c["State"] for c in running} == {"running"}
    assert len(running) == sum(c["State"] == "running" for c in fixture("containers.json")) < len(
        fixture("containers.json"))


def test_answers_are_copies(fake_client):
    fake_client.api.inspect_container("n1-web")["State"]["Status"] = "dead"
    fake_client.api.containers(all=True)[0]["State"] = "dead"
    assert fake_client.api.inspect_container("n1-web")["State"]["Status"] == "running"
    assert fake_client.api.containers(all=True) == fixture("containers.json")


def test_inspect_container_by_name_id_prefix_or_dict(fake_client):
    info = fixture("container.n1-web.json")
    for ident in ("n1-web", "/n1-web", info["Id"], info["Id"][:12], {"Id": info["Id"]}):
        assert fake_client.api.inspect_container(ident) == info


def test_a_missing_container_raises_what_docker_py_raises(fake_client):
    with pytest.raises(docker.errors.NotFound) as caught:
        fake_client.api.inspect_container("nope")
    assert type(caught.value) is type(docker_py_error(404, "No such container: nope")) is docker.errors.NotFound
    assert caught.value.status_code == 404
    assert caught.value.explanation == "No such container: nope"


def test_a_missing_image_raises_what_docker_py_raises(fake_client):
    with pytest.raises(docker.errors.ImageNotFound) as caught:
        fake_client.api.inspect_image("deployer-test/web:404")
    assert type(caught.value) is type(docker_py_error(404, "No such image: deployer-test/web:404"))
    assert caught.value.status_code == 404
    with pytest.raises(docker.errors.ImageNotFound):
        fake_client.images.get("deployer-test/web")  # no :latest was captured


def test_images_by_tag_id_and_prefix(fake_client):
    tags = capture_info()["tags"]
    web1 = tags["deployer-test/web:1"]
    for ref in ("deployer-test/web:1", web1, web1[7:], web1[7:19]):
        assert fake_client.api.inspect_image(ref)["Id"] == web1
    image = fake_client.images.get("deployer-test/web:1")
    assert (image.id, image.tags, image.short_id) == (web1, ["deployer-test/web:1"], web1[:19])
    assert fake_client.images.get(capture_info()["retag_before"]).tags == []  # untagged by the rebuild


def test_every_referenced_image_was_captured(fake_client):
    for name in (s["Names"][0].lstrip("/") for s in fixture("containers.json")):
        info = fixture(f"container.{name}.json")
        assert fake_client.api.inspect_image(info["Image"])["Id"] == info["Image"]
        assert fake_client.api.inspect_image(info["Config"]["Image"])


def test_calls_it_does_not_know_fail_loudly(fake_client):
    with pytest.raises(TypeError):
        fake_client.api.containers(all=True, filters={"label": "deployer.dc"})
    with pytest.raises(AttributeError):
        fake_client.api.create_container  # noqa: B018 - the fake only reads
    with pytest.raises(AttributeError):
        fake_client.containers  # noqa: B018


def test_the_capture_matches_the_compose_file():
    """The fixture's compose file and the captured containers belong together (regenerate both at once)."""
    wanted = wanted_specs()
    listed = {s["Names"][0].lstrip("/") for s in fixture("containers.json")}
    for service, spec in wanted.items():
        assert spec.name in listed or spec.name + "-next" in listed, service
    assert FakeDockerClient().api.containers(all=True)
