"""Registration around a deploy's container switches: the Applier's ``Hooks`` for one node.

``deploy_hooks`` is called before any container is touched; it refuses
unusable discovery labels and a Consul without a leader. Then, for each
container the Applier switches:

* ``healthy``: registers the new container and waits until Consul says its
  check passes (a failure deregisters it and fails the deploy of that service,
  which restores the old container);
* ``retiring``: puts the old one in maintenance (it leaves the passing set,
  proxies re-render without it), waits the drain period, deregisters it;
* ``restored``: registers again an old container a failed deploy restarted.

The hooks never connect to the engine: what a registration needs (labels,
published host ports, healthcheck) is in the ``ContainerState`` the Applier
hands them, read on the Applier's own connection.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.label_settings import DEFAULT_DRAIN, check_node_labels, parse_labels
from deployer.discovery.registration import (
    META_CONTAINER,
    Registration,
    agent_services,
    check_output,
    consul_for,
    deregister,
    maintenance,
    node_address,
    owned,
    register,
    registrations,
    require_leader,
    wait_passing,
)
from deployer.engine.apply import Hooks
from deployer.engine.state import ContainerState
from deployer.errors import ConfigError, DeployerError, HealthCheckFailed, LabelError
from deployer.spec import ContainerSpec

if TYPE_CHECKING:  # pragma: no cover

    from deployer.model import Datacenter, Node


class ConsulHooks:
    """Registration around the container switches of one node (see the module doc)."""

    def __init__(self, datacenter: "Datacenter", node: "Node", progress: Callable[[str], None] | None = None,
                 catalog: ConsulCatalog | None = None, sleep: Callable[[float], None] = time.sleep):
        self.dc = datacenter.name
        self.node = node
        self.address = node_address(node)
        self.catalog = catalog or consul_for(datacenter)
        self.progress = progress or (lambda msg: None)
        self.sleep = sleep

    def hooks(self) -> Hooks:
        return Hooks(healthy=self.healthy, retiring=self.retiring, restored=self.restored)

    def _registrations(self, container: ContainerState) -> list[Registration]:
        try:
            return registrations(self.dc, self.node.name, self.address, container)
        except LabelError as exc:
            raise ConfigError(self.node.compose_path or self.node.path, exc.message, field=exc.label) from None

    def healthy(self, spec: ContainerSpec, new: ContainerState) -> None:
        """Register the new container, then wait until its check passes in Consul; on failure deregister it
        and raise HealthCheckFailed (the Applier then removes it and restores the old one).

        ``new`` is read after the container started, so it carries its ephemeral host ports."""
        regs = self._registrations(new)
        if not regs:
            return
        target = f"{spec.dc}/{spec.node}/{spec.service}"
        try:
            existing = agent_services(self.catalog)
            for reg in regs:
                register(self.catalog, reg, existing)
                self.progress(f"registered {reg.name} ({reg.id}) at {reg.endpoint} in Consul at "
                              f"{self.catalog.address}; waiting for its {reg.describe_check()}")
            timeout = max(r.wait for r in regs)
            failing = wait_passing(self.catalog, regs, timeout)
            if failing:
                reg = failing[0]
                output = check_output(self.catalog, reg.id)
                raise HealthCheckFailed(
                    f"{target}: new container {spec.image} is healthy but its Consul {reg.describe_check()} "
                    f"did not pass within {timeout:g}s" + (f" ({output})" if output else "")
                    + "; restored the old container")
        except BaseException:
            for reg in regs:
                try:
                    deregister(self.catalog, reg.id)
                except DeployerError as exc:
                    self.progress(f"could not deregister {reg.id}: {exc.one_line()}")
            raise
        self.progress(f"{', '.join(r.name for r in regs)}: passing in Consul")

    def retiring(self, old: ContainerState) -> None:
        """Take the old container out of the passing set, let proxies drain it, deregister it.

        Never raises for Consul trouble: the new container is healthy by now, and a
        leftover registration is removed by the registrator's resync."""
        try:
            services = agent_services(self.catalog)
        except DeployerError as exc:
            self.progress(f"could not read Consul to deregister {old.name}: {exc.one_line()}")
            return
        mine = [sid for sid, entry in services.items()
                if owned(entry, self.dc, self.node.name) and (entry.get("Meta") or {}).get(META_CONTAINER) == old.id]
        if not mine:
            return
        try:
            drain = parse_labels(old.labels).drain
        except LabelError:
            drain = DEFAULT_DRAIN
        for sid in mine:
            try:
                maintenance(self.catalog, sid, f"deployer: {old.name} is being replaced")
            except DeployerError as exc:
                self.progress(f"could not take {sid} out of service: {exc.one_line()}")
        if drain > 0:
            self.progress(f"{old.name}: out of the passing set in Consul; draining {drain:g}s")
            self.sleep(drain)
        for sid in mine:
            try:
                deregister(self.catalog, sid)
            except DeployerError as exc:
                self.progress(f"could not deregister {sid}: {exc.one_line()} (the registrator will)")
        self.progress(f"deregistered {', '.join(mine)}")

    def restored(self, old: ContainerState) -> None:
        """A failed deploy restarted the old container (it had been retired): register it again.

        Registered at the host ports ``old`` carries: the Applier must hand over the
        state read after the restart for an ephemeral port (assigned anew) to be right."""
        try:
            regs = self._registrations(old)
            existing = agent_services(self.catalog)
            for reg in regs:
                register(self.catalog, reg, existing)
            if regs:
                self.progress(f"registered {old.name} again in Consul")
        except DeployerError as exc:
            self.progress(f"could not register {old.name} again: {exc.one_line()} (the registrator will)")


def deploy_hooks(datacenter: "Datacenter", node: "Node", progress: Callable[[str], None] | None = None) -> Hooks:
    """The Applier hooks registering ``node``'s containers in ``datacenter``'s Consul.

    Called before any container is touched: refuses unusable discovery labels
    (ConfigError naming the compose file and label) and a Consul that does not
    answer or has no leader (ConsulUnavailable naming its address). The hooks need
    no engine connection of their own: the container states the applier reads carry
    the published ports and the healthcheck."""
    check_node_labels(node)
    hooks = ConsulHooks(datacenter, node, progress)
    require_leader(hooks.catalog, "; nothing was changed (--no-consul deploys without registering)")
    return hooks.hooks()
