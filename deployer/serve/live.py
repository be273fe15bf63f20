"""Consul's health, followed once per Consul for the whole service: the page and the alerts share it.

``HealthWake`` holds one ``alerts.health.HealthWatch`` per Consul address the repository's
datacenters name (blocking queries on ``/v1/health/state/any`` through ``discovery.watcher``):
the only health watch of a ``deployer serve`` process. Its changes feed both users:

* the page: every change (a check changed state or output, a service was registered or
  removed, Consul lost or back) asks for a new fleet snapshot at once (``fleet.refresh_soon``),
  which publishes a ``status`` event that the page's script follows; while Consul cannot be
  reached the snapshot shows health ``unknown`` and the datacenter's Consul error;
* the alert rules: ``alerts.service.AlertService`` started inside serve takes these watches
  (``ServeState.health_watches``) instead of opening its own, so "service down", "Consul lost"
  and "back on Consul" come from the same reads as the page.

It is made with the state (the first of its background parts, so it starts before the alerts).
The Consul addresses are those of the repository when the service starts; a datacenter whose
``consul:`` is added later is followed after a restart (its health is still read with every
snapshot meanwhile).
"""

from __future__ import annotations

from typing import Any

from deployer.alerts.health import HealthWatch
from deployer.config import loader
from deployer.discovery.registration import consul_for
from deployer.errors import DeployerError

WAIT = 30.0  # seconds a blocking query waits for a change


class HealthWake:
    def __init__(self, wait: float = WAIT):
        self.wait = wait
        self.watches: list[HealthWatch] = []
        self.addresses: list[str] = []

    def start(self, state: Any) -> None:
        if not state.settings.consul or self.watches:
            return
        try:
            infra = loader.load(state.root)
        except DeployerError:
            return
        consuls: dict[str, list[str]] = {}
        for dc in sorted(infra.datacenters.values(), key=lambda d: d.name):
            if dc.consul:
                consuls.setdefault(dc.consul, []).append(dc.name)
        self.addresses = sorted(consuls)
        for address in self.addresses:
            dcs = consuls[address]
            catalog = consul_for(infra.datacenters[dcs[0]])
            self.watches.append(HealthWatch(catalog, tuple(dcs), blocking_wait=self.wait,
                                            on_change=state.fleet.refresh_soon).start())

    def stop(self) -> None:
        for w in self.watches:
            w.stop()
