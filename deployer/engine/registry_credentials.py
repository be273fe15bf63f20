"""Registry credentials, looked up where the Docker ecosystem keeps them.

Used by the image builder's registry client and pushes (``build``) and by node
pulls (``engine.apply``): both need the same answer, so it lives on the lowest
floor that reads files and runs programs for an engine's sake.

For registry ``HOST[:PORT]`` the first of these that has an entry wins:

1. the datacenter's credentials file (``datacenter.yml``: ``registry_credentials:
   /etc/deployer/registry-dc1.json``), a Docker config holding ``auths`` only
   (``docker --config DIR login HOST`` writes one). It names the account the
   datacenter's nodes pull with, the same on every operator's machine, so it
   comes first: a personal ``docker login`` must not change what a datacenter
   pulls with. Like ssh with a private key, a file that its group or others
   may read (or write) is refused, as is one that does not exist.
2. the operator's Docker config (``$DOCKER_CONFIG/config.json``, else
   ``~/.docker/config.json``), in Docker's own order: ``credHelpers[HOST]``,
   else ``credsStore``, each running ``docker-credential-NAME get`` with the
   registry on stdin; else ``auths[HOST]`` (``auth`` = base64 ``user:password``,
   or ``username``/``password``, or ``identitytoken``). As with the docker CLI,
   a configured helper is the answer: ``auths`` is not read behind it.

Nothing here prints, logs or puts a secret in an exception: errors name the
file, the registry and the helper, never a password or token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from deployer.errors import CredentialHelperFailed, CredentialsFileError

HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 30.0  # seconds: a helper may unlock a keyring
TOKEN_USER = "<token>"  # a helper's Username when its Secret is an identity token
HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}
HUB_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True)
class Credentials:
    """One registry account. ``source`` says where it was found (a file, a helper), never the secret."""

    registry: str
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""

    def auth_config(self) -> dict[str, str]:
        """What docker-py's ``push``/``pull`` take as ``auth_config`` (the engine's X-Registry-Auth)."""
        if self.identity_token:
            return {"identitytoken": self.identity_token, "serveraddress": self.registry}
        return {"username": self.username, "password": self.password, "serveraddress": self.registry}

    def describe(self) -> str:
        """Who and from where, for messages: ``user alice (from /etc/deployer/r.json)``."""
        who = "an identity token" if self.identity_token else f"user {self.username}"
        return f"{who} (from {self.source})"


def registry_host(key: str) -> str:
    """An ``auths`` key or a server URL -> ``host[:port]``: ``https://h:5000/v1/`` -> ``h:5000``;
    Docker Hub's names all become ``docker.io``."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host = text.split("/", 1)[0].lower()
    return "docker.io" if host in HUB_HOSTS else host


