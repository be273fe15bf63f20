"""Fleet rollouts: a deploy over many nodes in batches, what a failure does, and undoing a whole deploy.

A rollout is the order in which the targets of one deploy are switched, and
what happens when some fail (``deploy --batch --canary --max-fail --pause
--on-failure``)::

    batches     --canary: one node first, then --batch at a time (N nodes, or N% of them,
                rounded up); without --batch the rest go at once (--parallel still caps
                how many nodes are worked on at the same moment)
    after each  failed so far > --max-fail (default 0):
    batch         stop      keep what switched, touch no further node      (the default)
                  rollback  switch every node this command updated back to its old image
                  continue  (refused with --max-fail: it would be ignored) every batch runs
                a failed canary always stops: it is the point of a canary
    between     --pause SECONDS, skipped after the last batch and after a stop

A node whose switch fails runs its old container still (the health gate put it
back), so there is nothing to undo on it. The one commit at the end holds the
targets that run the new image: rolled-back nodes are not in it, a node whose
rollback failed is (it still runs the new image), and the trailers name the
nodes that failed and the nodes rolled back.

``rollback_targets`` finds what ``rollback --commit SHA`` / ``rollback dc``
returns: every target of that deploy commit, each to the image its compose file
had in the commit's parent (``gitrepo.history``).

Pure planning (``plan_batches``, ``verdict``) is separate from running
(``run_batches``), which takes the work as functions: ``ops.deploy`` passes
its engine-session steps in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from deployer.errors import BadRollout, RollbackError
from deployer.model import Infrastructure, Target

STOP = "stop"
ROLLBACK = "rollback"
CONTINUE = "continue"
ON_FAILURE = (STOP, ROLLBACK, CONTINUE)

#: What ``verdict`` says after a batch.
GO = "go"
HALT = "halt"  # stop here; keep what switched
UNDO = "undo"  # stop here and roll back what switched

T = TypeVar("T")


@dataclass(frozen=True)
class Rollout:
    """How one deploy goes over its targets."""

    batch: tuple[int, bool] | None = None  # (number, is_percent) from values.parse_batch; None: all at once
    max_fail: int | None = None  # None: not given (0 unless --on-failure continue)
    pause: float = 0.0
    canary: bool = False
    on_failure: str = STOP

    def __post_init__(self) -> None:
        if self.on_failure not in ON_FAILURE:
            raise BadRollout(f"--on-failure {self.on_failure!r}: choose one of {', '.join(ON_FAILURE)}")
        if self.max_fail is not None and self.max_fail < 0:
            raise BadRollout(f"--max-fail {self.max_fail}: must be 0 or more")
        if self.max_fail is not None and self.on_failure == CONTINUE:
            raise BadRollout("--max-fail has no effect with --on-failure continue (every batch runs): give one of them")
        if self.pause < 0:
            raise BadRollout("--pause must be 0 or more")

    @property
    def tolerated(self) -> int:
        return self.max_fail or 0

    def batch_size(self, n: int) -> int:
        """Nodes per batch for ``n`` targets (after a canary, of the rest)."""
        if n <= 0:
            return 0
        if self.batch is None:
            return n  # all at once
        number, percent = self.batch
        if percent:
            return max(1, min(n, math.ceil(n * number / 100)))
        return min(n, number)

    def describe(self) -> str:
        parts = []
        if self.canary:
            parts.append("canary first")
        if self.batch is not None:
            parts.append(f"batches of {self.batch[0]}{'%' if self.batch[1] else ''}")
        return ", ".join(parts)


def plan_batches(n: int, rollout: Rollout) -> list[list[int]]:
    """The targets' indices (0..n-1, in order) grouped into batches."""
    indices = list(range(n))
    batches: list[list[int]] = []
    if rollout.canary and indices:
        batches.append(indices[:1])
        indices = indices[1:]
    # a share is of all the targets (the canary counts); without --batch the rest go at once
    size = len(indices) if rollout.batch is None else rollout.batch_size(n)
    for i in range(0, len(indices), size or 1):
        batches.append(indices[i:i + size])
    return batches


def verdict(rollout: Rollout, failed: int, *, canary: bool = False) -> str:
    """GO, HALT or UNDO after a batch, with ``failed`` failures so far (``canary``: it was the canary batch)."""
    if failed == 0:
        return GO
    if canary:
        return HALT  # the canary failed: no other node is touched; it runs its old container
    if rollout.on_failure == CONTINUE or failed <= rollout.tolerated:
        return GO
    return UNDO if rollout.on_failure == ROLLBACK else HALT


