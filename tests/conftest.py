"""Shared fixtures: real Docker engines and an isolated environment per test.

Fixtures
--------
``fleet`` (session)
    A :class:`tests.support.engines.Fleet`: a host bridge, Docker nodes in
    network namespaces. Torn down at session end (and at exit as a fallback).
``engine`` (session)
    The fleet's node ``engine``: a plain unix-socket Docker host
    (``engine.unix_url``, ``engine.client()``) holding
    ``deployer-test/busybox:base`` and ``deployer-test/web:1``, ``:2``, ``:3``
    (bodies "v1", "v2", "v3"), ``:exits`` (exits 3 at once) and ``:sick`` (no
    /www/index.html, so a ``test -f /www/index.html`` healthcheck fails).
    Shared by the whole session: tests remove what they create.
``remote_engine`` (session)
    The fleet's node ``remote``, reachable over SSH (``remote.ssh_url``) and
    TLS (``remote.tls_url``, ``remote.tls_dir``) as well as its unix socket,
    with the same images. Started only when a test asks for it.
``clean_engine`` (function)
    ``engine`` with all containers, user networks and volumes removed before
    and after the test.
``git_env`` (function, autouse)
    An isolated environment for every test, returned as the new $HOME (a
    Path): ``HOME`` and ``XDG_CONFIG_HOME`` point into a fresh temp dir whose
    ``.gitconfig`` has a user and ``init.defaultBranch = main``;
    ``GIT_CONFIG_NOSYSTEM=1``; ``GIT_AUTHOR_NAME/EMAIL`` and
    ``GIT_COMMITTER_NAME/EMAIL`` set; other ``GIT_*``, ``DOCKER_*`` and
    ``SSH_AUTH_SOCK`` removed.

    Careful, SSH: docker-py over SSH (paramiko, ``use_ssh_client=False``)
    reads ``$HOME/.ssh/config`` and ``$HOME/.ssh/known_hosts``, so moving HOME
    would cut tests off from the SSH nodes. git_env therefore writes, into the
    new ``$HOME/.ssh``, a known_hosts line (``[10.X.0.N]:2222 ssh-ed25519 ...``)
    and a ``Host 10.X.0.N`` block with ``IdentityFile`` for every SSH node
    running at the start of the test; nodes added during the test are written
    there by ``add_node`` itself (it recognises the test home through
    ``DEPLOYER_TEST_HOME``). The OpenSSH client (``use_ssh_client=True``)
    ignores $HOME and will not see these files.

Nothing is skipped: without root or dockerd, the fleet fixtures fail with the
reason and the install command.

Parallel: the suite runs on pytest-xdist workers (tests/support/parallel.py,
docs/testing.md), so "session" here means one worker's session: each worker
that runs an engine test starts its own fleet and ``engine`` node. Everything
a fixture starts must be unique per worker (random tags, ephemeral ports,
tmp_path); see the rule in tests/support/parallel.py.
"""

from __future__ import annotations

from contextlib import closing

import os
import signal
from pathlib import Path

import pytest

from tests.support.engines import TEST_HOME_ENV, Fleet, FleetError, live_ssh_nodes, preflight
from tests.support.images import build_standard_images, copy_image

# A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and so would
# every deployer the tests start: Ctrl-C tests (logs -f, exec) would wait forever for an exit that an
# ignored signal never brings. Take SIGINT back, so children start with it at its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The consul_agent fixture lives with the code that starts Consul, the browser fixture with the browser's;
# how the suite is spread over xdist workers (and the rule for new tests) is in tests/support/parallel.py.
pytest_plugins = ("tests.support.consul", "tests.support.browser", "tests.support.parallel")

GIT_NAME = "Test Operator"
GIT_EMAIL = "operator@example.com"


@pytest.fixture(scope="session")
def fleet():
    problems = preflight()
    if problems:
        pytest.fail("real Docker engines are required for this test:\n  " + "\n  ".join(problems),
                    pytrace=False)
    fleet = Fleet()
    try:
        try:
            fleet.start()
        except FleetError as e:
            pytest.fail(str(e), pytrace=False)
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="session")
def engine(fleet):
    node = fleet.add_node("engine")
    with closing(node.client()) as client:
        build_standard_images(client)
    return node


@pytest.fixture(scope="session")
def remote_engine(fleet, engine):
    node = fleet.add_node("remote", ssh=True, tls=True)
    with closing(engine.client()) as src, closing(node.client()) as dst:
        copy_image(src, dst, *[t for i in src.images.list() for t in i.tags
                               if t.startswith("deployer-test/")])
    return node


@pytest.fixture
def clean_engine(engine):
    engine.reset()
    yield engine
    engine.reset()


@pytest.fixture(autouse=True)
def git_env(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    for var in list(os.environ):
        if var.startswith(("GIT_", "DOCKER_")) or var in ("EMAIL", "SSH_AUTH_SOCK"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", GIT_NAME)
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", GIT_EMAIL)
    monkeypatch.setenv("GIT_COMMITTER_NAME", GIT_NAME)
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", GIT_EMAIL)
    monkeypatch.setenv(TEST_HOME_ENV, str(home))
    (home / ".gitconfig").write_text(
        f"[user]\n\tname = {GIT_NAME}\n\temail = {GIT_EMAIL}\n[init]\n\tdefaultBranch = main\n")
    for node in live_ssh_nodes():
        node.trust_ssh(home)
    return home
