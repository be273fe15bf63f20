"""Tiny test images, built locally with docker-py (no registry needed).

* ``build_busybox_base``: ``FROM scratch`` + Debian's static ``/bin/busybox``
  with its applets installed as symlinks in /bin (2 MB).
* ``build_web_image``: busybox ``httpd -f -p 80 -h /www`` serving
  ``/www/index.html`` (= ``body``). The server runs under a shell that exits 0
  on SIGTERM, so ``docker stop`` is immediate (busybox httpd as PID 1 would
  ignore SIGTERM and wait out the grace period). A healthy image has
  ``HEALTH_FILE`` (/www/index.html); an unhealthy one keeps the body in
  /www/body.html instead, so the compose healthcheck ``HEALTHCHECK_TEST``
  (``test -f /www/index.html``) fails there. No HEALTHCHECK is
  baked into the image: compose files set it.
* ``copy_image``: docker save from one engine streamed into docker load on
  another, so a fleet can share images without a registry.

Builds use the classic builder; contexts are tarred with fixed metadata, so a
rebuild with the same inputs is a cache hit (same image ID).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

__all__ = [
    "BASE_TAG",
    "BUSYBOX",
    "HEALTHCHECK_TEST",
    "HEALTH_FILE",
    "WEB_PORT",
    "build_busybox_base",
    "build_image",
    "build_image_from_dir",
    "build_standard_images",
    "build_web_image",
    "copy_image",
    "STANDARD_WEB_IMAGES",
]

BASE_TAG = "deployer-test/busybox:base"
BUSYBOX = "/bin/busybox"
WEB_PORT = 80
HEALTH_FILE = "/www/index.html"
#: A compose healthcheck test that passes for healthy web images only.
HEALTHCHECK_TEST = ["CMD", "test", "-f", HEALTH_FILE]

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _context(dockerfile: str, files: dict[str, bytes | str | Path | int] | None = None) -> io.BytesIO:
    """An in-memory build context; names ending in '/' are directories (their
    value is ignored, or an int mode)."""
    buf = io.BytesIO()
    entries = {"Dockerfile": dockerfile, **(files or {})}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(entries):
            data = entries[name]
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                info.mode = data if isinstance(data, int) else 0o755
                tar.addfile(info)
                continue
            mode = 0o644
            if isinstance(data, Path):
                mode = 0o755 if os.access(data, os.X_OK) else 0o644
                data = data.read_bytes()
            elif isinstance(data, str):
                data = data.encode()
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_image(client, tag: str, dockerfile: str,
                files: dict[str, bytes | str | Path] | None = None, **kwargs):
    """Build from a Dockerfile text and in-memory files; returns the Image."""
    opts = dict(rm=True, forcerm=True, network_mode="none")
    opts.update(kwargs)
    image, _ = client.images.build(fileobj=_context(dockerfile, files), custom_context=True,
                                   tag=tag, **opts)
    return image


def build_busybox_base(client, tag: str = BASE_TAG):
    """FROM scratch + static busybox, applets installed in /bin."""
    if not os.access(BUSYBOX, os.X_OK):
        raise RuntimeError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    # few steps: each one of the classic builder costs a container commit
    dockerfile = "\n".join([
        "FROM scratch",
        "COPY rootfs/ /",
        f'RUN ["{BUSYBOX}", "--install", "-s", "/bin"]',
        'CMD ["/bin/sh"]',
    ]) + "\n"
    files = {
        "rootfs/": b"", "rootfs/bin/": b"", "rootfs/etc/": b"", "rootfs/root/": 0o700,
        "rootfs/tmp/": 0o1777, "rootfs/bin/busybox": Path(BUSYBOX),
        "rootfs/etc/passwd": _PASSWD, "rootfs/etc/group": _GROUP,
    }
    return build_image(client, tag, dockerfile, files)


def build_web_image(client, tag: str, body: str, healthy: bool = True, exits: bool = False,
                    base: str = BASE_TAG):
    """A busybox httpd on port 80 serving ``body`` at ``/``.

    healthy=False: no HEALTH_FILE in the image (HEALTHCHECK_TEST fails).
    exits=True: the container prints a line to stderr and exits 3 at once.
    """
    if exits:
        cmd = ('["/bin/sh", "-c", "echo web: starting; '
               'echo web: fatal: cannot start >&2; exit 3"]')
    else:
        cmd = ('["/bin/sh", "-c", "trap \'exit 0\' TERM INT; '
               'httpd -f -p 80 -h /www & wait"]')
    dockerfile = "\n".join([
        f"FROM {base}",
        "COPY www /www",
        f"EXPOSE {WEB_PORT}",
        f"CMD {cmd}",
    ]) + "\n"
    # the body is index.html; an unhealthy image keeps it elsewhere, so
    # HEALTHCHECK_TEST fails and GET / answers 404
    files: dict[str, bytes | str | Path | int] = {
        "www/": b"", ("www/index.html" if healthy else "www/body.html"): body}
    return build_image(client, tag, dockerfile, files)


#: What the ``engine`` fixture provides (tag -> build_web_image kwargs).
STANDARD_WEB_IMAGES: dict[str, dict] = {
    "deployer-test/web:1": dict(body="v1"),
    "deployer-test/web:2": dict(body="v2"),
    "deployer-test/web:3": dict(body="v3"),
    "deployer-test/web:exits": dict(body="exits", exits=True),
    "deployer-test/web:sick": dict(body="sick", healthy=False),
}


def build_standard_images(client) -> list[str]:
    """The base image plus STANDARD_WEB_IMAGES; returns all their tags."""
    build_busybox_base(client)
    for tag, kwargs in STANDARD_WEB_IMAGES.items():
        build_web_image(client, tag, **kwargs)
    return [BASE_TAG, *STANDARD_WEB_IMAGES]


def build_image_from_dir(client, path: str | os.PathLike, tag: str, **kwargs):
    """Build a directory holding a Dockerfile; returns the Image."""
    opts = dict(rm=True, forcerm=True)
    opts.update(kwargs)
    image, _ = client.images.build(path=str(path), tag=tag, **opts)
    return image


def copy_image(src_client, dst_client, *refs: str) -> None:
    """Copy images (by tag or ID) between engines: save streamed into load.
    Skips a ref the destination already has with the same ID."""
    for ref in refs:
        src_id = src_client.images.get(ref).id
        try:
            if dst_client.images.get(ref).id == src_id:
                continue
        except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
            pass
        dst_client.images.load(src_client.api.get_image(ref))
