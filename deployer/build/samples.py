"""Tiny sample images, built on the local engine without any registry.

``FROM scratch`` plus Debian's static busybox: each image serves
``<name> <version>`` over HTTP on port 80 with busybox httpd. They stand in
for the talk's sensor, worker and app in the demo and the examples, so a new
user can deploy something on a machine that cannot pull images.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path
from typing import Callable

import docker

from deployer.errors import DeployerError

BUSYBOX = Path("/bin/busybox")
BASE_TAG = "deployer-example/busybox:1"
SAMPLES = {
    "hello": ["1", "2"],
    "sensor": ["1.0"],
    "worker": ["1.4", "1.5", "1.6"],
    "app": ["1.0"],
}


def _tar(files: dict[str, tuple[bytes, int]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _build(client: docker.DockerClient, tag: str, files: dict[str, tuple[bytes, int]]) -> str:
    try:
        image, _ = client.images.build(fileobj=_tar(files), custom_context=True, tag=tag, rm=True,
                                       network_mode="none")
    except docker.errors.BuildError as exc:
        log = "".join(chunk.get("stream", "") for chunk in exc.build_log if isinstance(chunk, dict))
        raise DeployerError(f"building sample image {tag} failed: {exc.msg}; {' '.join(log.split())[-300:]}") from None
    return image.id


def build_base(client: docker.DockerClient) -> str:
    if not BUSYBOX.exists():
        raise DeployerError(f"{BUSYBOX} is missing: install Debian's busybox-static to build the sample images")
    dockerfile = (b'FROM scratch\nCOPY busybox /bin/busybox\n'
                  b'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
    return _build(client, BASE_TAG, {"Dockerfile": (dockerfile, 0o644), "busybox": (BUSYBOX.read_bytes(), 0o755)})


def build_sample(client: docker.DockerClient, name: str, version: str) -> str:
    body = f"{name} {version}\n".encode()
    dockerfile = (f"FROM {BASE_TAG}\nCOPY index.html /www/index.html\nEXPOSE 80\n"
                  f'LABEL org.opencontainers.image.title="{name}" org.opencontainers.image.version="{version}"\n'
                  'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]\n').encode()
    return _build(client, f"{name}:{version}", {"Dockerfile": (dockerfile, 0o644), "index.html": (body, 0o644)})


def build_all(client: docker.DockerClient, progress: Callable[[str], None] | None = None) -> list[str]:
    """Build the base and every sample image; returns the tags."""
    progress = progress or (lambda msg: None)
    progress("building the sample images on the local engine")
    build_base(client)
    tags = []
    for name, versions in SAMPLES.items():
        for version in versions:
            build_sample(client, name, version)
            tags.append(f"{name}:{version}")
    return tags


def main(argv: list[str] | None = None) -> int:
    """``python -m deployer.build.samples [DOCKER_URL]``: build the sample images (``deployer init`` points here)."""
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=url)
    except docker.errors.DockerException as exc:
        print(f"error: the Docker engine at {url} did not answer: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    try:
        for tag in build_all(client, progress=lambda msg: print(msg, file=sys.stderr)):
            print(tag)
    except (DeployerError, docker.errors.DockerException) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
