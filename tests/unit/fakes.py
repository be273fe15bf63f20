"""A fake Docker engine for the fast tier, serving JSON a real engine returned.

:class:`FakeDockerClient` stands in for ``docker.DockerClient`` where the
engine is only read: ``deployer.engine.state`` (``read_node``,
``read_container``, ``image_id``) runs against it unchanged. It answers exactly
the docker-py calls that code makes, with the engine's own answers captured by
``tests/support/capture_engine_fixtures.py`` into ``tests/unit/fixtures/engine/``:

* ``client.api.containers(all=...)``: the list as the engine gave it
  (``containers.json``), running ones only without ``all``;
* ``client.api.inspect_container(id | name | prefix | {"Id": ...})``;
* ``client.api.inspect_image(tag | id | id prefix)``;
* ``client.images.get(ref)`` (``.id``, ``.tags``, ``.attrs``);
* misses raise what docker-py raises: ``docker.errors.NotFound`` /
  ``ImageNotFound`` carrying a 404 response (``status_code == 404``);
* any other argument or method is an error (AttributeError / TypeError), so a
  new call in ``state.py`` shows up as a failing test instead of a silent guess.

Tests change the engine through :meth:`FakeDockerClient.vanish` (a container
removed between the list and its inspect), :meth:`FakeDockerClient.tag` and
:meth:`FakeDockerClient.edit`; ``client.calls`` records each call.

The wanted side, ``wanted_specs``, builds container specs from compose text
through the repository loader and the compose spec builder: the one place the
fast tier's helpers import ``container_spec`` (and ``node_resources``, which
the capture script takes from here).
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import docker
import requests
from ruamel.yaml import YAML

# The one import of the compose spec builder in the fast tier's helpers (the capture script takes it from
# here too): when compose.py is split, this line follows container_spec and node_resources.
from deployer.config.compose_spec import container_spec, node_resources  # noqa: F401 - node_resources: for the capture
from deployer.config.loader import load
from deployer.spec import ContainerSpec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "engine"
DC, NODE = "dc1", "n1"  # the node the fixtures were captured as


# --------------------------------------------------------------------------
# the captured JSON


@lru_cache(maxsize=None)
def _read(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def fixture(name: str) -> Any:
    """A fresh copy of one fixture file's JSON (``containers.json``, ``container.n1-web.json`` ...)."""
    return copy.deepcopy(_read(name))


def capture_info() -> dict[str, Any]:
    """``capture.json``: engine version, the tags' image ids at capture time, the retag's old id."""
    return fixture("capture.json")


def compose_text() -> str:
    """The compose file deployed as dc1/n1 before the capture."""
    return (FIXTURES / "compose.yml").read_text()


def compose_doc() -> dict[str, Any]:
    """``compose_text()`` as plain data, to edit and pass to ``wanted_specs``."""
    return YAML(typ="safe").load(compose_text())


# --------------------------------------------------------------------------
# errors as docker-py raises them


def _response(status: int, message: str) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.reason = "Not Found" if status == 404 else "Error"
    resp._content = json.dumps({"message": message}).encode()
    resp.headers["Content-Type"] = "application/json"
    return resp


def _not_found(cls: type, url: str, message: str) -> Exception:
    resp = _response(404, message)
    return cls(f"404 Client Error for http+docker://localhost{url}: Not Found ({message})",
               response=resp, explanation=message)


# --------------------------------------------------------------------------
# the client


class FakeImage:
    """What ``client.images.get`` returns, as far as the deployer reads it."""

    def __init__(self, attrs: dict[str, Any]):
        self.attrs = attrs

    @property
    def id(self) -> str:
        return self.attrs["Id"]

    @property
    def short_id(self) -> str:
        return self.id[:19] if self.id.startswith("sha256:") else self.id[:12]

    @property
    def tags(self) -> list[str]:
        return [t for t in (self.attrs.get("RepoTags") or []) if t != "<none>:<none>"]

    def __repr__(self) -> str:
        return f"<FakeImage: {', '.join(self.tags) or self.short_id}>"


class FakeImages:
    def __init__(self, client: "FakeDockerClient"):
        self._client = client

    def get(self, name: str) -> FakeImage:
        self._client.calls.append(("images.get", name))
        return FakeImage(self._client._image(name))


class FakeAPIClient:
    """The low-level calls (``client.api``)."""

    def __init__(self, client: "FakeDockerClient"):
        self._client = client

    def containers(self, *, all: bool = False) -> list[dict[str, Any]]:  # docker-py: containers(quiet, all, ...)
        self._client.calls.append(("containers", {"all": all}))
        listed = self._client._listed
        return copy.deepcopy([c for c in listed if all or c.get("State") == "running"])

    def inspect_container(self, container: str | dict[str, Any]) -> dict[str, Any]:
        ident = container["Id"] if isinstance(container, dict) else container
        self._client.calls.append(("inspect_container", ident))
        return copy.deepcopy(self._client._container(ident))

    def inspect_image(self, image: str) -> dict[str, Any]:
        self._client.calls.append(("inspect_image", image))
        return copy.deepcopy(self._client._image(image))


