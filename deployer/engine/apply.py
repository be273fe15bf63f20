"""Carry out planned changes on one engine, health-gated, restoring on failure.

A replace goes like this:

1. the image is on the engine (pulled when missing);
2. a service that publishes host ports stops its old container first (the
   ports must be free); one that does not keeps the old one serving;
3. the new container is created (under a temporary name while the old one
   exists), started, and must become healthy: its healthcheck says healthy, or
   without one it runs for the settle period without restarting;
4. only then is the old container removed and the new one renamed.

If the new container fails, its last log lines are kept, it is removed, and
the old container is started again (and renamed back): the engine is as it
was. A one-shot service (a dependant waits for it with depends_on condition
service_completed_successfully) is not health-gated: it must run to
completion and exit 0.

A replicated service (a Change with ``parts``) is rolled out as its
``spec.Rollout`` says: replicas replaced in batches of ``parallelism`` (each
replica health-gated as above, the replicas of a batch at the same time),
``delay`` between batches, ``monitor`` seconds more of health per container,
``order`` start-first or stop-first; when more than ``max_failure_ratio`` of
them fail, ``failure_action`` pause stops there (the failed replica restored,
the ones replaced keep the new version), continue goes on, rollback puts every
replaced replica back (their old containers are kept, stopped, until the last
batch passed). Replicas beyond the count are removed after the others
(``rollout``). Hooks let service discovery register the new container once
healthy and deregister the old one before it stops; a ``healthy`` hook that raises fails the
new container like a failed healthcheck (same restore), and ``restored`` is told
when a failed stop-first replace started the old container again.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

from deployer.spec import NEXT_SUFFIX, ContainerSpec, NetworkSpec, VolumeSpec, inherit_anonymous_volumes
from deployer.errors import ContainerConflict, HealthCheckFailed, ImageNotFound, LockLost, ResourceMissing
from deployer.engine.plan import CREATE, NONE, REMOVE, REPLACE, TIDY, Change
from deployer.engine import registry_credentials as credentials
from deployer.engine.connect import import_docker
from deployer.engine.ship import Shipper
from deployer.engine.rollout import RolloutSteps, _Kept
from deployer.engine.state import ContainerState, NodeState, read_container
from deployer.imageref import ImageRef
from deployer.labels import LABEL_LOCK_ID

docker = import_docker()  # without docker-py's SSH support until an ssh:// node needs it (engine.connect)

DEFAULT_SETTLE = 2.0  # seconds a container without healthcheck must run without restarting
POLL = 0.02  # seconds between health polls: detection latency, a few cheap inspects
# With the engine's event stream telling when the container changes, the state is read again at
# once; this is only the longest wait between two reads should no event come.
EVENT_POLL = 0.5
WAKE_EVENTS = ("health_status", "die", "restart", "oom", "kill", "stop", "pause", "destroy")
LOG_LINES = 20


@dataclass
class Hooks:
    """Called around container switches; service discovery plugs in here."""

    healthy: Callable[[ContainerSpec, ContainerState], None] | None = None  # new container is healthy
    retiring: Callable[[ContainerState], None] | None = None  # old container is about to stop
    # a failed replace started again an old container that had been retired (stopped first)
    restored: Callable[[ContainerState], None] | None = None


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says the engine could not be reached (as opposed to answering with an error)."""
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, socket.timeout,
                        ConnectionError, TimeoutError)):
        return True
    try:
        import paramiko
    except ImportError:  # pragma: no cover - paramiko is a dependency
        return False
    return isinstance(exc, paramiko.SSHException)


class Steps(list):
    """The steps of a change, reported to ``progress`` as they happen."""

    def __init__(self, progress: Callable[[str], None]):
        super().__init__()
        self.progress = progress

    def append(self, step: str) -> None:
        super().append(step)
        self.progress(step)


@dataclass
class Outcome:
    change: Change
    container: ContainerState | None = None
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)


