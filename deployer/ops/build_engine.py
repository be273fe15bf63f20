"""The engine builds run on, and the builder images on it (``deployer builders ls|build``).

Which engine: ``--engine URL`` (or ``DOCKER_HOST``) when given, else the ``builder:`` of the
datacenter the command works for (``datacenter.yml``, ``config.builder_engine``), else the local
socket. Any engine will do: the source goes there as an archive (``build.transfer``).

* ``unix:///path`` — a local socket;
* ``ssh://[user@]host[:port]`` — through ``engine.connect`` (paramiko; the host key checked
  strictly against ``~/.ssh/known_hosts``, or the datacenter's ``builder_known_hosts``);
* ``tcp://host:port`` — TLS when ``DOCKER_TLS_VERIFY`` is set, with ``ca.pem``, ``cert.pem`` and
  ``key.pem`` from ``DOCKER_CERT_PATH`` (default ``~/.docker``), as the docker CLI reads them;
  plain TCP otherwise; a datacenter's builder has its own ``tls:`` files.

Builder images on an engine that lacks them are made on the *images engine* (``--builders-from``:
the local socket by default, where Debian's mirror and mmdebstrap are) and moved over the API
(``docker save | docker load``, streamed); ``--builders-from here`` makes them on the build engine
itself, which must then reach Debian's mirror.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import docker

from deployer.build import builders
from deployer.engine import connect as engine_connect
from deployer.errors import BuildError, HostError, TargetError
from deployer.model import Location, Node, TLSFiles

DEFAULT_DOCKER = "unix:///var/run/docker.sock"
HERE = "here"  # --builders-from here: make missing builder images on the build engine itself


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def build_client(url: str | None = None, timeout: float = 120, *, node: Node | None = None,
                 root: str | os.PathLike | None = None):
    """A client of the engine that builds: ``node`` (a datacenter's builder), else ``url``, else
    ``DOCKER_HOST``, else the local socket. It has answered a ping; ``client.api.deployer_url`` is
    the URL it was reached at. BuildError (one line) otherwise."""
    if node is not None:
        return _connect(node, Path(root or "."), timeout, f"build engine {node.docker} ({node.dc}'s datacenter.yml builder)")
    url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER
    if url.startswith(("ssh://", "tcp://")):
        return _connect(_url_node(url), Path.cwd(), timeout, f"build engine {url}")
    if not url.startswith(("unix://", "http://")):
        raise BuildError(f"build engine {url}: unsupported URL (unix:///path/docker.sock, ssh://[user@]host[:port] "
                         "or tcp://host:port)")
    if url.startswith("unix://") and not os.path.exists(url[len("unix://"):]):
        raise BuildError(f"build engine {url}: no such socket {url[len('unix://'):]}: is dockerd running? "
                         "(--engine URL or DOCKER_HOST names the engine)")
    client = None
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout)  # asks the engine its API version
        client.api.trust_env = False  # no proxy for the local engine
        client.api.ping()
    except Exception as exc:
        if client is not None:
            client.close()
        reason = _one_line(exc)
        for marker in ("No such file or directory", "Connection refused", "Permission denied", "timed out"):
            if marker in reason:
                reason = marker.lower()
                break
        raise BuildError(f"build engine {url}: cannot connect: {reason}") from None
    client.api.deployer_url = url
    return client


def _url_node(url: str) -> Node:
    """``--engine URL`` as the Node ``engine.connect`` reaches: docker's TLS environment for tcp://."""
    tls = None
    if url.startswith("tcp://") and os.environ.get("DOCKER_TLS_VERIFY"):
        certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
        tls = TLSFiles(ca=str(certs / "ca.pem"), cert=str(certs / "cert.pem"), key=str(certs / "key.pem"))
    return Node(dc="", name="", docker=url, path="", location=Location("--engine"), tls=tls)


def _connect(node: Node, root: Path, timeout: float, what: str):
    try:
        client = engine_connect.connect(node, root, timeout=timeout)
    except HostError as e:
        error = BuildError(f"{what}: {e.message}")
        error.exit_code = e.exit_code  # a bad TLS file is bad input, as for a node
        raise error from None
    client.api.deployer_url = node.docker
    return client


def datacenter_builder(infra, *, targets: Sequence[str] = (), dc: str | None = None) -> Node | None:
    """The ``builder:`` of the datacenter of ``dc`` or of the targets (one datacenter, or the same
    builder in each); None when they name none."""
    names = [dc] if dc else [t.split("/", 1)[0] for t in targets]
    found: dict[str, Node | None] = {}
    for name in names:
        datacenter = infra.datacenters.get(name) if infra is not None else None
        if datacenter is None:
            raise TargetError(f"unknown datacenter {name!r}")
        found[name] = datacenter.builder
    urls = {n: (b.docker if b is not None else None) for n, b in found.items()}
    if len(set(urls.values())) > 1:
        listed = ", ".join(f"{n}: {u or 'none'}" for n, u in sorted(urls.items()))
        raise TargetError(f"the targets' datacenters name different builders ({listed}); give --engine")
    return next(iter(found.values()), None)


def images_engine(spec: str | None, build_client_, timeout: float = 120):
    """The client missing builder images are made on, None for the build engine itself: ``here``; no
    ``spec`` and a ``unix://`` build engine (this machine); ``spec`` naming the build engine's URL.
    Otherwise ``spec``, or the local socket for an ``ssh://`` / ``tcp://`` build engine."""
    target_url = str(getattr(build_client_.api, "deployer_url", "") or "")
    if spec == HERE or (not spec and target_url.startswith("unix://")):
        return None
    url = spec or DEFAULT_DOCKER
    if url == target_url:
        return None
    try:
        return build_client(url, timeout)
    except BuildError as e:
        raise BuildError(f"builder images for {target_url} are made on {url} (--builders-from) and moved: "
                         f"{e.one_line()}") from None


class ImagesFrom:
    """``--builders-from``, connected only when a builder image is missing (``builders.ensure_builder_image``
    calls it then), so a warm remote build never needs the images engine."""

    def __init__(self, spec: str | None, build_client_):
        self.spec = spec
        self.target = build_client_
        self._client = None
        self._resolved = False

    def __call__(self):
        if not self._resolved:
            self._client = images_engine(self.spec, self.target)
            self._resolved = True
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# --------------------------------------------------------------------------- deployer builders ls / build


@dataclass
class BuilderImage:
    tech: str
    ref: str  # repository:tag
    image_id: str
    size: int
    created: str
    current: bool  # the tag is builders/<tech>'s content hash now
    expected: str  # builders/<tech>'s ref now ("" when builders/ has no such technology)

    def to_json(self) -> dict:
        return {"tech": self.tech, "ref": self.ref, "id": self.image_id, "size": self.size, "created": self.created,
                "current": self.current, "expected": self.expected}


def list_builder_images(client) -> list[BuilderImage]:
    """Every builder image on the engine (label ``deployer.builder``), each tag on its own row; and a row
    (``image_id`` empty) for each technology of builders/ whose current image is not there."""
    rows: list[BuilderImage] = []
    present: set[str] = set()
    known = builders.available_builders()
    expected = {tech: builders.builder_image_ref(tech) for tech in known}
    for image in client.images.list(filters={"label": "deployer.builder"}):
        tech = (image.labels or {}).get("deployer.builder", "")
        for tag in image.tags:
            if not tag.startswith(builders.BUILDER_REPOSITORY.format(tech=tech) + ":") or tag.endswith(":latest"):
                continue
            present.add(tag)
            rows.append(BuilderImage(tech=tech, ref=tag, image_id=image.id, size=int(image.attrs.get("Size") or 0),
                                     created=str(image.attrs.get("Created", ""))[:19],
                                     current=expected.get(tech) == tag, expected=expected.get(tech, "")))
    for tech, ref in expected.items():
        if ref not in present:
            rows.append(BuilderImage(tech=tech, ref=ref, image_id="", size=0, created="", current=False, expected=ref))
    return sorted(rows, key=lambda r: (r.tech, not r.current, r.ref))


@dataclass
class BuiltBuilder:
    tech: str
    ref: str
    status: str  # "present", "made" (built or moved here)
    seconds: float

    def to_json(self) -> dict:
        return {"tech": self.tech, "ref": self.ref, "status": self.status, "seconds": round(self.seconds, 3)}


def build_builder_images(client, techs: Sequence[str], *, images_from=None, progress=None) -> list[BuiltBuilder]:
    """Make each technology's current builder image on the engine (unless it is there): built there,
    or made on ``images_from`` and moved."""
    import time

    out = []
    for tech in techs:
        ref = builders.builder_image_ref(tech)  # UnknownBuilder for a technology builders/ lacks
        started = time.monotonic()
        present = builders.image_exists(client, ref)
        if not present:
            builders.ensure_builder_image(client, tech, progress, source=images_from)
        out.append(BuiltBuilder(tech, ref, "present" if present else "made", time.monotonic() - started))
    return out
