"""Compose documents for the unit tests of config.compose_check and config.compose_spec."""

from __future__ import annotations

import io
import subprocess
import textwrap
from pathlib import Path

import docker
from ruamel.yaml import YAML

from deployer.config.compose_check import validate_compose
from deployer.config.compose_keys import to_plain
from deployer.config.compose_spec import container_spec
from deployer.model import Location, Node, Service
from deployer.spec import ContainerSpec

NODE_DIR = "datacenters/dc1/n1"
COMPOSE = f"{NODE_DIR}/docker-compose.yml"


def load(text: str):
    return YAML().load(io.StringIO(textwrap.dedent(text)))


def problems(text: str, root: Path = Path("/nonexistent-repo")) -> list[str]:
    return [e.render() for e in validate_compose(load(text), COMPOSE, root)]


def one_problem(text: str, root: Path = Path("/nonexistent-repo")) -> str:
    found = problems(text, root)
    assert len(found) == 1, found
    return found[0]


def make_node(text: str, *, name: str = "n1") -> Node:
    plain = to_plain(load(text))
    node = Node(
        dc="dc1",
        name=name,
        docker="unix:///var/run/docker.sock",
        path=NODE_DIR,
        location=Location(f"{NODE_DIR}/node.yml"),
        compose_path=COMPOSE,
        volumes=plain.get("volumes") or {},
        networks=plain.get("networks") or {},
        secrets=plain.get("secrets") or {},
        configs=plain.get("configs") or {},
    )
    for svc, config in plain["services"].items():
        node.services[svc] = Service(
            dc="dc1",
            node=name,
            name=svc,
            image=config["image"],
            config=config,
            location=Location(COMPOSE),
        )
    return node


def spec_of(text: str, service: str, root: Path, environ=None) -> ContainerSpec:
    assert validate_compose(load(text), COMPOSE, root) == []
    node = make_node(text)
    return container_spec(node, node.services[service], root, environ=environ or {})


def api_client() -> docker.APIClient:
    # No daemon is contacted: with an explicit version docker-py never asks the engine.
    return docker.APIClient(base_url="unix:///nonexistent", version="1.41")


def node_repo(tmp_path: Path) -> Path:
    """A git repository with the node directory in it."""
    (tmp_path / NODE_DIR).mkdir(parents=True)
    git(tmp_path, "init", "-q")
    return tmp_path


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", "-C", str(root), *args],
        check=True,
        capture_output=True,
    )


SECRET_COMPOSE = """
    services:
      web:
        image: nginx
        secrets:
          - db_password
          - source: db_password
            target: pw
            mode: 0440
    secrets:
      db_password:
        file: secrets/db_password.txt
"""


def write_secret(repo: Path, content: str = "s3cret\n") -> Path:
    path = repo / NODE_DIR / "secrets" / "db_password.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path
