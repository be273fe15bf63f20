"""Registry credentials lookup and 401 challenges: the pure parts, no registry, no Docker.

A credential helper here is a real program: a tiny shell script on PATH written by the test.
"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from deployer.build.registry_auth import Authenticator, parse_challenges, scope_of, token_from
from deployer.config import loader
from deployer.engine import registry_credentials as rc
from deployer.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    CredentialHelperFailed,
    CredentialsFileError,
    RegistryAuthError,
    ValidationFailed,
)

SECRET = "s3cret-Pa55word"
REG = "10.1.2.3:5000"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path, doc, mode=0o600):
    path.write_text(json.dumps(doc))
    os.chmod(path, mode)
    return path


def docker_config(tmp_path, doc):
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    write(d / "config.json", doc, 0o644)  # docker's own file: not mode-checked (docker does not either)
    return {"DOCKER_CONFIG": str(d), "PATH": os.environ["PATH"]}


# --------------------------------------------------------------------------- challenges


def test_bearer_challenge_with_commas_inside_quotes():
    (c,) = parse_challenges('Bearer realm="https://auth.example/token",service="registry.example",'
                            'scope="repository:team/app:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "registry.example",
                        "scope": "repository:team/app:pull,push"}


def test_basic_challenge_and_several_challenges():
    assert parse_challenges('Basic realm="Registry Realm"') == [
        parse_challenges('basic realm="Registry Realm"')[0]]
    both = parse_challenges('Basic realm="r", Bearer realm="https://t/x",service="s"')
    assert [c.scheme for c in both] == ["basic", "bearer"]
    assert both[1].params["service"] == "s"


def test_escaped_quote_and_unquoted_values():
    (c,) = parse_challenges(r'Bearer realm="a \"b\"",service=svc')
    assert c.params == {"realm": 'a "b"', "service": "svc"}


def test_nonsense_header_gives_nothing_usable():
    assert parse_challenges("") == []
    assert all(not c.realm for c in parse_challenges("=== , ,"))


def test_scope_of_read_paths():
    assert scope_of("/v2/team/app/manifests/1.0") == "repository:team/app:pull"
    assert scope_of("/v2/app/blobs/sha256:ab") == "repository:app:pull"
    assert scope_of("/v2/app/tags/list") == "repository:app:pull"
    assert scope_of("/v2/") == ""


def test_token_or_access_token():
    assert token_from({"token": "t1", "access_token": "t2", "expires_in": 300}) == ("t1", 300)
    assert token_from({"access_token": "t2"}) == ("t2", None)
    assert token_from({"nothing": 1}) == ("", None)
    assert token_from([1]) == ("", None)


# --------------------------------------------------------------------------- docker config


def test_auths_base64_auth(tmp_path):
    env = docker_config(tmp_path, {"auths": {f"https://{REG}/v1/": {"auth": b64(f"alice:{SECRET}")}}})
    creds = rc.lookup(REG, env=env)
    assert (creds.username, creds.password) == ("alice", SECRET)
    assert creds.auth_config() == {"username": "alice", "password": SECRET, "serveraddress": REG}
    assert SECRET not in repr(creds) and SECRET not in creds.describe()


def test_auths_username_password_and_identitytoken(tmp_path):
    env = docker_config(tmp_path, {"auths": {REG: {"username": "bob", "password": SECRET},
                                             "other:1": {"identitytoken": "tok-123"}}})
    assert rc.lookup(REG, env=env).username == "bob"
    other = rc.lookup("other:1", env=env)
    assert other.identity_token == "tok-123"
    assert other.auth_config() == {"identitytoken": "tok-123", "serveraddress": "other:1"}


def test_no_config_no_entry_empty_entry(tmp_path):
    assert rc.lookup(REG, env={"DOCKER_CONFIG": str(tmp_path / "none")}) is None
    env = docker_config(tmp_path, {"auths": {REG: {}, "x:1": {"auth": "!!!"}}})
    assert rc.lookup(REG, env=env) is None  # {} is what docker login leaves beside a credential store
    with pytest.raises(CredentialsFileError) as e:  # only the registry asked for is read
        rc.lookup("x:1", env=env)
    assert "auth is not base64" in str(e.value) and "!!!" not in str(e.value)


def test_home_docker_config(tmp_path):
    (tmp_path / ".docker").mkdir()
    write(tmp_path / ".docker" / "config.json", {"auths": {REG: {"auth": b64("carol:pw")}}})
    assert rc.docker_config_path({"HOME": str(tmp_path)}) == tmp_path / ".docker" / "config.json"
    assert rc.lookup(REG, env={"HOME": str(tmp_path)}).username == "carol"


def test_registry_host_normalisation():
    assert rc.registry_host("https://h:5000/v1/") == "h:5000"
    assert rc.registry_host("H:5000") == "h:5000"
    assert rc.registry_host("https://index.docker.io/v1/") == "docker.io"
    assert rc.registry_host("registry-1.docker.io") == "docker.io"


# --------------------------------------------------------------------------- credential helpers


def helper(tmp_path, name, body):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(bindir)


def test_cred_helper_per_registry_wins_over_auths(tmp_path):
    bindir = helper(tmp_path, "fake", f'read host\n[ "$1" = get ] || exit 2\n'
                                      f'printf \'{{"ServerURL":"%s","Username":"helper-user","Secret":"{SECRET}"}}\' "$host"\n')
    env = docker_config(tmp_path, {"credHelpers": {REG: "fake"}, "auths": {REG: {"auth": b64("file-user:x")}}})
    env["PATH"] = bindir + os.pathsep + env["PATH"]
    creds = rc.lookup(REG, env=env)
    assert (creds.username, creds.password, creds.source) == ("helper-user", SECRET, "docker-credential-fake")


def test_creds_store_token_user_and_not_found(tmp_path):
    bindir = helper(tmp_path, "store", 'read host\nif [ "$host" = "10.1.2.3:5000" ]; then\n'
                                       '  echo \'{"ServerURL":"x","Username":"<token>","Secret":"idtok"}\'\nelse\n'
                                       '  echo "credentials not found in native keychain"; exit 1\nfi\n')
    env = docker_config(tmp_path, {"credsStore": "store", "auths": {"other:1": {"auth": b64("u:p")}}})
    env["PATH"] = bindir + os.pathsep + env["PATH"]
    assert rc.lookup(REG, env=env).identity_token == "idtok"
    assert rc.lookup("other:1", env=env) is None  # as docker: the store answers, auths is not read behind it


def test_helper_missing_or_failing(tmp_path):
    env = docker_config(tmp_path, {"credsStore": "absent"})
    with pytest.raises(CredentialHelperFailed) as e:
        rc.lookup(REG, env=env)
    assert "docker-credential-absent" in str(e.value) and "not found on PATH" in str(e.value)
    assert e.value.exit_code == EXIT_FAILED
    bindir = helper(tmp_path, "broken", "echo 'keyring locked' >&2; exit 3\n")
    env = docker_config(tmp_path, {"credsStore": "broken"})
    env["PATH"] = bindir + os.pathsep + env["PATH"]
    with pytest.raises(CredentialHelperFailed, match="exit status 3: keyring locked"):
        rc.lookup(REG, env=env)
    bindir = helper(tmp_path, "garbage", "echo not-json\n")
    env = docker_config(tmp_path, {"credsStore": "garbage"})
    env["PATH"] = bindir + os.pathsep + env["PATH"]
    with pytest.raises(CredentialHelperFailed, match="not its JSON"):
        rc.lookup(REG, env=env)


# --------------------------------------------------------------------------- the datacenter's file


def test_datacenter_file_comes_first(tmp_path):
    dcfile = write(tmp_path / "dc1.json", {"auths": {REG: {"auth": b64(f"dc-user:{SECRET}")}}})
    env = docker_config(tmp_path, {"auths": {REG: {"auth": b64("operator:pw")},
                                             "only-here:1": {"auth": b64("operator:pw")}}})
    assert rc.lookup(REG, dcfile, env=env).username == "dc-user"
    assert rc.lookup(REG, dcfile, env=env).source == str(dcfile)
    assert rc.lookup("only-here:1", dcfile, env=env).username == "operator"  # no entry there: Docker's config


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_datacenter_file_open_to_others_is_refused(tmp_path, mode):
    dcfile = write(tmp_path / "dc1.json", {"auths": {REG: {"auth": b64(f"dc-user:{SECRET}")}}}, mode)
    with pytest.raises(CredentialsFileError) as e:
        rc.lookup(REG, dcfile, env={})
    text = e.value.one_line()
    assert text == (f"{dcfile}: permissions {mode:04o} are too open: registry credentials must be readable "
                    f"by their owner only (chmod 600 {dcfile})")
    assert e.value.exit_code == EXIT_BAD_INPUT
    assert SECRET not in text


def test_datacenter_file_owner_only_modes_are_fine(tmp_path):
    for mode in (0o600, 0o400):
        dcfile = write(tmp_path / f"dc{mode}.json", {"auths": {REG: {"username": "u", "password": "p"}}}, mode)
        assert rc.lookup(REG, dcfile, env={}).username == "u"


def test_datacenter_file_missing_bad_json_other_keys(tmp_path):
    with pytest.raises(CredentialsFileError, match="no such file"):
        rc.lookup(REG, tmp_path / "absent.json", env={})
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {' + SECRET)
    bad.chmod(0o600)
    with pytest.raises(CredentialsFileError) as e:
        rc.lookup(REG, bad, env={})
    assert "not JSON" in str(e.value) and SECRET not in str(e.value)
    other = write(tmp_path / "helpers.json", {"auths": {}, "credsStore": "pass"})
    with pytest.raises(CredentialsFileError, match="unsupported key 'credsStore'"):
        rc.lookup(REG, other, env={})
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o600


def test_datacenter_yml_key(tmp_path):
    root = tmp_path / "infra"
    (root / "datacenters" / "dc1" / "n1").mkdir(parents=True)
    (root / "datacenters" / "dc1" / "n1" / "node.yml").write_text("docker: unix:///var/run/docker.sock\n")
    dcyml = root / "datacenters" / "dc1" / "datacenter.yml"
    dcyml.write_text("registry: h:5000\nregistry_credentials: /etc/deployer/registry-dc1.json\n")
    infra = loader.load(root)
    assert infra.datacenters["dc1"].registry_credentials == "/etc/deployer/registry-dc1.json"
    assert infra.node("dc1", "n1").registry_credentials == "/etc/deployer/registry-dc1.json"
    assert loader.load_node(root, "dc1", "n1").registry_credentials == "/etc/deployer/registry-dc1.json"
    for value, why in [("creds.json", "'creds.json' is not an absolute path"),
                       (str(root / "creds.json"), "is inside the repository: credentials must never be committed")]:
        dcyml.write_text(f"registry: h:5000\nregistry_credentials: {value}\n")
        with pytest.raises(ValidationFailed) as e:
            loader.load(root)
        (problem,) = e.value.problems
        assert str(problem).startswith("datacenters/dc1/datacenter.yml:2: registry_credentials: ")
        assert why in str(problem)


# --------------------------------------------------------------------------- the 401 answers


class FakeResponse:
    def __init__(self, status, headers=None, body=None):
        self.status_code = status
        self.headers = headers or {}
        self._body = body

    def json(self):
        if self._body is None:
            raise ValueError("no json")
        return self._body


class TokenServer:
    """Stands in for requests.Session toward a token realm (the real flow is in tests/engines)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def get(self, url, params=None, auth=None, verify=None, timeout=None):
        self.calls.append(("GET", url, dict(params or {}), auth))
        return self.answers.pop(0)

    def post(self, url, data=None, verify=None, timeout=None):
        self.calls.append(("POST", url, dict(data or {}), None))
        return self.answers.pop(0)


