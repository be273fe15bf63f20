"""deployer.ops.nodes: adding and removing nodes, against real Docker engines.

``engine`` is reached over its unix socket; ``remote_engine`` over SSH
(paramiko, host key pinned in the repository) and over TCP with mutual TLS.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from deployer.engine import connect as hosts
from deployer.config import loader
from deployer.errors import DirtyFileError, HostError, HostUnreachable, LockHeld, TargetError
from deployer.gitrepo.repo import InfraRepo
from deployer.gitrepo.lock import DeployLock
from deployer.ops.nodes import (
    HostKeyChanged,
    HostKeyNotTrusted,
    NodeNotEmpty,
    add_node,
    node_yml_text,
    parse_node_target,
    remove_node,
)
from tests.support.repos import git, make_repo, web_compose


@pytest.fixture
def infra(tmp_path, engine):
    """A committed infrastructure repository with one unix-socket node (test/<name>)."""
    root, _node = make_repo(tmp_path / "infra", engine.unix_url, None)
    return root


def clean(root: Path) -> bool:
    return git(root, "status", "--porcelain", "--untracked-files=all") == ""


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD")


def committed_files(root: Path, rev: str = "HEAD") -> list[str]:
    return sorted(git(root, "show", "--format=", "--name-only", rev).splitlines())


def trailers(root: Path, rev: str = "HEAD") -> list[str]:
    return git(root, "log", "-1", "--format=%(trailers:only,unfold)", rev).splitlines()


def load_node(root: Path, target: str):
    dc, name = target.split("/")
    return loader.load(root).node(dc, name)


def ssh_keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]  # "256 SHA256:... comment (ED25519)"


def forget_host_keys(home: Path) -> None:
    (home / ".ssh" / "known_hosts").write_text("")


def host_pub(remote_engine) -> Path:
    return remote_engine.dir / "ssh" / "ssh_host_ed25519_key.pub"


def other_ed25519_key(tmp_path: Path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, b64 = (key.with_suffix(".pub")).read_text().split()[:2]
    return f"{kind} {b64}"


def tls_files(remote_engine) -> dict[str, str]:
    d = Path(remote_engine.tls_dir)
    return {"ca": str(d / "ca.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")}


# -- target and settings --------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "dc", "dc/", "/node", "a/b/c", "DC/node", "dc/No de", "dc/-x"])
def test_invalid_targets(bad):
    with pytest.raises(TargetError):
        parse_node_target(bad)


def test_node_yml_round_trips_odd_values(tmp_path):
    text = node_yml_text("tcp://h:2376", tls={"ca": "yes", "cert": "~/c: d.pem", "key": "#k"},
                         description="on: true\nsecond line", address="10.0.0.1")
    doc = loader.parse_yaml(text, "node.yml")
    assert doc["tls"] == {"ca": "yes", "cert": "~/c: d.pem", "key": "#k"}
    assert doc["description"] == "on: true\nsecond line"
    assert doc["address"] == "10.0.0.1" and doc["docker"] == "tcp://h:2376"


def test_refuses_settings_that_do_not_fit_the_url(infra, engine):
    with pytest.raises(TargetError, match="invalid Docker URL"):
        add_node(infra, "test/x", "http://nope")
    with pytest.raises(TargetError, match="only to tcp://"):
        add_node(infra, "test/x", engine.unix_url, tls={"ca": "a", "cert": "b", "key": "c"})
    with pytest.raises(TargetError, match="only to ssh://"):
        add_node(infra, "test/x", engine.unix_url, identity_file="~/.ssh/id")
    with pytest.raises(TargetError, match="exactly ca, cert and key"):
        add_node(infra, "test/x", "tcp://10.0.0.1:2376", tls={"ca": "a"})
    assert not (infra / "datacenters/test/x").exists() and clean(infra)


# -- unix ---------------------------------------------------------------------------------


def test_add_unix_node_commits_node_yml(infra, engine):
    before = head(infra)
    result = add_node(infra, "test/local1", engine.unix_url, description="the local engine",
                      address="127.0.0.1", author="Ops Person <ops@example.com>")
    assert result.commit == head(infra) and git(infra, "rev-parse", "HEAD~1") == before
    assert result.files == ["datacenters/test/local1/node.yml"] == committed_files(infra)
    assert result.pushed is None and result.host_key is None
    assert result.engine_version
    assert git(infra, "log", "-1", "--format=%s|%an <%ae>") == "add node test/local1|Ops Person <ops@example.com>"
    assert trailers(infra) == ["Deployer-Action: node-add", "Deployer-Target: test/local1"]
    assert (infra / "datacenters/test/local1/node.yml").read_text() == (
        f"docker: {engine.unix_url}\naddress: 127.0.0.1\ndescription: the local engine\n")
    assert clean(infra)
    node = load_node(infra, "test/local1")
    assert node.address == "127.0.0.1" and node.description == "the local engine"
    with closing(hosts.connect(node, infra)) as client:
        assert client.api.ping()
    with InfraRepo.open(infra) as repo:
        entry = repo.deploy_log(limit=1)[0]
    assert entry.action == "node-add" and entry.targets == ["test/local1"]


def test_add_creates_the_datacenter(infra, engine):
    result = add_node(infra, "newdc/n1", engine.unix_url)
    assert result.datacenter_created
    assert (infra / "datacenters/newdc/n1/node.yml").is_file()
    assert not (infra / "datacenters/newdc/datacenter.yml").exists()
    assert "newdc" in loader.load(infra).datacenters
    assert clean(infra)


def test_add_refuses_an_existing_node(infra, engine):
    existing = next(loader.load(infra).nodes()).target
    before = head(infra)
    with pytest.raises(TargetError, match=f"node {existing} already exists"):
        add_node(infra, existing, engine.unix_url)
    assert head(infra) == before and clean(infra)


def test_add_refused_while_the_lock_is_held(infra, engine):
    with InfraRepo.open(infra) as repo, DeployLock(repo.git_dir, {"command": "deployer deploy x"}):
        with pytest.raises(LockHeld, match="deployer deploy x"):
            add_node(infra, "test/locked", engine.unix_url)
    assert not (infra / "datacenters/test/locked").exists()


# -- ssh --------------------------------------------------------------------------------


def test_ssh_unknown_host_key_is_refused_with_its_fingerprint(infra, remote_engine, git_env):
    forget_host_keys(git_env)
    before = head(infra)
    with pytest.raises(HostKeyNotTrusted) as exc:
        add_node(infra, "test/viassh", remote_engine.ssh_url, identity_file=remote_engine.ssh_identity)
    message = str(exc.value)
    fingerprint = ssh_keygen_fingerprint(host_pub(remote_engine))
    assert fingerprint.startswith("SHA256:")
    assert f"ssh-ed25519 {fingerprint}" in message
    assert "--accept-host-key" in message
    assert message.startswith(f"node test/viassh ({remote_engine.ssh_url}): ")
    assert exc.value.key.fingerprint == fingerprint
    assert "\n" not in message
    assert not (infra / "datacenters/test/viassh").exists()
    assert head(infra) == before and clean(infra)


def test_ssh_accepted_host_key_is_pinned_in_the_repo(infra, remote_engine, git_env):
    forget_host_keys(git_env)
    shutil.rmtree(git_env / ".ssh")  # no ~/.ssh/config either: node.yml's identity_file must do
    result = add_node(infra, "test/viassh", remote_engine.ssh_url, accept_host_key=True,
                      identity_file=remote_engine.ssh_identity)
    rel = "datacenters/test/viassh"
    assert result.files == [f"{rel}/known_hosts", f"{rel}/node.yml"] == committed_files(infra)
    assert result.host_key_accepted
    assert result.host_key.fingerprint == ssh_keygen_fingerprint(host_pub(remote_engine))
    known = (infra / rel / "known_hosts").read_text()
    assert known == remote_engine.ssh_host_key_line + "\n"
    assert known.startswith(f"[{remote_engine.address}]:2222 ssh-ed25519 AAAA")
    assert (infra / rel / "node.yml").read_text() == (
        f"docker: {remote_engine.ssh_url}\nidentity_file: {remote_engine.ssh_identity}\n")
    assert clean(infra)
    # the pinned key is what lets the transport in: ~/.ssh/known_hosts does not exist
    node = load_node(infra, "test/viassh")
    assert node.known_hosts == f"{rel}/known_hosts"
    with closing(hosts.connect(node, infra)) as client:
        assert client.info()["Name"] == remote_engine.hostname


def test_ssh_key_already_in_home_known_hosts_needs_no_accept(infra, remote_engine, git_env):
    assert remote_engine.ssh_host_key_line in (git_env / ".ssh/known_hosts").read_text()
    result = add_node(infra, "test/known", remote_engine.ssh_url)
    assert not result.host_key_accepted
    assert (infra / "datacenters/test/known/known_hosts").read_text() == remote_engine.ssh_host_key_line + "\n"
    assert (infra / "datacenters/test/known/node.yml").read_text() == f"docker: {remote_engine.ssh_url}\n"


def test_ssh_changed_host_key_in_the_repo_is_refused(infra, remote_engine, git_env, tmp_path):
    add_node(infra, "test/viassh", remote_engine.ssh_url, accept_host_key=True)
    known = infra / "datacenters/test/viassh/known_hosts"
    known.write_text(f"[{remote_engine.address}]:2222 {other_ed25519_key(tmp_path)}\n")
    # ~/.ssh/known_hosts still has the right key: the repository's pin must win anyway
    assert remote_engine.ssh_host_key_line in (git_env / ".ssh/known_hosts").read_text()
    node = load_node(infra, "test/viassh")
    with pytest.raises(HostUnreachable) as exc:
        hosts.connect(node, infra, timeout=15)
    assert "CHANGED" in str(exc.value)
    assert str(exc.value).startswith(f"node test/viassh ({remote_engine.ssh_url}): SSH host key for")
    assert "\n" not in str(exc.value)


def test_ssh_pinned_key_without_an_entry_for_the_host_falls_back_to_home(infra, remote_engine, git_env, tmp_path):
    add_node(infra, "test/viassh", remote_engine.ssh_url, accept_host_key=True)
    known = infra / "datacenters/test/viassh/known_hosts"
    known.write_text(f"[other.example.com]:2222 {other_ed25519_key(tmp_path)}\n")
    with closing(hosts.connect(load_node(infra, "test/viassh"), infra, timeout=15)) as client:
        assert client.api.ping()


def test_ssh_key_differing_from_home_known_hosts_is_refused(infra, remote_engine, git_env, tmp_path):
    (git_env / ".ssh/known_hosts").write_text(f"[{remote_engine.address}]:2222 {other_ed25519_key(tmp_path)}\n")
    with pytest.raises(HostKeyChanged) as exc:
        add_node(infra, "test/viassh", remote_engine.ssh_url, accept_host_key=True)
    assert "CHANGED" in str(exc.value) and "~/.ssh/known_hosts" in str(exc.value)
    assert ssh_keygen_fingerprint(host_pub(remote_engine)) in str(exc.value)
    assert not (infra / "datacenters/test/viassh").exists() and clean(infra)


def test_ssh_key_placed_in_the_repo_beforehand(infra, remote_engine, git_env, tmp_path):
    """An operator who got the key out of band puts it in the node's known_hosts first."""
    forget_host_keys(git_env)
    node_dir = infra / "datacenters/test/prepinned"
    node_dir.mkdir()
    (node_dir / "known_hosts").write_text(remote_engine.ssh_host_key_line + "\n")
    result = add_node(infra, "test/prepinned", remote_engine.ssh_url)
    assert not result.host_key_accepted
    assert committed_files(infra) == ["datacenters/test/prepinned/known_hosts", "datacenters/test/prepinned/node.yml"]
    assert clean(infra)
    # a wrong key placed there is refused, and left for the operator to look at
    other = infra / "datacenters/test/wrongpin"
    other.mkdir()
    (other / "known_hosts").write_text(f"[{remote_engine.address}]:2222 {other_ed25519_key(tmp_path)}\n")
    with pytest.raises(HostKeyChanged, match="datacenters/test/wrongpin/known_hosts has ssh-ed25519"):
        add_node(infra, "test/wrongpin", remote_engine.ssh_url, accept_host_key=True)
    assert sorted(p.name for p in other.iterdir()) == ["known_hosts"]