class FakeDockerClient:
    """A read-only engine holding the captured containers and images (see the module docstring)."""

    def __init__(self, containers: list[dict[str, Any]] | None = None,
                 inspected: dict[str, dict[str, Any]] | None = None,
                 images: list[dict[str, Any]] | None = None):
        self._listed = fixture("containers.json") if containers is None else containers
        if inspected is None:
            inspected = {}
            for summary in self._listed:
                info = fixture(f"container.{summary['Names'][0].lstrip('/')}.json")
                inspected[info["Id"]] = info
        self._inspected = inspected  # by id
        self._images = {i["Id"]: i for i in (fixture("images.json") if images is None else images)}
        self._tags = {t: i["Id"] for i in self._images.values() for t in (i.get("RepoTags") or [])}
        self.calls: list[tuple[str, Any]] = []
        self.api = FakeAPIClient(self)
        self.images = FakeImages(self)
        self.closed = False

    def close(self) -> None:
        self.closed = True

    # -- changing the engine -----------------------------------------------------

    def vanish(self, name: str) -> None:
        """The container is removed after the list was read: still listed, its inspect says 404."""
        del self._inspected[self._container(name)["Id"]]

    def tag(self, ref: str, image_id: str) -> None:
        """Point ``ref`` at another (captured) image, as a rebuild or pull would."""
        old = self._tags.get(ref)
        if old:
            self._images[old]["RepoTags"] = [t for t in self._images[old].get("RepoTags") or [] if t != ref]
        self._images[image_id].setdefault("RepoTags", []).append(ref)
        self._tags[ref] = image_id

    def edit(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Change a container's inspect JSON in place (``change(info)``); the list entry follows Labels and State."""
        info = self._container(name)
        change(info)
        for summary in self._listed:
            if summary["Id"] == info["Id"]:
                summary["Labels"] = dict(info["Config"].get("Labels") or {})
                summary["State"] = info["State"]["Status"]

    # -- lookups as the engine does them -------------------------------------------

    def _container(self, ident: str) -> dict[str, Any]:
        for info in self._inspected.values():
            if info["Name"].lstrip("/") == ident.lstrip("/") or info["Id"] == ident:
                return info
        found = [i for i in self._inspected.values() if i["Id"].startswith(ident)] if ident else []
        if len(found) == 1:
            return found[0]
        raise _not_found(docker.errors.NotFound, f"/v1.41/containers/{ident}/json", f"No such container: {ident}")

    def _image(self, ref: str) -> dict[str, Any]:
        wanted = ref
        last = ref.rsplit("/", 1)[-1]
        if not ref.startswith("sha256:") and ":" not in last and "@" not in ref:
            wanted = f"{ref}:latest"
        if wanted in self._tags:
            return self._images[self._tags[wanted]]
        bare = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        found = [i for i in self._images.values() if bare and i["Id"][len("sha256:"):].startswith(bare)]
        if len(found) == 1 and (ref.startswith("sha256:") or len(bare) >= 12):
            return found[0]
        raise _not_found(docker.errors.ImageNotFound, f"/v1.41/images/{ref}/json", f"No such image: {ref}")


# --------------------------------------------------------------------------
# the wanted side


def _dump(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    yaml.dump(doc, out)
    return out.getvalue()


def wanted_specs(compose: str | dict[str, Any] | None = None, *, dc: str = DC, node: str = NODE,
                 environ: dict[str, str] | None = None) -> dict[str, ContainerSpec]:
    """The container spec of every service of ``compose`` (text or plain data; default: the fixture's
    compose), built as a deploy does: a repository on disk, loaded and validated, then ``container_spec``."""
    text = compose_text() if compose is None else compose if isinstance(compose, str) else _dump(compose)
    with tempfile.TemporaryDirectory(prefix="unit-repo-") as tmp:
        root = Path(tmp)
        node_dir = root / "datacenters" / dc / node
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text("docker: unix:///var/run/docker.sock\n")
        (node_dir / "docker-compose.yml").write_text(text)
        loaded = load(root).node(dc, node)
        return {name: container_spec(loaded, svc, root, environ=environ or {}) for name, svc in loaded.services.items()}


class FakeNodeLocks:
    """ops.locks.NodeLocks without Consul or an engine: records the nodes locked, in order; ``held_by`` makes
    taking them fail as a lock another deployer holds would."""

    events: list[str] = []
    held_by: Exception | None = None

    def __init__(self, root, infra, nodes, *, wait=0, consul=True, command=None, progress=None, parallel=None):
        self.nodes = sorted(n.target for n in nodes)
        self.root = root
        self.id = "lock-id-1"

    def __enter__(self):
        if FakeNodeLocks.held_by is not None:
            raise FakeNodeLocks.held_by
        FakeNodeLocks.events.append("lock " + " ".join(self.nodes))
        return self

    def __exit__(self, *exc):
        FakeNodeLocks.events.append("release " + " ".join(self.nodes))

    def problem(self, node):
        return None

    def guard(self, node):
        return lambda: FakeNodeLocks.events.append(f"guard {node.target}")

    def session(self, node, timeout=None):
        """The node's session for the command (the real one hands out the one its lock was taken over): the
        engine session the test put in ``ops.deploy``, as a command without locks would make."""
        from deployer.ops import deploy

        return deploy.EngineSession(node, self.root)
