"""Webhook receivers for CI: an HMAC-SHA256-signed POST deploys a configured image to a configured target.

The receivers are configured in the serve config file (``deployer serve
--config FILE``), outside the repository: the shared secrets must not be in a
repository every clone can read. The file is YAML::

    hooks:
      web-ci:                                  # POST /api/v1/hooks/web-ci
        target: prod/web1/web                  # dc/node/service, dc/node or dc
        image: registry.example:5000/web       # a repository: the payload names the tag;
                                               # or repo:tag, deployed as written
        secret_file: /etc/deployer/web-ci.secret   # or secret: "..." (the file is read at start)

A request is accepted when (1) its ``X-Hub-Signature-256`` is ``sha256=``
and the hex HMAC-SHA256 of the exact body under the hook's secret, compared
with ``hmac.compare_digest`` (GitHub's format), and (2) its delivery id
(``X-GitHub-Delivery``, or ``X-Deployer-Delivery``) was never accepted
before: the ids accepted are kept in the service's own directory
(``webhook-deliveries.json``, the last ``KEEP_DELIVERIES`` of them, across
restarts), so a captured request sent again is refused (409). The body is JSON:
``{"image": "repo:tag"}`` (same repository as configured) or ``{"tag": "1.5"}``,
and an optional ``"reason"``; it may be left out when the configured image
has a tag. The deploy is a job like ``POST /api/v1/deploy``, committed with the
hook's name (``hook:NAME``) as author.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import ApiError, ServeConfigError
from deployer.files import atomic_write
from deployer.imageref import ImageRef

SIGNATURE_HEADER = "x-hub-signature-256"
DELIVERY_HEADERS = ("x-github-delivery", "x-deployer-delivery")
KEEP_DELIVERIES = 10_000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DELIVERY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``: ``sha256=`` + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


@dataclass(frozen=True)
class Hook:
    name: str
    target: str
    image: str  # a repository (the payload names the tag) or a full reference
    secret: bytes

    def image_for(self, payload: dict[str, Any]) -> str:
        """The image a delivery deploys; ApiError 400 when the payload names another repository or none."""
        configured = ImageRef.parse(self.image)
        wanted = payload.get("image")
        tag = payload.get("tag")
        if wanted is not None and not isinstance(wanted, str) or tag is not None and not isinstance(tag, str):
            raise ApiError(400, "image and tag must be strings")
        if wanted:
            try:
                ref = ImageRef.parse(wanted)
            except Exception as exc:  # noqa: BLE001 - BadImageRef and friends: one line
                raise ApiError(400, f"image: {exc}") from None
            if ref.repository != configured.repository:
                raise ApiError(403, f"hook {self.name!r} deploys {configured.repository}, not {ref.repository}")
            return str(ref)
        if tag:
            try:
                return str(ImageRef.parse(f"{configured.repository}:{tag}"))
            except Exception as exc:  # noqa: BLE001
                raise ApiError(400, f"tag: {exc}") from None
        if configured.tag or configured.digest:
            return str(configured)
        raise ApiError(400, f"hook {self.name!r} needs an image or a tag in the body")


def _problem(path: Path, field: str, message: str) -> ServeConfigError:
    return ServeConfigError(f"{path}: {field}: {message}")


def read_config(path: Path) -> dict[str, Hook]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ServeConfigError(f"{path}: cannot read the serve config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ServeConfigError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise _problem(path, "(top)", "must be a mapping with 'hooks'")
    unknown = sorted(set(data) - {"hooks"})
    if unknown:
        raise _problem(path, unknown[0], "unknown key (the serve config holds 'hooks')")
    hooks: dict[str, Hook] = {}
    for name, spec in (data.get("hooks") or {}).items():
        where = f"hooks.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _problem(path, where, "a hook name is 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(spec, dict):
            raise _problem(path, where, "must be a mapping with target, image, secret or secret_file")
        extra = sorted(set(spec) - {"target", "image", "secret", "secret_file"})
        if extra:
            raise _problem(path, f"{where}.{extra[0]}", "unknown key")
        for key in ("target", "image"):
            if not isinstance(spec.get(key), str) or not spec[key].strip():
                raise _problem(path, f"{where}.{key}", "required (a string)")
        try:
            ImageRef.parse(spec["image"])
        except Exception as exc:  # noqa: BLE001
            raise _problem(path, f"{where}.image", str(exc)) from None
        if ("secret" in spec) == ("secret_file" in spec):
            raise _problem(path, where, "give exactly one of secret, secret_file")
        if "secret" in spec:
            secret = str(spec["secret"]).encode()
        else:
            try:
                secret = Path(str(spec["secret_file"])).read_bytes().strip()
            except OSError as exc:
                raise _problem(path, f"{where}.secret_file", f"cannot read {spec['secret_file']}: {exc.strerror}") \
                    from None
        if len(secret) < 16:
            raise _problem(path, where, "the secret must be at least 16 bytes")
        hooks[name] = Hook(name, spec["target"].strip(), spec["image"].strip(), secret)
    return hooks


class Receivers:
    def __init__(self, hooks: dict[str, Hook], own_dir: Path):
        self.hooks = hooks
        self.path = Path(own_dir) / "webhook-deliveries.json"
        self._lock = threading.Lock()
        self._seen: dict[str, float] | None = None

    @classmethod
    def load(cls, config: Path | None, own_dir: Path) -> "Receivers":
        return cls(read_config(Path(config)) if config else {}, own_dir)

    def _load_seen(self) -> dict[str, float]:
        if self._seen is None:
            try:
                self._seen = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self._seen = {}
        return self._seen

    def accept(self, name: str, headers: Any, body: bytes) -> Hook:
        """The hook when the delivery is signed and new (and remembered now); ApiError 401 / 409 otherwise."""
        hook = self.hooks.get(name)
        signature = headers.get(SIGNATURE_HEADER)
        if hook is None or not signature_ok(hook.secret, body, signature):
            raise ApiError(401, "missing or wrong X-Hub-Signature-256 (or no such hook)")
        delivery = next((headers.get(h) for h in DELIVERY_HEADERS if headers.get(h)), None)
        if not delivery or not DELIVERY_RE.match(delivery):
            raise ApiError(400, "a delivery id is required: X-GitHub-Delivery (or X-Deployer-Delivery)")
        key = f"{name}/{delivery}"
        with self._lock:
            seen = self._load_seen()
            if key in seen:
                raise ApiError(409, f"delivery {delivery} was received before: a replay is refused")
            seen[key] = time.time()
            while len(seen) > KEEP_DELIVERIES:
                del seen[min(seen, key=seen.__getitem__)]
            os.makedirs(self.path.parent, exist_ok=True)
            atomic_write(self.path, json.dumps(seen).encode(), mode=0o600)
        return hook
