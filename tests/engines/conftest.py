"""Fixtures the engine tests share (the fleet itself is in tests/conftest.py)."""

from __future__ import annotations

from contextlib import closing

import pytest

from tests.support.repos import cli, make_repo, remove_node_containers, web_compose

WEB1 = "deployer-test/web:1"


# No `client` fixture here: the build tests' plugin (tests/support/build_fixtures.py) has a session-scoped
# `client` of the build engine, and a conftest fixture of that name would shadow it.


@pytest.fixture
def deployed_web(engine, tmp_path):
    """(root, node): a repository whose node runs web:1, deployed and committed; its containers removed after."""
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1))
    result = cli(root, "deploy", WEB1, f"test/{node}")
    assert result.exit_code == 0, result.output
    yield root, node
    with closing(engine.client()) as client:
        remove_node_containers(client, node)
