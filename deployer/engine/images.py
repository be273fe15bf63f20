"""The images on one engine: list them, remove one (what ``prune`` does on a node).

Which images go is decided elsewhere (``engine.image_plan``, pure); this module
only reads the engine's image list and removes what it is told, never by force:
an engine that refuses (a container started on the image meanwhile) keeps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.engine.connect import import_docker
from deployer.engine.image_plan import ImageInfo, image_from_summary

if TYPE_CHECKING:  # pragma: no cover
    import docker as docker_module

docker = import_docker()  # without docker-py's SSH support until an ssh:// node needs it (engine.connect)


def list_images(client: "docker_module.DockerClient") -> list[ImageInfo]:
    """Every image of the engine (``docker images -a``: the intermediate ones too, for the ancestry)."""
    return [image_from_summary(s) for s in client.api.images(all=True)]


def remove_image(client: "docker_module.DockerClient", image: ImageInfo) -> str | None:
    """Remove ``image``: each of its references, then the image itself, never forced.

    None when it is gone (or was already); otherwise the engine's reason for keeping it
    (a conflict: a container uses it, or an image was built on it meanwhile).
    """
    api = client.api
    for ref in (*image.references, image.id):
        try:
            answer = api.remove_image(ref, force=False, noprune=False)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if getattr(exc, "status_code", None) == 409:
                return " ".join(str(exc.explanation or exc).split())
            raise
        if any(entry.get("Deleted") == image.id for entry in answer or ()):
            return None  # the last reference took the image with it
    return None
