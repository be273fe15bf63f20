"""Fixtures the engine tests share (the fleet itself is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.repos import cli, make_repo, remove_node_containers, web_compose

WEB1 = "deployer-test/web:1"


@pytest.fixture
def client(engine):
    """A docker-py client of the test engine, closed after the test."""
    c = engine.client()
    yield c
    c.close()


@pytest.fixture
def deployed_web(engine, client, tmp_path):
    """(root, node): a repository whose node runs web:1, deployed and committed; its containers removed after."""
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1))
    result = cli(root, "deploy", WEB1, f"test/{node}")
    assert result.exit_code == 0, result.output
    yield root, node
    remove_node_containers(client, node)
