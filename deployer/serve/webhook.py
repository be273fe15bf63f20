"""Webhook receivers for CI: an HMAC-SHA256-signed POST deploys a configured image, or releases a pushed commit.

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

A hook with ``action: release`` builds instead: it takes GitHub's ``push``
payload, whose ``after`` (the pushed commit) and ``ref`` (``refs/heads/BRANCH``)
choose what is built, and runs ``deployer release`` on exactly that commit of
its ``source`` (``release_hook`` runs that job)::

    hooks:
      worker-ci:
        action: release
        source: /srv/src/worker          # a local git repository, or a git URL (cloned into the own dir)
        branch: main                     # pushes to other refs are acknowledged and ignored (202)
        app: .                           # the app's directory in the repository (default: its top)
        builder: go                      # default: the app's deployer.yml, else detected
        registry: 10.0.0.5:5000          # default: the targets' datacenter.yml
        engine: ssh://builder@10.0.0.9   # the build engine; default: the datacenter's builder:, else local
        targets: [prod/web1/worker]      # or target: one
        service: worker                  # optional, as release --service
        batch: 2                         # optional, as release --batch
        secret_file: /etc/deployer/worker-ci.secret

A payload without ``ref`` or ``after`` (or with an ``after`` that is not a
commit sha) is refused (400, nothing queued). A push to another ref, a branch
deletion or an event other than ``push`` (``X-GitHub-Event``) is answered 202
``{"ignored": REASON, "job": null}`` with nothing queued. Every problem of the
file is ``file:line: field: message``, found when ``serve`` starts.
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

from deployer.errors import ApiError, ConfigError, ServeConfigError
from deployer.files import atomic_write
from deployer.imageref import ImageRef

SIGNATURE_HEADER = "x-hub-signature-256"
DELIVERY_HEADERS = ("x-github-delivery", "x-deployer-delivery")
KEEP_DELIVERIES = 10_000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DELIVERY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
URL_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:)")  # scheme:// or scp-like
ACTIONS = ("deploy", "release")
DEPLOY_KEYS = {"action", "target", "image", "secret", "secret_file"}
RELEASE_KEYS = {"action", "source", "branch", "app", "builder", "registry", "engine", "target", "targets",
                "service", "batch", "secret", "secret_file"}
ENGINE_SCHEMES = ("unix://", "ssh://", "tcp://", "http://")
EVENT_HEADER = "x-github-event"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``: ``sha256=`` + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


@dataclass(frozen=True)
class ReleaseSpec:
    """What a release hook builds and where it deploys it: ``deployer release``'s arguments."""

    source: str  # a local git repository (absolute path) or a git URL
    branch: str = "main"
    app: str | None = None
    builder: str | None = None
    registry: str | None = None
    engine: str | None = None
    targets: tuple[str, ...] = ()
    service: str | None = None
    batch: int | None = None

    @property
    def is_url(self) -> bool:
        return bool(URL_RE.match(self.source))


@dataclass(frozen=True)
class Hook:
    name: str
    target: str
    image: str  # a repository (the payload names the tag) or a full reference
    secret: bytes
    action: str = "deploy"  # deploy | release
    release: ReleaseSpec | None = None

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

    def release_for(self, headers: Any, payload: dict[str, Any]) -> "tuple[dict[str, Any], str] | str":
        """A push delivery of a release hook: ``(job params, reason)``, or the reason it is ignored (a str).

        ApiError 400 when the payload lacks ``ref`` or ``after`` (nothing is queued)."""
        spec = self.release
        assert spec is not None
        event = headers.get(EVENT_HEADER)
        if event and event != "push":
            return f"a {event!r} event: a release hook builds push events only"
        ref, sha = payload.get("ref"), payload.get("after")
        if not isinstance(ref, str) or not ref.strip():
            raise ApiError(400, "ref: required (a push payload's refs/heads/BRANCH)")
        if not isinstance(sha, str) or not sha.strip():
            raise ApiError(400, "after: required (a push payload's commit sha: the commit to build)")
        sha = sha.strip().lower()
        if not SHA_RE.match(sha):
            raise ApiError(400, f"after: {_short(sha)!r} is not a full commit sha (40 or 64 hex digits)")
        wanted = f"refs/heads/{spec.branch}"
        if ref != wanted:
            return f"{_short(ref)} is not {wanted}, the branch this hook releases: nothing built"
        if payload.get("deleted") is True or set(sha) == {"0"}:
            return f"the push deleted {wanted}: nothing to build"
        pusher = payload.get("pusher")
        by = pusher.get("name") if isinstance(pusher, dict) else None
        reason = f"webhook {self.name}: push to {spec.branch} at {sha[:12]}"
        if isinstance(by, str) and by.strip():
            reason += f" by {_short(by, 64)}"
        params = {"hook": self.name, "source": spec.source, "branch": spec.branch, "ref": ref, "sha": sha,
                  "targets": list(spec.targets)}
        return params, reason


