"""Builds on a remote engine: the source sent as an archive over ssh:// and tcp:// (TLS), the artifacts back.

Real parts: the build tests' private dockerd (tests/support/build_engine.py, the "local" engine, where
the Go builder image is made, as on an operator's machine with Debian's mirror) and a fleet node in
its own network namespace reached over SSH (paramiko, host key pinned) and TCP+TLS
(tests/support/engines.py): the build engine. Its daemon starts empty, so its builder image is moved
there (``deployer builders build --builders-from``: docker save | docker load over the API). The
TLS registry of tests/support/registry.py takes the pushes; the release test's node is the local
engine, which pulls what the remote engine built and pushed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from deployer.build import builders as B
from tests.support.build_repos import git, make_repo
from tests.support.repos import cli, make_repo as make_infra, managed, remove_node_containers, unique_node
from tests.support.build_fixtures import report

pytest_plugins = ["tests.support.build_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "examples" / "apps"


@pytest.fixture(scope="module")
def remote(fleet, client, go_builder):
    """A fleet node reached over SSH and TLS: the build engine. Stopped at the module's end."""
    node = fleet.add_node("rbuild", ssh=True, tls=True)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def remote_go(remote, client, go_builder):
    """``remote`` with the Go builder image (moved there by the first test, or here when it runs alone)."""
    from deployer.ops.build_engine import build_client

    with contextlib.closing(build_client(remote.ssh_url)) as rc:
        B.ensure_builder_image(rc, "go", source=client)
    return remote


def builder_containers(rc) -> list:
    # polled while builds run: a container removed between docker-py's list and its inspect is skipped, not a 404
    return rc.containers.list(all=True, filters={"label": "deployer.role=builder"}, ignore_removed=True)


def binaries(result) -> dict[str, bytes]:
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    return {Path(p).name: Path(p).read_bytes() for p in data["binaries"]}


# --------------------------------------------------------------------------- builder images


def test_builders_ls_then_build_moves_the_image_over_ssh(remote, client, go_builder, build_engine, tmp_path, capsys):
    ref = go_builder[0]
    r = cli(tmp_path, "builders", "ls", "--engine", remote.ssh_url, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["engine"] == remote.ssh_url
    go = [row for row in data["builders"] if row["tech"] == "go"]
    assert go == [{"tech": "go", "ref": ref, "id": "", "size": 0, "created": "", "current": False, "expected": ref}]

    t = time.monotonic()
    r = cli(tmp_path, "builders", "build", "go", "--engine", remote.ssh_url, "--builders-from", build_engine.url)
    moved = time.monotonic() - t
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"go: {ref} made in ")
    assert f"moving {ref} from {build_engine.url} to {remote.ssh_url}" in r.stderr
    local_id = client.images.get(ref).id
    with contextlib.closing(remote.client()) as rc:
        assert rc.images.get(ref).id == local_id  # the same content-addressed image, byte for byte
        assert rc.images.get(ref.split(":")[0] + ":latest").id == local_id

    r = cli(tmp_path, "builders", "ls", "--engine", remote.ssh_url)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TECH", "IMAGE", "ID", "SIZE", "STATE"]
    (row,) = [line.split() for line in lines[1:] if line.startswith("go ")]
    assert row[:3] == ["go", ref, local_id[7:19]] and row[-1] == "current"

    r = cli(tmp_path, "builders", "build", "go", "--engine", remote.ssh_url, "--builders-from", build_engine.url)
    assert r.exit_code == 0 and r.stdout == f"go: {ref} present already\n", r.output
    size = client.images.get(ref).attrs["Size"] / 1e6
    report(capsys, f"go builder image ({size:.0f} MB) moved over ssh in {moved:.1f}s")


