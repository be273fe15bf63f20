"""The repository side: loading, validate, ls, targets, init. No Docker engine needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.errors import TargetError
from deployer.config.loader import check, load
from tests.support.repos import cli, git, make_repo, web_compose

PROJECT = Path(__file__).resolve().parents[2]


def test_example_infrastructure_is_valid():
    infra, problems = check(PROJECT)
    assert problems == []
    assert set(infra.datacenters) == {"local", "dev", "aws"}
    assert {n.target for n in infra.nodes()} == {"local/local", "dev/dev1", "dev/dev2", "aws/aws1"}
    assert infra.node("dev", "dev1").services["worker"].image == "registry.dev.example:5000/worker:1.4"


def test_targets_resolve(tmp_path):
    root, node = make_repo(tmp_path, "unix:///x.sock", web_compose("a:1"), node="n1")
    infra = load(root)
    assert str(infra.resolve("test")) == "test"
    assert str(infra.resolve("test/n1")) == "test/n1"
    assert str(infra.resolve("n1")) == "test/n1"  # a unique node name alone
    assert str(infra.resolve("test/n1/web")) == "test/n1/web"
    with pytest.raises(TargetError, match="unknown service test/n1/nope .*web"):
        infra.resolve("test/n1/nope")
    with pytest.raises(TargetError, match="unknown target 'zzz'"):
        infra.resolve("zzz")


def test_ambiguous_node_name(tmp_path):
    root, _ = make_repo(tmp_path, "unix:///x.sock", web_compose("a:1"), node="n1",
                        extra_files={"datacenters/other/n1/node.yml": "docker: unix:///y.sock\n"})
    with pytest.raises(TargetError, match="ambiguous: other/n1, test/n1"):
        load(root).resolve("n1")


def test_validate_reports_every_problem_with_file_and_line(tmp_path):
    root, node = make_repo(tmp_path, "unix:///x.sock", web_compose("a:1") + "    privilegd: true\n", extra_files={
        "datacenters/test/broken/node.yml": "docker: unix:///y.sock\n",
        "datacenters/test/broken/docker-compose.yml": "services:\n  a: {image: [unclosed\n",
        "datacenters/test/nonode/docker-compose.yml": "services: {}\n",
        "datacenters/test/badurl/node.yml": "docker: http://nope\nfoo: 1\n",
    })
    result = cli(root, "validate")
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert any(l.startswith(f"datacenters/test/{node}/docker-compose.yml:12: services.web.privilegd: "
                            "unsupported key 'privilegd'") for l in lines), lines
    assert any(l.startswith("datacenters/test/broken/docker-compose.yml:") and "malformed YAML" in l for l in lines)
    assert any(l.startswith("datacenters/test/nonode/node.yml: missing") for l in lines)
    assert any(l.startswith("datacenters/test/badurl/node.yml:1: docker: invalid Docker URL") for l in lines)
    assert any(l.startswith("datacenters/test/badurl/node.yml:2: foo: unsupported key") for l in lines)
    data = json.loads(cli(root, "validate", "--json").output)
    assert data["ok"] is False and len(data["problems"]) == len(lines)


def test_validate_ok_and_ls(tmp_path):
    root, node = make_repo(tmp_path, "unix:///x.sock", web_compose("a:1"))
    result = cli(root, "validate")
    assert result.exit_code == 0 and result.output.startswith("ok: 1 datacenters, 1 nodes, 1 containers")
    listing = json.loads(cli(root, "ls", "--json").output)
    assert listing == [{"datacenter": "test", "node": node, "docker": "unix:///x.sock",
                        "containers": [{"service": "web", "image": "a:1", "target": f"test/{node}/web"}]}]
    table = cli(root, "ls").output.splitlines()
    assert table[0].split() == ["DATACENTER", "NODE", "SERVICE", "IMAGE", "DOCKER"]
    assert table[1].split() == ["test", node, "web", "a:1", "unix:///x.sock"]


def test_malformed_yaml_gives_one_line_error_on_deploy(tmp_path):
    root, node = make_repo(tmp_path, "unix:///x.sock", "services:\n  web:\n    image: a:1\n   bad: indent\n")
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), "deploy", "a:2", f"test/{node}"],
                          capture_output=True, text=True)
    assert done.returncode == 3
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: datacenters/test/{node}/docker-compose.yml:4: malformed YAML")


def test_init_creates_a_working_repo(tmp_path):
    result = cli(tmp_path, "init", str(tmp_path / "new"), "--no-images")
    assert result.exit_code == 0, result.output
    root = tmp_path / "new"
    assert load(root).node("local", "local").services["hello"].image == "hello:1"
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "log", "--format=%s") == "init infrastructure repository"
    assert cli(root, "validate").exit_code == 0
    again = cli(tmp_path, "init", str(root), "--no-images")
    assert again.exit_code != 0 and "not empty" in again.output


def test_init_example_copies_the_example_and_never_commits_to_the_project(tmp_path):
    result = cli(tmp_path, "init", str(tmp_path / "ex"), "--example", "--no-images", "--docker", "unix:///tmp/d.sock")
    assert result.exit_code == 0, result.output
    infra = load(tmp_path / "ex")
    assert infra.node("local", "local").docker == "unix:///tmp/d.sock"
    assert "dev" in infra.datacenters
    # The project's own repository refuses deploys: its datacenters/ is only an example.
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(PROJECT), "deploy", "worker:1.5",
                           "local/local"], capture_output=True, text=True)
    assert done.returncode != 0 and "deployer project itself" in done.stderr


def test_help_is_fast_to_import():
    """Heavy libraries are imported lazily (the timing itself is in bench/)."""
    code = ("import sys, deployer.cli.main; heavy = [m for m in ('docker', 'git', 'paramiko', 'jinja2', 'consul', "
            "'requests', 'ruamel.yaml', 'rich') if m in sys.modules]; print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_file_only_the_round_trip_loader_accepts_still_loads_its_services(tmp_path):
    """A reused anchor name is refused by the fast loader but valid YAML: the services must not vanish."""
    compose = ("x-a: &x {a: 1}\nx-b: &x {b: 2}\nservices:\n  web:\n    image: a:1\n")
    root, node = make_repo(tmp_path, "unix:///x.sock", compose, node="n1")
    infra, problems = check(root)
    assert problems == []
    assert list(infra.node("test", "n1").services) == ["web"]


def test_docker_loads_without_paramiko_until_an_ssh_node_needs_it():
    """unix:// and tcp:// nodes do not pay for docker-py's SSH support; the first ssh:// node installs it."""
    code = ("import sys; from deployer.engine.connect import import_docker; d = import_docker(); "
            "before = 'paramiko' in sys.modules, hasattr(d.api.client, 'SSHHTTPAdapter'); "
            "d = import_docker(ssh=True); "
            "print(*before, 'paramiko' in sys.modules, d.api.client.SSHHTTPAdapter is d.transport.SSHHTTPAdapter)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "True"]