def test_ssh_port_from_ssh_config(infra, remote_engine, git_env):
    """ssh://host without a port: ~/.ssh/config's Port (a string to paramiko) applies."""
    url = f"ssh://root@{remote_engine.address}"
    forget_host_keys(git_env)
    result = add_node(infra, "test/cfgport", url, accept_host_key=True)
    assert result.host_key.host == f"[{remote_engine.address}]:2222"
    with closing(hosts.connect(load_node(infra, "test/cfgport"), infra, timeout=15)) as client:
        assert client.api.ping()


def test_ssh_unreachable_leaves_nothing(infra, git_env):
    before = head(infra)
    with pytest.raises(HostUnreachable) as exc:
        add_node(infra, "test/gone", "ssh://root@127.0.0.1:1", accept_host_key=True)
    assert "connection refused" in str(exc.value) and "\n" not in str(exc.value)
    assert not (infra / "datacenters/test/gone").exists()
    assert head(infra) == before and clean(infra)


def test_ssh_authentication_failure_takes_everything_back(infra, remote_engine, git_env, tmp_path):
    shutil.rmtree(git_env / ".ssh")
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    before = head(infra)
    with pytest.raises(HostUnreachable, match="SSH authentication failed"):
        add_node(infra, "newdc/viassh", remote_engine.ssh_url, accept_host_key=True, identity_file=str(stranger))
    assert not (infra / "datacenters/newdc").exists()  # the new datacenter directory went too
    assert head(infra) == before and clean(infra)


