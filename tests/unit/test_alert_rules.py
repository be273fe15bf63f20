"""The alert rules on a fake clock (no threads, no I/O): threshold, once per (key, state), reminders, recovery,
and what the announcements say."""

from __future__ import annotations

import pytest

from deployer.alerts.messages import consul_alert, health_alert
from deployer.alerts.rules import CHANGED, RECOVERED, REMINDER, OncePer, Rules
from deployer.alerts.service import event_alert

CHECK = {"dc": "test", "Node": "n1", "CheckID": "service:web-1", "Name": "Service 'web' check",
         "Output": "HTTP GET http://10.0.0.5:80/: 503 Service Unavailable Output: down",
         "ServiceID": "web-1", "ServiceName": "http_to_nsq"}


def feed(rules: Rules, timeline, key="k"):
    """timeline: [(t, state)] observed; returns [(t, kind, old, new)] announced, ticking every 0.5 s to the end."""
    out = []
    events = dict(timeline)
    t, end = 0.0, max(t for t, _ in timeline) + 10
    while t <= end:
        if t in events:
            rules.observe(key, events[t], t, info=CHECK)
        out += [(t, tr.kind, tr.old, tr.new) for tr in rules.tick(t)]
        t += 0.5
    return out


def test_a_change_is_sent_after_it_held_for_the_threshold_and_once():
    rules = Rules(threshold=2.0)
    got = feed(rules, [(0.0, "passing"), (1.0, "critical")])
    assert got == [(3.0, CHANGED, "passing", "critical")]  # 1.0 + 2.0, and only once over the next 8 s


def test_passing_at_start_says_nothing_and_down_at_start_is_announced_after_the_threshold():
    assert feed(Rules(threshold=1.0), [(0.0, "passing")]) == []
    assert feed(Rules(threshold=1.0), [(0.0, "critical")]) == [(1.0, CHANGED, "passing", "critical")]


def test_a_flap_shorter_than_the_threshold_sends_nothing():
    rules = Rules(threshold=2.0)
    got = feed(rules, [(0.0, "passing"), (1.0, "critical"), (2.5, "passing"), (4.0, "critical"), (5.5, "passing")])
    assert got == []


def test_back_to_normal_after_the_threshold_and_only_when_the_bad_state_was_sent():
    rules = Rules(threshold=1.0)
    got = feed(rules, [(0.0, "critical"), (3.0, "passing")])
    assert got == [(1.0, CHANGED, "passing", "critical"), (4.0, RECOVERED, "critical", "passing")]


def test_each_state_once_warning_then_critical():
    rules = Rules(threshold=1.0)
    got = feed(rules, [(0.0, "warning"), (2.0, "warning"), (3.0, "critical"), (6.0, "critical")])
    assert got == [(1.0, CHANGED, "passing", "warning"), (4.0, CHANGED, "warning", "critical")]


def test_reminder_while_down_and_none_after_recovery():
    rules = Rules(threshold=1.0, reminder=3.0)
    got = feed(rules, [(0.0, "critical"), (8.0, "passing")])
    assert got == [(1.0, CHANGED, "passing", "critical"), (4.0, REMINDER, "critical", "critical"),
                   (7.0, REMINDER, "critical", "critical"), (9.0, RECOVERED, "critical", "passing")]


def test_zero_threshold_sends_at_the_next_tick_and_forget_drops_a_key():
    rules = Rules(threshold=0.0)
    rules.observe("a", "critical", 0.0)
    rules.observe("b", "critical", 0.0)
    rules.forget("b")
    assert [(tr.key, tr.new) for tr in rules.tick(0.0)] == [("a", "critical")]
    assert rules.keys() == ["a"]


def test_other_normal_states_and_bad_settings():
    rules = Rules(threshold=1.0)
    rules.observe("consul:x", "lost", 0.0, normal="up")
    assert [tr.kind for tr in rules.tick(1.0)] == [CHANGED]
    rules.observe("consul:x", "up", 2.0, normal="up")
    assert [tr.kind for tr in rules.tick(3.0)] == [RECOVERED]
    with pytest.raises(ValueError):
        Rules(threshold=-1)
    with pytest.raises(ValueError):
        Rules(reminder=0)


