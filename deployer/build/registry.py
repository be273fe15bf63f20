"""Read-only questions to a Docker registry over its HTTP API (distribution v2).

The image builder asks "does the registry already hold NAME:TAG, built from
this revision?" before building. Everything here is plain HTTPS with the
registry's CA; no Docker engine is involved.

A registry is named the way image references name it, ``HOST:PORT`` (an
``https://`` or ``http://`` prefix is accepted too). Without an explicit ``ca``
the CA a Docker daemon would use is taken: ``/etc/docker/certs.d/HOST:PORT/ca.crt``
when it exists, else the system's trust store. Environment variables such as
``REQUESTS_CA_BUNDLE`` and proxies are ignored on purpose: they would silently
replace that CA.

A registry that answers 401 gets credentials (``build.registry_auth``: Basic, or
the token flow), looked up in the Docker ecosystem's places
(``engine.registry_credentials``), the datacenter's ``registry_credentials``
file first when the caller names one (``credentials_file=``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import requests

from deployer.build.registry_auth import Authenticator, looked_in
from deployer.engine import registry_credentials
from deployer.errors import RegistryAuthError, RegistryError

CERTS_D = Path("/etc/docker/certs.d")

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

DEFAULT_TIMEOUT = 10.0


def split_registry_url(registry_url: str) -> tuple[str, str]:
    """``"https://h:5000/"`` or ``"h:5000"`` -> ``("https", "h:5000")``."""
    url = registry_url.strip().rstrip("/")
    scheme = "https"
    if "://" in url:
        scheme, url = url.split("://", 1)
        if scheme not in ("http", "https"):
            raise RegistryError(registry_url, f"unsupported scheme {scheme!r}")
    if not url or "/" in url:
        raise RegistryError(registry_url, "expected HOST[:PORT]")
    return scheme, url


def default_ca(registry_url: str) -> str | None:
    """The CA file a Docker daemon trusts for this registry, if there is one."""
    _, host = split_registry_url(registry_url)
    path = CERTS_D / host / "ca.crt"
    return str(path) if path.is_file() else None


class _Registry:
    def __init__(self, registry_url: str, ca: str | os.PathLike | None, timeout: float,
                 credentials_file: str | os.PathLike | None = None):
        self.scheme, self.host = split_registry_url(registry_url)
        self.base = f"{self.scheme}://{self.host}"
        self.display = self.host
        if ca is None:
            ca = default_ca(registry_url)
        self.verify: str | bool = str(ca) if ca else True
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False
        where = looked_in(credentials_file, str(registry_credentials.docker_config_path()))
        self.auth = Authenticator(self.host, self.session, self.verify, timeout,
                                  lambda: registry_credentials.lookup(self.host, credentials_file), where)

    def _send(self, path: str, headers: dict[str, str], auth: tuple[str, str] | None) -> requests.Response:
        try:
            return self.session.get(self.base + path, headers=headers, auth=auth, verify=self.verify,
                                    timeout=self.timeout)
        except requests.exceptions.SSLError as e:
            raise RegistryError(self.display, f"TLS failure: {_short(e)}") from e
        except requests.exceptions.ConnectionError as e:
            raise RegistryError(self.display, f"unreachable: {_short(e)}", unreachable=True) from e
        except requests.exceptions.Timeout as e:
            raise RegistryError(self.display, f"no answer within {self.timeout:g}s", unreachable=True) from e

    def get(self, path: str, accept: str | None = None, allow_404: bool = True) -> requests.Response | None:
        headers = {"Accept": accept} if accept else {}
        extra, auth, sent = self.auth.first(path)
        resp = self._send(path, {**headers, **extra}, auth)
        for _ in range(3):  # a cached token refused, a fresh one, Basic: never more
            if resp.status_code != 401:
                break
            extra, auth, sent = self.auth.answer(resp, path, sent)
            resp = self._send(path, {**headers, **extra}, auth)
        if resp.status_code == 401:
            raise RegistryAuthError(self.display, f"GET {path}: still refused after authenticating")
        if resp.status_code == 404 and allow_404:
            return None
        if resp.status_code >= 400:
            raise RegistryError(self.display, f"GET {path}: HTTP {resp.status_code} {_error_text(resp)}")
        return resp

    def close(self) -> None:
        self.session.close()


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    # urllib3 nests the reason deep inside; keep the end, where the cause is.
    return text if len(text) <= 200 else "..." + text[-197:]


def _error_text(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except ValueError:
        return resp.text[:200].strip()


def _path_name(name: str) -> str:
    return quote(name, safe="/")


def tags(registry_url: str, name: str, ca: str | os.PathLike | None = None,
         timeout: float = DEFAULT_TIMEOUT,
         credentials_file: str | os.PathLike | None = None) -> list[str]:
    """Every tag of repository ``name``, sorted; ``[]`` if the repository does not exist."""
    reg = _Registry(registry_url, ca, timeout, credentials_file)
    try:
        resp = reg.get(f"/v2/{_path_name(name)}/tags/list")
        if resp is None:
            return []
        return sorted(resp.json().get("tags") or [])
    finally:
        reg.close()


def has_tag(registry_url: str, name: str, tag: str, ca: str | os.PathLike | None = None,
            timeout: float = DEFAULT_TIMEOUT, credentials_file: str | os.PathLike | None = None) -> bool:
    """True when the registry has a manifest for ``name:tag``."""
    reg = _Registry(registry_url, ca, timeout, credentials_file)
    try:
        return reg.get(f"/v2/{_path_name(name)}/manifests/{quote(tag, safe='')}", accept=MANIFEST_TYPES) is not None
    finally:
        reg.close()


def image_config(registry_url: str, name: str, tag: str, ca: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 credentials_file: str | os.PathLike | None = None) -> dict | None:
    """The image config of ``name:tag`` plus its digest, or None if there is no such tag.

    Returns ``{"digest": ..., "manifest_digest": ..., "config": {...}, "labels": {...}}``:
    ``digest`` is the config's, which is the image ID a Docker engine shows
    after pulling it; ``manifest_digest`` is what ``NAME@sha256:...`` pins. A
    manifest list is answered for its linux/amd64 (else first) entry.
    """
    reg = _Registry(registry_url, ca, timeout, credentials_file)
    try:
        path = f"/v2/{_path_name(name)}/manifests/{quote(tag, safe='')}"
        resp = reg.get(path, accept=MANIFEST_TYPES)
        if resp is None:
            return None
        manifest = _json(resp, reg, path)
        manifest_digest = resp.headers.get("Docker-Content-Digest", "")
        if "manifests" in manifest:  # an index: pick one platform
            entries = manifest["manifests"] or []
            if not entries:
                return None
            chosen = next(
                (m for m in entries if (m.get("platform") or {}).get("architecture") == "amd64"),
                entries[0],
            )
            path = f"/v2/{_path_name(name)}/manifests/{chosen['digest']}"
            resp = reg.get(path, accept=MANIFEST_TYPES)
            if resp is None:
                return None
            manifest = _json(resp, reg, path)
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            raise RegistryError(reg.display, f"{name}:{tag}: manifest has no config (schema 1?)")
        path = f"/v2/{_path_name(name)}/blobs/{digest}"
        resp = reg.get(path)
        if resp is None:
            raise RegistryError(reg.display, f"{name}:{tag}: config blob {digest} is missing")
        config = _json(resp, reg, path)
        labels = (config.get("config") or {}).get("Labels") or {}
        return {"digest": digest, "manifest_digest": manifest_digest, "config": config, "labels": labels}
    finally:
        reg.close()


def _json(resp: requests.Response, reg: _Registry, path: str) -> dict:
    try:
        return json.loads(resp.content)
    except ValueError as e:
        raise RegistryError(reg.display, f"GET {path}: answer is not JSON") from e


def ping(registry_url: str, ca: str | os.PathLike | None = None,
         timeout: float = DEFAULT_TIMEOUT,
         credentials_file: str | os.PathLike | None = None) -> None:
    """Raise RegistryError unless the registry answers its ``/v2/`` endpoint."""
    reg = _Registry(registry_url, ca, timeout, credentials_file)
    try:
        reg.get("/v2/", allow_404=False)
    finally:
        reg.close()
