"""`deployer init`: a new infrastructure repository that works in one command."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker

from deployer.build import samples
from deployer.config.loader import load
from deployer.errors import DeployerError, RepoError
from deployer.gitrepo.create import init_repository

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "datacenters"

LOCAL_DATACENTER = """\
description: This machine, reached through the local Docker socket.
"""

LOCAL_NODE = """\
# How the deployer reaches this node's Docker engine.
docker: {docker}
description: the local Docker engine
"""

LOCAL_COMPOSE = """\
# The containers this node must run, in Compose file syntax.
# Deploy a new version with:  deployer deploy hello:2 local/local
services:
  hello:
    image: hello:1
    init: true  # busybox httpd ignores SIGTERM; tini stops it at once
    ports:
      - "127.0.0.1:18080:80"
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 1s
      timeout: 2s
      retries: 3
    restart: unless-stopped
"""

README = """\
# Infrastructure

`datacenters/<dc>/<node>/node.yml` says how to reach each Docker host,
`datacenters/<dc>/<node>/docker-compose.yml` what it must run. Every change is a
commit: `git log` is the infrastructure's history, `deployer history` its deploys.
"""


@dataclass
class InitResult:
    root: Path
    commit: str
    targets: list[str]
    notes: list[str] = field(default_factory=list)


def init_repo(directory: str | Path, example: bool = False, docker_url: str = "unix:///var/run/docker.sock",
              build_images: bool = True, progress: Callable[[str], None] | None = None) -> InitResult:
    root = Path(directory).resolve()
    if root.exists() and any(root.iterdir()):
        raise RepoError(f"{root} exists and is not empty; choose a new directory")
    root.mkdir(parents=True, exist_ok=True)
    if example:
        shutil.copytree(EXAMPLE_DIR, root / "datacenters")
        local_node = root / "datacenters" / "local" / "local" / "node.yml"
        if local_node.exists():
            local_node.write_text(LOCAL_NODE.format(docker=docker_url))
    else:
        node_dir = root / "datacenters" / "local" / "local"
        node_dir.mkdir(parents=True)
        (root / "datacenters" / "local" / "datacenter.yml").write_text(LOCAL_DATACENTER)
        (node_dir / "node.yml").write_text(LOCAL_NODE.format(docker=docker_url))
        (node_dir / "docker-compose.yml").write_text(LOCAL_COMPOSE)
    (root / "README.md").write_text(README)
    (root / ".gitignore").write_text("# secrets stay out of the repository\nsecrets/\n*.key\n")

    infra = load(root)  # what we wrote must be valid
    commit = init_repository(root, "init infrastructure repository" + (" from the example" if example else ""))
    result = InitResult(root, commit, [n.target for n in infra.nodes()])
    if build_images and docker_url.startswith("unix://"):
        result.notes.extend(_sample_images(docker_url, progress))
    return result


def _sample_images(docker_url: str, progress: Callable[[str], None] | None) -> list[str]:
    """Build the sample images on the local engine, when it answers; say so either way."""
    try:
        client = docker.DockerClient(base_url=docker_url, timeout=60)
        client.ping()
    except Exception:
        return [f"note: no Docker engine answers at {docker_url}; sample images not built "
                "(start dockerd, then run 'deployer init' again or build them with python -m deployer.build.samples)"]
    try:
        tags = samples.build_all(client, progress)
    except DeployerError as exc:
        return [f"note: {exc.one_line()}"]
    finally:
        client.close()
    return [f"built sample images on the local engine: {', '.join(tags)}"]