# -- ~/.ssh/config: HostName alias, Port, ProxyCommand, ProxyJump ---------------------------


def add_ssh_config(home: Path, text: str) -> None:
    config = home / ".ssh" / "config"
    config.write_text(text + "\n" + config.read_text())  # first match wins: put ours first


def test_ssh_alias_through_hostname(infra, remote_engine, git_env):
    add_ssh_config(git_env, f"Host infra-alias\n    HostName {remote_engine.address}\n    Port 2222\n"
                            f"    User root\n    IdentityFile {remote_engine.ssh_identity}\n")
    forget_host_keys(git_env)
    result = add_node(infra, "test/alias", "ssh://infra-alias", accept_host_key=True)
    # pinned under the name the transport looks up: the HostName, and the Port
    assert result.host_key.host == f"[{remote_engine.address}]:2222"
    with closing(hosts.connect(load_node(infra, "test/alias"), infra, timeout=15)) as client:
        assert client.info()["Name"] == remote_engine.hostname


FORWARDER = """\
import os, socket, sys, threading
open(sys.argv[3], "a").write("used\\n")
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def test_ssh_proxycommand(infra, remote_engine, git_env, tmp_path):
    forwarder, used = tmp_path / "fwd.py", tmp_path / "used"
    forwarder.write_text(FORWARDER)
    add_ssh_config(git_env, f"Host via-proxy\n    HostName {remote_engine.address}\n    Port 2222\n"
                            f"    User root\n    IdentityFile {remote_engine.ssh_identity}\n"
                            f"    ProxyCommand {sys.executable} {forwarder} %h %p {used}\n")
    forget_host_keys(git_env)
    add_node(infra, "test/proxied", "ssh://via-proxy", accept_host_key=True)
    assert used.read_text().count("used") == 2  # the host key fetch, then the engine check
    with closing(hosts.connect(load_node(infra, "test/proxied"), infra, timeout=15)) as client:
        assert client.api.ping()


def test_ssh_proxyjump(infra, remote_engine, git_env, monkeypatch):
    """The node's own sshd is the jump host: ssh -J root@addr:2222 root@addr:2222."""
    calls = []
    real = hosts._jump_channel

    def counting(jump, *args, **kwargs):
        calls.append(jump)
        return real(jump, *args, **kwargs)

    monkeypatch.setattr(hosts, "_jump_channel", counting)
    add_ssh_config(git_env, f"Host via-jump\n    HostName {remote_engine.address}\n    Port 2222\n"
                            f"    User root\n    IdentityFile {remote_engine.ssh_identity}\n"
                            f"    ProxyJump root@{remote_engine.address}:2222\n")
    result = add_node(infra, "test/jumped", "ssh://via-jump")  # ~/.ssh/known_hosts knows the key
    assert result.host_key.host == f"[{remote_engine.address}]:2222"
    assert len(calls) == 2  # the host key fetch, then the engine check
    with closing(hosts.connect(load_node(infra, "test/jumped"), infra, timeout=15)) as client:
        assert client.info()["Name"] == remote_engine.hostname
    assert len(calls) == 3


