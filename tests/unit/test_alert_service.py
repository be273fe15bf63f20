"""AlertService's own logic without Consul or an engine: fake health watches and a fake clock feed it; what it
sends, holds and publishes is checked (the engine tier runs it against a real Consul)."""

from __future__ import annotations

import pytest

from deployer.alerts.config import AlertsConfig
from deployer.alerts.health import LOST, UP
from deployer.alerts.service import AlertService
from deployer.discovery.catalog import Check


class FakeWatch:
    def __init__(self, address="127.0.0.1:8500", dcs=("dc1",)):
        self.address, self.dcs = address, dcs
        self.state, self.error, self.checks = UP, None, ()
        self.changed_at = 0.0

    def set(self, state, checks=(), error=None):
        self.state, self.checks, self.error = state, tuple(checks), error
        self.changed_at += 1

    def snapshot(self):
        return self.state, self.error, self.checks

    def stop(self):
        pass


def check(status, output="ok"):
    return Check(node="n1", check_id="service:web-1", name="web check", status=status, output=output,
                 service_id="web-1", service="web")


@pytest.fixture
def svc(tmp_path):
    node = tmp_path / "datacenters" / "dc1" / "n1"
    node.mkdir(parents=True)
    (node / "node.yml").write_text("docker: unix:///nowhere.sock\n")
    (node / "docker-compose.yml").write_text("services:\n  web:\n    image: web:1\n")
    clock = [0.0]
    s = AlertService(tmp_path, config=AlertsConfig(threshold=2.0), drift=False, health=False,
                     clock=lambda: clock[0])
    s.watches = [FakeWatch()]
    s.events = []
    s.subscribe(s.events.append)
    s.at = lambda t: (clock.__setitem__(0, t), s._step())
    yield s
    s.stop()


def texts(svc):
    return [a["text"] for a in svc.sent]


def test_health_changes_go_through_the_rules_and_health_events_are_published_on_change(svc):
    w = svc.watches[0]
    w.set(UP, [check("passing")])
    svc.at(0.0)
    svc.at(0.5)
    assert [e["type"] for e in svc.events] == ["health"] and svc.events[0]["state"] == "known"
    w.set(UP, [check("critical", "HTTP 503")])
    svc.at(1.0)
    svc.at(2.9)
    assert svc.sent == []
    svc.at(3.0)
    assert texts(svc) == ["dc1: service web is down: check 'web check' (web-1 on node n1) failing: HTTP 503"]
    assert svc.sent[0]["sent"] is True and [e["type"] for e in svc.events][-1] == "alert"


def test_while_consul_is_lost_the_checks_are_frozen_and_the_watcher_itself_is_announced(svc):
    w = svc.watches[0]
    w.set(UP, [check("critical")])
    svc.at(0.0)
    svc.at(2.0)
    assert len(svc.sent) == 1  # down
    w.set(LOST, error="Consul at 127.0.0.1:8500: health checks: connection refused")
    svc.at(3.0)
    assert svc.events[-1] == {**svc.events[-1], "type": "health", "state": "unknown", "checks": []}
    svc.at(5.0)
    assert texts(svc)[-1].startswith("alerts watcher lost Consul at 127.0.0.1:8500 (dc1): ")
    svc.at(30.0)
    assert len(svc.sent) == 2  # nothing from the checks nobody can read
    w.set(UP, [check("passing")])
    svc.at(31.0)
    svc.at(33.0)
    assert texts(svc)[2:] == ["alerts watcher is back on Consul at 127.0.0.1:8500 (dc1): health is known again",
                              "dc1: service web is back to normal: check 'web check' (web-1 on node n1) passing "
                              "(was critical for 31s)"]


def test_a_deregistered_check_is_forgotten_silently(svc):
    w = svc.watches[0]
    w.set(UP, [check("critical")])
    svc.at(0.0)
    svc.at(2.0)
    w.set(UP, [])
    svc.at(3.0)
    svc.at(10.0)
    assert len(svc.sent) == 1 and svc.rules.keys() == ["consul:127.0.0.1:8500"]


def test_deploy_events_are_announced_once(svc):
    event = {"type": "deploy", "ok": True, "job": "3", "targets": ["dc1/n1/web"], "image": "web:2",
             "commit": "abcdef0123456789", "who": "ci-bot", "reason": "r"}
    svc.publish(event)
    svc.publish(dict(event))
    svc.publish({"type": "alert", "text": "not for us"})
    assert texts(svc) == ["deploy of web:2 to dc1/n1/web succeeded (commit abcdef012345) by ci-bot: r"]


def test_a_follower_holds_its_alerts_and_sends_only_those_newer_than_the_last_leader_it_saw(svc, monkeypatch):
    import threading

    import deployer.discovery.consul_lock as consul_lock

    svc.leader, svc.election = True, "127.0.0.1:8500"
    svc.publish({"type": "deploy", "ok": True, "job": "1", "targets": ["t"], "image": "a"})
    assert svc.sent == [] and svc.events[-1]["sent"] is False and len(svc._held) == 1
    svc.leader_seen = svc._held[0]["t"] + 5  # a leader was alive after it: that one was sent
    svc.publish({"type": "deploy", "ok": True, "job": "2", "targets": ["t"], "image": "b"})
    svc._held[-1]["t"] = svc.leader_seen + 1  # and this one came after the leader was last seen
    leading = threading.Event()
    leading.set()  # work() returns at once
    monkeypatch.setattr(consul_lock, "lead", lambda catalog, name, stop, work, **kw: work(leading))
    svc.catalogs = {svc.election: None}
    svc._lead()  # becomes leader: what it held and no leader sent goes out
    assert texts(svc) == ["deploy of b to t succeeded"] and svc._held == [] and svc.leading is False


