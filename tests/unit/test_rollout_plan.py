"""The pure part of fleet rollouts: batch sizes (N or N%), the canary, and what a failure decides."""

from __future__ import annotations

import pytest

from deployer.errors import BadRollout, BadValue
from deployer.ops.rollout import CONTINUE, GO, HALT, ROLLBACK, UNDO, Rollout, plan_batches, run_batches, verdict
from deployer.values import parse_batch


@pytest.mark.parametrize("text, want", [("3", (3, False)), (" 1 ", (1, False)), ("25%", (25, True)),
                                        ("100%", (100, True)), (4, (4, False))])
def test_batch_sizes_are_counts_or_shares(text, want):
    assert parse_batch(text) == want


@pytest.mark.parametrize("text", ["0", "0%", "101%", "-1", "2.5", "25 %", "%", "", "1e3", True, None, "9" * 20])
def test_a_bad_batch_size_says_how_to_write_one(text):
    with pytest.raises(BadValue, match="batch"):
        parse_batch(text)


def test_without_options_every_target_goes_at_once():
    assert plan_batches(4, Rollout()) == [[0, 1, 2, 3]]
    assert plan_batches(0, Rollout()) == []


def test_batches_of_n_keep_the_order_and_the_last_one_is_what_is_left():
    assert plan_batches(5, Rollout(batch=(2, False))) == [[0, 1], [2, 3], [4]]
    assert plan_batches(2, Rollout(batch=(5, False))) == [[0, 1]]


def test_a_share_is_of_all_targets_rounded_up_and_at_least_one():
    assert plan_batches(10, Rollout(batch=(25, True))) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert plan_batches(3, Rollout(batch=(1, True))) == [[0], [1], [2]]
    assert plan_batches(4, Rollout(batch=(100, True))) == [[0, 1, 2, 3]]


def test_the_canary_is_one_node_then_the_rest_in_batches_or_at_once():
    assert plan_batches(4, Rollout(canary=True)) == [[0], [1, 2, 3]]
    assert plan_batches(5, Rollout(canary=True, batch=(2, False))) == [[0], [1, 2], [3, 4]]
    assert plan_batches(1, Rollout(canary=True)) == [[0]]


def test_max_fail_is_how_many_failures_are_tolerated():
    assert verdict(Rollout(), 0) == GO
    assert verdict(Rollout(), 1) == HALT
    assert verdict(Rollout(max_fail=1), 1) == GO
    assert verdict(Rollout(max_fail=1), 2) == HALT
    assert verdict(Rollout(on_failure=ROLLBACK), 1) == UNDO
    assert verdict(Rollout(on_failure=ROLLBACK, max_fail=2), 2) == GO
    assert verdict(Rollout(on_failure=CONTINUE), 9) == GO


def test_a_failed_canary_stops_whatever_else_was_asked():
    assert verdict(Rollout(canary=True, on_failure=CONTINUE), 1, canary=True) == HALT
    assert verdict(Rollout(canary=True, max_fail=3), 1, canary=True) == HALT
    assert verdict(Rollout(canary=True), 0, canary=True) == GO


@pytest.mark.parametrize("kw, match", [({"on_failure": "retry"}, "choose one of stop, rollback, continue"),
                                       ({"max_fail": -1}, "0 or more"),
                                       ({"max_fail": 0, "on_failure": CONTINUE}, "no effect"),
                                       ({"pause": -1.0}, "--pause")])
def test_options_that_contradict_are_refused(kw, match):
    with pytest.raises(BadRollout, match=match):
        Rollout(**kw)
    assert BadRollout.exit_code == 3


def _run(n, rollout, bad=()):
    seen, slept, said = [], [], []
    run = run_batches(list(range(n)), rollout, lambda group: seen.append(list(group)), lambda i: i in bad,
                      say=said.append, sleep=slept.append)
    return run, seen, slept, said


def test_run_stops_after_the_failing_batch_and_says_what_was_left():
    run, seen, slept, said = _run(4, Rollout(batch=(2, False), max_fail=0), bad={1})
    assert seen == [[0, 1]] and run.ran == 1 and not run.undo
    assert run.stopped == "1 failed (--max-fail 0); 2 not attempted"
    assert slept == []


def test_run_pauses_between_batches_only():
    run, seen, slept, _ = _run(5, Rollout(batch=(2, False), pause=1.5))
    assert seen == [[0, 1], [2, 3], [4]] and run.stopped is None
    assert slept == [1.5, 1.5]


def test_run_with_rollback_asks_for_the_undo_and_continue_runs_everything():
    run, seen, _, _ = _run(4, Rollout(batch=(2, False), on_failure=ROLLBACK), bad={3})
    assert seen == [[0, 1], [2, 3]] and run.undo and run.stopped == "1 failed (--max-fail 0)"
    run, seen, _, _ = _run(4, Rollout(batch=(1, False), on_failure=CONTINUE), bad={0, 1})
    assert len(seen) == 4 and run.stopped is None


def test_run_a_failed_canary_touches_nothing_else():
    run, seen, _, said = _run(4, Rollout(canary=True, on_failure=ROLLBACK), bad={0})
    assert seen == [[0]] and not run.undo
    assert run.stopped == "the canary failed; 3 not attempted"
    assert said[0] == "canary: 1 node"
