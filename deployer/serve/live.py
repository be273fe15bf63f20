"""Consul's health changes wake the fleet snapshot, so the page shows a failing check within seconds.

The fleet snapshot (``fleet.FleetCache``) is read again every ``--status-interval`` and after
every job. ``HealthWake`` follows each datacenter's Consul with blocking queries on
``/v1/health/state/any`` (one thread per Consul address, through ``discovery``'s
``ConsulCatalog``): when the index moves (a check changed state or output, a service was
registered or removed) it asks for a new snapshot at once (``fleet.refresh_soon``), which
publishes a ``status`` event that the page's script follows. When Consul cannot be reached it
asks once too (the page then shows health ``unknown`` and the datacenter's Consul error), then
retries with a capped backoff, and again when Consul is back.

The Consul addresses are those of the repository when the service starts; a datacenter whose
``consul:`` is added later is followed after a restart (its health is still read with every
snapshot meanwhile).
"""

from __future__ import annotations

import threading
from typing import Any

from deployer.config import loader
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.errors import DeployerError

WAIT = 30.0  # seconds a blocking query waits for a change
BACKOFF = (0.5, 10.0)  # first and longest pause after a failed query


class HealthWake:
    def __init__(self, wait: float = WAIT):
        self.wait = wait
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.addresses: list[str] = []

    def start(self, state: Any) -> None:
        if not state.settings.consul:
            return
        try:
            infra = loader.load(state.root)
        except DeployerError:
            return
        self._stop.clear()
        self.addresses = sorted({dc.consul for dc in infra.datacenters.values() if dc.consul})
        for address in self.addresses:
            thread = threading.Thread(target=self._follow, args=(state, address), name=f"serve-health {address}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def _follow(self, state: Any, address: str) -> None:
        catalog = ConsulCatalog(address, timeout=self.wait + 10)
        index: int | None = None
        failing = False
        pause = BACKOFF[0]
        wait = f"{int(self.wait)}s"
        while not self._stop.is_set():
            try:
                new, _checks = catalog.call("follow health", lambda c: c.health.state("any", index=index, wait=wait))
            except DeployerError:
                if not failing:
                    failing = True
                    state.fleet.refresh_soon()
                self._stop.wait(pause)
                pause = min(pause * 2, BACKOFF[1])
                index = None
                continue
            pause = BACKOFF[0]
            new = int(new or 0)
            if failing or (index is not None and new != index):
                state.fleet.refresh_soon()
            failing = False
            # an index that went backwards (Consul restarted) starts over, as Consul's docs say
            index = new if index is None or new >= index else None
