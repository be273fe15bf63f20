"""How a replicated service is rolled out, one-shot services completed, and depends_on ``restart: true``.

``RolloutSteps`` is the part of ``apply.Applier`` (mixed into it) that works on
a whole service rather than one container: the replicas of a Change with
``parts`` replaced in batches as the service's ``spec.Rollout`` says
(parallelism, delay, failure_action with max_failure_ratio; order and monitor
act in the one-container switch and health wait), the replicas beyond the count
removed, the services that depend on a replaced one with ``restart: true``
restarted, and a one-shot container waited for until it exits (0 is success).
It uses the Applier's one-container steps (``_replace``, ``wait_healthy``,
``_retire``, ``_restore``, ``_remove``, the hooks).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from deployer.engine.connect import import_docker
from deployer.engine.plan import CREATE, REMOVE, REPLACE, TIDY, Change
from deployer.engine.state import ContainerState, NodeState, read_container
from deployer.errors import HealthCheckFailed
from deployer.spec import DEFAULT_STOP_TIMEOUT, ContainerSpec, Rollout

docker = import_docker()

ONE_SHOT_TIMEOUT = 600.0  # seconds a one-shot container may run, unless --health-timeout says otherwise
ONE_SHOT_POLL = 0.1  # seconds between two looks at a one-shot container


@dataclass
class _Kept:
    """A replica switched with its old container kept (stopped) until the whole rollout passed (rollback)."""

    spec: ContainerSpec
    old: ContainerState
    new_id: str
    name: str  # the new container's name until the old one is removed



class RolloutSteps:
    """Mixed into ``apply.Applier`` (see the module doc)."""

    def _restart_dependants(self, change: Change, state: NodeState, steps: list[str]) -> None:
        """depends_on ``restart: true``: the services that wrote it restart once this one was replaced (as
        docker compose restarts them), each health-gated, taken out of Consul and registered again around it."""
        spec = change.spec
        if spec is None or change.action == CREATE or not spec.rollout.restart_dependants:
            return
        for service in spec.rollout.restart_dependants:
            for container in state.for_service(service):
                if not container.running:
                    continue
                self._call_retiring(container)
                self.api.restart(container.id, timeout=DEFAULT_STOP_TIMEOUT)
                gate = replace(spec, service=service, image=container.image, rollout=Rollout())
                try:
                    restarted = self.wait_healthy(container.id, gate, restarted=True)
                finally:
                    if self.hooks.restored:
                        try:
                            self.hooks.restored(read_container(self.client, container.id))
                        except Exception as hook_exc:  # noqa: BLE001 - reported, the restart happened
                            self.progress(f"could not register {container.name} again: {hook_exc}")
                steps.append(f"restarted {container.name} ({service} depends on {spec.service} with restart: "
                             f"true), {restarted.health or 'running'}")

    # -- a replicated service ----------------------------------------------------

    def _rollout(self, change: Change, state: NodeState, steps: list[str]) -> ContainerState | None:
        """Every replica of a service as its Rollout says (see the module doc); the state of replica 1."""
        spec = change.spec
        assert spec is not None
        rollout = spec.rollout
        for part in change.parts:  # leftovers of an interrupted rollout: the right container runs
            if part.action == TIDY:
                done = self.apply(part, state)
                steps.extend(s for s in done.steps if s not in steps)
        updates = [p for p in change.parts if p.action in (CREATE, REPLACE)]
        removes = [p for p in change.parts if p.action == REMOVE]
        for part in updates:
            self.check_names(part, state)
        size = rollout.parallelism or len(updates) or 1
        keep = rollout.failure_action == "rollback"
        kept: list[_Kept] = []
        failures: list[tuple[Change, BaseException]] = []
        stopped = False
        states: dict[int, ContainerState] = {}
        for first in range(0, len(updates), size):
            batch = updates[first:first + size]
            if first and rollout.delay:
                self.progress(f"waiting {rollout.delay:g}s before the next batch (update_config.delay)")
                time.sleep(rollout.delay)
            for part, result in zip(batch, self._batch(batch, steps, keep)):
                if isinstance(result, BaseException):
                    if self.lost_connection(result) or not isinstance(result, Exception):
                        raise result
                    failures.append((part, result))
                    continue
                new, kept_one = result
                states[part.replica or 1] = new
                if kept_one is not None:
                    kept.append(kept_one)
            if failures and len(failures) / len(updates) > rollout.max_failure_ratio:
                if rollout.failure_action != "continue":
                    stopped = True
                    break
        if stopped and keep:
            for one in reversed(kept):
                self._undo_kept(one, steps)
            kept = []
        for one in kept:
            self._finish_kept(one, steps)
        if not stopped:
            for part in removes:
                assert part.current is not None
                self._retire(part.current)
                steps.append(f"removed {part.current.name} ({part.reasons[0]})")
        if failures and len(failures) / max(len(updates), 1) > rollout.max_failure_ratio:
            self._rollout_failed(change, failures, len(updates), stopped)
        for part, exc in failures:
            steps.append(f"replica {part.replica} failed (within max_failure_ratio {rollout.max_failure_ratio:g}): "
                         f"{' '.join(str(exc).split())}")
        first_part = change.parts[0] if change.parts and change.parts[0].action != REMOVE else None
        if first_part is None:
            return None
        if 1 in states:
            return states[1]
        return read_container(self.client, first_part.current.id) if first_part.current is not None else None

    def _batch(self, batch: list[Change], steps: list[str], keep: bool) -> list[Any]:
        """Replace the replicas of one batch at the same time; each result is (state, kept) or the exception."""
        def one(part: Change) -> Any:
            try:
                done = self._replace(part, steps, keep_old=keep)
                return done if keep else (done, None)
            except BaseException as exc:  # noqa: BLE001 - handed back, judged by the caller
                return exc
        if len(batch) == 1:
            return [one(batch[0])]
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            return list(pool.map(one, batch))

    def _rollout_failed(self, change: Change, failures: list[tuple[Change, BaseException]], total: int,
                        stopped: bool) -> None:
        spec = change.spec
        assert spec is not None
        action = spec.rollout.failure_action
        part, exc = failures[0]
        if not stopped:
            what = "went on with the other replicas (failure_action continue)"
        elif action == "rollback":
            what = "rolled back: every replica replaced runs its old container again (failure_action rollback)"
        else:
            what = "paused: the replicas replaced before keep the new version (failure_action pause)"
        first = " ".join(str(exc).split())
        message = (f"{change.target}: {len(failures)} of {total} replicas failed (first: replica {part.replica}: "
                   f"{first}); the update {what}")
        logs = exc.logs if isinstance(exc, HealthCheckFailed) else ""
        raise HealthCheckFailed(message, getattr(exc, "container", ""), logs) from exc

    def _finish_kept(self, kept: _Kept, steps: list[str]) -> None:
        self._remove(kept.old.id, stop_timeout=kept.spec.stop_timeout)
        steps.append(f"removed {kept.old.name}")
        if kept.name != kept.spec.name:
            self.api.rename(kept.new_id, kept.spec.name)
            steps.append(f"renamed {kept.name} to {kept.spec.name}")

    def _undo_kept(self, kept: _Kept, steps: list[str]) -> None:
        """failure_action rollback: the new container goes, the old one (stopped, kept) serves again."""
        try:
            new = read_container(self.client, kept.new_id)
            self._call_retiring(new)
        except docker.errors.NotFound:
            pass
        self._remove(kept.new_id, stop_timeout=kept.spec.stop_timeout)
        restored = self._restore(kept.old)
        if kept.old.running and self.hooks.restored:
            try:
                self.hooks.restored(restored)
            except Exception as hook_exc:  # noqa: BLE001 - the original failure matters more
                self.progress(f"could not announce {kept.old.name} again: {hook_exc}")
        steps.append(f"rolled back {kept.old.name}")

    def wait_completed(self, cid: str, spec: ContainerSpec) -> ContainerState:
        """A one-shot container: until it exits; exit 0 is success, anything else HealthCheckFailed naming the
        exit code and its last log lines (its dependants are then not started)."""
        target = f"{spec.dc}/{spec.node}/{spec.service}"
        timeout = self.health_timeout or ONE_SHOT_TIMEOUT
        deadline = time.monotonic() + timeout
        while True:
            state = read_container(self.client, cid)
            if state.status in ("exited", "dead"):
                if state.exit_code == 0:
                    return state
                tail = [line for line in self._logs(cid).splitlines() if line.strip()][-5:]
                said = f"; last log lines: {' | '.join(tail)}" if tail else "; it logged nothing"
                raise HealthCheckFailed(f"{target}: one-shot container {spec.image} exited with code "
                                        f"{state.exit_code} (depends_on service_completed_successfully wants 0)"
                                        f"{said}; its dependants were not started")
            if time.monotonic() > deadline:
                raise HealthCheckFailed(f"{target}: one-shot container {spec.image} did not complete within "
                                        f"{timeout:g}s (--health-timeout); its dependants were not started")
            time.sleep(ONE_SHOT_POLL)
