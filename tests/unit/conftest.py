"""Fixtures of the fast tier: a fake engine serving captured inspect JSON, and the wanted specs.

See ``tests/unit/fakes.py``. Nothing here starts Docker, opens a network
connection or runs git.
"""

from __future__ import annotations

import copy

import pytest

from deployer.engine import state as engine_state
from tests.unit.fakes import DC, NODE, FakeDockerClient, wanted_specs


@pytest.fixture
def fake_client() -> FakeDockerClient:
    """A fresh fake engine holding the captured containers and images."""
    return FakeDockerClient()


@pytest.fixture
def node_state(fake_client):
    """What ``read_node`` makes of the captured engine for dc1/n1."""
    return engine_state.read_node(fake_client, DC, NODE)


@pytest.fixture(scope="session")
def _wanted():
    return wanted_specs()


@pytest.fixture
def wanted(_wanted):
    """The wanted spec of every service of the captured compose file, by service (a copy per test)."""
    return copy.deepcopy(_wanted)