def test_missing_builder_image_and_no_images_engine(remote, tmp_path):
    """The remote lacks the python builder; the default images engine (the local socket) is not there."""
    r = cli(tmp_path, "build", str(APPS / "sensor"), "--builder", "python", "--engine", remote.ssh_url)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: builder images for {remote.ssh_url} are made on unix:///var/run/docker.sock (--builders-from) "
        "and moved: build engine unix:///var/run/docker.sock: no such socket /var/run/docker.sock: is dockerd "
        "running? (--engine URL or DOCKER_HOST names the engine)")


# --------------------------------------------------------------------------- builds


def test_same_binary_over_ssh_and_tls_as_locally(remote, remote_go, client, go_builder, tmp_path, monkeypatch, capsys):
    with contextlib.closing(remote.client()) as rc:
        assert rc.images.get(go_builder[0])  # moved by the test above
        local_result = B.build(client, APPS / "sensor", artifacts_dir=tmp_path / "local")
        local = {p.name: p.read_bytes() for p in local_result.binaries}

        t = time.monotonic()
        over_ssh = binaries(cli(tmp_path, "build", str(APPS / "sensor"), "--engine", remote.ssh_url,
                                "--out", str(tmp_path / "ssh"), "--json"))
        ssh_seconds = time.monotonic() - t
        assert over_ssh == local and list(local) == ["sensor"]

        # TLS as the docker CLI reads it; a CA bundle in the environment does not replace the engine's CA
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", remote.tls_dir)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        t = time.monotonic()
        over_tls = binaries(cli(tmp_path, "build", str(APPS / "sensor"), "--engine", remote.tls_url,
                                "--out", str(tmp_path / "tls"), "--json"))
        tls_seconds = time.monotonic() - t
        assert over_tls == local

        # the cache stays on the build engine, in its named volume; no builder container is left
        volume = rc.volumes.get("deployer-cache-go")
        assert sum(1 for _ in (Path(volume.attrs["Mountpoint"]) / "go-build").rglob("*-d")) > 100
        assert builder_containers(rc) == []
    report(capsys, f"sensor over ssh (cold cache there) {ssh_seconds:.1f}s, over tls (warm) {tls_seconds:.1f}s")


