"""Builder containers: compiling an app, one image per technology.

``build(client, source_dir)`` compiles an app in a *builder container*, one
image per technology (``builders/<tech>/``: go, python, rails, js), all made locally
FROM a Debian base that ``builders/base/make-base.sh`` bootstraps with
mmdebstrap (no registry is needed anywhere). The builder container gets
a named volume per builder (``deployer-cache-<tech>``, on the build engine) at
``/cache``, so warm builds reuse the compiler cache. The source reaches the
builder container as a tar archive over the engine's API (``build.transfer``:
the app's ``.deployerignore``/``.dockerignore`` excludes, a size limit) into
``/src``, and ``/out`` comes back the same way into a staging directory, which
replaces ``artifacts_dir`` only when the builder succeeded: nothing
half-written is ever left there. So the engine may be local or remote
(``ssh://``, ``tcp://``). Turning the binaries into a pushed image is
``build.image``'s job.

An app directory may hold a ``deployer.yml``::

    name: sensor          # image name; default: the directory name
    builder: go           # default: detected (go.mod, pyproject.toml, ...)
    dockerfile: Dockerfile  # relative to the app directory
    source_limit: 100m    # the most source sent to the build engine (a size)

Builder and base images are content-addressed: editing ``builders/go/`` gives
a new ``deployer-builder-go:<hash>`` on the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import docker.errors
import requests
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from deployer.build import transfer
from deployer.errors import (BadValue, BuildEngineLost, BuildFailed, ConfigError, DeployerError, SourceError,
                             UnknownBuilder)
from deployer.values import parse_bytes

Progress = Callable[[str, dict], None]
"""``progress(phase, event)``: phase is "base", "builder", "build", "image" or
"push"; event is docker's own JSON message (``stream``, ``status``, ``id``,
``progressDetail``, ``aux``...) or ``{"status": text}``."""

BASE_REPOSITORY = "deployer-base"
BUILDER_REPOSITORY = "deployer-builder-{tech}"
CACHE_VOLUME = "deployer-cache-{tech}"
APP_CONFIG = "deployer.yml"
APP_KEYS = ("name", "builder", "dockerfile", "source_limit")
DEFAULT_BUILD_TIMEOUT = 1800


# detect_builder: first match wins; "A + B" needs both files.
MARKERS: list[tuple[str, str]] = [
    ("go.mod", "go"),
    ("pyproject.toml", "python"),
    ("setup.cfg", "python"),
    ("setup.py", "python"),
    ("Gemfile + config/application.rb", "rails"),
    ("package.json", "js"),  # only with a "build" script: the js builder runs `npm run build`
]

_NAME_OK = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


# --------------------------------------------------------------------------- results


@dataclass
class BuildResult:
    binaries: list[Path]
    seconds: float
    logs: str
    builder: str = ""
    builder_image: str = ""
    artifacts_dir: Path | None = None
    cache_volume: str = ""
    source_files: int = 0  # files sent to the build engine
    source_bytes: int = 0  # the archive's size


@dataclass
class AppConfig:
    name: str
    builder: str | None
    dockerfile: Path
    path: Path
    source_limit: int = transfer.DEFAULT_SOURCE_LIMIT
    source_limit_set: bool = False  # written in deployer.yml


# --------------------------------------------------------------------------- paths and locks


def builders_dir() -> Path:
    """``builders/`` of this checkout; ``DEPLOYER_BUILDERS_DIR`` overrides it."""
    env = os.environ.get("DEPLOYER_BUILDERS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "builders"


def cache_root() -> Path:
    """Artifacts and locks: ``DEPLOYER_CACHE_DIR``, else ``$XDG_CACHE_HOME/deployer``."""
    env = os.environ.get("DEPLOYER_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "deployer"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock; excludes other processes and other threads alike
    (each ``open`` is its own open file description)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_path(kind: str, *parts: str) -> Path:
    """The lock file of one ``kind`` of work on ``parts`` (an image on an engine, a source at a version)."""
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return cache_root() / "locks" / f"{kind}-{key}.lock"


def emit(progress: Progress | None, phase: str, event: dict) -> None:
    """Hand ``event`` to ``progress``, if there is one."""
    if progress is not None:
        progress(phase, event)


# --------------------------------------------------------------------------- app config, detection


def load_app_config(source_dir: str | os.PathLike) -> AppConfig:
    src = Path(source_dir)
    if not src.is_dir():
        raise SourceError(f"{source_dir}: not a directory")
    cfg_path = src / APP_CONFIG
    data: dict[str, Any] = {}
    if cfg_path.is_file():
        try:
            loaded = YAML(typ="safe").load(cfg_path.read_text())
        except YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(str(cfg_path), f"not valid YAML: {getattr(e, 'problem', e)}",
                              line=mark.line + 1 if mark else None) from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(str(cfg_path), "must be a mapping (name, builder, dockerfile)")
        unknown = sorted(set(loaded) - set(APP_KEYS))
        if unknown:
            raise ConfigError(str(cfg_path), f"unknown key (known: {', '.join(APP_KEYS)})", field=str(unknown[0]))
        for key in ("name", "builder", "dockerfile"):
            if key in loaded and not isinstance(loaded[key], str):
                raise ConfigError(str(cfg_path), "must be a string", field=key)
        data = loaded
    limit, limit_set = transfer.DEFAULT_SOURCE_LIMIT, "source_limit" in data
    if limit_set:
        try:
            limit = parse_bytes(data["source_limit"])
        except BadValue as e:
            raise ConfigError(str(cfg_path), str(e), field="source_limit") from None
    name = data.get("name")
    if name is not None:
        if not _NAME_OK.match(name):
            raise ConfigError(str(cfg_path), f"{name!r} is not a valid image name (lowercase letters, digits, . _ -)",
                              field="name")
    else:
        name = _image_name_from_dir(src)
    dockerfile = src / data.get("dockerfile", "Dockerfile")
    return AppConfig(name=name, builder=data.get("builder"), dockerfile=dockerfile, path=cfg_path,
                     source_limit=limit, source_limit_set=limit_set)


def _image_name_from_dir(src: Path) -> str:
    base = src.resolve().name.lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", base)
    name = re.sub(r"[._-]*([._-])[._-]*", r"\1", name).strip("._-")
    if not name:
        raise SourceError(f"{src}: cannot make an image name from the directory name; set 'name' in {APP_CONFIG}")
    return name


def available_builders() -> list[str]:
    d = builders_dir()
    return sorted(p.name for p in d.iterdir() if (p / "Dockerfile").is_file()) if d.is_dir() else []


def detect_builder(source_dir: str | os.PathLike) -> str:
    """``go``, ``python``, ``rails`` or ``js``: from ``deployer.yml`` if it says, else the marker files
    (a ``package.json`` counts only with a ``build`` script)."""
    src = Path(source_dir)
    if not src.is_dir():
        raise SourceError(f"{source_dir}: not a directory")
    cfg = load_app_config(src)
    if cfg.builder:
        return cfg.builder
    unbuildable = ""
    for marker, tech in MARKERS:
        if all((src / name).is_file() for name in marker.split(" + ")):
            if marker == "package.json" and "build" not in npm_scripts(src / marker):
                unbuildable = (f"; {marker} has no \"build\" script (the js builder runs `npm run build`, "
                               "e.g. \"webpack --mode production\")")
                continue
            return tech
    names = ", ".join(m for m, _ in MARKERS)
    raise UnknownBuilder(f"{source_dir}: none of {names}{unbuildable}: cannot tell which builder to use "
                         f"(set 'builder' in {APP_CONFIG})")


def npm_scripts(package_json: Path) -> dict[str, str]:
    """The ``scripts`` of a ``package.json`` (names to commands); ConfigError if it is not a JSON object."""
    try:
        data = json.loads(package_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(str(package_json), f"not valid JSON: {e.msg}", line=e.lineno) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(package_json), f"cannot read it: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(str(package_json), "must be a JSON object")
    scripts = data.get("scripts") or {}
    if not isinstance(scripts, dict):
        raise ConfigError(str(package_json), "must be an object of script names to commands", field="scripts")
    return {k: v for k, v in scripts.items() if isinstance(v, str)}


# --------------------------------------------------------------------------- images


def _image_exists(client, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


image_exists = _image_exists


def _digest_files(h: "hashlib._Hash", root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(b"x\0" if p.stat().st_mode & 0o111 else b"-\0")  # git keeps only the exec bit
            h.update(p.read_bytes() + b"\0")


def base_image_ref() -> str:
    h = hashlib.sha256()
    _digest_files(h, builders_dir() / "base")
    return f"{BASE_REPOSITORY}:bookworm-{h.hexdigest()[:12]}"


def builder_image_ref(tech: str) -> str:
    d = builders_dir() / tech
    if not (d / "Dockerfile").is_file():
        known = ", ".join(available_builders()) or "none"
        raise UnknownBuilder(f"no builder for {tech!r}: {d}/Dockerfile does not exist (builders: {known})")
    h = hashlib.sha256(base_image_ref().encode() + b"\0")
    _digest_files(h, d)
    return f"{BUILDER_REPOSITORY.format(tech=tech)}:{h.hexdigest()[:12]}"


def _engine_key(client) -> str:
    try:
        return str(client.info().get("ID") or client.api.base_url)
    except Exception:
        return str(client.api.base_url)


def ensure_base_image(client, progress: Progress | None = None) -> str:
    """The Debian base image (``make-base.sh`` piped into the engine); made if missing."""
    ref = base_image_ref()
    if _image_exists(client, ref):
        return ref
    with file_lock(lock_path("image", ref, _engine_key(client))):
        if _image_exists(client, ref):
            return ref
        script = builders_dir() / "base" / "make-base.sh"
        emit(progress, "base", {"status": f"bootstrapping {ref} with mmdebstrap"})
        cache_root().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="base-", dir=cache_root()) as tmp:
            tar = Path(tmp) / "rootfs.tar"
            r = subprocess.run([str(script), "--output", str(tar)], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildFailed(f"base image {ref}: {script.name} failed (exit {r.returncode}): {first_error(r.stderr)}",
                                  output=r.stderr, exit_status=r.returncode)
            repo, tag = ref.split(":", 1)
            client.api.import_image_from_file(
                str(tar), repository=repo, tag=tag,
                changes=[
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "ENV LANG=C.UTF-8",
                    'CMD ["/bin/bash"]',
                ],
            )
        if not _image_exists(client, ref):
            raise BuildFailed(f"base image {ref}: docker import reported success but the image is missing")
        client.api.tag(ref, BASE_REPOSITORY, "bookworm", force=True)
        emit(progress, "base", {"status": f"made {ref}"})
    return ref


def ensure_builder_image(client, tech: str, progress: Progress | None = None, *, source=None) -> str:
    """The builder image for ``tech`` from ``builders/<tech>/`` (and the base); built if missing.

    ``source``: another engine's client, or a callable giving one or None (where Debian's mirror is
    reachable): a missing image is made there (if missing there too) and moved here over the API
    (``docker save | docker load``, streamed), the same content-addressed tag on both."""
    ref = builder_image_ref(tech)
    if _image_exists(client, ref):
        return ref
    with file_lock(lock_path("image", ref, _engine_key(client))):
        if _image_exists(client, ref):
            return ref
        if callable(source):  # connected only now that an image is missing
            source = source()
        if source is not None:
            ensure_builder_image(source, tech, progress)
            emit(progress, "builder", {"status": f"moving {ref} from {engine_url(source)} to {engine_url(client)}"})
            transfer.move_image(source, client, ref)
            if not _image_exists(client, ref):
                raise BuildFailed(f"builder image {ref}: loaded into {engine_url(client)} but missing there")
            repo = ref.split(":", 1)[0]
            client.api.tag(ref, repo, "latest", force=True)
            return ref
        base = ensure_base_image(client, progress)
        emit(progress, "builder", {"status": f"building {ref} FROM {base}"})
        image_id, output = docker_build(
            client, builders_dir() / tech, "Dockerfile", buildargs={"BASE": base}, labels={"deployer.builder": tech},
            progress=progress, phase="builder", what=f"builder image {ref}",
        )
        repo, tag = ref.split(":", 1)
        client.api.tag(image_id, repo, tag, force=True)
        client.api.tag(image_id, repo, "latest", force=True)
    return ref


def docker_build(client, context: Path, dockerfile: str, *, buildargs: dict | None = None, labels: dict | None = None,
                  progress: Progress | None, phase: str, what: str) -> tuple[str, str]:
    """``docker build`` without a tag; returns (image id, output). Raises BuildFailed."""
    lines: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context), dockerfile=dockerfile, buildargs=buildargs, labels=labels, rm=True, forcerm=True,
            pull=False, decode=True, timeout=DEFAULT_BUILD_TIMEOUT,
        )
        for event in stream:
            emit(progress, phase, event)
            if "stream" in event:
                lines.append(event["stream"])
                m = re.match(r"Successfully built ([0-9a-f]+)", event["stream"])
                if m and not image_id:
                    image_id = m.group(1)
            if "aux" in event and isinstance(event["aux"], dict) and event["aux"].get("ID"):
                image_id = event["aux"]["ID"]
            if "error" in event:
                detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                lines.append(detail + "\n")
                output = "".join(lines)
                raise BuildFailed(f"{what}: docker build failed: {first_error(detail)}", output=output)
    except docker.errors.APIError as e:
        output = "".join(lines)
        raise BuildFailed(f"{what}: docker build failed: {first_error(str(e.explanation or e))}", output=output) from e
    if not image_id:
        raise BuildFailed(f"{what}: docker build gave no image ID", output="".join(lines))
    return image_id, "".join(lines)


def first_error(text: str, limit: int = 200) -> str:
    """The first line worth showing from compiler/tool output: skips go's '# package' headers."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        return line if len(line) <= limit else line[: limit - 3] + "..."
    return "no error output"