def test_the_messages_name_the_check_and_its_output():
    rules = Rules(threshold=1.0)
    rules.observe("check:c:n1/service:web-1", "critical", 10.0, info=CHECK)
    (down,) = rules.tick(11.0)
    a = health_alert(down, 11.0)
    assert a["text"] == ("test: service http_to_nsq is down: check 'Service 'web' check' (web-1 on node n1) failing: "
                         "HTTP GET http://10.0.0.5:80/: 503 Service Unavailable Output: down")
    assert (a["type"], a["kind"], a["state"], a["service"], a["check"]) == ("alert", "health", "critical",
                                                                              "http_to_nsq", "service:web-1")
    rules.observe("check:c:n1/service:web-1", "passing", 130.0, info={**CHECK, "Output": "HTTP GET: 200 OK"})
    (back,) = rules.tick(131.0)
    assert health_alert(back, 131.0)["text"] == ("test: service http_to_nsq is back to normal: check 'Service 'web' "
                                                 "check' (web-1 on node n1) passing (was critical for 2m)")


def test_the_watchers_own_alerts():
    rules = Rules(threshold=1.0)
    info = {"address": "127.0.0.1:8500", "dcs": ["test"], "error": "Consul at 127.0.0.1:8500: health checks: "
                                                                    "connection refused"}
    rules.observe("consul:127.0.0.1:8500", "lost", 0.0, normal="up", info=info)
    (lost,) = rules.tick(1.0)
    assert consul_alert(lost, 1.0)["text"] == (
        "alerts watcher lost Consul at 127.0.0.1:8500 (test): Consul at 127.0.0.1:8500: health checks: connection "
        "refused; health is unknown until it is back")
    rules.observe("consul:127.0.0.1:8500", "up", 5.0, normal="up", info=info)
    (back,) = rules.tick(6.0)
    assert consul_alert(back, 6.0)["text"] == "alerts watcher is back on Consul at 127.0.0.1:8500 (test): health " \
                                              "is known again"


def test_deploy_and_lock_events_become_alerts_keyed_by_commit_or_job():
    key, a = event_alert({"type": "deploy", "ok": True, "targets": ["test/n1/web"], "image": "web:2",
                          "commit": "0123456789abcdef", "author": "ci", "reason": "release 2", "job": "j1"})
    assert key == "deploy:0123456789abcdef"
    # a partial deploy (the job failed, the commit has the targets that worked) and the deploy log's entry of
    # that commit are one announcement, whichever is seen first
    partial, _ = event_alert({"type": "deploy", "ok": False, "targets": ["test/n1/web"], "commit": "0123456789abcdef",
                              "job": "j9", "error": "1 of 2 targets failed"})
    logged, _ = event_alert({"type": "deploy", "ok": True, "commit": "0123456789abcdef", "source": "deploy log"})
    assert partial == logged == key
    assert a["text"] == "deploy of web:2 to test/n1/web succeeded (commit 0123456789ab) by ci: release 2"
    key, a = event_alert({"type": "deploy", "ok": False, "targets": ["test/n1/web"], "image": "web:3", "job": "j2",
                          "error": "health check failed"})
    assert key == "deploy:job:j2:failed" and a["text"] == "deploy of web:3 to test/n1/web failed: health check failed"
    key, a = event_alert({"type": "rollback", "state": "ok", "targets": ["test/n1/web"], "image": "web:1",
                          "commit": "abc"})
    assert a["text"] == "rolled back test/n1/web to web:1 (commit abc)" and a["kind"] == "rollback"
    _, a = event_alert({"type": "lock", "state": "taken", "targets": ["test/n1"], "who": "ann", "reason": "db move"})
    assert a["text"] == "lock taken on test/n1 by ann: db move"
    _, a = event_alert({"type": "lock", "ok": True, "target": "test/n1", "state": "released", "who": "ann", "job": "7"})
    assert a["text"] == "lock released on test/n1 by ann" and a["state"] == "released"
    _, a = event_alert({"type": "lock", "ok": False, "target": "test/n1", "state": "failed", "who": "bob",
                        "error": "held by ann"})
    assert a["text"] == "lock request on test/n1 by bob failed: held by ann"
    assert event_alert({"type": "status"}) is None and event_alert({"type": "alert", "text": "x"}) is None


def test_once_per_key():
    once = OncePer(limit=2)
    assert [once.first(k) for k in ("a", "a", "b", "a")] == [True, False, True, False]
    once.first("c")  # "a" falls out of the bounded memory
    assert once.first("a") is True