def auth_with(session, creds):
    return Authenticator(REG, session, True, 5.0, lambda: creds, where="somewhere")


BEARER = {"WWW-Authenticate": 'Bearer realm="http://t/token",service="reg",scope="repository:app:pull"'}


def test_bearer_fetches_once_per_scope_with_basic_credentials():
    server = TokenServer([FakeResponse(200, body={"token": "T1"})])
    a = auth_with(server, rc.Credentials(REG, "alice", SECRET, source="f"))
    headers, basic, sent = a.answer(FakeResponse(401, BEARER), "/v2/app/manifests/1", None)
    assert headers == {"Authorization": "Bearer T1"} and basic is None and sent == "fresh"
    assert server.calls == [("GET", "http://t/token", {"service": "reg", "scope": "repository:app:pull",
                                                       "account": "alice"}, ("alice", SECRET))]
    assert a.first("/v2/app/blobs/sha256:1") == ({"Authorization": "Bearer T1"}, None, "token")
    assert a.first("/v2/other/blobs/sha256:1") == ({}, None, None)
    assert a.fetches == 1


def test_bearer_identity_token_posts_refresh_token():
    server = TokenServer([FakeResponse(200, body={"access_token": "T2"})])
    a = auth_with(server, rc.Credentials(REG, identity_token="idtok", source="f"))
    assert a.answer(FakeResponse(401, BEARER), "/v2/app/manifests/1", None)[0] == {"Authorization": "Bearer T2"}
    method, _, data, _ = server.calls[0]
    assert method == "POST" and data["grant_type"] == "refresh_token" and data["refresh_token"] == "idtok"