def test_the_last_leader_keeps_sending_while_consul_is_lost_and_a_follower_never_sends_lost(svc):
    svc.leader, svc.election = True, "127.0.0.1:8500"
    w = svc.watches[0]
    svc.was_last_leader = True  # it led until Consul went away (lead() could not renew)
    w.set(LOST, error="connection refused")
    svc.at(0.0)
    svc.at(2.0)
    assert texts(svc) == ["alerts watcher lost Consul at 127.0.0.1:8500 (dc1): connection refused; health is "
                          "unknown until it is back"]
    other = FakeWatch("127.0.0.1:8600", ("dc2",))
    svc.watches, svc.election, svc.was_last_leader = [other], other.address, False
    other.set(LOST, error="connection refused")
    svc.at(3.0)
    svc.at(5.0)
    assert len(svc.sent) == 1 and svc._held == []  # a follower: "lost" is the last leader's to send
    assert svc.events[-1]["kind"] == "consul" and svc.events[-1]["sent"] is False


def test_inside_serve_the_alerts_read_serves_one_health_watch_per_consul(tmp_path):
    """serve.live.HealthWake owns the Consul health watches; the AlertService serve starts takes those (no second
    set of blocking queries on the same health). Consul here is a closed loopback port: the watch is LOST."""
    import socket
    import time

    from deployer.serve.app import create_app
    from deployer.serve.state import ServeSettings, ServeState

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = tmp_path / "repo"
    for dc in ("dc1", "dc2"):  # two datacenters on one Consul: one watch
        node = repo / "datacenters" / dc / "n1"
        node.mkdir(parents=True)
        (repo / "datacenters" / dc / "datacenter.yml").write_text(f"consul: 127.0.0.1:{port}\n")
        (node / "node.yml").write_text("docker: unix:///nowhere.sock\n")
        (node / "docker-compose.yml").write_text("services:\n  web:\n    image: web:1\n")
    state = ServeState(ServeSettings(root=repo, tokens=tmp_path / "tokens.json", drift_interval=0))
    create_app(state)
    (alerts,) = [s for s in state.services if isinstance(s, AlertService)]
    assert state.services[0] is state.health
    state.health.start(state)
    alerts.start(state)
    try:
        assert len(state.health.watches) == 1 and alerts.watches == state.health.watches
        assert alerts.watches[0].dcs == ("dc1", "dc2") and not alerts.own_watches
        w = alerts.watches[0]
        deadline = time.monotonic() + 10
        while w.snapshot()[0] != LOST and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.snapshot()[0] == LOST  # "Consul lost" and health unknown come from this one watch
    finally:
        alerts.stop(timeout=2)
        state.health.stop()


def test_the_deploy_log_is_read_from_the_upstream_so_an_unpushed_commit_is_never_announced(tmp_path):
    """Only published commits are read (the branch's upstream): a local commit that a push's rebase would rewrite
    is not announced under its local sha; once pushed it is, once; serve's job event of the same commit first
    makes the log's entry silent."""
    import subprocess

    def git(cwd, *args):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    remote, clone = tmp_path / "remote.git", tmp_path / "clone"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(clone))
    node = clone / "datacenters" / "dc1" / "n1"
    node.mkdir(parents=True)
    (node / "node.yml").write_text("docker: unix:///nowhere.sock\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "initial")
    git(clone, "push", "-q", "origin", "HEAD:main")
    svc = AlertService(clone, config=AlertsConfig(), drift=False, health=False, locks=False)
    published = []
    svc.publish = lambda e: published.append(e) if e.get("source") == "deploy log" else None
    svc._broker_event({"type": "sync", "ok": True})  # serve's first pull: what is there is not announced

    def deploy_commit(n):
        git(clone, "commit", "-q", "--allow-empty", "-m", f"deploy dc1/n1/web: web:{n - 1} -> web:{n}\n\n"
            f"Deployer-Action: deploy\nDeployer-Target: dc1/n1/web\nDeployer-Image: web:{n}")
        return git(clone, "rev-parse", "HEAD")

    local = deploy_commit(2)
    svc._history_pass()
    assert published == []  # only in this clone: a rebase on push may still rewrite it
    git(clone, "push", "-q", "origin", "HEAD:main")
    svc._history_pass()
    svc._history_pass()
    assert [(e["type"], e["commit"], e["image"]) for e in published] == [("deploy", local, "web:2")]

    real = AlertService(clone, config=AlertsConfig(), drift=False, health=False, locks=False)
    real._broker_event({"type": "sync", "ok": True})
    third = deploy_commit(3)
    git(clone, "push", "-q", "origin", "HEAD:main")
    real._broker_event({"type": "deploy", "ok": True, "targets": ["dc1/n1/web"], "image": "web:3", "commit": third,
                        "who": "ci-bot", "job": "j1"})  # serve's job announces it, then the log is read
    assert [a["text"] for a in real.sent] == [f"deploy of web:3 to dc1/n1/web succeeded (commit {third[:12]}) by "
                                              "ci-bot"]
