"""The lock alerts' pure part: two readings give the changes, what is worth announcing, the once-keys, the
texts, and Consul's KV listing read as locks (a key without a session is expired only after GRACE)."""

from __future__ import annotations

import json

from deployer.alerts.locks import (EXPIRED, GRACE, RELEASED, TAKEN, LockSeen, LockWatch, consul_reading,
                                   lock_changes, lock_text, once_key, worth_announcing)

ME = {"who": "ana", "host": "ops-1", "pid": 42, "reason": "db migration", "manual": True,
      "command": "deployer lock acquire prod/n1 -m 'db migration'"}


def manual(target="prod/n1", lock_id="a1", expired=False):
    return LockSeen(target, lock_id, ME, True, expired)


def deploy(target="prod/n1", lock_id="d1", expired=False):
    return LockSeen(target, lock_id, {"who": "ci", "host": "ci-7", "pid": 9, "command": "deployer deploy web:2"},
                    False, expired)


def test_taken_released_and_replaced_locks():
    assert lock_changes({}, {"prod/n1": manual()}) == [(TAKEN, manual())]
    assert lock_changes({"prod/n1": manual()}, {"prod/n1": manual()}) == []  # the same lock read again
    assert lock_changes({"prod/n1": manual()}, {}) == [(RELEASED, manual())]
    # released and taken again between two reads: two changes, the old one first
    assert lock_changes({"prod/n1": manual()}, {"prod/n1": manual(lock_id="a2")}) == [
        (RELEASED, manual()), (TAKEN, manual(lock_id="a2"))]
    two = lock_changes({"a/n2": manual("a/n2")}, {"b/n1": manual("b/n1")})
    assert two == [(RELEASED, manual("a/n2")), (TAKEN, manual("b/n1"))]


def test_an_expired_lock_is_announced_once_and_not_released_again_when_it_goes():
    held, gone = deploy(), deploy(expired=True)
    assert lock_changes({"prod/n1": held}, {"prod/n1": gone}) == [(EXPIRED, gone)]
    assert lock_changes({"prod/n1": gone}, {"prod/n1": gone}) == []
    assert lock_changes({"prod/n1": gone}, {}) == []  # broken by the next deployer: no "released" after it
    assert lock_changes({}, {"prod/n1": gone}) == [(EXPIRED, gone)]  # taken and expired between two reads
    # the next deployer breaks it and takes its own
    assert lock_changes({"prod/n1": gone}, {"prod/n1": deploy(lock_id="d2")}) == [(TAKEN, deploy(lock_id="d2"))]


def test_deploy_locks_are_announced_only_when_they_expire():
    assert worth_announcing(TAKEN, manual()) and worth_announcing(RELEASED, manual())
    assert not worth_announcing(TAKEN, deploy()) and not worth_announcing(RELEASED, deploy())
    assert worth_announcing(EXPIRED, deploy(expired=True))


def test_once_keys_name_the_node_the_lock_and_the_state():
    assert once_key(TAKEN, manual()) == "lock:prod/n1:a1:taken"
    assert len({once_key(s, lk) for s in (TAKEN, RELEASED) for lk in (manual(), manual(lock_id="a2"))}) == 4


def test_texts_name_who_where_and_why():
    assert lock_text(TAKEN, manual()) == "lock taken on prod/n1 by ana@ops-1: db migration"
    assert lock_text(RELEASED, manual()) == "lock released on prod/n1 (taken by ana@ops-1: db migration)"
    assert lock_text(EXPIRED, deploy(expired=True)) == (
        "lock released (expired) on prod/n1: the lock of deployer deploy web:2 held by ci@ci-7 pid 9 was not "
        "renewed (its holder died or lost its connection)")


def pair(dc, node, session="s1", holder=ME, create=7):
    return {"Key": f"deployer/lock/{dc}/{node}", "Session": session, "CreateIndex": create,
            "Value": json.dumps({**holder, "id": f"id-{node}"}).encode()}


def test_consul_keys_as_locks_a_sessionless_key_expires_after_grace():
    left: dict[str, float] = {}
    pairs = [pair("prod", "n1"), pair("other", "n9"), {"Key": "deployer/lock/prod", "Value": None},
             pair("prod", "n2", session=None)]
    got = consul_reading(pairs, ("prod",), 100.0, left)
    assert sorted(got) == ["prod/n1", "prod/n2"]  # other datacenters' keys and stray keys are not ours
    assert got["prod/n1"] == LockSeen("prod/n1", "id-n1", {}, True, False) and got["prod/n1"].holder["who"] == "ana"
    assert not got["prod/n2"].expired  # just released: a clean release deletes the key right after
    assert not consul_reading(pairs, ("prod",), 100.0 + GRACE - 0.1, left)["prod/n2"].expired
    assert consul_reading(pairs, ("prod",), 100.0 + GRACE, left)["prod/n2"].expired
    consul_reading(pairs[:1], ("prod",), 200.0, left)
    assert left == {}  # a key that went is forgotten


class _Infra:
    datacenters: dict = {}

    def nodes(self):
        return []


def test_the_watch_announces_nothing_from_its_first_reading_then_each_change_once():
    said = []
    w = LockWatch("/nowhere", _Infra(), lambda state, lock: said.append((state, lock.target)))
    w.primed["engines"] = __import__("threading").Event()
    w.apply("engines", {"prod/n1": manual()}, {"prod/n1", "prod/n2"})
    assert said == []  # what was locked when the watch started
    w.apply("engines", {"prod/n1": manual(), "prod/n2": deploy("prod/n2")}, {"prod/n1", "prod/n2"})
    assert said == []  # a deploy's lock
    w.apply("engines", {"prod/n2": deploy("prod/n2", expired=True)}, {"prod/n1", "prod/n2"})
    assert said == [(RELEASED, "prod/n1"), (EXPIRED, "prod/n2")]
    w.apply("engines", {}, {"prod/n2"})  # prod/n1 unreadable this time: kept as it was
    assert said == [(RELEASED, "prod/n1"), (EXPIRED, "prod/n2")] and w.current == {}