# --------------------------------------------------------------------------- build


def _ensure_volume(client, name: str, tech: str) -> None:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name=name, labels={"deployer.cache": tech})


def build(client, source_dir: str | os.PathLike, builder: str | None = None,
          artifacts_dir: str | os.PathLike | None = None, *, cache_volume: str | None = None,
          env: dict[str, str] | None = None, timeout: float = DEFAULT_BUILD_TIMEOUT,
          progress: Progress | None = None, images_from=None) -> BuildResult:
    """Compile ``source_dir`` in its builder container on ``client``'s engine; return the binaries.

    The source goes there as an archive (SourceTooLarge before anything is
    sent when it is over the app's ``source_limit``), ``/out`` comes back as
    one. ``artifacts_dir`` (default ``<cache>/artifacts/<app>``) is replaced as
    a whole, and only on success. ``seconds`` is the builder container's run
    (archive in and out included), without the time making a missing builder
    image takes. A failing compiler raises BuildFailed with its stderr in
    ``.output``; an engine that stops answering, BuildEngineLost.
    ``images_from``: another engine's client where a missing builder image is
    made and moved from (``ensure_builder_image``).
    """
    src = Path(source_dir)
    if not src.is_dir():
        raise SourceError(f"{source_dir}: not a directory")
    src = src.resolve()
    app = load_app_config(src)
    tech = builder or detect_builder(src)
    bundle = host_ca_bundle()
    extra = {CONTAINER_CA_BUNDLE.lstrip("/"): Path(bundle).read_bytes()} if bundle else None
    archive = transfer.pack_source(src, app.source_limit, extra=extra,
                                   limit_from=f" ({app.path.name} source_limit)" if app.source_limit_set else "")
    try:
        image = ensure_builder_image(client, tech, progress, source=images_from)
        volume = cache_volume or CACHE_VOLUME.format(tech=tech)
        _ensure_volume(client, volume, tech)

        if artifacts_dir is None:
            artifacts_dir = cache_root() / "artifacts" / app.name
        out = Path(artifacts_dir).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            started = time.monotonic()
            code, stdout, stderr = _run_builder(client, image, tech, src, archive, staging, volume, env,
                                                bool(bundle), timeout, progress)
            seconds = time.monotonic() - started
            logs = stdout + stderr
            if code != 0:
                raise BuildFailed(
                    f"{tech} build of {source_dir} failed (exit {code}): {first_error(stderr or stdout)}",
                    output=stderr or stdout, exit_status=code,
                )
            produced = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
            if not produced:
                raise BuildFailed(f"{tech} build of {source_dir} produced no files", output=logs, exit_status=code)
            _replace_dir(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        archive.close()
    return BuildResult(binaries=[out / p for p in produced], seconds=seconds, logs=logs, builder=tech,
                       builder_image=image, artifacts_dir=out, cache_volume=volume,
                       source_files=archive.files, source_bytes=archive.archive_bytes)


CONTAINER_CA_BUNDLE = "/etc/ssl/deployer-host-ca.crt"
CA_ENV = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
WAIT_POLL = 2.0  # seconds a wait for the builder lasts before the engine is asked whether it is still there
PING_TIMEOUT = 5.0  # seconds the engine has to answer that


def host_ca_bundle() -> str | None:
    """The CA bundle this machine's tools use (``SSL_CERT_FILE``, else Debian's),
    handed to builder containers; ``DEPLOYER_BUILDER_CA=none`` turns that off."""
    choice = os.environ.get("DEPLOYER_BUILDER_CA")
    if choice == "none":
        return None
    for candidate in (choice, os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return None


def engine_url(client) -> str:
    """The URL the engine was reached at (``ops.build_engine`` notes it), else what docker-py says."""
    url = getattr(client.api, "deployer_url", None)
    if url:
        return str(url)
    socket_path = getattr(getattr(client.api, "_custom_adapter", None), "socket_path", None)
    return f"unix://{socket_path}" if socket_path else str(client.api.base_url)


def _bounded(fn, seconds: float):
    """``fn()`` in a daemon thread, waited for at most ``seconds``: (finished, result, exception).
    A transport that blocks past its own timeouts (paramiko waits for a channel's exec reply with
    none) cannot hold the build up; a call still blocked is left to its thread."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="deployer-engine-call")
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("result"), box.get("error")


def engine_answers(client, timeout: float | None = None) -> bool:
    """Whether the engine answers a ping within ``timeout`` seconds (default PING_TIMEOUT; a hard bound,
    whatever the transport)."""
    timeout = PING_TIMEOUT if timeout is None else timeout
    done, response, error = _bounded(lambda: client.api._get(client.api._url("/_ping"), timeout=timeout), timeout + 1)
    return done and error is None and getattr(response, "status_code", None) == 200


def _lost(client, tech: str, src: Path, doing: str, exc: BaseException | None = None) -> BuildEngineLost:
    why = f": {first_error(str(exc))}" if exc is not None else ""
    return BuildEngineLost(f"{tech} build of {src}: lost the build engine {engine_url(client)} while {doing}{why}; "
                           "nothing was tagged")


def _run_builder(client, image: str, tech: str, src: Path, archive: transfer.SourceArchive, staging: Path,
                 volume: str, env: dict[str, str] | None, with_bundle: bool, timeout: float,
                 progress: Progress | None) -> tuple[int, str, str]:
    environment = {"OUT_UID": str(os.getuid()), "OUT_GID": str(os.getgid())}
    if with_bundle:
        # Builders fetch dependencies over HTTPS (PyPI, npm, a Go proxy): they
        # trust what this machine trusts, e.g. a local proxy's CA (sent in the archive).
        environment.update({k: CONTAINER_CA_BUNDLE for k in CA_ENV})
    environment.update(env or {})
    emit(progress, "build", {"status": f"running {image} on {src} at {engine_url(client)} "
                                       f"({archive.files} files, {archive.archive_bytes / 1024:.0f} KiB sent)"})
    lost = False
    container = None
    try:
        _remove_exited_builders(client)
        container = client.containers.create(
            image,
            volumes={volume: {"bind": "/cache", "mode": "rw"}},
            environment=environment,
            labels={"deployer.role": "builder", "deployer.builder": tech, "deployer.source": str(src)},
        )
        if not container.put_archive("/", archive.file):
            raise BuildFailed(f"{tech} build of {src}: the engine refused the source archive")
        container.start()
        status = _wait(client, container, tech, src, timeout)
        code = int(status.get("StatusCode", 1))
        stdout = _logs(container, stdout=True)
        stderr = _logs(container, stderr=True)
        for line in (stdout + stderr).splitlines():
            emit(progress, "build", {"stream": line + "\n"})
        if code == 0:
            chunks, _ = container.get_archive("/out")
            transfer.unpack_out(chunks, staging)
        return code, stdout, stderr
    except BuildEngineLost:
        lost = True
        raise
    except (DeployerError, docker.errors.APIError):
        raise
    except Exception as e:  # noqa: BLE001 - the transport failing: requests, urllib3, paramiko, a socket
        lost = not engine_answers(client)
        if lost:
            raise _lost(client, tech, src, "building", e) from None
        raise
    finally:
        if container is not None and not lost:
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                container.remove(force=True)


def _remove_exited_builders(client) -> None:
    """Builder containers a lost build left behind (it could not remove them), once they have exited."""
    # ignore_removed: another build's clean-up may remove one between the engine's list and its inspect
    for old in client.containers.list(all=True, filters={"label": "deployer.role=builder", "status": "exited"},
                                      ignore_removed=True):
        with contextlib.suppress(docker.errors.APIError):
            old.remove(force=True)


def _wait(client, container, tech: str, src: Path, timeout: float) -> dict:
    """The builder's exit status; asks the engine every WAIT_POLL seconds whether it is still there."""
    deadline = time.monotonic() + timeout
    while True:
        poll = min(WAIT_POLL, max(0.1, deadline - time.monotonic()))
        done, status, error = _bounded(lambda: container.wait(timeout=poll), poll + PING_TIMEOUT)
        if done and error is None:
            return status
        if isinstance(error, docker.errors.APIError):
            raise error
        # else a read timeout, the transport failing (requests, urllib3, paramiko) or blocked: ask the engine
        if not engine_answers(client):
            raise _lost(client, tech, src, "the builder ran")
        if time.monotonic() >= deadline:
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
            raise BuildFailed(f"{tech} build of {src} timed out after {timeout:g}s",
                              output=_logs(container, stderr=True))


def _logs(container, stdout: bool = False, stderr: bool = False) -> str:
    return container.logs(stdout=stdout, stderr=stderr).decode("utf-8", "replace")


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an older ``target`` is moved aside first and removed after."""
    with file_lock(target.parent / f".{target.name}.lock"):
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{threading.get_ident()}"
            os.rename(target, old)
        try:
            os.rename(new, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