def test_ssh_config_port_is_an_int_for_paramiko(git_env, monkeypatch):
    """Port 22 from ~/.ssh/config arrives as the string "22"; paramiko must see 22 to look
    up known_hosts under "host" and not "[host]:22"."""
    import paramiko

    add_ssh_config(git_env, "Host cfg22\n    HostName 192.0.2.7\n    Port 22\n")
    seen = {}

    def fake_connect(self, **params):
        seen.update(params)

    monkeypatch.setattr(paramiko.SSHClient, "connect", fake_connect)
    adapter = hosts._PinnedSSHAdapter("ssh://root@cfg22", timeout=5, known_hosts=None, identity_file=None)
    adapter.close()
    assert seen["hostname"] == "192.0.2.7" and seen["port"] == 22 and isinstance(seen["port"], int)
    assert hosts.ssh_endpoint("ssh://root@cfg22") == ("192.0.2.7", 22)
    assert hosts.known_hosts_name("192.0.2.7", 22) == "192.0.2.7"


# -- tls ------------------------------------------------------------------------------------


def test_tls_node(infra, remote_engine, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/nonexistent/bundle.pem")
    files = tls_files(remote_engine)
    result = add_node(infra, "test/viatls", remote_engine.tls_url, tls=files)
    rel = "datacenters/test/viatls"
    assert result.files == [f"{rel}/node.yml"] == committed_files(infra)
    assert (infra / rel / "node.yml").read_text() == (
        f"docker: {remote_engine.tls_url}\ntls:\n  ca: {files['ca']}\n  cert: {files['cert']}\n"
        f"  key: {files['key']}\n")
    node = load_node(infra, "test/viatls")
    assert node.tls.ca == files["ca"]
    with closing(hosts.connect(node, infra)) as client:
        assert client.info()["Name"] == remote_engine.hostname


def test_tls_relative_paths_are_relative_to_the_node_directory(infra, remote_engine):
    node_dir = infra / "datacenters/test/reltls"
    (node_dir / "certs").mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        shutil.copy(Path(remote_engine.tls_dir) / name, node_dir / "certs" / name)
    git(infra, "add", "datacenters/test/reltls/certs")
    git(infra, "commit", "-q", "-m", "client material for reltls")
    add_node(infra, "test/reltls", remote_engine.tls_url,
             tls={"ca": "certs/ca.pem", "cert": "certs/cert.pem", "key": "certs/key.pem"})
    with closing(hosts.connect(load_node(infra, "test/reltls"), infra)) as client:
        assert client.api.ping()


def test_tls_wrong_ca_is_one_clear_line(infra, remote_engine, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(wrong / "ca-key.pem"), "-out", str(wrong / "ca.pem"), "-days", "1",
                    "-subj", "/CN=not the fleet CA"], check=True, capture_output=True)
    files = tls_files(remote_engine) | {"ca": str(wrong / "ca.pem")}
    before = head(infra)
    with pytest.raises(HostUnreachable) as exc:
        add_node(infra, "test/badca", remote_engine.tls_url, tls=files)
    message = str(exc.value)
    assert message.startswith(f"node test/badca ({remote_engine.tls_url}): ")
    assert "CERTIFICATE_VERIFY_FAILED" in message and "\n" not in message
    assert not (infra / "datacenters/test/badca").exists()
    assert head(infra) == before and clean(infra)


