"""Which engine builds: datacenter.yml builder: (config.builder_engine) and its choice (ops.build_engine). No engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.config import loader
from deployer.errors import BuildError, TargetError, ValidationFailed
from deployer.ops import build_engine as E


def _repo(tmp_path: Path, dc_yml: str | None, *, dcs=("dev",)) -> Path:
    root = tmp_path / "infra"
    for dc in dcs:
        (root / f"datacenters/{dc}/{dc}1").mkdir(parents=True)
        (root / f"datacenters/{dc}/{dc}1/node.yml").write_text("docker: unix:///nonexistent.sock\n")
        if dc_yml is not None:
            (root / f"datacenters/{dc}/datacenter.yml").write_text(dc_yml)
    return root


def test_builder_as_a_url(tmp_path):
    dc = loader.load(_repo(tmp_path, "registry: r:5000\nbuilder: ssh://ci@build.example:2222\n")).datacenters["dev"]
    b = dc.builder
    assert (b.docker, b.name, b.dc, b.tls, b.identity_file, b.known_hosts) == (
        "ssh://ci@build.example:2222", "builder", "dev", None, None, None)
    assert b.location.path == "datacenters/dev/datacenter.yml"


def test_builder_as_a_mapping_paths_relative_to_the_datacenter(tmp_path):
    root = _repo(tmp_path, "builder:\n  docker: tcp://10.0.0.5:2376\n  tls: {ca: t/ca.pem, cert: t/c.pem, key: t/k.pem}\n")
    b = loader.load(root).datacenters["dev"].builder
    assert b.tls.ca == str((root / "datacenters/dev/t/ca.pem").resolve()) and b.tls.key.endswith("/t/k.pem")


def test_pinned_builder_host_keys(tmp_path):
    root = _repo(tmp_path, "builder:\n  docker: ssh://b\n  identity_file: keys/id\n")
    (root / "datacenters/dev/builder_known_hosts").write_text("b ssh-ed25519 AAAA\n")
    b = loader.load(root).datacenters["dev"].builder
    assert b.known_hosts == "datacenters/dev/builder_known_hosts"
    assert b.identity_file == str((root / "datacenters/dev/keys/id").resolve())


def test_no_builder(tmp_path):
    assert loader.load(_repo(tmp_path, "registry: r:5000\n")).datacenters["dev"].builder is None
    assert loader.load(_repo(tmp_path / "b", None)).datacenters["dev"].builder is None


@pytest.mark.parametrize("text, message", [
    ("builder: ftp://x\n", "datacenters/dev/datacenter.yml:1: builder: invalid Docker URL 'ftp://x'"),
    ("builder: 5\n", "datacenters/dev/datacenter.yml:1: builder: must be a Docker URL"),
    ("builder:\n  tls: {ca: a, cert: b, key: c}\n", "datacenters/dev/datacenter.yml:1: builder.docker: required"),
    ("builder:\n  docker: ssh://b\n  port: 22\n", "datacenters/dev/datacenter.yml:3: builder.port: unsupported key 'port'"),
    ("builder:\n  docker: ssh://b\n  tls: {ca: a, cert: b, key: c}\n",
     "datacenters/dev/datacenter.yml:3: builder.tls: tls applies only to tcp:// Docker URLs"),
    ("builder:\n  docker: tcp://b:2376\n  tls: {ca: a}\n", "datacenters/dev/datacenter.yml:3: builder.tls.cert: required"),
    ("builder:\n  docker: tcp://b:2376\n  identity_file: k\n",
     "datacenters/dev/datacenter.yml:3: builder.identity_file: identity_file applies only to ssh://"),
    ("builder:\n  docker: ''\n", "datacenters/dev/datacenter.yml:2: builder.docker: must be a non-empty string"),
])
def test_bad_builder_refused_with_file_line_and_field(tmp_path, text, message):
    with pytest.raises(ValidationFailed) as caught:
        loader.load(_repo(tmp_path, text))
    assert message in str(caught.value)


def test_the_targets_datacenter_builder(tmp_path):
    infra = loader.load(_repo(tmp_path, "builder: ssh://b\n", dcs=("dev", "prod")))
    assert E.datacenter_builder(infra, targets=["dev/dev1", "prod"]).docker == "ssh://b"
    assert E.datacenter_builder(infra, dc="prod").dc == "prod"
    with pytest.raises(TargetError, match="unknown datacenter 'qa'"):
        E.datacenter_builder(infra, dc="qa")
    (tmp_path / "infra/datacenters/prod/datacenter.yml").write_text("builder: ssh://other\n")
    infra = loader.load(tmp_path / "infra")
    with pytest.raises(TargetError, match=r"different builders \(dev: ssh://b, prod: ssh://other\); give --engine"):
        E.datacenter_builder(infra, targets=["dev", "prod"])


def test_engine_url_grammar_and_docker_tls_environment(tmp_path, monkeypatch):
    with pytest.raises(BuildError, match=r"^build engine ftp://x: unsupported URL"):
        E.build_client("ftp://x")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    node = E._url_node("tcp://10.0.0.5:2376")
    assert (node.tls.ca, node.tls.cert, node.tls.key) == tuple(str(tmp_path / f) for f in ("ca.pem", "cert.pem", "key.pem"))
    # the files are checked before any connection: a missing one is bad input, one line
    with pytest.raises(BuildError) as caught:
        E.build_client("tcp://10.0.0.5:2376")
    assert str(caught.value) == f"build engine tcp://10.0.0.5:2376: ca file {tmp_path}/ca.pem does not exist"
    assert caught.value.exit_code == 3
    monkeypatch.delenv("DOCKER_TLS_VERIFY")
    assert E._url_node("tcp://10.0.0.5:2376").tls is None  # as docker's CLI: plain TCP without DOCKER_TLS_VERIFY


class _Api:
    def __init__(self, url):
        self.deployer_url = url


class _Client:
    def __init__(self, url):
        self.api = _Api(url)


def test_where_missing_builder_images_come_from(monkeypatch):
    made = []
    monkeypatch.setattr(E, "build_client", lambda url, timeout=120: made.append(url) or _Client(url))
    assert E.images_engine(None, _Client("unix:///x.sock")) is None  # a local engine makes its own
    assert E.images_engine("here", _Client("ssh://b")) is None
    assert E.images_engine("ssh://b", _Client("ssh://b")) is None
    assert E.images_engine(None, _Client("ssh://b")).api.deployer_url == E.DEFAULT_DOCKER
    assert E.images_engine("unix:///y.sock", _Client("tcp://b:2376")).api.deployer_url == "unix:///y.sock"
    lazy = E.ImagesFrom(None, _Client("ssh://b"))
    assert made == [E.DEFAULT_DOCKER, "unix:///y.sock"]  # ImagesFrom connects only when called
    assert lazy() is lazy() and made[-1] == E.DEFAULT_DOCKER and len(made) == 3