def docker_config_path(env: dict[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (as the docker CLI reads it)."""
    env = os.environ if env is None else env
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".docker" / "config.json"


def check_private(path: str | os.PathLike) -> os.stat_result:
    """The file's stat; CredentialsFileError when it is missing, not a file, or open to group/others."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CredentialsFileError(str(path), "no such file (datacenter.yml registry_credentials names it)") from None
    except OSError as e:
        raise CredentialsFileError(str(path), f"cannot read it: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsFileError(str(path), "not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise CredentialsFileError(str(path), f"permissions {mode:04o} are too open: registry credentials must be "
                                              f"readable by their owner only (chmod 600 {path})")
    return st


def parse_auths(doc: object, source: str, *, only_auths: bool = False, host: str | None = None) -> dict[str, Credentials]:
    """A Docker config document -> its ``auths`` entries that hold credentials, by registry host.

    ``only_auths``: the document may hold nothing but ``auths`` (the datacenter file).
    ``host``: read only that registry's entries (another registry's odd entry is not our business).
    Raises CredentialsFileError for what cannot be read; the message never quotes a value."""
    if not isinstance(doc, dict):
        raise CredentialsFileError(source, "expected a JSON object with \"auths\"")
    if only_auths:
        extra = sorted(k for k in doc if k != "auths")
        if extra:
            raise CredentialsFileError(source, f"unsupported key {extra[0]!r}: this file holds \"auths\" only "
                                               "(credential helpers are read from the operator's Docker config)")
    auths = doc.get("auths") or {}
    if not isinstance(auths, dict):
        raise CredentialsFileError(source, "\"auths\" must be an object of registry -> credentials")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if host is not None and registry_host(key) != host:
            continue
        if not isinstance(entry, dict):
            raise CredentialsFileError(source, f"auths[{key!r}] must be an object")
        key_host = registry_host(key)
        creds = _entry_credentials(key_host, entry, f"{source}: auths[{key!r}]", source)
        if creds is not None:
            out[key_host] = creds
    return out


def _entry_credentials(host: str, entry: dict, where: str, source: str) -> Credentials | None:
    for name in ("auth", "username", "password", "identitytoken"):
        if name in entry and not isinstance(entry[name], str):
            raise CredentialsFileError(where, f"{name} must be a string")
    if entry.get("identitytoken"):
        return Credentials(host, username=entry.get("username", ""), identity_token=entry["identitytoken"],
                           source=source)
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise CredentialsFileError(where, "auth is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise CredentialsFileError(where, "auth is not base64 of user:password")
        return Credentials(host, username=user, password=password, source=source)
    if entry.get("username") or entry.get("password"):
        if not entry.get("username"):
            raise CredentialsFileError(where, "a password without a username")
        return Credentials(host, username=entry["username"], password=entry.get("password", ""), source=source)
    return None  # {} : docker login with a credential store leaves these


def _read_json(path: Path, source: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CredentialsFileError(source, f"cannot read it: {e.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise CredentialsFileError(source, f"not JSON (line {getattr(e, 'lineno', '?')})") from None


def read_datacenter_file(path: str | os.PathLike) -> dict[str, Credentials]:
    """The datacenter's credentials file, checked like ssh checks a key, -> credentials by host."""
    check_private(path)
    return parse_auths(_read_json(Path(path), str(path)), str(path), only_auths=True)


def helper_name(config: dict, host: str) -> str | None:
    """The credential helper Docker would ask for ``host``: ``credHelpers[host]``, else ``credsStore``."""
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if registry_host(key) == host and isinstance(name, str) and name:
                return name
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def run_helper(name: str, host: str, env: dict[str, str] | None = None) -> Credentials | None:
    """``docker-credential-NAME get`` with the registry on stdin; None when it has nothing for it."""
    program = HELPER_PREFIX + name
    server = HUB_KEY if host == "docker.io" else host
    try:
        proc = subprocess.run([program, "get"], input=server, capture_output=True, text=True,
                              timeout=HELPER_TIMEOUT, env=env)
    except FileNotFoundError:
        raise CredentialHelperFailed(program, host, "not found on PATH (the Docker config names it)") from None
    except subprocess.TimeoutExpired:
        raise CredentialHelperFailed(program, host, f"no answer within {HELPER_TIMEOUT:g}s") from None
    except OSError as e:
        raise CredentialHelperFailed(program, host, e.strerror or str(e)) from None
    if proc.returncode != 0:
        said = " ".join((proc.stdout or proc.stderr or "").split())
        if "credentials not found" in said.lower():
            return None
        # What a helper says on failure is its error, not a secret; keep it short all the same.
        raise CredentialHelperFailed(program, host, f"exit status {proc.returncode}: {said[:200]}")
    try:
        answer = json.loads(proc.stdout)
        user, secret = answer.get("Username", ""), answer.get("Secret", "")
        if not isinstance(user, str) or not isinstance(secret, str):
            raise ValueError
    except (ValueError, AttributeError):
        raise CredentialHelperFailed(program, host, "answered something that is not its JSON "
                                                    "({\"Username\": ..., \"Secret\": ...})") from None
    if not secret:
        return None
    if user == TOKEN_USER:
        return Credentials(host, identity_token=secret, source=program)
    return Credentials(host, username=user, password=secret, source=program)


def lookup(registry: str, datacenter_file: str | os.PathLike | None = None,
           env: dict[str, str] | None = None) -> Credentials | None:
    """The credentials for ``registry`` (``HOST[:PORT]``, a URL is accepted), in the order the docstring gives."""
    host = registry_host(registry)
    if datacenter_file:
        found = read_datacenter_file(datacenter_file).get(host)
        if found is not None:
            return found
    path = docker_config_path(env)
    if not path.is_file():
        return None
    source = str(path)
    config = _read_json(path, source)
    if not isinstance(config, dict):
        raise CredentialsFileError(source, "expected a JSON object")
    helper = helper_name(config, host)
    if helper:
        return run_helper(helper, host, env=dict(env) if env is not None else None)
    return parse_auths(config, source, host=host).get(host)