def test_bearer_refused_credentials_and_refused_token():
    a = auth_with(TokenServer([FakeResponse(401)]), rc.Credentials(REG, "alice", SECRET, source="f"))
    with pytest.raises(RegistryAuthError) as e:
        a.answer(FakeResponse(401, BEARER), "/v2/app/manifests/1", None)
    assert "refused the credentials of user alice (from f): wrong password" in str(e.value)
    assert SECRET not in str(e.value)
    a = auth_with(TokenServer([]), rc.Credentials(REG, "alice", SECRET, source="f"))
    with pytest.raises(RegistryAuthError, match="refused the token http://t/token gave user alice"):
        a.answer(FakeResponse(401, BEARER), "/v2/app/manifests/1", "fresh")


def test_bearer_anonymous_and_none_found():
    server = TokenServer([FakeResponse(200, body={"token": "anon"})])
    a = auth_with(server, None)
    assert a.answer(FakeResponse(401, BEARER), "/v2/app/manifests/1", None)[0] == {"Authorization": "Bearer anon"}
    assert server.calls[0][3] is None
    a = auth_with(TokenServer([FakeResponse(401)]), None)
    with pytest.raises(RegistryAuthError, match="authentication required and no credentials for 10.1.2.3:5000"):
        a.answer(FakeResponse(401, BEARER), "/v2/app/manifests/1", None)