def pull_failed(ref: str, detail: str, needed_by: str | None = None) -> ImageNotFound:
    """One line saying why the node could not pull ``ref``, naming the image and its registry.

    ``needed_by`` (``"rollback"``) names the command that needed it: an image gone from
    both the node and the registry is then said to be so (pruned?)."""
    detail = " ".join(str(detail).split())
    try:
        parsed = ImageRef.parse(ref)
        registry, name = parsed.domain or "docker.io", parsed.path
        version = parsed.digest or parsed.tag or "latest"
    except Exception:  # noqa: BLE001 - the reference was checked long before; say what we can
        registry, name, version = "?", ref, "?"
    low = detail.lower()
    not_found = "manifest unknown" in low or "name unknown" in low or " not found" in low
    if not_found and needed_by:
        return ImageNotFound(f"the image {needed_by} needs, {ref}, is not on the node and the registry "
                             f"{registry} has no {name}:{version} (pruned?)")
    if not_found:
        why = f"registry {registry} has no {name}:{version} (was it pushed?)"
    elif "x509" in low or "certificate" in low:
        why = (f"the node does not trust registry {registry}'s TLS certificate (its CA goes in "
               f"/etc/docker/certs.d/{registry}/ca.crt on the node): {detail}")
    elif any(m in low for m in ("connection refused", "no such host", "i/o timeout", "no route to host",
                                "network is unreachable", "timeout exceeded", "connection reset")):
        # the registry answered with a token realm elsewhere, and that is what the node cannot reach
        realm = next((u for u in re.findall(r'"(https?://[^"?]+)', detail) if urlsplit(u).netloc != registry), None)
        if realm:
            why = f"the token server of registry {registry}, {realm}, is unreachable from the node: {detail}"
        else:
            why = f"registry {registry} is unreachable from the node: {detail}"
    elif "denied" in low or "unauthorized" in low or "authentication required" in low:
        why = (f"registry {registry} refused the pull (no such repository, or wrong or missing credentials: "
               f"the datacenter's registry_credentials, else this machine's Docker config): {detail}")
    else:
        why = f"pulling it from registry {registry} failed: {detail}"
    return ImageNotFound(f"image {ref} is not on the node and {why}")


@dataclass(frozen=True)
class SwapOptions:
    """How a container switch is health-gated, as the operator asked (``--settle``, ``--health-timeout``)."""

    settle: float | None = None  # None: DEFAULT_SETTLE
    health_timeout: float | None = None  # None: from the healthcheck's own timing


