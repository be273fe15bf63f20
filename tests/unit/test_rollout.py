"""engine/rollout.py: how a replicated service's replicas are replaced, batch by batch, and what a failure does.

The one-container switch (``Applier._replace``, health-gated against a real engine in
tests/engines/test_replicas.py) is replaced here by a recorder that fails the replicas a test names, so the
batching, failure_action and max_failure_ratio logic is checked on its own. No Docker engine."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from deployer.engine.apply import Applier
from deployer.engine.plan import plan_rollout
from deployer.engine.rollout import _Kept
from deployer.errors import HealthCheckFailed
from deployer.spec import Rollout
from tests.unit.test_replicas_plan import IMAGE_ID, running, web


class Recorder(Applier):
    """An Applier whose one-container steps are recorded; the replicas in ``fail`` fail their health gate."""

    def __init__(self, fail=()):
        super().__init__(SimpleNamespace(api=None))
        self.fail = set(fail)
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def log(self, what: str, replica: int) -> None:
        with self.lock:
            self.events.append((what, replica))

    def check_names(self, change, state) -> None:
        pass

    def _replace(self, change, steps, keep_old=False):
        replica = change.replica
        self.log("start", replica)
        time.sleep(0.02)
        if replica in self.fail:
            self.log("failed", replica)
            raise HealthCheckFailed(f"replica {replica} is unhealthy; restored the old container")
        self.log("healthy", replica)
        new = running(change.spec)
        return (new, _Kept(change.spec, change.current, new.id, change.spec.name + "-next")) if keep_old else new

    def _finish_kept(self, kept, steps) -> None:
        self.log("finished", kept.spec.replica)

    def _undo_kept(self, kept, steps) -> None:
        self.log("rolled back", kept.spec.replica)

    def _retire(self, container) -> None:
        self.log("removed", container.replica)


def deploy(tmp_path, applier: Recorder, replicas=3, running_now=3, **rollout):
    old = web(tmp_path)
    new = replace(web(tmp_path, image="registry.example/web:2.0"), rollout=Rollout(replicas=replicas, **rollout))
    change = plan_rollout(new, [running(old.for_replica(i)) for i in range(1, running_now + 1)], IMAGE_ID)
    return applier.apply(change, SimpleNamespace(names={}, managed=[]))


def test_one_by_one_each_replica_healthy_before_the_next_starts(tmp_path):
    applier = Recorder()
    outcome = deploy(tmp_path, applier)
    assert applier.events == [("start", 1), ("healthy", 1), ("start", 2), ("healthy", 2), ("start", 3),
                              ("healthy", 3)]
    assert outcome.container.name == "n1-web"


def test_batches_of_two_start_together_and_the_third_waits_for_both(tmp_path):
    applier = Recorder()
    deploy(tmp_path, applier, parallelism=2)
    first_batch = applier.events[:4]
    assert sorted(first_batch) == [("healthy", 1), ("healthy", 2), ("start", 1), ("start", 2)]
    assert applier.events[4:] == [("start", 3), ("healthy", 3)]


def test_parallelism_0_replaces_all_at_once(tmp_path):
    applier = Recorder()
    deploy(tmp_path, applier, parallelism=0)
    assert {e for e in applier.events[:3]} == {("start", 1), ("start", 2), ("start", 3)}


def test_pause_stops_at_the_failed_replica(tmp_path):
    applier = Recorder(fail={2})
    with pytest.raises(HealthCheckFailed, match=r"1 of 3 replicas failed \(first: replica 2: .*paused"):
        deploy(tmp_path, applier)
    assert applier.events == [("start", 1), ("healthy", 1), ("start", 2), ("failed", 2)]


def test_continue_goes_on_and_fails_at_the_end(tmp_path):
    applier = Recorder(fail={2})
    with pytest.raises(HealthCheckFailed, match="1 of 3 replicas failed.*went on with the other replicas"):
        deploy(tmp_path, applier, failure_action="continue")
    assert ("start", 3) in applier.events and ("healthy", 3) in applier.events


def test_rollback_puts_every_replaced_replica_back(tmp_path):
    applier = Recorder(fail={3})
    with pytest.raises(HealthCheckFailed, match="1 of 3 replicas failed.*rolled back"):
        deploy(tmp_path, applier, failure_action="rollback")
    assert applier.events[-2:] == [("rolled back", 2), ("rolled back", 1)]
    assert ("finished", 1) not in applier.events


def test_rollback_keeps_the_old_containers_until_the_last_batch_passed(tmp_path):
    applier = Recorder()
    deploy(tmp_path, applier, failure_action="rollback")
    assert applier.events[-3:] == [("finished", 1), ("finished", 2), ("finished", 3)]


def test_a_failure_within_max_failure_ratio_is_tolerated_and_said(tmp_path):
    applier = Recorder(fail={2})
    outcome = deploy(tmp_path, applier, max_failure_ratio=0.5)
    assert ("healthy", 3) in applier.events
    assert any(s.startswith("replica 2 failed (within max_failure_ratio 0.5)") for s in outcome.steps)


def test_scaling_down_removes_after_the_updates_and_not_after_a_pause(tmp_path):
    applier = Recorder()
    deploy(tmp_path, applier, replicas=2)
    assert applier.events[-1] == ("removed", 3) and ("start", 3) not in applier.events
    applier = Recorder(fail={1})
    with pytest.raises(HealthCheckFailed):
        deploy(tmp_path, applier, replicas=2)
    assert ("removed", 3) not in applier.events


def test_delay_waits_between_batches(tmp_path, monkeypatch):
    import deployer.engine.rollout as rollout

    applier = Recorder()
    slept = []
    monkeypatch.setattr(rollout.time, "sleep", lambda s: (slept.append((s, len(applier.events)))))
    deploy(tmp_path, applier, delay=0.2)
    # after replica 1 passed, and after replica 2 (the recorder's own 0.02 s pauses left out)
    assert [s for s in slept if s[0] == 0.2] == [(0.2, 2), (0.2, 4)]
