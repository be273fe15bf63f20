"""Fixtures shared by the build tests (tests/engines/test_build.py, tests/engines/test_release.py).

A pytest plugin: a test module that says ``pytest_plugins = ["tests.support.build_fixtures"]``
gets these fixtures, and every module that does shares one instance of the
session-scoped ones, so the private dockerd, the TLS registry and the slow
content-addressed images (base about 45 s, Go builder about 45 s on 2 cores)
are made once per session, whichever of those modules runs first.

``build_engine`` (session)
    A dockerd in its own network namespace (tests/support/build_engine.py).
``registry_server`` (session) / ``registry`` (function)
    A TLS registry on that engine's bridge, trusted through
    /etc/docker/certs.d; ``registry`` resumes it (a test may have paused it)
    and returns its HOST:PORT.
``cache_dir`` (session)
    ``DEPLOYER_CACHE_DIR`` for the session (artifacts, locks, checkouts).
``client`` (session)
    A docker client of ``build_engine``.
``go_builder`` (session)
    ``(ref, timings)`` of the Go builder image (and the base under it).
``node`` (function)
    A fresh node name; its containers on ``build_engine`` are removed after the test.

And the build tests' source repositories: ``source_repo`` (a git repository of an
example app), ``commit``, ``break_main`` / ``fix_main`` (the worker's compile error).

``DEPLOYER_TEST_IMAGE_CACHE=DIR`` keeps ``docker save`` tarballs of the base
and builder images between runs and loads them instead of making them.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from deployer.build import builders as B
from tests.support.repos import git, remove_node_containers, unique_node

APPS = Path(__file__).resolve().parents[2] / "examples" / "apps"

NEEDED = ["dockerd", "mmdebstrap", "docker-registry", "openssl", "ip", "iptables", "nsenter", "git"]
IMAGE_CACHE = os.environ.get("DEPLOYER_TEST_IMAGE_CACHE")  # opt-in: docker-save'd builder images


def report(capsys, text: str) -> None:
    """Print a measured figure beside the test's name (through pytest's capture), as the build tests do."""
    with capsys.disabled():
        print(f"\n    {text}", end="")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, dockerd)"
    absent = [t for t in NEEDED if shutil.which(t) is None]
    if absent:
        return f"missing {', '.join(absent)}: run scripts/install-builders.sh"
    return None


def image(client, ref: str, make) -> str:
    from tests.support.build_engine import load_or_make_image

    return load_or_make_image(client, ref, make, IMAGE_CACHE)


@pytest.fixture(scope="session")
def build_engine():
    reason = missing()
    if reason:  # like the rest of the suite: fail with the reason, never skip
        pytest.fail(f"build tests: {reason}", pytrace=False)
    from tests.support.build_engine import BuildEngine
    from tests.support.registry import RegistryServer

    # A run killed with SIGKILL leaves its engine behind; the next one removes it.
    RegistryServer.sweep_stale()
    BuildEngine.sweep_stale()
    engine = BuildEngine()
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def registry_server(build_engine):
    from tests.support.registry import RegistryServer

    server = RegistryServer(build_engine.bridge_ip)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("deployer-cache")
    old = os.environ.get("DEPLOYER_CACHE_DIR")
    os.environ["DEPLOYER_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("DEPLOYER_CACHE_DIR", None)
        else:
            os.environ["DEPLOYER_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def client(build_engine, cache_dir):
    c = build_engine.client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def go_builder(client):
    timings = {}
    t = time.monotonic()
    image(client, B.base_image_ref(), B.ensure_base_image)
    timings["base"] = time.monotonic() - t
    t = time.monotonic()
    ref = image(client, B.builder_image_ref("go"), lambda c: B.ensure_builder_image(c, "go"))
    timings["go builder"] = time.monotonic() - t
    return ref, timings


@pytest.fixture
def registry(registry_server):
    registry_server.resume()  # a test that paused it may have failed midway
    return registry_server.address


@pytest.fixture
def node(client):
    name = unique_node()
    yield name
    remove_node_containers(client, name)


def source_repo(parent: Path, app: str = "worker") -> Path:
    """A git repository holding a copy of the example app ``app`` at its top, named as the app (the image
    name), without what a build leaves in the example's folder (node_modules, dist)."""
    src = parent / app
    shutil.copytree(APPS / app, src, ignore=shutil.ignore_patterns("node_modules", "dist"))
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", f"{app}: initial")
    return src


def commit(src: Path, note: str) -> str:
    """A commit that changes the source (a NOTES file); its sha."""
    (src / "NOTES").write_text(note + "\n")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", note)
    return git(src, "rev-parse", "HEAD")


def break_main(src: Path) -> str:
    """The worker's main.go with a compile error, committed; its sha."""
    main = src / "main.go"
    main.write_text(main.read_text().replace('"square": n * n})', '"square": n * n}'))
    git(src, "commit", "-q", "-am", "worker: a compile error")
    return git(src, "rev-parse", "HEAD")


def fix_main(src: Path) -> str:
    """``break_main`` undone, committed; its sha."""
    main = src / "main.go"
    main.write_text(main.read_text().replace('"square": n * n}\n', '"square": n * n})\n'))
    git(src, "commit", "-q", "-am", "worker: fixed")
    return git(src, "rev-parse", "HEAD")
