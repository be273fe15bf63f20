"""Registry authentication, end to end: `deployer image` checks and pushes, and node pulls.

Real everything: two registries of Debian's docker-registry (distribution 2.8)
on the build engine's bridge, TLS and trusted through /etc/docker/certs.d, one
with htpasswd auth (bcrypt) and one with token auth, whose token server is
tests/support/token_issuer.py (a JWT signed by a key the registry trusts). The
private dockerd of tests/support/build_engine.py builds and pushes, and is
also the node that pulls (shared with test_build and test_release:
tests/support/build_fixtures.py). Credentials come from a DOCKER_CONFIG
``auths`` file, from a credential helper (a shell script on PATH), and from a
datacenter's ``registry_credentials`` file; the Docker config of the test's
HOME is empty, so nothing else could have supplied them. Every output, the
commits and the container labels are searched for the passwords.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from deployer.build import image as I
from deployer.build import registry as R
from deployer.errors import RegistryAuthError
from tests.support.build_repos import git, make_repo
from tests.support.repos import cli, make_repo as make_infra, managed, remove_node_containers

pytest_plugins = ["tests.support.build_fixtures"]

H_USER, H_PASS = "alice", "h7pa55-Wd-Zq"
T_USER, T_PASS = "bob", "t0ken-Pa55-Xy"
WRONG = "not-the-Passw0rd"
SECRETS = (H_PASS, T_PASS, WRONG, base64.b64encode(f"{H_USER}:{H_PASS}".encode()).decode(),
           base64.b64encode(f"{T_USER}:{T_PASS}".encode()).decode())

COMPOSE = """\
services:
  worker:
    image: {image}
    healthcheck:
      interval: 500ms
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def htpasswd_registry(build_engine, tmp_path_factory):
    from tests.support.registry import RegistryServer, htpasswd_auth, write_htpasswd

    htpasswd = write_htpasswd(tmp_path_factory.mktemp("htpasswd") / "htpasswd", {H_USER: H_PASS})
    server = RegistryServer(build_engine.bridge_ip, auth=htpasswd_auth(htpasswd))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def issuer(build_engine):
    from tests.support.token_issuer import TokenIssuer

    with TokenIssuer(build_engine.bridge_ip, users={T_USER: T_PASS}) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(build_engine, issuer):
    from tests.support.registry import RegistryServer, token_auth
    from tests.support.token_issuer import ISSUER, SERVICE

    server = RegistryServer(build_engine.bridge_ip, auth=token_auth(issuer.realm, SERVICE, ISSUER, issuer.cert_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def built(client, go_builder, tmp_path_factory):
    """The worker app, committed and built once (not pushed): (source, version, image id)."""
    src = make_repo(tmp_path_factory.mktemp("src"), "worker", name="authworker")
    result = I.build_image(client, src, "127.0.0.1:9", push=False)  # nothing listens there: no registry check
    return src, result.version, result.image_id


@pytest.fixture
def source(client, built, htpasswd_registry, token_registry):
    """``(source, version)``; the built image tagged for both registries, so `deployer image` pushes it
    ("built from this commit already") instead of compiling it again."""
    src, version, image_id = built
    for server in (htpasswd_registry, token_registry):
        client.api.tag(image_id, f"{server.address}/authworker", version, force=True)
    return src, version


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    """An empty DOCKER_CONFIG for the test; ``write(auths=..., **keys)`` fills it."""
    d = tmp_path / "docker-config"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))

    def write(**doc) -> Path:
        (d / "config.json").write_text(json.dumps(doc))
        return d / "config.json"

    return write


def auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a credential leaked: {text!r}"


def image(src: Path, *args: str):
    return cli(src.parent, "image", str(src), *args)