def _short(text: str, limit: int = 120) -> str:
    """One printable line of at most ``limit`` characters (payload text goes into answers and commits)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class _Where:
    """``file:line: field: message`` for one config file, lines from the round-trip data."""

    def __init__(self, path: Path):
        self.path = path

    def problem(self, mapping: Any, key: Any, field: str, message: str, *, value: bool = False) -> ServeConfigError:
        from deployer.config.yamlread import key_line, value_line

        line = (value_line if value else key_line)(mapping, key) if mapping is not None else None
        where = f"{self.path}:{line}" if line else str(self.path)
        return ServeConfigError(f"{where}: {field}: {message}")


def _text(where: _Where, spec: Any, key: str, field: str, *, missing: tuple[Any, Any] | None = None) -> str | None:
    """``spec[key]`` as a stripped string, None when absent; ``missing=(mapping, key)`` makes it required
    (the problem is reported on that key's line)."""
    if key not in spec or spec[key] is None:
        if missing is not None:
            raise where.problem(missing[0], missing[1], field, "required (a string)")
        return None
    value = spec[key]
    if not isinstance(value, str) or not value.strip():
        raise where.problem(spec, key, field, "must be a non-empty string", value=True)
    return value.strip()


def _release_spec(where: _Where, listed: Any, name: str, spec: Any, field: str) -> tuple[ReleaseSpec, str]:
    """The release part of a hook, every value checked (no network, no build): ``(spec, first target)``."""
    from deployer.build import builders
    from deployer.build import registry as _registry
    from deployer.gitrepo.source import SourceRepo, branch_name_ok

    source = _text(where, spec, "source", f"{field}.source", missing=(listed, name))
    branch = _text(where, spec, "branch", f"{field}.branch") or "main"
    app = _text(where, spec, "app", f"{field}.app")
    if app is not None and (Path(app).is_absolute() or ".." in Path(app).parts):
        raise where.problem(spec, "app", f"{field}.app", "a directory inside the repository, relative to its top",
                            value=True)
    if branch.startswith("-") or not branch_name_ok(branch):
        raise where.problem(spec, "branch", f"{field}.branch", f"{branch!r} is not a valid branch name", value=True)
    if not URL_RE.match(source):
        if not Path(source).is_absolute():
            raise where.problem(spec, "source", f"{field}.source", "a local repository is an absolute path "
                                "(or give a git URL)", value=True)
        try:
            SourceRepo(source, branch, app)
        except Exception as exc:  # noqa: BLE001 - SourceError: not a directory, not git, a bad branch name
            message = exc.one_line() if hasattr(exc, "one_line") else str(exc)
            raise where.problem(spec, "source", f"{field}.source", message, value=True) from None
    builder = _text(where, spec, "builder", f"{field}.builder")
    if builder is not None and builder not in builders.available_builders():
        raise where.problem(spec, "builder", f"{field}.builder", f"unknown builder {builder!r} (known: "
                            f"{', '.join(builders.available_builders())})", value=True)
    registry = _text(where, spec, "registry", f"{field}.registry")
    if registry is not None:
        try:
            _registry.split_registry_url(registry)
        except Exception as exc:  # noqa: BLE001 - RegistryError
            raise where.problem(spec, "registry", f"{field}.registry",
                                exc.one_line() if hasattr(exc, "one_line") else str(exc), value=True) from None
    engine = _text(where, spec, "engine", f"{field}.engine")
    if engine is not None and not engine.startswith(ENGINE_SCHEMES):
        raise where.problem(spec, "engine", f"{field}.engine", "a build engine URL: unix:///path, ssh://[user@]host"
                            "[:port] or tcp://host:port", value=True)
    if ("target" in spec) == ("targets" in spec):
        raise where.problem(listed, name, field, "give exactly one of target, targets")
    if "target" in spec:
        targets = [_text(where, spec, "target", f"{field}.target", missing=(listed, name))]
    else:
        listed = spec["targets"]
        if not isinstance(listed, list) or not listed or not all(isinstance(t, str) and t.strip() for t in listed):
            raise where.problem(spec, "targets", f"{field}.targets", "a non-empty list of targets (dc, dc/node or "
                                "dc/node/service)", value=True)
        targets = list(dict.fromkeys(t.strip() for t in listed))
    service = _text(where, spec, "service", f"{field}.service")
    batch = spec.get("batch")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise where.problem(spec, "batch", f"{field}.batch", "a whole number, at least 1", value=True)
    return ReleaseSpec(source, branch, app, builder, registry, engine, tuple(targets), service,
                       int(batch) if batch is not None else None), targets[0]


def read_config(path: Path) -> dict[str, Hook]:
    from deployer.config.yamlread import parse_yaml

    where = _Where(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServeConfigError(f"{path}: cannot read the serve config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ServeConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = parse_yaml(text, str(path))
    except ConfigError as exc:
        raise ServeConfigError(f"{exc.path}:{exc.line or 1}: (top): not YAML: {exc.message}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ServeConfigError(f"{path}:1: (top): must be a mapping with 'hooks'")
    unknown = sorted(set(data) - {"hooks"}, key=str)
    if unknown:
        raise where.problem(data, unknown[0], str(unknown[0]), "unknown key (the serve config holds 'hooks')")
    listed = data.get("hooks") or {}
    if not isinstance(listed, dict):
        raise where.problem(data, "hooks", "hooks", "a mapping of hook names to hooks", value=True)
    hooks: dict[str, Hook] = {}
    for name, spec in listed.items():
        field = f"hooks.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise where.problem(listed, name, field, "a hook name is 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(spec, dict):
            raise where.problem(listed, name, field, "must be a mapping with target, image, secret or secret_file")
        action = spec.get("action", "deploy")
        if action not in ACTIONS:
            raise where.problem(spec, "action", f"{field}.action", f"unknown action {action!r} (deploy or release)",
                                value=True)
        allowed = RELEASE_KEYS if action == "release" else DEPLOY_KEYS
        extra = sorted(set(spec) - allowed, key=str)
        if extra:
            hint = " (a release hook builds its image: no image key)" if extra[0] == "image" else ""
            raise where.problem(spec, extra[0], f"{field}.{extra[0]}", f"unknown key for action {action}{hint}")
        release = None
        if action == "release":
            release, target = _release_spec(where, listed, name, spec, field)
            image = ""
        else:
            for key in ("target", "image"):
                if key not in spec:
                    raise where.problem(listed, name, f"{field}.{key}", "required (a string)")
                if not isinstance(spec[key], str) or not spec[key].strip():
                    raise where.problem(spec, key, f"{field}.{key}", "required (a string)", value=True)
            try:
                ImageRef.parse(spec["image"])
            except Exception as exc:  # noqa: BLE001
                raise where.problem(spec, "image", f"{field}.image", str(exc), value=True) from None
            target, image = spec["target"].strip(), spec["image"].strip()
        if ("secret" in spec) == ("secret_file" in spec):
            raise where.problem(listed, name, field, "give exactly one of secret, secret_file")
        if "secret" in spec:
            secret = str(spec["secret"]).encode()
        else:
            try:
                secret = Path(str(spec["secret_file"])).read_bytes().strip()
            except OSError as exc:
                raise where.problem(spec, "secret_file", f"{field}.secret_file",
                                    f"cannot read {spec['secret_file']}: {exc.strerror}", value=True) from None
        if len(secret) < 16:
            raise where.problem(spec, "secret" if "secret" in spec else "secret_file", field,
                                "the secret must be at least 16 bytes")
        hooks[name] = Hook(name, target, image, secret, action, release)
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
