"""The test infrastructure itself: a fleet of real Docker engines.

Three nodes, one per transport: ``plain`` (unix socket), ``viassh`` (SSH via
paramiko) and ``viatls`` (TCP with mutual TLS).
"""

from __future__ import annotations

from contextlib import closing

import os
import subprocess
import threading
import time

import docker
import pytest
import requests

from tests.support import images
from tests.support.engines import Fleet, SSH_PORT, TLS_PORT


@pytest.fixture(scope="module")
def trio():
    fleet = Fleet()
    try:
        fleet.start()
        fleet.add_nodes(dict(name="plain"), dict(name="viassh", ssh=True),
                        dict(name="viatls", tls=True))
        with closing(fleet["plain"].client()) as src:
            images.build_busybox_base(src)
            images.build_web_image(src, "deployer-test/web:1", "v1")
            for name in ("viassh", "viatls"):
                with closing(fleet[name].client()) as dst:
                    images.copy_image(src, dst, images.BASE_TAG, "deployer-test/web:1")
        yield fleet
    finally:
        fleet.close()


def _http_get_from(client, address: str, port: int) -> str:
    """GET / from inside a busybox container on the engine behind client."""
    # the trailing echo: a last line without newline can be missing from the logs
    script = f'(printf "GET / HTTP/1.0\\r\\n\\r\\n"; sleep 1) | nc -w 3 {address} {port}; echo'
    return client.containers.run(images.BASE_TAG, ["sh", "-c", script], remove=True).decode()


def _outcome_within(fn, seconds: float):
    """Run fn in a thread; returns (finished, exception, elapsed)."""
    result: dict = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), result.get("error"), time.monotonic() - start


def test_node_attributes(trio):
    plain, viassh, viatls = trio["plain"], trio["viassh"], trio["viatls"]
    assert plain.unix_url == f"unix://{plain.socket}" and os.path.exists(plain.socket)
    assert plain.ssh_url is None and plain.tls_url is None
    assert viassh.ssh_url == f"ssh://root@{viassh.address}:{SSH_PORT}"
    assert viassh.ssh_host_key_line.startswith(f"[{viassh.address}]:{SSH_PORT} ssh-ed25519 AAAA")
    assert os.path.exists(viassh.ssh_identity)
    assert viatls.tls_url == f"tcp://{viatls.address}:{TLS_PORT}"
    assert sorted(os.listdir(viatls.tls_dir)) == ["ca.pem", "cert.pem", "key.pem"]
    addresses = {n.address for n in trio.nodes.values()}
    assert len(addresses) == 3 and all(a.startswith(f"10.{trio.octet}.0.") for a in addresses)
    for node in trio.nodes.values():
        assert node.running and os.path.exists(f"/run/netns/{node.netns}")
        assert open(f"/proc/{node.pid}/comm").read().strip() == "dockerd"


def test_each_node_answers_over_its_own_transport(trio):
    clients = {
        "plain": trio["plain"].client(timeout=20),
        "viassh": trio["viassh"].ssh_client(timeout=20),
        "viatls": trio["viatls"].tls_client(timeout=20),
    }
    ids = set()
    for name, client in clients.items():
        with closing(client):
            info = client.info()
            assert info["Name"] == name   # its own hostname: the right daemon answered
            ids.add(info["ID"])
            out = client.containers.run(images.BASE_TAG, ["echo", f"hello from {name}"],
                                        remove=True)
            assert out.decode().strip() == f"hello from {name}"
    assert len(ids) == 3                  # per-node deprecated-key-path: distinct engine IDs


def test_ssh_needs_the_known_hosts_entry(trio, tmp_path, monkeypatch):
    node = trio["viassh"]
    bare = tmp_path / "bare-home"
    (bare / ".ssh").mkdir(parents=True)
    (bare / ".ssh" / "config").write_text(f"Host {node.address}\n    IdentityFile {node.ssh_identity}\n")
    monkeypatch.setenv("HOME", str(bare))
    with pytest.raises(Exception, match="not found in known_hosts"):
        docker.DockerClient(base_url=node.ssh_url, use_ssh_client=False, timeout=10)
    node.trust_ssh(bare)
    with closing(docker.DockerClient(base_url=node.ssh_url, use_ssh_client=False, timeout=10)) as client:
        assert client.info()["Name"] == "viassh"


def test_tls_ignores_a_bogus_requests_ca_bundle(trio, tmp_path, monkeypatch):
    node = trio["viatls"]
    bogus = tmp_path / "bogus-ca.pem"
    bogus.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bogus))
    # what goes wrong without trust_env = False
    with pytest.raises(docker.errors.DockerException):
        docker.DockerClient(base_url=node.tls_url, tls=node.tls_config(), timeout=10)
    with closing(node.tls_client(timeout=10)) as client:
        assert client.info()["Name"] == "viatls"
    # and the server insists on a client certificate
    plain_tls = docker.tls.TLSConfig(ca_cert=os.path.join(node.tls_dir, "ca.pem"), verify=True)
    api = docker.APIClient(base_url=node.tls_url, tls=plain_tls, timeout=10, version="1.41")
    api.trust_env = False
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        api.ping()