def test_ignore_file_and_size_limit(remote, remote_go, tmp_path):
    app = tmp_path / "sensor"
    shutil.copytree(APPS / "sensor", app)
    (app / "assets").mkdir()
    (app / "assets" / "blob.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (app / "deployer.yml").write_text("source_limit: 1m\n")
    (app / ".deployerignore").write_text("# the builder needs no assets\nassets\n")
    r = cli(tmp_path, "build", str(app), "--engine", remote.ssh_url, "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert "(5 files, " in r.stderr  # Dockerfile, go.mod, main.go, deployer.yml, .deployerignore: no blob

    (app / ".deployerignore").unlink()
    with contextlib.closing(remote.client()) as rc:
        start_ns = time.time_ns()
        r = cli(tmp_path, "build", str(app), "--engine", remote.ssh_url, "--out", str(tmp_path / "out"))
        assert r.exit_code == 3
        assert r.stderr.strip().splitlines()[-1] == (
            f"error: {app}: the source to send is 2.0 MiB in 5 files, over the limit of 1.0 MiB "
            "(deployer.yml source_limit) (biggest: assets, 2.0 MiB); leave files out in .deployerignore or "
            ".dockerignore or raise source_limit in deployer.yml")
        events = list(rc.events(since=start_ns // 10**9 - 1, until=int(time.time()) + 1, decode=True))
        # nothing was created, nothing sent (the first build's events are older)
        assert [e for e in events if e.get("Type") == "container" and e["timeNano"] >= start_ns] == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sensor"]  # the earlier result stays


# --------------------------------------------------------------------------- faults


def test_engine_gone_mid_build(remote, remote_go, registry, tmp_path, monkeypatch, capsys):
    src = make_repo(tmp_path, "sensor")
    version = git(src.parent, "rev-parse", "HEAD")[:12]
    ref = f"{registry}/sensor:{version}"
    cold = "deployer-cache-{tech}-cut"
    monkeypatch.setattr(B, "CACHE_VOLUME", cold)  # an empty cache: the compile runs long enough to be cut
    results: list = []
    worker = threading.Thread(target=lambda: results.append(cli(
        tmp_path, "image", str(src), "--registry", registry, "--no-push", "--engine", remote.ssh_url)))
    with contextlib.closing(remote.client()) as rc:
        worker.start()
        deadline = time.monotonic() + 120
        while not [c for c in builder_containers(rc) if c.status == "running"]:
            assert time.monotonic() < deadline and worker.is_alive(), results and results[0].output
            time.sleep(0.05)
        remote.link_down()
        cut = time.monotonic()
        try:
            worker.join(60)
            noticed = time.monotonic() - cut
            assert not worker.is_alive()
        finally:
            remote.link_up()
        (r,) = results
        assert r.exit_code == 1
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: go build of {src}: lost the build engine {remote.ssh_url} while ") \
            and last.endswith("; nothing was tagged"), r.stderr
        assert noticed < 20, noticed
        with pytest.raises(Exception):
            rc.images.get(ref)  # nothing tagged

        monkeypatch.setattr(B, "CACHE_VOLUME", "deployer-cache-{tech}")
        t = time.monotonic()
        r = cli(tmp_path, "image", str(src), "--registry", registry, "--no-push", "--engine", remote.ssh_url)
        again = time.monotonic() - t
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith(f"{ref}: built in ")
        assert rc.images.get(ref).labels["org.opencontainers.image.revision"].startswith(version)
        # the cut build's container was left (the engine was gone); it is removed once it has exited
        with contextlib.suppress(Exception):
            rc.volumes.get(cold.format(tech="go")).remove(force=True)
    report(capsys, f"engine gone: noticed in {noticed:.1f}s; the next build {again:.1f}s")


# --------------------------------------------------------------------------- release through datacenter.yml


COMPOSE = """\
services:
  worker:
    image: {image}
    healthcheck:
      interval: 500ms
"""


def test_release_builds_on_the_datacenters_builder(remote, remote_go, client, build_engine, registry, tmp_path, capsys):
    src = make_repo(tmp_path, "worker")
    git(src.parent, "tag", "v2.0.0")
    ref = f"{registry}/worker:v2.0.0"
    node = unique_node()
    datacenter = (f"registry: {registry}\n"
                  f"builder:\n  docker: {remote.ssh_url}\n  identity_file: {remote.ssh_identity}\n")
    root, _ = make_infra(tmp_path / "infra", build_engine.url, COMPOSE.format(image=f"{registry}/worker:none"),
                         node=node, extra_files={"datacenters/test/datacenter.yml": datacenter,
                                                 "datacenters/test/builder_known_hosts":
                                                     remote.ssh_host_key_line + "\n"})
    # ~/.ssh/known_hosts emptied: only the datacenter's pinned key lets the connection in
    known = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    known.write_text("")
    try:
        t = time.monotonic()
        r = cli(root, "release", str(src), f"test/{node}", "-m", "built on the builder")
        seconds = time.monotonic() - t
        assert r.exit_code == 0, r.output
        assert r.stdout.splitlines()[0].startswith(f"{ref}: built in ")
        assert f"at {remote.ssh_url} (" in r.stderr  # the builder ran there
        with contextlib.closing(remote.client()) as rc:
            assert rc.images.get(ref).labels["deployer.builder"] == "go"  # built and pushed from there
        (container,) = [c for c in managed(client, node) if c.status == "running"]
        assert container.attrs["Config"]["Image"] == ref
        deadline = time.monotonic() + 30
        while container.attrs["State"].get("Health", {}).get("Status") != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.2)
            container.reload()
    finally:
        remove_node_containers(client, node)
    report(capsys, f"release built on the datacenter's builder (ssh): {seconds:.1f}s")