def test_tls_missing_file(infra, remote_engine, tmp_path):
    files = tls_files(remote_engine) | {"cert": str(tmp_path / "missing.pem")}
    with pytest.raises(HostError, match="missing.pem does not exist"):
        add_node(infra, "test/nocert", remote_engine.tls_url, tls=files)
    assert not (infra / "datacenters/test/nocert").exists() and clean(infra)


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:1", "unix:///nonexistent/docker.sock"])
def test_unreachable_engine_leaves_nothing(infra, url):
    before = head(infra)
    with pytest.raises(HostUnreachable) as exc:
        add_node(infra, "test/gone", url)
    assert f"node test/gone ({url}): " in str(exc.value)
    assert not (infra / "datacenters/test/gone").exists()
    assert head(infra) == before and clean(infra)


# -- remove ---------------------------------------------------------------------------------


def test_remove_refused_while_services_are_written(tmp_path, engine):
    root, node = make_repo(tmp_path / "infra", engine.unix_url,
                           web_compose("deployer-test/web:1") + "  api:\n    image: deployer-test/web:2\n")
    before = head(root)
    with pytest.raises(NodeNotEmpty) as exc:
        remove_node(root, f"test/{node}")
    assert str(exc.value) == f"test/{node} still has containers written for it: web, api; remove them first"
    assert isinstance(exc.value, TargetError)
    assert (root / f"datacenters/test/{node}/docker-compose.yml").is_file()
    assert head(root) == before and clean(root)


