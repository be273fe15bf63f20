"""The engine lock and the command's work on a node share the node's one engine session (one connection).

A real engine; the connections are counted where the session makes them
(``engine.session.connect``, wrapped, not replaced: every call reaches the engine).
"""

from __future__ import annotations

from contextlib import closing

import pytest

from deployer.engine import session as session_mod
from deployer.labels import LABEL_LOCK_ID
from tests.support.repos import WEB_NO_HEALTH, cli, git, make_repo, managed, remove_node_containers, unique_node

WEB1, WEB2 = "deployer-test/web:1", "deployer-test/web:2"
WEB = WEB_NO_HEALTH


@pytest.fixture
def two_nodes(engine, tmp_path):
    names = [unique_node(), unique_node()]
    root, _ = make_repo(tmp_path / "infra", engine.unix_url, WEB.format(image=WEB1), node=names[0],
                        extra_files={f"datacenters/test/{names[1]}/node.yml": f"docker: {engine.unix_url}\n",
                                     f"datacenters/test/{names[1]}/docker-compose.yml": WEB.format(image=WEB1)})
    yield root, names
    with closing(engine.client()) as client:
        for n in names:
            remove_node_containers(client, n)


def _count_connections(monkeypatch):
    """Each connection the sessions open: [node target, closed?] (closing is recorded on the real client)."""
    made: list[list] = []
    real = session_mod.connect

    def counting(node, root, timeout=30):
        client = real(node, root, timeout=timeout)
        entry = [node.target, False]
        made.append(entry)
        close = client.close

        def closing_client():
            entry[1] = True
            close()

        client.close = closing_client
        return client

    monkeypatch.setattr(session_mod, "connect", counting)
    return made


def test_apply_under_engine_locks_connects_once_per_node_and_closes_every_connection(engine, two_nodes,
                                                                                      monkeypatch):
    root, names = two_nodes
    done = cli(root, "apply", "--no-consul", "--settle", "0.2")
    assert done.exit_code == 0, done.output
    for n in names:
        (root / f"datacenters/test/{n}/docker-compose.yml").write_text(WEB.format(image=WEB2))
    git(root, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "web 2")

    made = _count_connections(monkeypatch)
    done = cli(root, "apply", "--no-consul", "--settle", "0.2")
    assert done.exit_code == 0, done.output
    # the lock was taken over the session's connection, and the apply worked over it: one per node
    assert sorted(t for t, _ in made) == sorted(f"test/{n}" for n in names)
    assert all(closed for _, closed in made), made  # closed once the locks were released
    with closing(engine.client()) as client:
        for n in names:  # switched, by this locked command (its lock id on the new container)
            running = [c for c in managed(client, n) if c.status == "running"]
            assert [c.labels["deployer.image"] for c in running] == [WEB2]
            assert running[0].labels.get(LABEL_LOCK_ID)
        assert not [c for c in client.api.containers(all=True, filters={"label": "deployer.lock=1"})
                    if any(n in (c.get("Names") or [""])[0] for n in names)]  # the locks are released


def test_a_node_whose_engine_url_changed_with_the_pull_gets_a_session_of_its_own(engine, two_nodes, tmp_path):
    from deployer.config import loader
    from deployer.ops.locks import NodeLocks

    root, names = two_nodes
    infra = loader.load(root)
    node = infra.node("test", names[0])
    with NodeLocks(root, infra, [node], consul=False) as locks:
        held = locks.session(node)
        assert held is locks.sessions[node.target] and held.client is not None
        assert locks.held[node.target].client is held.client  # the lock works over the session's connection
        with held as session:  # entered: the state is read now, under the lock, over the lock's connection
            assert session.state is not None
        assert held.client is not None  # leaving the block keeps it open for the lock
        moved = type(node)(**{**node.__dict__, "docker": "unix:///nonexistent/docker.sock"})
        other = locks.session(moved)
        assert other is not held and other.client is None
        with pytest.raises(RuntimeError, match="in use"):
            with held:
                with held:
                    pass
    assert held.client is None  # closed after the lock was released