@dataclass
class BatchRun:
    """What ``run_batches`` did: how many batches ran, and why it stopped early (None: it did not)."""

    batches: int
    ran: int = 0
    stopped: str | None = None
    undo: bool = False


def run_batches(items: Sequence[T], rollout: Rollout, work: Callable[[list[T]], None], failed: Callable[[T], bool],
                *, say: Callable[[str], None] = lambda msg: None,
                sleep: Callable[[float], None] = time.sleep) -> BatchRun:
    """Run ``work`` over each batch of ``items`` in turn, deciding after each whether to go on."""
    batches = plan_batches(len(items), rollout)
    run = BatchRun(len(batches))
    done: list[T] = []
    for number, indices in enumerate(batches, 1):
        group = [items[i] for i in indices]
        if len(batches) > 1:
            kind = "canary" if rollout.canary and number == 1 else f"batch {number}/{len(batches)}"
            say(f"{kind}: {len(group)} node{'s' if len(group) != 1 else ''}")
        work(group)
        done.extend(group)
        run.ran = number
        bad = sum(1 for item in done if failed(item))
        decision = verdict(rollout, bad, canary=rollout.canary and number == 1)
        if decision != GO:
            left = len(items) - len(done)
            why = ("the canary failed" if rollout.canary and number == 1 else
                   f"{bad} failed (--max-fail {rollout.tolerated})")
            run.stopped = why + (f"; {left} not attempted" if left else "")
            run.undo = decision == UNDO
            if left or run.undo:  # after the last batch there is nothing to stop: the failure is the report
                say(f"stopping: {run.stopped}" + ("; rolling back the nodes this deploy updated" if run.undo else ""))
            return run
        if number < len(batches) and rollout.pause > 0:
            say(f"pausing {rollout.pause:g}s before the next batch")
            sleep(rollout.pause)
    return run


# -- a whole deploy back -------------------------------------------------------------


def rollback_targets(infra: Infrastructure, repo, texts: Sequence[str], commit: str | None, *,
                     steps: int = 1, to: str | None = None) -> tuple[dict[Target, str], str | None]:
    """The image each target goes back to, and the commit that is undone (when it is one deploy).

    * ``commit``: every target of that deployer commit (only those under ``texts``, when given) goes
      back to the image its compose file had in the commit's parent.
    * a target naming a service (dc/node/service): its previous version (``steps`` back or ``to``).
    * a dc or dc/node: the latest deploy or rollback commit with a target there, as with ``commit``.
    """
    wanted: dict[Target, str] = {}
    undone: set[str] = set()
    if commit is not None:
        prefixes = [str(infra.resolve(t)) for t in texts]
        wanted.update(_commit_images(infra, repo, repo.deploy_entry(commit), prefixes))
        undone.add(repo.rev_parse(commit) or commit)
    else:
        if not texts:
            raise RollbackError("rollback needs a target (dc, dc/node or dc/node/service) or --commit SHA")
        for text in texts:
            resolved = infra.resolve(text)
            if resolved.service is not None:
                svc = infra.node(resolved.dc, resolved.node).services[resolved.service]
                image, sha = repo.resolve_rollback(svc.location.path, svc.name, svc.image, target=svc.target,
                                                   steps=steps, to_rev=to)
                wanted[Target(svc.dc, svc.node, svc.name)] = image
                undone.add(sha)
                continue
            entries = repo.deploy_log(str(resolved), 1)
            if not entries:
                raise RollbackError(f"no deploy or rollback commit has a target in {resolved}")
            wanted.update(_commit_images(infra, repo, entries[0], [str(resolved)]))
            undone.add(entries[0].commit)
    return wanted, (undone.pop() if len(undone) == 1 else None)


def _commit_images(infra: Infrastructure, repo, entry, prefixes: Sequence[str]) -> dict[Target, str]:
    parent = repo.rev_parse(f"{entry.commit}^")
    out: dict[Target, str] = {}
    for text in entry.targets:
        if prefixes and not any(text == p or text.startswith(p.rstrip("/") + "/") for p in prefixes):
            continue
        target = infra.resolve(text)
        if target.service is None:
            continue
        node = infra.node(target.dc, target.node)
        svc = node.services.get(target.service)
        if svc is None:
            raise RollbackError(f"{text} (a target of {entry.short}) is no longer in the repository")
        before = repo.image_at(parent, svc.location.path, svc.name) if parent else None
        if before is None:
            raise RollbackError(f"{text} was added by {entry.short}; there is no image to go back to "
                                "(remove the service instead)")
        out[Target(target.dc, target.node, target.service)] = before
    if not out:
        raise RollbackError(f"commit {entry.short} has no target" + (f" under {', '.join(prefixes)}" if prefixes else ""))
    return out
