"""Interpolation, variables and extends on a real engine: what runs is what the repository resolves to."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.repos import cli, git, make_repo, managed, remove_node_containers

WEB1, WEB2 = "deployer-test/web:1", "deployer-test/web:2"

SHARED = """\
services:
  web:
    image: deployer-test/web:${WEB_VERSION}
    init: true
    expose: ["80"]
    environment:
      DB_URL: postgres://${DB_HOST}/app
      PRICE: "$$5"
      FROM_REPO:
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 200ms
      timeout: 2s
      retries: 2
"""

COMPOSE = """\
name: shop-{node}
services:
  web:
    extends: {{file: ../../../common/web.yml, service: web}}
    environment:
      ADVERTISE: ${{NODE_ADDRESS}}:80
"""


@pytest.fixture
def client(engine):
    c = engine.client()
    yield c
    c.close()


@pytest.fixture
def shared_repo(engine, client, tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_REPO", "the-operators-shell")  # must not reach the container
    monkeypatch.setenv("WEB_VERSION", "2")
    root = tmp_path / "infra"
    node = "ni" + os.urandom(3).hex()
    root, node = make_repo(root, engine.unix_url, None, node=node, extra_files={
        "common/web.yml": SHARED,
        "datacenters/test/datacenter.yml": "variables:\n  DB_HOST: db.test\n  FROM_REPO: from-the-datacenter\n",
        f"datacenters/test/{node}/node.yml": f"docker: {engine.unix_url}\nvariables:\n  NODE_ADDRESS: 10.9.8.7\n",
        f"datacenters/test/{node}/.env": "WEB_VERSION=1\n",
        f"datacenters/test/{node}/docker-compose.yml": COMPOSE.format(node=node),
    })
    yield root, node
    remove_node_containers(client, node)


def env_of(container) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


def test_apply_runs_the_resolved_image_and_environment(shared_repo, client):
    root, node = shared_repo
    config = json.loads(cli(root, "config", f"test/{node}", "--json").output)
    assert config["name"] == f"shop-{node}"
    assert config["services"]["web"]["image"] == WEB1

    result = cli(root, "apply", f"test/{node}")
    assert result.exit_code == 0, result.output
    (c,) = managed(client, node)
    c.reload()
    assert c.name == f"shop-{node}-web"  # the top-level name is the project name
    assert c.image.tags == [WEB1]
    env = env_of(c)
    assert env["DB_URL"] == "postgres://db.test/app"
    assert env["PRICE"] == "$5"
    assert env["FROM_REPO"] == "from-the-datacenter"  # the repository's variable, not the operator's shell
    assert env["ADVERTISE"] == "10.9.8.7:80"
    assert list(c.attrs["NetworkSettings"]["Networks"]) == [f"shop-{node}_default"]

    # A deploy cannot edit an image another file writes (with a variable, too); the variable is changed instead.
    refused = cli(root, "deploy", WEB2, f"test/{node}/web")
    assert refused.exit_code == 3 and "takes its image from 'extends'" in refused.output
    assert git(root, "rev-list", "--count", "HEAD") == "1"
    (root / f"datacenters/test/{node}/.env").write_text("WEB_VERSION=2\n")
    git(root, "commit", "-qam", "web 2")
    plan = cli(root, "plan", f"test/{node}")
    assert plan.exit_code == 2 and "image" in plan.output, plan.output
    assert cli(root, "apply", f"test/{node}").exit_code == 0
    (c,) = managed(client, node)
    assert c.image.tags == [WEB2]
    assert cli(root, "plan", f"test/{node}").exit_code == 0


def test_unset_variable_deploys_nothing(shared_repo, client):
    root, node = shared_repo
    (root / f"datacenters/test/{node}/.env").unlink()  # WEB_VERSION now only in the shell: never read
    git(root, "commit", "-qam", "no .env")
    result = cli(root, "apply", f"test/{node}")
    assert result.exit_code == 3
    assert "common/web.yml:3: services.web.image: variable WEB_VERSION is not set" in result.output, result.output
    assert managed(client, node) == []
