"""Infrastructure repositories for tests: real git repos in temp dirs, pointing at real engines."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from click.testing import CliRunner

WEB_SERVICE = """\
  web:
    image: {image}
    init: true
    expose: ["80"]
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 200ms
      timeout: 2s
      retries: 2
"""
# the web service without a healthcheck, as a whole compose file ({image} to format): how long its switch
# takes is --settle, so a test can hold a deploy mid-switch
WEB_NO_HEALTH = "services:\n" + WEB_SERVICE.split("    healthcheck:")[0]
# the same web service published on an ephemeral host port, as a whole compose file ({image} to format);
# tests add their keys after it (labels, deploy), indented as the service's
WEB_PUBLISHED = "services:\n" + WEB_SERVICE.replace('expose: ["80"]', 'ports: ["80"]')
# the labels that register it in Consul with an HTTP check ({name} to format)
CONSUL_WEB_LABELS = """\
    labels:
      deployer.consul.name: "{name}"
      deployer.consul.check: "http:/"
      deployer.consul.interval: 1s
      deployer.consul.wait: 4s
"""


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"git {args} failed: {done.stderr}"
    return done.stdout.strip()


def unique_node() -> str:
    return "n" + uuid.uuid4().hex[:7]


def make_repo(root: Path, docker_url: str, compose: str | None, dc: str = "test", node: str | None = None,
              extra_files: dict[str, str] | None = None) -> tuple[Path, str]:
    """A committed infrastructure repo with one node; returns (root, node name)."""
    node = node or unique_node()
    node_dir = root / "datacenters" / dc / node
    node_dir.mkdir(parents=True)
    (node_dir / "node.yml").write_text(f"docker: {docker_url}\n")
    if compose is not None:
        (node_dir / "docker-compose.yml").write_text(textwrap.dedent(compose))
    for rel, text in (extra_files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial infrastructure")
    return root, node


def web_compose(image: str, extra: str = "") -> str:
    return "# test node\nservices:\n" + WEB_SERVICE.format(image=image) + extra


def cli(root: Path, *args: str):
    """Run the CLI in-process through click's CliRunner."""
    from deployer.cli.main import main

    runner = CliRunner()
    return runner.invoke(main, ["--repo", str(root), *args], catch_exceptions=False)


def run(root: Path, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `deployer` program in a subprocess."""
    return subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def managed(client, node: str) -> list:
    """The node's containers; one a deploy removes between docker-py's list and its inspect of each is left out."""
    return client.containers.list(all=True, filters={"label": f"deployer.node={node}"}, ignore_removed=True)


def remove_node_containers(client, node: str) -> None:
    for c in managed(client, node):
        c.remove(force=True)
    for net in client.networks.list(filters={"label": f"deployer.node={node}"}):
        net.remove()
    remove_node_store(node)


def remove_node_store(node: str) -> None:
    """The node's folders in the store of shipped files (engine.ship): this fleet's nodes share the filesystem."""
    from deployer.spec import STORE_ROOTS

    for root in STORE_ROOTS.values():
        for folder in Path(root).glob(f"*/{node}"):
            shutil.rmtree(folder, ignore_errors=True)