def build_engine_args(build_engine) -> list[str]:
    return ["--docker", build_engine.url]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def helper_on_path(tmp_path, monkeypatch, name: str, host: str, user: str, password: str) -> Path:
    """A real credential helper: docker-credential-NAME, answering for ``host`` only; its calls logged."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.calls"
    script = bindir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = get ] || exit 2\nread server\necho "$server" >> {log}\n'
        f'if [ "$server" = "{host}" ]; then\n'
        f'  printf \'{{"ServerURL":"%s","Username":"{user}","Secret":"{password}"}}\\n\' "$server"\n'
        "else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def registry_log(server) -> str:
    return server.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------- `deployer image`


def test_image_to_htpasswd_registry_with_docker_config_auths(client, build_engine, htpasswd_registry, source,
                                                             docker_config, capsys):
    src, version = source
    reg = htpasswd_registry.address
    ref = f"{reg}/authworker:{version}"

    # no credentials: the check says so, in one line, before anything is built
    docker_config()
    r = image(src, "--registry", reg, *build_engine_args(build_engine))
    assert r.exit_code == 1
    assert errors(r.stderr) == [f"error: registry {reg}: GET /v2/authworker/manifests/{version}: authentication "
                                f"required and no credentials for {reg} (looked in {os.environ['DOCKER_CONFIG']}"
                                f"/config.json; docker login {reg}, or the datacenter's registry_credentials file)"]

    docker_config(auths={f"https://{reg}": auth(H_USER, H_PASS)})
    t = time.monotonic()
    r = image(src, "--registry", reg, "--json", *build_engine_args(build_engine))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["ref"] == ref and data["pushed"] and data["digest"].startswith("sha256:")
    no_secrets(r.stdout, r.stderr)
    with capsys.disabled():
        print(f"\n    htpasswd registry: check and push {time.monotonic() - t:.1f}s", end="")

    # the registry holds it, asked with the same credentials (and refuses the anonymous)
    assert R.has_tag(reg, "authworker", version)
    assert f'"PUT /v2/authworker/manifests/{version} HTTP/1.1" 201' in registry_log(htpasswd_registry)

    # again: the authenticated check finds it, nothing built or pushed
    r = image(src, "--registry", reg, "--json", *build_engine_args(build_engine))
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["built"] is False and again["pushed"] is False and again["digest"] == data["digest"]
    no_secrets(r.stdout, r.stderr)


def test_image_to_token_registry_with_credential_helper(client, build_engine, token_registry, issuer, source,
                                                        docker_config, tmp_path, monkeypatch):
    src, version = source
    reg = token_registry.address
    ref = f"{reg}/authworker:{version}"
    calls = helper_on_path(tmp_path, monkeypatch, "testhelper", reg, T_USER, T_PASS)
    docker_config(credHelpers={reg: "testhelper"}, auths={reg: auth(T_USER, WRONG)})  # the helper wins
    before = len(issuer.requests)

    r = image(src, "--registry", reg, "--json", *build_engine_args(build_engine))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["ref"] == ref and data["pushed"]
    no_secrets(r.stdout, r.stderr)
    assert calls.read_text().split() == [reg, reg]  # the check, then the push
    issued = issuer.requests[before:]
    assert (T_USER, ["repository:authworker:pull"]) in issued  # our check: one token for its GETs
    assert any(user == T_USER and any("push" in s for s in scopes) for user, scopes in issued)  # the engine's push
    assert issuer.refused == []

    # the registry answers the token client: config, labels and all
    cfg = R.image_config(reg, "authworker", version)
    assert cfg["labels"]["org.opencontainers.image.version"] == version

    before = len(issuer.requests)
    r = image(src, "--registry", reg, "--json", *build_engine_args(build_engine))
    assert r.exit_code == 0 and json.loads(r.stdout)["pushed"] is False
    # the check's several GETs (manifest, config blob) were served by one token: the per-scope cache
    assert issuer.requests[before:] == [(T_USER, ["repository:authworker:pull"])]


def test_identity_token_check_and_push(client, token_registry, issuer, source, docker_config):
    """An ``identitytoken`` (what ``docker login`` keeps for OAuth registries): refresh_token grant, both ways."""
    _, version = source
    reg = token_registry.address
    issuer.identity_tokens["idtok-7f3a"] = T_USER
    docker_config(auths={reg: {"identitytoken": "idtok-7f3a"}})
    ref = f"{reg}/authworker:idtoken"
    client.api.tag(f"{reg}/authworker:{version}", f"{reg}/authworker", "idtoken", force=True)
    before = len(issuer.requests)
    digest = I.push_image(client, ref)  # the engine gets {"identitytoken": ...} and trades it itself
    assert digest.startswith("sha256:")
    assert R.has_tag(reg, "authworker", "idtoken")  # our client: POST grant_type=refresh_token
    assert all(user == T_USER for user, _ in issuer.requests[before:]) and len(issuer.requests) > before + 1
    issuer.identity_tokens.clear()
    with pytest.raises(RegistryAuthError, match="refused the credentials of an identity token"):
        R.has_tag(reg, "authworker", "idtoken")


def test_wrong_password(client, build_engine, htpasswd_registry, token_registry, issuer, source, docker_config):
    src, version = source
    for reg, user, who in [(htpasswd_registry.address, H_USER, "registry"),
                           (token_registry.address, T_USER, "token")]:
        docker_config(auths={reg: auth(user, WRONG)})
        t = time.monotonic()
        r = image(src, "--registry", reg, *build_engine_args(build_engine))
        seconds = time.monotonic() - t
        assert r.exit_code == 1, r.output
        (line,) = errors(r.stderr)
        config = f"{os.environ['DOCKER_CONFIG']}/config.json"
        if who == "registry":
            assert line == (f"error: registry {reg}: refused the credentials of user {user} (from {config}): "
                            "wrong password, or no access")
        else:
            assert line == (f"error: registry {reg}: token server {issuer.realm} refused the credentials of user "
                            f"{user} (from {config}): wrong password, or no access")
        assert seconds < 10, "refused before building anything"
        no_secrets(r.stdout, r.stderr)
        r = image(src, "--registry", reg, "--json", *build_engine_args(build_engine))
        assert r.exit_code == 1
        no_secrets(r.stdout, r.stderr)  # the error as JSON too
        with pytest.raises(RegistryAuthError):
            R.ping(reg)


def test_token_server_down(client, build_engine, token_registry, issuer, source, docker_config):
    src, _ = source
    reg = token_registry.address
    docker_config(auths={reg: auth(T_USER, T_PASS)})
    port = issuer.port
    issuer.stop()
    try:
        t = time.monotonic()
        r = image(src, "--registry", reg, *build_engine_args(build_engine))
        seconds = time.monotonic() - t
    finally:
        issuer.start(port=port)
    assert r.exit_code == 1, r.output
    assert errors(r.stderr) == [f"error: registry {reg}: token server {issuer.realm} is unreachable (the registry "
                                "sends clients there for a token)"]
    assert seconds < 10
    no_secrets(r.stdout, r.stderr)
    R.ping(reg)  # back again


# --------------------------------------------------------------------------- the datacenter's file, node pulls


def dc_infra(tmp_path, build_engine, node: str, registry: str, credentials: Path) -> Path:
    extra = {"datacenters/test/datacenter.yml": f"registry: {registry}\nregistry_credentials: {credentials}\n"}
    root, _ = make_infra(tmp_path / "infra", build_engine.url,
                         COMPOSE.format(image=f"{registry}/authworker:none"), node=node, extra_files=extra)
    return root


def test_datacenter_file_push_and_node_pull(client, build_engine, token_registry, issuer, source, docker_config,
                                            node, tmp_path):
    src, version = source
    reg = token_registry.address
    ref = f"{reg}/authworker:{version}"
    docker_config()  # the operator has no login at all
    creds = tmp_path / "etc" / "registry-test.json"
    creds.parent.mkdir()
    creds.write_text(json.dumps({"auths": {reg: auth(T_USER, T_PASS)}}))
    creds.chmod(0o600)
    infra = dc_infra(tmp_path, build_engine, node, reg, creds)

    r = cli(infra, "image", str(src), "--dc", "test", "--json", *build_engine_args(build_engine))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ref"] == ref
    no_secrets(r.stdout, r.stderr)

    # The node must pull it, and its engine has no credentials of its own: an anonymous pull is refused.
    client.images.remove(ref, force=True)
    with pytest.raises(Exception, match="(?i)unauthorized|authentication required|denied"):
        client.images.pull(ref)
    r = cli(infra, "deploy", ref, f"test/{node}")
    assert r.exit_code == 0, r.output
    assert f"test/{node}: pulling {ref}" in r.stderr and f"test/{node}: pulled {ref}" in r.stderr
    (container,) = [c for c in managed(client, node) if c.status == "running"]
    assert container.attrs["Config"]["Image"] == ref
    no_secrets(r.stdout, r.stderr, json.dumps(container.attrs["Config"]["Labels"]),
               git(infra, "log", "-p", "--all"), (infra / "datacenters/test/datacenter.yml").read_text())

    # a wrong password in the datacenter's file: the pull fails in one line, nothing changes
    head = git(infra, "rev-parse", "HEAD")
    creds.write_text(json.dumps({"auths": {reg: auth(T_USER, WRONG)}}))
    remove_node_containers(client, node)
    client.images.remove(ref, force=True)
    refused_before = len(issuer.refused)
    r = cli(infra, "deploy", ref, f"test/{node}")
    assert r.exit_code == 1, r.output
    (line,) = errors(r.stderr)
    assert line.startswith(f"error: image {ref} is not on the node and registry {reg} refused the pull"), line
    assert T_USER in issuer.refused[refused_before:]  # the engine asked with the file's (wrong) credentials
    no_secrets(r.stdout, r.stderr)
    assert git(infra, "rev-parse", "HEAD") == head and managed(client, node) == []

    # the token server down while the node pulls: one line naming it, within seconds
    creds.write_text(json.dumps({"auths": {reg: auth(T_USER, T_PASS)}}))
    port = issuer.port
    issuer.stop()
    try:
        t = time.monotonic()
        r = cli(infra, "deploy", ref, f"test/{node}")
        seconds = time.monotonic() - t
    finally:
        issuer.start(port=port)
    assert r.exit_code == 1, r.output
    (line,) = errors(r.stderr)
    assert line.startswith(f"error: image {ref} is not on the node and the token server of registry {reg}, "
                           f"{issuer.realm}, is unreachable from the node: "), line
    assert seconds < 10
    assert git(infra, "rev-parse", "HEAD") == head and managed(client, node) == []


def test_world_readable_credentials_file_is_refused(client, build_engine, htpasswd_registry, source,
                                                    docker_config, node, tmp_path):
    src, version = source
    reg = htpasswd_registry.address
    ref = f"{reg}/authworker:{version}"
    docker_config(auths={reg: auth(H_USER, WRONG)})  # the operator's is wrong: only the dc file can work
    creds = tmp_path / "registry-test.json"
    creds.write_text(json.dumps({"auths": {reg: auth(H_USER, H_PASS)}}))
    infra = dc_infra(tmp_path, build_engine, node, reg, creds)
    for mode in (0o644, 0o640, 0o604):
        creds.chmod(mode)
        t = time.monotonic()
        r = cli(infra, "image", str(src), "--dc", "test", *build_engine_args(build_engine))
        assert r.exit_code == 3, r.output
        assert errors(r.stderr) == [f"error: {creds}: permissions {mode:04o} are too open: registry credentials "
                                    f"must be readable by their owner only (chmod 600 {creds})"]
        assert time.monotonic() - t < 5
        no_secrets(r.stdout, r.stderr)

    # a deploy that needs a pull refuses it too (exit 3, bad input), and changes nothing
    client.images.remove(ref, force=True)
    head = git(infra, "rev-parse", "HEAD")
    r = cli(infra, "deploy", ref, f"test/{node}")
    assert r.exit_code == 3, r.output
    assert f"{creds}: permissions 0604 are too open" in r.stderr
    no_secrets(r.stdout, r.stderr)
    assert git(infra, "rev-parse", "HEAD") == head and managed(client, node) == []

    # owner-only: the file's credentials are used, before the operator's wrong ones, for the check and the push
    creds.chmod(0o600)
    client.api.tag(source_image_id(client, src, version), f"{reg}/authworker", version, force=True)
    r = cli(infra, "image", str(src), "--dc", "test", "--json", *build_engine_args(build_engine))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ref"] == ref
    no_secrets(r.stdout, r.stderr)
    assert R.has_tag(reg, "authworker", version, credentials_file=creds)
    with pytest.raises(RegistryAuthError, match="refused the credentials of user alice"):
        R.has_tag(reg, "authworker", version)  # the operator's own: wrong


def source_image_id(client, src: Path, version: str) -> str:
    """The image built from ``src`` at ``version`` (the ``built`` fixture's tag)."""
    return client.images.get(f"127.0.0.1:9/{src.name}:{version}").id


def test_release_checks_and_pushes_with_the_datacenter_file(client, build_engine, token_registry, issuer, built,
                                                            docker_config, node, tmp_path):
    """`release` takes the targets' datacenter's file for its check and push (the operator has no login)."""
    src, version, image_id = built
    reg = token_registry.address
    ref = f"{reg}/authworker:rel-{version}"
    git(src, "tag", f"rel-{version}")  # a new version: the registry does not have it yet
    try:
        client.api.tag(image_id, f"{reg}/authworker", f"rel-{version}", force=True)
        docker_config()
        creds = tmp_path / "registry-test.json"
        creds.write_text(json.dumps({"auths": {reg: auth(T_USER, T_PASS)}}))
        creds.chmod(0o600)
        infra = dc_infra(tmp_path, build_engine, node, reg, creds)
        before = len(issuer.requests)
        r = cli(infra, "release", str(src), f"test/{node}", "--json", *build_engine_args(build_engine))
        assert r.exit_code == 0, r.output
        data = json.loads(r.stdout)
        assert data["image"]["ref"] == ref and data["image"]["pushed"] is True
        assert data["deploy"]["commit"]
        assert {user for user, _ in issuer.requests[before:]} == {T_USER}
        no_secrets(r.stdout, r.stderr, git(infra, "log", "-p", "--all"))
    finally:
        git(src, "tag", "-d", f"rel-{version}")
