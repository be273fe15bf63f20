"""Following one Consul's health checks: a ``discovery.watcher.Watcher`` on ``ChecksQuery``.

The Watcher (the same one config templates use) holds a blocking query on
``/v1/health/state/any`` (``?index=&wait=``), so a check that changes is seen within
one round trip; it retries with backoff when Consul does not answer and starts
again from a plain read when Consul came back (its index may have gone backwards).
``HealthWatch`` adds what alerts need: whether Consul is reachable at all
(``state`` up / lost / connecting, and the error), and the latest checks.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from deployer.discovery.catalog import Check, ChecksQuery
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.watcher import Watcher
from deployer.errors import DeployerError

CONNECTING, UP, LOST = "connecting", "up", "lost"
DEP = ChecksQuery()


class HealthWatch:
    """The checks of the Consul at ``catalog`` (serving datacenters ``dcs``), followed in the background."""

    def __init__(self, catalog: ConsulCatalog, dcs: tuple[str, ...], *, blocking_wait: float = 30.0,
                 retry: float = 0.5, on_change: Callable[[], None] | None = None):
        self.catalog = catalog
        self.address = catalog.address
        self.dcs = dcs
        self.retry = retry
        self.on_change = on_change or (lambda: None)
        self.state = CONNECTING
        self.error: str | None = None
        self.checks: tuple[Check, ...] = ()
        self.changed_at = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = Watcher(catalog, blocking_wait=blocking_wait, backoff=0.25, max_backoff=2.0,
                                on_change=self._changed)
        self._thread = threading.Thread(target=self._first_read, name=f"health {self.address}", daemon=True)

    def start(self) -> "HealthWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._watcher.close()

    def snapshot(self) -> tuple[str, str | None, tuple[Check, ...]]:
        with self._lock:
            return self.state, self.error, self.checks

    def _set(self, state: str, error: str | None, checks: tuple[Check, ...] | None = None) -> None:
        with self._lock:
            changed = state != self.state or (checks is not None and checks != self.checks) or error != self.error
            self.state, self.error = state, error
            if checks is not None:
                self.checks = checks
            if changed:
                self.changed_at = time.monotonic()
        if changed:
            self.on_change()

    def _first_read(self) -> None:
        """Until Consul answers once (the Watcher follows it from then on)."""
        while not self._stop.is_set():
            try:
                checks = self._watcher.get(DEP)
            except DeployerError as exc:
                self._set(LOST, exc.one_line())
                self._stop.wait(self.retry)
                continue
            except Exception as exc:  # noqa: BLE001 - a watch must never die silently
                self._set(LOST, f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.retry)
                continue
            self._set(UP, None, checks)
            return

    def _changed(self) -> None:
        failing = self._watcher.failing()
        if DEP in failing:
            self._set(LOST, failing[DEP])
        else:
            try:
                checks = self._watcher.get(DEP)
            except DeployerError:
                return
            self._set(UP, None, checks)
