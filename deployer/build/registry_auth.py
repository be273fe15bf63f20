"""Answering a registry's 401: Basic auth, and the registry token flow.

A distribution-v2 registry that wants credentials answers 401 with a challenge:

* ``WWW-Authenticate: Basic realm="..."`` (an htpasswd registry): the request is
  sent again with ``Authorization: Basic``;
* ``WWW-Authenticate: Bearer realm="https://auth/token",service="reg",scope="repository:app:pull"``
  (Harbor, GitLab, distribution's ``auth: token``): the realm is asked for a token,
  ``GET realm?service=...&scope=...`` with Basic credentials (or none: anonymous
  pull), or ``POST`` with ``grant_type=refresh_token`` when the credentials are an
  identity token. The answer's ``token`` (or ``access_token``) goes into
  ``Authorization: Bearer`` and the request is sent again.

Tokens are kept per (realm, service, scope) for the life of one ``Authenticator``
(one registry client), so the several GETs of one question fetch one token.
Credentials are looked up (``engine.registry_credentials``) only when a
registry first asks for them. Errors name the registry, the token server and
the user; never the password or a token.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Callable

import requests

from deployer.engine.registry_credentials import Credentials
from deployer.errors import RegistryAuthError

CLIENT_ID = "deployer"

# auth-param = token "=" ( token / quoted-string ), RFC 7235
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(,|$)')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?=\s|$|,)")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(header: str) -> list[Challenge]:
    """``WWW-Authenticate`` -> its challenges, in order; params keep their values, unquoted.

    ``Bearer realm="a,b",scope="x"`` -> ``[Challenge("bearer", {"realm": "a,b", "scope": "x"})]``.
    A value the grammar cannot read ends the parse (what was read is kept)."""
    out: list[Challenge] = []
    pos = 0
    text = header or ""
    while pos < len(text):
        while pos < len(text) and text[pos] in " ,":
            pos += 1
        m = _SCHEME.match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(text, pos)
            if not pm:
                break
            value = pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[pm.group(1).lower()] = value
            pos = pm.end()
            if pm.group(3) == "":
                break
        out.append(Challenge(scheme, params))
    return out


def token_from(answer: object) -> tuple[str, int | None]:
    """A token server's JSON answer -> (token, expires_in); ``token`` wins over ``access_token``."""
    if not isinstance(answer, dict):
        return "", None
    token = answer.get("token") or answer.get("access_token") or ""
    expires = answer.get("expires_in")
    return (token if isinstance(token, str) else ""), (expires if isinstance(expires, int) else None)


def scope_of(path: str) -> str:
    """The token scope a read of ``path`` needs: ``/v2/app/manifests/1`` -> ``repository:app:pull``; ``/v2/`` -> ``""``."""
    m = re.match(r"^/v2/(.+?)/(?:manifests|blobs|tags)/", path)
    return f"repository:{m.group(1)}:pull" if m else ""


