"""How ``NodeLocks`` takes many nodes' locks (ops.locks), with fake locks: all at once and nobody waiting
first; on a conflict everything taken is released, then (only with --wait) the sorted order, one after the
other. And the default parallelism (ops.targets.DEFAULT_PARALLEL): every target at once, up to the cap."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from deployer.errors import HostError, NodeLockHeld
from deployer.ops import locks as locks_mod
from deployer.ops.targets import DEFAULT_PARALLEL, run_parallel


class Board:
    """What every fake lock did, and which nodes another deployer holds (until ``free_after`` tries)."""

    def __init__(self, held_by_other=(), unreachable=(), free_after: int | None = None, gate: int = 0):
        self.mutex = threading.Lock()
        self.events: list[tuple[str, str, float]] = []  # (what, node, wait)
        self.holding: set[str] = set()
        self.other = set(held_by_other)
        self.unreachable = set(unreachable)
        self.free_after = free_after
        self.tries = 0
        self.running = self.peak = 0  # acquires under way at once
        self.gate = gate  # acquires wait (up to 10 s) until this many run at once: a peak a loaded machine cannot blur
        self.arrived = threading.Condition(self.mutex)
        self.waited_while_holding: list[tuple[str, set[str]]] = []

    def log(self, *event):
        with self.mutex:
            self.events.append(event)


class FakeLock:
    def __init__(self, board: Board, node):
        self.board, self.target = board, node.target

    def acquire(self, wait: float = 0):
        b = self.board
        b.log("acquire", self.target, wait)
        with b.mutex:
            b.running += 1
            b.peak = max(b.peak, b.running)
            b.arrived.notify_all()
            if b.gate:
                b.arrived.wait_for(lambda: b.peak >= b.gate, timeout=10)
        time.sleep(0.02)  # an engine call
        with b.mutex:
            b.running -= 1
        if self.target in b.unreachable:
            raise HostError(self.target, "unix:///nowhere.sock", "connection refused")
        with b.mutex:
            if self.target in b.other:
                b.tries += 1
                if wait and b.free_after is not None and b.tries > b.free_after:
                    b.other.discard(self.target)  # the other deployer finished while we waited
                    b.waited_while_holding.append((self.target, set(b.holding)))
                else:
                    raise NodeLockHeld(self.target, "ana@ci pid 1 (deployer apply)", {"who": "ana"})
            assert self.target not in b.holding
            b.holding.add(self.target)
        return self

    def release(self):
        with self.board.mutex:
            self.board.holding.discard(self.target)
        self.board.log("release", self.target, 0)

    def check(self):
        pass


class FakeSession:
    def __init__(self, node, root, **kw):
        self.node = node

    def close(self):
        pass


@pytest.fixture
def board_locks(monkeypatch):
    def make(names, **kw):
        board = Board(**kw)
        monkeypatch.setattr(locks_mod, "EngineSession", FakeSession)
        monkeypatch.setattr(locks_mod, "open_lock", lambda root, dc, node, info, **k: FakeLock(board, node))
        dcs = {"dc": SimpleNamespace(consul=None, lock_ttl=None, lock_delay=None)}
        nodes = [SimpleNamespace(dc="dc", name=n, target=f"dc/{n}", docker="unix:///x.sock") for n in names]
        infra = SimpleNamespace(datacenters=dcs)
        return board, lambda **k: locks_mod.NodeLocks("/nonexistent", infra, nodes, **k)
    return make


NAMES = [f"n{i:02d}" for i in range(20)]


def test_twenty_locks_are_tried_at_the_same_time_without_waiting(board_locks):
    board, make = board_locks(list(reversed(NAMES)), gate=20)
    with make() as locks:
        assert board.peak == 20
        assert sorted(locks.held) == [f"dc/{n}" for n in NAMES]
        assert {e[2] for e in board.events if e[0] == "acquire"} == {0}
        assert len([e for e in board.events if e[0] == "acquire"]) == 20
    assert not board.holding


def test_an_explicit_parallel_limits_how_many_are_tried_at_once(board_locks):
    board, make = board_locks(NAMES[:6])
    with make(parallel=3) as locks:
        assert len(locks.held) == 6
    assert board.peak <= 3 and not board.holding


def test_a_conflict_without_wait_releases_every_lock_taken_and_names_the_holder(board_locks):
    board, make = board_locks(NAMES, held_by_other={"dc/n07", "dc/n12"})
    with pytest.raises(NodeLockHeld) as caught:
        with make():
            pass
    assert caught.value.node == "dc/n07"  # the first by dc/node, whichever thread failed first
    assert not board.holding
    assert len([e for e in board.events if e[0] == "acquire"]) == 20  # each tried once, none waited
    assert len([e for e in board.events if e[0] == "release"]) == 18


def test_with_wait_a_conflict_releases_everything_then_takes_them_in_sorted_order(board_locks):
    board, make = board_locks(list(reversed(NAMES[:5])), held_by_other={"dc/n02"}, free_after=1)
    with make(wait=30) as locks:
        assert sorted(locks.held) == [f"dc/{n}" for n in NAMES[:5]]
    first = [e for e in board.events[:9] if e[0] == "acquire"]
    assert {e[2] for e in first} == {0} and len(first) == 5  # the try at once: nobody waits
    released = [e[1] for e in board.events[5:9]]
    assert sorted(released) == ["dc/n00", "dc/n01", "dc/n03", "dc/n04"]  # all given back before any wait
    in_order = [e for e in board.events[9:] if e[0] == "acquire"]
    assert [e[1] for e in in_order] == [f"dc/{n}" for n in NAMES[:5]] and {e[2] for e in in_order} == {30}
    # it waited for n02 holding only the nodes sorted before it: no two deploys in this phase wait for each other
    assert board.waited_while_holding == [("dc/n02", {"dc/n00", "dc/n01"})]
    assert not board.holding


def test_with_wait_a_lock_still_held_fails_and_releases_the_rest(board_locks):
    board, make = board_locks(NAMES[:3], held_by_other={"dc/n01"})
    with pytest.raises(NodeLockHeld):
        with make(wait=0.1):
            pass
    assert not board.holding


def test_one_node_with_wait_is_one_waiting_acquire(board_locks):
    board, make = board_locks(["n00"])
    with make(wait=5):
        pass
    assert [e for e in board.events if e[0] == "acquire"] == [("acquire", "dc/n00", 5)]


def test_an_unreachable_node_is_recorded_not_raised_and_the_others_are_held(board_locks):
    board, make = board_locks(NAMES[:4], unreachable={"dc/n02"})
    with make() as locks:
        assert sorted(locks.held) == ["dc/n00", "dc/n01", "dc/n03"]
        assert locks.problem(SimpleNamespace(target="dc/n02")) is not None


def test_the_cli_default_is_the_ops_default():
    from deployer.cli.options import PARALLEL_DEFAULT

    assert PARALLEL_DEFAULT == DEFAULT_PARALLEL >= 20


def test_run_parallel_works_on_every_item_at_once_up_to_the_limit():
    count = 20
    barrier = threading.Barrier(count)
    run_parallel(lambda _: barrier.wait(timeout=5), list(range(count)), DEFAULT_PARALLEL)  # breaks unless 20 at once
    running, peak, mutex = [0], [0], threading.Lock()

    def work(_):
        with mutex:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with mutex:
            running[0] -= 1

    run_parallel(work, list(range(count)), 3)
    assert peak[0] <= 3
