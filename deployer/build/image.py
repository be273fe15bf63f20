"""The image builder: an app's binaries -> a tagged, labelled, pushed image.

``build_image(client, source_dir, registry)`` builds the binaries (in the
builder container of ``build.builders``), then ``docker build``s the app's
Dockerfile with the binaries as its context, labels the image (OCI
``org.opencontainers.image.*``), tags it ``REGISTRY/APP:VERSION`` and pushes
it. VERSION comes from git (a tag on HEAD, else the short commit, ``-dirty``
for uncommitted changes, which are refused unless ``allow_dirty``), as
``gitrepo.source`` reads it. When the registry already holds that tag built
from the same revision, nothing is built.

The image's build context is the builder's output plus the Dockerfile (and a
``.dockerignore`` beside it) named by the app's ``deployer.yml``
(``dockerfile:``, default ``Dockerfile``): ``COPY sensor /sensor`` copies the
binary. The build argument ``BUILDER`` names the builder image that made
them: a Dockerfile saying ``ARG BUILDER`` / ``FROM ${BUILDER}`` runs the app on
the very toolchain it was built with (the Rails sample does: Ruby, Rails and
its gems are Debian packages in that image, and the layer is shared).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import requests

from deployer.build import registry as _registry
from deployer.build.builders import (
    AppConfig,
    BuildResult,
    Progress,
    build,
    cache_root,
    docker_build,
    emit,
    ensure_base_image,
    file_lock,
    first_error,
    load_app_config,
    lock_path,
)
from deployer.engine import registry_credentials
from deployer.errors import DirtySource, DockerfileMissing, PushFailed, RegistryAuthError, RegistryError, SourceError
from deployer.gitrepo.source import read_source

OCI = "org.opencontainers.image."

_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------- results


@dataclass
class ImageResult:
    ref: str
    image_id: str
    pushed: bool
    built: bool
    version: str = ""
    revision: str = ""
    digest: str = ""  # the registry's manifest digest (pushed, or found there)
    build: BuildResult | None = None
    build_seconds: float = 0.0  # binaries + docker build
    push_seconds: float = 0.0


@dataclass
class SourceInfo:
    path: Path
    version: str  # what images are tagged with
    revision: str  # full commit sha
    dirty: bool
    tag: str | None  # git tag on HEAD, if any
    changes: list[str] = field(default_factory=list)  # `git status --porcelain` lines
    url: str = ""  # origin's URL, else the repo's path


# --------------------------------------------------------------------------- version


def source_info(source_dir: str | os.PathLike) -> SourceInfo:
    """What git says about the source: version, full revision, dirty or not."""
    found = read_source(source_dir)  # SourceError: not a directory, not in git, no commit
    tag = found.tags[0] if found.tags else None
    version = _docker_tag(tag) if tag else found.revision[:12]
    if found.dirty:
        version = f"{version}-dirty"
    return SourceInfo(path=Path(source_dir).resolve(), version=version, revision=found.revision,
                      dirty=found.dirty, tag=tag, changes=list(found.changes), url=found.url)


def _docker_tag(text: str) -> str:
    tag = _TAG_BAD.sub("-", text).lstrip(".-")
    return tag[:128] or "untagged"


def source_version(source_dir: str | os.PathLike, allow_dirty: bool = False) -> str:
    """The git tag on HEAD, else the short commit; ``-dirty`` appended when the
    directory has uncommitted (or untracked) changes, which raise DirtySource
    unless ``allow_dirty``."""
    info = source_info(source_dir)
    if info.dirty and not allow_dirty:
        raise _dirty_error(source_dir, info)
    return info.version


def _dirty_error(source_dir: str | os.PathLike, info: SourceInfo) -> DirtySource:
    first = info.changes[0][3:] if info.changes else "?"
    more = f" and {len(info.changes) - 1} more" if len(info.changes) > 1 else ""
    return DirtySource(f"{source_dir}: uncommitted changes ({first}{more}); commit them or allow a dirty build")


# --------------------------------------------------------------------------- image


def image_ref(registry: str, name: str, version: str) -> str:
    _, host = _registry.split_registry_url(registry)
    return f"{host}/{name}:{version}"


def build_image(client, source_dir: str | os.PathLike, registry: str, allow_dirty: bool = False, *,
                builder: str | None = None, ca: str | os.PathLike | None = None, push: bool = True,
                progress: Progress | None = None, env: dict[str, str] | None = None,
                credentials_file: str | os.PathLike | None = None, images_from=None) -> ImageResult:
    """Binaries -> Docker image ``REGISTRY/APP:VERSION`` -> pushed.

    Skips everything when the registry already has that tag for this revision
    (``built=False``). Order: check Dockerfile and git first (cheap errors),
    compile, ``docker build`` untagged, tag only a successful build, push.
    A failed push raises PushFailed; the local tag stays (it points at a
    complete image) and ``PushFailed.image_id`` names it. Builds of the same
    source and version run one at a time (file lock), in any process.
    ``credentials_file``: the datacenter's registry credentials, looked at before the
    operator's Docker config (``engine.registry_credentials``), for the check and the push.
    ``client`` may be any engine (the source goes there as an archive); ``images_from``: where a
    builder image it lacks is made and moved from (``builders.ensure_builder_image``).
    """
    src = Path(source_dir)
    if not src.is_dir():
        raise SourceError(f"{source_dir}: not a directory")
    app = load_app_config(src)
    if not app.dockerfile.is_file():
        raise DockerfileMissing(str(app.dockerfile), "no Dockerfile: the image builder needs one for the app")
    info = source_info(src)
    if info.dirty and not allow_dirty:
        raise _dirty_error(source_dir, info)
    if credentials_file:  # a file open to others (or unreadable) is refused before anything is built
        registry_credentials.read_datacenter_file(credentials_file)
    _, reg_host = _registry.split_registry_url(registry)
    repository = f"{reg_host}/{app.name}"
    ref = f"{repository}:{info.version}"

    with file_lock(lock_path("source", str(info.path), info.version)):
        if not info.dirty:
            existing = _existing(registry, app.name, info, ca, progress, credentials_file)
            if existing is not None:
                emit(progress, "image", {"status": f"{ref} is in the registry already (revision {info.revision[:12]})"})
                return ImageResult(ref=ref, image_id=existing["digest"], pushed=False, built=False,
                                   version=info.version, revision=info.revision,
                                   digest=existing.get("manifest_digest", ""))
            local = _local_image_for(client, ref, info.revision)
        else:
            local = None

        if local is not None:
            # Built before from this very commit (its push failed?): push, don't rebuild.
            emit(progress, "image", {"status": f"{ref} was built from {info.revision[:12]} already; pushing it"})
            out = ImageResult(ref=ref, image_id=local, pushed=False, built=False, version=info.version,
                              revision=info.revision)
        else:
            started = time.monotonic()
            artifacts = cache_root() / "artifacts" / app.name / info.version
            result = build(client, src, builder or app.builder, artifacts, env=env, progress=progress,
                           images_from=images_from)
            _prune_artifacts(artifacts.parent, keep=ARTIFACT_VERSIONS_KEPT)
            image_id = _build_app_image(client, app, info, result, ref, progress)
            build_seconds = time.monotonic() - started

            # Tag only now: the build is complete.
            client.api.tag(image_id, repository, info.version, force=True)
            out = ImageResult(ref=ref, image_id=image_id, pushed=False, built=True, version=info.version,
                              revision=info.revision, build=result, build_seconds=build_seconds)
        if push:
            started = time.monotonic()
            try:
                out.digest = push_image(client, ref, image_id=out.image_id, progress=progress,
                                        credentials_file=credentials_file)
            except PushFailed as e:
                raise PushFailed(ref, f"{e.message} (the image stays tagged here; running again pushes it without rebuilding)",
                                 image_id=out.image_id) from e
            out.push_seconds = time.monotonic() - started
            out.pushed = True
        return out


ARTIFACT_VERSIONS_KEPT = 5


def _prune_artifacts(app_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` version dirs of an app's artifacts; older ones
    are in their images already. Dirs touched in the last hour are never removed
    (another build may be using them)."""
    dirs = sorted((p for p in app_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    cutoff = time.time() - 3600
    for old in dirs[keep:]:
        if old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
            with contextlib.suppress(OSError):
                (app_dir / f".{old.name}.lock").unlink()


def _existing(registry: str, name: str, info: SourceInfo, ca, progress: Progress | None,
              credentials_file: str | os.PathLike | None = None) -> dict | None:
    try:
        found = _registry.image_config(registry, name, info.version, ca=ca, credentials_file=credentials_file)
    except RegistryAuthError:
        raise  # refused credentials (or none, or no token server) would fail the push too: say so before building
    except RegistryError as e:
        # Can't tell: build anyway; the push will say whether the registry is really gone.
        emit(progress, "image", {"status": f"cannot check the registry ({e.one_line()}); building"})
        return None
    if found is None:
        return None
    if found["labels"].get(OCI + "revision") != info.revision:
        emit(progress, "image", {"status": f"{name}:{info.version} in the registry is from another revision; rebuilding"})
        return None
    return found


def _local_image_for(client, ref: str, revision: str) -> str | None:
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    if (image.labels or {}).get(OCI + "revision") != revision:
        return None
    return image.id


def _build_app_image(client, app: AppConfig, info: SourceInfo, result: BuildResult, ref: str,
                     progress: Progress | None) -> str:
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    labels = {
        OCI + "source": info.url,
        OCI + "revision": info.revision,
        OCI + "created": created,
        OCI + "version": info.version,
        OCI + "title": app.name,
        "deployer.builder": result.builder,
    }
    assert result.artifacts_dir is not None
    with tempfile.TemporaryDirectory(prefix="context-", dir=cache_root()) as tmp:
        ctx = Path(tmp)
        for binary in result.binaries:
            dest = ctx / binary.relative_to(result.artifacts_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(binary, dest)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(binary, dest)
        shutil.copyfile(app.dockerfile, ctx / "Dockerfile")
        dockerignore = app.dockerfile.parent / ".dockerignore"
        if dockerignore.is_file():
            shutil.copyfile(dockerignore, ctx / ".dockerignore")
        # BUILDER: the builder image that compiled the app, for a Dockerfile that runs on it (ARG BUILDER /
        # FROM ${BUILDER}: the Rails app runs on the Ruby and gems its assets were precompiled with). Only
        # to a Dockerfile that declares it: docker warns of a build argument that is not consumed.
        buildargs = {"BUILDER": result.builder_image} if _declares_arg(app.dockerfile, "BUILDER") else None
        # BASE: the local Debian base (builders/base), for a Dockerfile whose FROM uses it (ARG BASE before
        # the first FROM: the dashboard's nginx comes from Debian's packages on it, never from a registry).
        if "BASE" in global_build_args(app.dockerfile.read_text(encoding="utf-8", errors="replace")):
            buildargs = {**(buildargs or {}), "BASE": ensure_base_image(client, progress)}
        image_id, _ = docker_build(client, ctx, "Dockerfile", buildargs=buildargs, labels=labels, progress=progress,
                                    phase="image", what=f"image {ref}")
    return image_id


def _declares_arg(dockerfile: Path, name: str) -> bool:
    """Whether the Dockerfile has an ``ARG name`` (or ``ARG name=default``) instruction."""
    pattern = re.compile(rf"^\s*ARG\s+{re.escape(name)}(?:=|\s|$)", re.I | re.M)
    return bool(pattern.search(dockerfile.read_text(errors="replace")))


def global_build_args(dockerfile: str) -> list[str]:
    """The names a Dockerfile declares with ``ARG`` before its first ``FROM`` (the ones ``FROM`` may use)."""
    names: list[str] = []
    logical = ""
    for raw in dockerfile.splitlines():
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue  # blank lines and comments (a comment inside a continuation is kept out too)
        if logical and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        words = logical.split()
        logical = ""
        if not words:
            continue
        keyword = words[0].upper()
        if keyword == "FROM":
            break
        if keyword == "ARG":
            names.extend(w.split("=", 1)[0] for w in words[1:])
    return names


def push_image(client, ref: str, image_id: str = "", progress: Progress | None = None,
               credentials_file: str | os.PathLike | None = None) -> str:
    """Push ``ref``; return the manifest digest the registry reported. Raises PushFailed.

    The engine is handed the registry's credentials (``auth_config``, the datacenter's
    file first, then the operator's Docker config); none found: the engine pushes anonymously."""
    repository, tag = ref.rsplit(":", 1)
    host = _registry.split_registry_url(ref.split("/", 1)[0])[1]
    found = registry_credentials.lookup(host, credentials_file)
    auth_config = found.auth_config() if found is not None else None
    digest = ""
    try:
        for event in client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth_config):
            emit(progress, "push", event)
            if "error" in event:
                detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                raise PushFailed(ref, first_error(detail), image_id=image_id)
            aux = event.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
    except docker.errors.APIError as e:
        raise PushFailed(ref, first_error(str(e.explanation or e)), image_id=image_id) from e
    except requests.exceptions.RequestException as e:
        raise PushFailed(ref, f"lost the Docker engine while pushing: {first_error(str(e))}", image_id=image_id) from e
    if not digest:
        raise PushFailed(ref, "the engine did not report a digest: push incomplete", image_id=image_id)
    return digest