def test_basic_then_refused():
    a = auth_with(TokenServer([]), rc.Credentials(REG, "alice", SECRET, source="f"))
    challenge = FakeResponse(401, {"WWW-Authenticate": 'Basic realm="Registry Realm"'})
    assert a.answer(challenge, "/v2/", None) == ({}, ("alice", SECRET), "basic")
    assert a.first("/v2/app/tags/list") == ({}, ("alice", SECRET), "basic")
    with pytest.raises(RegistryAuthError) as e:
        a.answer(challenge, "/v2/", "basic")
    assert str(e.value) == ("registry 10.1.2.3:5000: refused the credentials of user alice (from f): "
                            "wrong password, or no access")
    with pytest.raises(RegistryAuthError, match="no credentials"):
        auth_with(TokenServer([]), None).answer(challenge, "/v2/", None)


def test_unsupported_challenge():
    a = auth_with(TokenServer([]), None)
    with pytest.raises(RegistryAuthError, match=r"unsupported challenge \(schemes: negotiate\)"):
        a.answer(FakeResponse(401, {"WWW-Authenticate": "Negotiate"}), "/v2/", None)


# --------------------------------------------------------------------------- a node's failed pull, said in one line


def test_pull_failed_names_the_token_server_when_it_is_the_one_away():
    from deployer.engine.apply import pull_failed

    detail = ('Head "https://10.1.2.3:5000/v2/app/manifests/1": Get "http://10.1.2.3:4000/token?account=bob&'
              'scope=repository%3Aapp%3Apull": dial tcp 10.1.2.3:4000: connect: connection refused')
    msg = pull_failed("10.1.2.3:5000/app:1", detail).one_line()
    assert msg.startswith("image 10.1.2.3:5000/app:1 is not on the node and the token server of registry "
                          "10.1.2.3:5000, http://10.1.2.3:4000/token, is unreachable from the node: ")
    away = pull_failed("10.1.2.3:5000/app:1", 'Head "https://10.1.2.3:5000/v2/": dial tcp: connection refused')
    assert "and registry 10.1.2.3:5000 is unreachable from the node" in away.one_line()
    refused = pull_failed("10.1.2.3:5000/app:1", "unauthorized: bad credentials").one_line()
    assert "registry 10.1.2.3:5000 refused the pull (no such repository, or wrong or missing credentials" in refused


def test_release_takes_the_targets_datacenter_file(tmp_path):
    from deployer.errors import TargetError
    from deployer.ops.release import credentials_for

    root = tmp_path / "infra"
    for dc, extra in [("dc1", "registry_credentials: /etc/deployer/dc1.json\n"),
                      ("dc2", "registry_credentials: /etc/deployer/dc2.json\n"), ("dc3", "")]:
        (root / "datacenters" / dc / "n1").mkdir(parents=True)
        (root / "datacenters" / dc / "n1" / "node.yml").write_text("docker: unix:///var/run/docker.sock\n")
        (root / "datacenters" / dc / "datacenter.yml").write_text("registry: h:5000\n" + extra)
    infra = loader.load(root)
    assert credentials_for(infra, dc="dc1") == "/etc/deployer/dc1.json"
    assert credentials_for(infra, targets=["dc2/n1", "dc2"]) == "/etc/deployer/dc2.json"
    assert credentials_for(infra, dc="dc3") is None
    assert credentials_for(None, dc="dc1") is None
    with pytest.raises(TargetError, match="different registry_credentials files"):
        credentials_for(infra, targets=["dc1", "dc2"])