class Applier(RolloutSteps):
    """Applies changes to one node's engine."""

    lost_connection = staticmethod(lost_connection)

    def __init__(self, client: "docker.DockerClient", options: SwapOptions | None = None,
                 hooks: Hooks | None = None, progress: Callable[[str], None] | None = None,
                 registry_credentials: str | None = None, guard: Callable[[], None] | None = None,
                 lock_id: str | None = None):
        options = options or SwapOptions()
        self.registry_credentials = registry_credentials  # the datacenter's file, for pulls (engine.registry_credentials)
        # The node lock (ops.locks): ``guard`` raises LockLost once it is gone and is called before every
        # container step; containers created under it carry ``lock_id`` (label deployer.lock.id).
        self.guard = guard or (lambda: None)
        self.lock_id = lock_id
        self.client = client
        self.api = client.api
        self.settle = DEFAULT_SETTLE if options.settle is None else options.settle
        self.health_timeout = options.health_timeout
        self.hooks = hooks or Hooks()
        self.progress = progress or (lambda msg: None)
        self.shipper = Shipper(self.api, self.progress)

    # -- images, volumes, networks -------------------------------------------------

    def ensure_image(self, ref: str, needed_by: str | None = None) -> str:
        """The image id of ``ref`` on the engine, pulling it when missing (``needed_by``: see pull_failed)."""
        try:
            return self.api.inspect_image(ref)["Id"]
        except docker.errors.NotFound:
            pass
        self.progress(f"pulling {ref}")
        started = time.monotonic()
        layers: dict[str, tuple[str, float]] = {}  # layer -> (last status shown, when)
        # a progress callable with a ``layer(layer, status, current, total)`` method takes the layers as numbers
        layers_to = getattr(self.progress, "layer", None)
        try:
            for event in self.api.pull(ref, stream=True, decode=True, auth_config=self._pull_auth(ref)):
                if "error" in event:
                    raise pull_failed(ref, (event.get("errorDetail") or {}).get("message") or event["error"],
                                      needed_by)
                status, layer = event.get("status"), event.get("id")
                if not status or not layer or status.startswith("Pulling from"):
                    continue
                if layers_to is not None:  # the progress shows layers itself (a bar): every event, as numbers
                    detail = event.get("progressDetail") or {}
                    layers_to(layer, status, detail.get("current"), detail.get("total"))
                    continue
                # one line per layer and status, and at most one a second while it downloads
                last, when = layers.get(layer, ("", 0.0))
                now = time.monotonic()
                if status != last or (event.get("progress") and now - when >= 1.0):
                    layers[layer] = (status, now)
                    self.progress(f"{layer}: {status} {event.get('progress') or ''}".rstrip())
        except docker.errors.APIError as exc:
            raise pull_failed(ref, str(exc.explanation or exc), needed_by) from None
        image_id = self.api.inspect_image(ref)["Id"]
        self.progress(f"pulled {ref} ({time.monotonic() - started:.1f}s)")
        return image_id

    def _pull_auth(self, ref: str) -> dict | None:
        """The registry credentials the node pulls ``ref`` with (the datacenter's file, then this
        machine's Docker config), handed to the engine: the node needs no ``docker login`` of its own."""
        domain = ImageRef.parse(ref).domain or "docker.io"
        found = credentials.lookup(domain, self.registry_credentials)
        return found.auth_config() if found is not None else None

    def ensure_resources(self, volumes: list[VolumeSpec], networks: list[NetworkSpec]) -> None:
        """Create the node's volumes and networks that are missing; an external one must already exist."""
        for vol in volumes:
            if not self._exists("volume", vol.name, vol.external, self.api.inspect_volume):
                self.api.create_volume(vol.name, driver=vol.driver, driver_opts=vol.driver_opts or None, labels=vol.labels)
        for net in networks:
            if not self._exists("network", net.name, net.external, self._inspect_network):
                self.api.create_network(net.name, driver=net.driver, options=net.options or None,
                                        internal=net.internal, labels=net.labels, check_duplicate=True)

    def _exists(self, kind: str, name: str, external: bool, inspect: Callable[[str], object]) -> bool:
        """Whether the engine has it; a missing external one is ResourceMissing (the deployer never creates those)."""
        try:
            inspect(name)
            return True
        except docker.errors.NotFound:
            if external:
                raise ResourceMissing(f"external {kind} {name} does not exist on the node") from None
            return False

    def _inspect_network(self, name: str) -> None:
        """By exact name: the engine's network lookup by name also matches prefixes and ids."""
        if not any(n["Name"] == name for n in self.api.networks(names=[name])):
            raise docker.errors.NotFound(f"network {name} not found")

    # -- containers --------------------------------------------------------------

    def check_names(self, change: Change, state: NodeState) -> None:
        """A name we need that belongs to a container the deployer did not create is refused."""
        spec = change.spec
        if spec is None:
            return
        for name in (spec.name, spec.name + NEXT_SUFFIX):
            other = state.names.get(name)
            if other is None:
                continue
            if other.service == spec.service and other.dc == spec.dc and other.node == spec.node:
                continue
            raise ContainerConflict(
                f"container name {name!r} on {spec.dc}/{spec.node} is taken by container {other.short_id} "
                f"({other.image}) that the deployer did not create for {spec.service}; rename or remove it by hand"
            )

    def apply(self, change: Change, state: NodeState) -> Outcome:
        started = time.monotonic()
        self.shipper.observe(state)
        outcome = Outcome(change, steps=Steps(self.progress))
        if change.action != NONE:
            self.guard()  # only the holder of the node's lock changes (or tidies) its containers
        if change.action == NONE:
            outcome.container = change.current
        elif change.action == REMOVE:
            assert change.current is not None
            self._retire(change.current)
            outcome.steps.append(f"removed {change.current.name}")
        elif change.action == TIDY:
            self.check_names(change, state)
            for c in change.stale:
                self._retire(c)
                outcome.steps.append(f"removed leftover {c.name}")
            assert change.current is not None and change.spec is not None
            if change.current.name != change.spec.name:
                self.api.rename(change.current.id, change.spec.name)
                outcome.steps.append(f"renamed {change.current.name} to {change.spec.name}")
            outcome.container = read_container(self.client, change.current.id)
        elif change.parts:
            outcome.container = self._rollout(change, state, outcome.steps)
            self._restart_dependants(change, state, outcome.steps)
        elif change.action in (CREATE, REPLACE):
            self.check_names(change, state)
            outcome.container = self._replace(change, outcome.steps)
            self._restart_dependants(change, state, outcome.steps)
        else:  # pragma: no cover - plan only makes the actions above
            raise ValueError(change.action)
        outcome.seconds = time.monotonic() - started
        return outcome

    # -- one container -------------------------------------------------------------

    def _replace(self, change: Change, steps: list[str], keep_old: bool = False) -> Any:
        """Replace (or create) one container, health-gated; its state. With ``keep_old`` (a rollout that may
        roll back) the old container is stopped, not removed, and (state, _Kept) is returned."""
        spec = change.spec
        assert spec is not None
        for c in change.stale:  # leftovers of an interrupted deploy
            if change.current is None or c.id != change.current.id:
                self._remove(c.id)
                steps.append(f"removed leftover {c.name}")
        old = change.current
        stop_first = old is not None and (spec.published_ports or old.publishes_ports
                                          or spec.rollout.order == "stop-first")
        if old is not None and stop_first and old.running:
            self._call_retiring(old)
            try:
                self._run_hooks(old.id, spec.pre_stop, "pre_stop", spec, steps)  # a failure aborts the stop
            except BaseException as exc:
                if self.hooks.restored and not lost_connection(exc):
                    self.hooks.restored(old)  # announced as retiring, still running
                raise
            self.api.stop(old.id, timeout=spec.stop_timeout)
            why = "update_config.order: stop-first" if not (spec.published_ports or old.publishes_ports) \
                else "its host ports must be free"
            steps.append(f"stopped {old.name} ({why})")
        name = spec.name if old is None or old.name != spec.name else spec.name + NEXT_SUFFIX
        new_id = self._create(spec, name, inherit=old)
        steps.append(f"created {name} ({spec.image})")
        new: ContainerState | None = None
        retired = False  # the old container was announced as retiring inside the try (start-first pre_stop)
        try:
            self.api.start(new_id)
            if spec.rollout.one_shot:
                self.progress(f"started {name}, waiting until it completes")
                new = self.wait_completed(new_id, spec)
                steps.append(f"{name} completed (exit code 0)")
            else:
                self._run_hooks(new_id, spec.post_start, "post_start", spec, steps)  # a failure fails the container
                self.progress(f"started {name}, waiting until it is healthy")
                new = self.wait_healthy(new_id, spec)
                steps.append(f"{name} is {new.health or 'running'}")
            if self.hooks.healthy and not spec.rollout.one_shot:
                # e.g. registered and passing in Consul; a failure here restores too
                self.hooks.healthy(spec, new)
            self.guard()  # the lock lost while waiting: put the old container back, touch nothing more
            if old is not None and not stop_first and old.running and spec.pre_stop:
                self._call_retiring(old)
                retired = True
                self._run_hooks(old.id, spec.pre_stop, "pre_stop", spec, steps)  # a failure aborts the switch
        except BaseException as exc:
            if lost_connection(exc):
                # The engine went away: cleanup calls would only wait for it too. The
                # leftover container is removed by the next plan/apply or deploy (a tidy).
                raise
            logs = self._logs(new_id)
            if retired and new is not None:  # the new one was announced healthy: take it back
                self._call_retiring(new)
            self._remove(new_id)
            self._sweep(spec.image)
            if old is not None:
                restored = self._restore(old)
                if (stop_first or retired) and old.running and self.hooks.restored:
                    try:
                        self.hooks.restored(restored)
                    except Exception as hook_exc:  # noqa: BLE001 - the original failure matters more
                        self.progress(f"could not announce {old.name} again: {hook_exc}")
            if isinstance(exc, LockLost):
                raise  # the new container is gone and the old one back: nothing half-done stays
            if isinstance(exc, HealthCheckFailed):
                exc.logs = exc.logs or logs
                exc.container = name
                raise
            if isinstance(exc, Exception):
                raise HealthCheckFailed(f"{spec.dc}/{spec.node}/{spec.service}: starting {spec.image} failed: "
                                        f"{' '.join(str(exc).split())}; restored the old container", name, logs) from exc
            raise
        if old is not None and keep_old:
            if not stop_first:
                self._call_retiring(old)
                if old.running:
                    self.api.stop(old.id, timeout=spec.stop_timeout)
            steps.append(f"stopped {old.name} (kept until every replica passed: failure_action rollback)")
            return read_container(self.client, new_id), _Kept(spec, old, new_id, name)
        if old is not None:
            if not stop_first and not retired:
                self._call_retiring(old)
            self._remove(old.id, stop_timeout=spec.stop_timeout)
            steps.append(f"removed {old.name}")
            if name != spec.name:
                self.api.rename(new_id, spec.name)
                steps.append(f"renamed {name} to {spec.name}")
        self._sweep(spec.image)
        final = read_container(self.client, new_id)
        return (final, None) if keep_old else final

    def _sweep(self, image: str) -> None:
        """Remove the shipped files only removed containers mounted (engine.ship); a failure is only reported."""
        if not self.shipper.retired:
            return
        try:
            self.shipper.sweep(image)
        except Exception as exc:  # noqa: BLE001 - what was deployed matters more; a later deploy sweeps again
            self.progress(f"could not remove unused shipped files: {' '.join(str(exc).split())}")

    def _call_retiring(self, container: ContainerState) -> None:
        if self.hooks.retiring:
            self.hooks.retiring(container)

    def _create(self, spec: ContainerSpec, name: str, inherit: ContainerState | None = None) -> str:
        first_net = spec.networks[0] if spec.networks else None
        networking = None
        if first_net is not None:
            networking = self.api.create_networking_config({first_net[0]: self._endpoint(spec, *first_net)})
        self.shipper.ship(spec)  # secrets and files from the repository, into the node's store (engine.ship)
        host = spec.host
        if inherit is not None:  # the old container's anonymous volumes, as docker compose carries them over
            old_mounts = inherit.mounts if inherit.mounts is not None else \
                self.api.inspect_container(inherit.id).get("Mounts") or []  # read with the node, or read now
            if any(m.get("Type") == "volume" for m in old_mounts):
                image_volumes = (self.api.inspect_image(spec.image).get("Config") or {}).get("Volumes")
                host = inherit_anonymous_volumes(spec.host, old_mounts, image_volumes)
        host_config = self.api.create_host_config(**host)
        created = self._create_container(spec, name, host_config, networking)
        cid = created["Id"]
        self.shipper.used(cid, spec)
        try:
            for net, aliases in spec.networks[1:]:
                self.api.connect_container_to_network(cid, net, aliases=aliases or None,
                                                      ipv4_address=spec.ipv4_addresses.get(net),
                                                      **spec.endpoints.get(net, {}))
        except BaseException:
            self._remove(cid)
            raise
        return cid

    def _run_hooks(self, cid: str, hooks: list[dict[str, Any]], what: str, spec: ContainerSpec,
                   steps: list[str]) -> None:
        """Compose's post_start / pre_stop: each command exec'd in the container in turn; one that exits
        non-zero is a HealthCheckFailed (post_start: the new container failed; pre_stop: the stop is aborted)."""
        for i, hook in enumerate(hooks):
            exec_id = self.api.exec_create(cid, hook["cmd"], user=hook.get("user") or "",
                                           privileged=bool(hook.get("privileged")),
                                           environment=hook.get("environment") or None,
                                           workdir=hook.get("workdir") or None)["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
            if code != 0:
                tail = "\n".join(output.decode("utf-8", "replace").splitlines()[-LOG_LINES:])
                then = "the stop is aborted" if what == "pre_stop" else "the new container failed"
                raise HealthCheckFailed(f"{spec.dc}/{spec.node}/{spec.service}: {what} hook {i + 1} "
                                        f"({' '.join(hook['cmd'])}) exited with code {code}; {then}", logs=tail)
            steps.append(f"ran {what} hook {i + 1} in {cid[:12]}")

    def _create_container(self, spec: ContainerSpec, name: str, host_config: Any, networking: Any) -> dict:
        labels = spec.all_labels()
        if self.lock_id:  # which locked command created it (ops.locks)
            labels[LABEL_LOCK_ID] = self.lock_id
        if not spec.create.get("stdin_open"):
            return self.api.create_container(spec.image, name=name, labels=labels, host_config=host_config,
                                             networking_config=networking, **spec.create)
        # with stdin_open docker-py also sets AttachStdin and StdinOnce (as `docker run -i` does); compose's
        # stdin_open is OpenStdin alone: build the request, then send it with those two off
        kwargs = dict(spec.create)
        platform = kwargs.pop("platform", None)
        proxies = getattr(self.api, "_proxy_configs", None)  # what create_container adds, as in the branch above
        if proxies is not None:
            kwargs["environment"] = proxies.inject_proxy_environment(kwargs.get("environment")) or None
        config = self.api.create_container_config(spec.image, kwargs.pop("command", None), labels=labels,
                                                  host_config=host_config, networking_config=networking, **kwargs)
        config["AttachStdin"] = config["StdinOnce"] = False
        return self.api.create_container_from_config(config, name, platform)

    def _endpoint(self, spec: ContainerSpec, net: str, aliases: list[str]):
        return self.api.create_endpoint_config(aliases=aliases or None, ipv4_address=spec.ipv4_addresses.get(net),
                                               **spec.endpoints.get(net, {}))

    def wait_healthy(self, cid: str, spec: ContainerSpec, restarted: bool = False) -> ContainerState:
        """Until healthy (healthcheck) or running for the settle period; HealthCheckFailed otherwise.

        With a healthcheck, the engine's event stream for the container (health_status, die, restart...)
        wakes the wait as soon as something changes: measured 4 ms after the passing check ends, where a
        poll every 20 ms took 26 ms (median, 10 runs each). The state is always read with an inspect, so
        the decision is the same either way; without events (SSH, whose streams cannot be cancelled, or
        until the stream is open) it polls.
        """
        target = f"{spec.dc}/{spec.node}/{spec.service}"
        state = read_container(self.client, cid)  # the first look also says whether there is a healthcheck
        restarts = state.restart_count if restarted else 0  # a container restarted on purpose counts from here
        health_cfg = state.healthcheck or {}
        has_health = bool(health_cfg.get("Test")) and health_cfg["Test"][0] != "NONE"
        deadline = time.monotonic() + (self.health_timeout or self._default_timeout(health_cfg, has_health))
        since = time.monotonic()
        monitor = spec.rollout.monitor  # update_config.monitor: healthy for this long more, then it passes
        healthy_since: list[float] = []

        def monitored(now_state: ContainerState) -> bool:
            if not monitor:
                return True
            if not healthy_since:
                healthy_since.append(time.monotonic())
                self.progress(f"{now_state.name}: healthy; watching it {monitor:g}s more (update_config.monitor)")
            return time.monotonic() - healthy_since[0] >= monitor

        if monitor:
            deadline += monitor
        changes = _ContainerEvents(self.api, cid) if has_health else None
        try:
            while True:
                if state.status in ("exited", "dead"):
                    raise HealthCheckFailed(f"{target}: new container {spec.image} exited with code "
                                            f"{state.exit_code}; restored the old container")
                if state.restart_count > restarts or state.status == "restarting":
                    raise HealthCheckFailed(f"{target}: new container {spec.image} restarted "
                                            f"({state.restart_count} times); restored the old container")
                if spec.rollout.healthcheck_required and not has_health:
                    raise HealthCheckFailed(f"{target}: new container {spec.image} has no healthcheck, and a "
                                            "service waits for it to be healthy (depends_on condition "
                                            "service_healthy); restored the old container")
                if has_health:
                    if state.health == "healthy" and monitored(state):
                        return state
                    if state.health == "unhealthy":
                        raise HealthCheckFailed(f"{target}: new container {spec.image} is unhealthy; "
                                                "restored the old container")
                elif state.running and time.monotonic() - since >= self.settle and monitored(state):
                    return state
                now = time.monotonic()
                if now > deadline:
                    raise HealthCheckFailed(f"{target}: new container {spec.image} was not healthy within "
                                            f"{deadline - since:.0f}s; restored the old container")
                if changes is not None:
                    changes.wait(deadline - now)
                else:
                    time.sleep(POLL)
                state = read_container(self.client, cid)
        finally:
            if changes is not None:
                changes.close()

    def _default_timeout(self, health_cfg: dict, has_health: bool) -> float:
        if not has_health:
            return self.settle + 30
        ns = 1e9
        interval = (health_cfg.get("Interval") or 30 * ns) / ns
        timeout = (health_cfg.get("Timeout") or 30 * ns) / ns
        retries = health_cfg.get("Retries") or 3
        start = (health_cfg.get("StartPeriod") or 0) / ns
        return start + (interval + timeout) * (retries + 1) + 5

    def _logs(self, cid: str) -> str:
        try:
            return self.api.logs(cid, tail=LOG_LINES, stdout=True, stderr=True).decode("utf-8", "replace")
        except Exception:
            return ""

    def _restore(self, old: ContainerState) -> ContainerState:
        """Start the old container again if it was running; its state as it is now (new ephemeral ports)."""
        try:
            current = read_container(self.client, old.id)
            if not current.running and old.running:
                self.api.start(old.id)
                current = read_container(self.client, old.id)
            return current
        except docker.errors.APIError as exc:  # report, but the original failure matters more
            self.progress(f"could not restart {old.name}: {exc}")
            return old

    def _retire(self, container: ContainerState) -> None:
        if container.running:
            self._call_retiring(container)
        self._remove(container.id)
        self._sweep(container.image_id)

    def _remove(self, cid: str, stop_timeout: int = 10) -> None:
        try:
            self.api.stop(cid, timeout=stop_timeout)
        except docker.errors.NotFound:
            self.shipper.forget(cid)
            return
        except docker.errors.APIError:
            pass
        try:
            self.api.remove_container(cid, force=True, v=False)
        except docker.errors.NotFound:
            pass
        self.shipper.forget(cid)


class _ContainerEvents:
    """The engine's events about one container, read on a thread of their own: ``wait`` returns as soon as
    one came, else after at most EVENT_POLL seconds. The stream is opened on that thread, so a slow or
    silent engine never holds up the wait; until it is open, and where it cannot be (or cannot be cancelled:
    SSH), ``wait`` is the 20 ms poll."""

    def __init__(self, api: Any, cid: str):
        self._api, self._cid = api, cid
        self._stream: Any = None
        self._ready = False
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        if not str(getattr(api, "base_url", "")).startswith("http+docker://ssh"):
            self._thread = threading.Thread(target=self._read, name="container-events", daemon=True)
            self._thread.start()

    def _read(self) -> None:
        try:
            # not the exec_* events of every check run: only what can change the decision
            stream = self._api.events(decode=True, filters={"type": "container", "container": self._cid,
                                                            "event": list(WAKE_EVENTS)})
            with self._lock:
                if self._closed:
                    stream.close()
                    return
                self._stream, self._ready = stream, True
            self._changed.set()  # read the state once more: what changed before the stream opened is in it
            for _event in stream:
                self._changed.set()
        except Exception:  # noqa: BLE001 - closed under us, or the engine went away: the poll goes on
            pass
        finally:
            self._ready = False
            self._changed.set()

    def wait(self, timeout: float) -> None:
        timeout = max(timeout, 0.0)
        if self._ready:
            self._changed.wait(min(EVENT_POLL, timeout))
        else:
            time.sleep(min(POLL, timeout))
        self._changed.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - already closed, or the connection is gone
                pass