class Authenticator:
    """Turns a registry's 401 into what to send again: Basic, or a Bearer token per scope.

    ``first(path)`` says what to send before being asked (a token already held for
    the path's scope, or Basic once the registry took it); ``answer(resp, path, sent)``
    what to send after a 401, given what was sent (``None``, ``"token"``, ``"fresh"``
    (a token fetched for this very request), ``"basic"``); RegistryAuthError when
    nothing more can be tried."""

    def __init__(self, registry: str, session: requests.Session, verify: str | bool, timeout: float,
                 find_credentials: Callable[[], Credentials | None], where: str = ""):
        self.registry = registry
        self.session = session
        self.verify = verify
        self.timeout = timeout
        self._find = find_credentials
        self._looked = False
        self._credentials: Credentials | None = None
        self.where = where  # where credentials were looked for, for "none found" messages
        self.tokens: dict[str, str] = {}  # scope -> token
        self.basic = False  # the registry took Basic credentials: send them up front from now on
        self.fetches = 0  # tokens fetched (the cache's measure)

    @property
    def credentials(self) -> Credentials | None:
        if not self._looked:
            self._credentials = self._find()
            self._looked = True
        return self._credentials

    def first(self, path: str) -> tuple[dict[str, str], tuple[str, str] | None, str | None]:
        """(headers, basic auth, what) to send ``path`` with before any 401."""
        token = self.tokens.get(scope_of(path))
        if token:
            return {"Authorization": f"Bearer {token}"}, None, "token"
        if self.basic:
            creds = self.credentials
            return {}, (creds.username, creds.password), "basic"
        return {}, None, None

    def answer(self, resp: requests.Response, path: str,
               sent: str | None) -> tuple[dict[str, str], tuple[str, str] | None, str]:
        challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            scope = bearer.params.get("scope", "")
            if sent == "fresh":  # a token fetched just now, and refused
                raise RegistryAuthError(self.registry, f"refused the token {bearer.realm} gave "
                                                       f"{self._who()} for {scope or 'the registry'}: no access")
            token = self._fetch(bearer.realm, bearer.params.get("service", ""), scope)
            self.tokens[scope] = token
            return {"Authorization": f"Bearer {token}"}, None, "fresh"
        if basic is not None:
            creds = self.credentials
            if creds is None:
                raise self.none_found(path)
            if creds.identity_token:
                raise RegistryAuthError(self.registry, f"asks for a password (Basic) and the credentials are an "
                                                       f"identity token ({creds.describe()})")
            if sent == "basic":
                raise self.refused(creds)
            self.basic = True
            return {}, (creds.username, creds.password), "basic"
        schemes = ", ".join(c.scheme for c in challenges) or "none"
        raise RegistryAuthError(self.registry, f"GET {path}: authentication required with an unsupported "
                                               f"challenge (schemes: {schemes})")

    def _who(self) -> str:
        creds = self.credentials
        return creds.describe() if creds is not None else "anonymous"

    def refused(self, creds: Credentials) -> RegistryAuthError:
        return RegistryAuthError(self.registry, f"refused the credentials of {creds.describe()}: wrong password, "
                                                "or no access")

    def none_found(self, path: str) -> RegistryAuthError:
        return RegistryAuthError(self.registry, f"GET {path}: authentication required and no credentials for "
                                                f"{self.registry} (looked in {self.where}; docker login "
                                                f"{self.registry}, or the datacenter's registry_credentials file)")

    def _fetch(self, realm: str, service: str, scope: str) -> str:
        if not realm.startswith(("https://", "http://")):
            raise RegistryAuthError(self.registry, f"token server {realm!r} is not an http(s) URL")
        creds = self.credentials
        params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        what = f"token server {realm}"
        # The registry's own CA for a token server on the registry's host; the system's elsewhere.
        verify = self.verify if urlsplit(realm).hostname == urlsplit(f"//{self.registry}").hostname else True
        try:
            if creds is not None and creds.identity_token:
                data = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": CLIENT_ID, **params}
                resp = self.session.post(realm, data=data, verify=verify, timeout=self.timeout)
            else:
                auth = (creds.username, creds.password) if creds is not None else None
                if creds is not None:
                    params["account"] = creds.username
                resp = self.session.get(realm, params=params, auth=auth, verify=verify, timeout=self.timeout)
        except requests.exceptions.SSLError:
            raise RegistryAuthError(self.registry, f"{what}: TLS failure") from None
        except requests.exceptions.ConnectionError:
            raise RegistryAuthError(self.registry, f"{what} is unreachable (the registry sends clients "
                                                   "there for a token)") from None
        except requests.exceptions.Timeout:
            raise RegistryAuthError(self.registry, f"{what}: no answer within {self.timeout:g}s") from None
        if resp.status_code in (401, 403):
            if creds is None:
                raise self.none_found(f"{realm} (token)")
            raise RegistryAuthError(self.registry, f"{what} refused the credentials of {creds.describe()}: "
                                                   "wrong password, or no access")
        if resp.status_code >= 400:
            raise RegistryAuthError(self.registry, f"{what}: HTTP {resp.status_code}")
        try:
            token, _ = token_from(resp.json())
        except ValueError:
            token = ""
        if not token:
            raise RegistryAuthError(self.registry, f"{what}: the answer holds no token")
        self.fetches += 1
        return token


def looked_in(datacenter_file: str | os.PathLike | None, docker_config: str) -> str:
    """Where credentials were looked for, for a message."""
    places = [str(datacenter_file)] if datacenter_file else []
    return ", ".join(places + [docker_config])