def test_container_reaches_another_nodes_published_port(trio):
    with closing(trio["viassh"].ssh_client(timeout=30)) as remote, closing(trio["plain"].client()) as local:
        web = remote.containers.run("deployer-test/web:1", detach=True, ports={"80/tcp": 8080})
        try:
            reply = _http_get_from(local, trio["viassh"].address, 8080)
            assert reply.startswith("HTTP/1.") and " 200 " in reply.splitlines()[0]
            assert reply.endswith("\r\n\r\nv1\n")
        finally:
            web.remove(force=True)


def test_web_images(trio):
    with closing(trio["plain"].client()) as client:
        first = images.build_web_image(client, "deployer-test/web:t", "tee")
        again = images.build_web_image(client, "deployer-test/web:t", "tee")
        assert first.id == again.id                       # cache-friendly
        sick = images.build_web_image(client, "deployer-test/web:tsick", "x", healthy=False)
        exits = images.build_web_image(client, "deployer-test/web:texits", "x", exits=True)
        assert first.attrs["Config"].get("Healthcheck") is None

        ok = client.containers.run(first.id, detach=True)
        bad = client.containers.run(sick.id, detach=True)
        try:
            assert ok.exec_run(images.HEALTHCHECK_TEST[1:]).exit_code == 0
            assert bad.exec_run(images.HEALTHCHECK_TEST[1:]).exit_code != 0
            started = time.monotonic()
            ok.stop(timeout=10)
            assert time.monotonic() - started < 3           # exits on SIGTERM
        finally:
            ok.remove(force=True)
            bad.remove(force=True)

        dead = client.containers.run(exits.id, detach=True)
        try:
            assert dead.wait(timeout=10)["StatusCode"] == 3
            assert b"fatal" in dead.logs()
        finally:
            dead.remove(force=True)
        client.images.remove(sick.id, force=True)
        client.images.remove(exits.id, force=True)


@pytest.mark.parametrize("name", ["viatls", "viassh"])
def test_link_down_makes_remote_calls_fail_fast(trio, name):
    node = trio[name]
    connect = (lambda: node.tls_client(timeout=3)) if name == "viatls" \
        else (lambda: node.ssh_client(timeout=3))
    existing = connect()
    existing.ping()
    node.link_down()
    try:
        # a client connected before the link went down: read timeout
        done, error, elapsed = _outcome_within(existing.ping, 10)
        assert done and error is not None and elapsed < 8, (done, error, elapsed)
        # a new connection: no route to host
        done, error, elapsed = _outcome_within(lambda: connect().ping(), 10)
        assert done and error is not None and elapsed < 8, (done, error, elapsed)
        # the unix socket still answers
        with closing(node.client(timeout=5)) as local:
            assert local.ping()
    finally:
        node.link_up()
    deadline = time.monotonic() + 15
    while True:
        try:
            with closing(connect()) as client:
                assert client.ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_git_env_isolates_home_and_trusts_ssh_nodes(trio, git_env):
    assert os.environ["HOME"] == str(git_env) != "/root"
    assert os.environ["GIT_CONFIG_NOSYSTEM"] == "1"
    name = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True)
    assert name.stdout.strip() == os.environ["GIT_AUTHOR_NAME"]
    node = trio["viassh"]
    assert node.ssh_host_key_line in (git_env / ".ssh" / "known_hosts").read_text().splitlines()
    assert f"IdentityFile {node.ssh_identity}" in (git_env / ".ssh" / "config").read_text()


def test_engine_fixture(engine):
    with closing(engine.client()) as client:
        tags = {t for image in client.images.list() for t in image.tags}
        assert {images.BASE_TAG, *images.STANDARD_WEB_IMAGES} <= tags
        assert client.info()["Name"] == "engine"
    assert engine.unix_url.startswith("unix:///")


def test_teardown_leaves_nothing_behind(trio):
    tag, root = trio.tag, str(trio.dir)
    pids = [p for n in trio.nodes.values() for p in (n.pid, n.sshd_pid, n.containerd_pid) if p]
    assert len(pids) == 3 + 1 + 3          # dockerds, sshd, containerds
    netns_ids = {os.stat(f"/run/netns/{n.netns}").st_ino for n in trio.nodes.values()}
    # something to clean up: a running container, an SSH session left open
    with closing(trio["plain"].client()) as client:
        client.containers.run("deployer-test/web:1", detach=True, ports={"80/tcp": 8081})
    open_ssh = trio["viassh"].ssh_client(timeout=5)
    open_ssh.ping()

    started = time.monotonic()
    trio.close()
    assert time.monotonic() - started < 15

    assert trio.leftovers() == []
    assert tag not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables", "-w", "-t", table, "-S"],
                               capture_output=True, text=True).stdout
        assert tag not in rules
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z"), pid
    in_our_netns = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/net").st_ino in netns_ids:
                in_our_netns.append(entry)
        except OSError:
            pass
    assert in_our_netns == []
    dockerds = subprocess.run(["pgrep", "-a", "dockerd"], capture_output=True, text=True).stdout
    assert root not in dockerds
    assert not os.path.exists(root)
    assert not any(os.path.exists(f"/sys/fs/cgroup/{c}/{tag}-plain")
                   for c in os.listdir("/sys/fs/cgroup"))
