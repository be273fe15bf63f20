"""``ops.targets.selection``: which services of which nodes a list of targets covers, without walking the
whole repository once per node (a datacenter target at 10,000 nodes did)."""

from __future__ import annotations

import pytest

from deployer.config import loader
from deployer.model import Infrastructure
from deployer.ops.targets import selection

COMPOSE = """\
services:
  web:
    image: example/web:1
  api:
    image: example/api:1
  db:
    image: example/db:1
"""


@pytest.fixture
def infra(tmp_path):
    root = tmp_path / "infra"
    for dc, nodes in (("dc1", ("n2", "n1", "n3")), ("dc2", ("m1", "m2"))):
        for n in nodes:
            (root / f"datacenters/{dc}/{n}").mkdir(parents=True)
            (root / f"datacenters/{dc}/{n}/node.yml").write_text("docker: unix:///nonexistent.sock\n")
            if n != "n3":  # a node without a compose file: selected, no services
                (root / f"datacenters/{dc}/{n}/docker-compose.yml").write_text(COMPOSE)
    return loader.load(root)


def _as_names(picked):
    return [(node.target, [s.name for s in services], whole) for node, services, whole in picked]


def _by_walking(infra: Infrastructure, targets):
    """What the selection means, written the slow way: every service of the repository per target."""
    picked: dict[str, tuple] = {}
    for text in targets:
        resolved = infra.resolve(text)
        for node in infra.select_nodes(resolved):
            entry = picked.setdefault(node.target, (node, {}, False))
            entry[1].update({s.name: s for s in infra.select(resolved) if s.node == node.name and s.dc == node.dc})
            picked[node.target] = (node, entry[1], entry[2] or resolved.service is None)
    order = [n.target for n in infra.nodes()]
    return [(t, sorted(picked[t][1]), picked[t][2]) for t in order if t in picked]


@pytest.mark.parametrize("targets", [
    ["dc1"], ["dc2", "dc1"], ["dc1/n1"], ["dc1/n1/api"], ["dc1/n1/api", "dc1/n1/web"], ["dc1/n1/api", "dc1/n1"],
    ["dc1/n1", "dc1/n1/api"], ["dc1", "dc1/n2/db"], ["m2"], ["dc1/n3"], ["dc2/m1/db", "dc1/n2/web", "dc2"],
])
def test_the_selection_is_what_walking_every_service_gives(infra, targets):
    assert _as_names(selection(infra, targets)) == _by_walking(infra, targets)


def test_no_target_selects_every_node_whole_in_order(infra):
    assert _as_names(selection(infra, None)) == [
        ("dc1/n1", ["api", "db", "web"], True), ("dc1/n2", ["api", "db", "web"], True), ("dc1/n3", [], True),
        ("dc2/m1", ["api", "db", "web"], True), ("dc2/m2", ["api", "db", "web"], True)]


def test_a_datacenter_target_reads_each_node_s_services_not_the_whole_repository(infra, monkeypatch):
    def walked(self):
        raise AssertionError("selection walked every service of the repository")

    monkeypatch.setattr(Infrastructure, "services", walked)
    monkeypatch.setattr(Infrastructure, "select", walked)
    assert [t for t, _, _ in _as_names(selection(infra, ["dc1", "dc2/m1/web"]))] == ["dc1/n1", "dc1/n2", "dc1/n3",
                                                                                       "dc2/m1"]