def test_remove_empty_node_commits(tmp_path, engine):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, "services: {}\n",
                           extra_files={"datacenters/test/other/node.yml": f"docker: {engine.unix_url}\n"})
    (root / f"datacenters/test/{node}/known_hosts").write_text("example.com ssh-ed25519 AAAA\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "pin")
    result = remove_node(root, f"test/{node}", author="Ops Person <ops@example.com>")
    rel = f"datacenters/test/{node}"
    assert result.files == [f"{rel}/docker-compose.yml", f"{rel}/known_hosts", f"{rel}/node.yml"]
    assert result.commit == head(root)
    assert committed_files(root) == result.files
    assert git(root, "log", "-1", "--format=%s|%an") == f"remove node test/{node}|Ops Person"
    assert trailers(root) == ["Deployer-Action: node-remove", f"Deployer-Target: test/{node}"]
    assert git(root, "ls-tree", "-r", "--name-only", "HEAD", "--", rel) == ""
    assert not (root / rel).exists()
    assert clean(root)
    assert sorted(loader.load(root).datacenters["test"].nodes) == ["other"]


def test_remove_last_node_of_a_datacenter(infra, engine):
    add_node(infra, "lonely/n1", engine.unix_url)
    remove_node(infra, "lonely/n1")
    assert not (infra / "datacenters/lonely").exists()
    assert "lonely" not in loader.load(infra).datacenters
    assert clean(infra)


def test_remove_unknown_node(infra):
    with pytest.raises(TargetError, match="unknown node test/nope"):
        remove_node(infra, "test/nope")
    with pytest.raises(TargetError, match="no datacenter 'zz'"):
        remove_node(infra, "zz/nope")


def test_remove_refused_with_uncommitted_files(tmp_path, engine):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, None)
    (root / f"datacenters/test/{node}/notes.txt").write_text("draft\n")
    with pytest.raises(DirtyFileError):
        remove_node(root, f"test/{node}")
    assert (root / f"datacenters/test/{node}/node.yml").is_file()


# -- with a remote ---------------------------------------------------------------------------


def test_add_and_remove_sync_and_push(tmp_path, engine):
    seed, _node = make_repo(tmp_path / "seed", engine.unix_url, None)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(remote)], check=True)
    a, b = tmp_path / "a", tmp_path / "b"
    for clone in (a, b):
        subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    ra = add_node(a, "test/from-a", engine.unix_url)
    assert ra.pushed == ra.commit == git(remote, "rev-parse", "main")
    # B has not seen A's node: add_node syncs first, then pushes on top
    rb = add_node(b, "test/from-b", engine.unix_url)
    assert (b / "datacenters/test/from-a/node.yml").is_file()
    assert git(remote, "rev-parse", "main") == rb.pushed == head(b)
    assert git(remote, "log", "--format=%s", "-2", "main").splitlines() == [
        "add node test/from-b", "add node test/from-a"]
    # A removes B's node: sync brings it in first
    rm = remove_node(a, "test/from-b")
    assert rm.pushed == git(remote, "rev-parse", "main")
    assert git(remote, "ls-tree", "--name-only", "main", "datacenters/test/").splitlines() == [
        "datacenters/test/from-a", f"datacenters/test/{_node}"]
    assert clean(a) and clean(b)
