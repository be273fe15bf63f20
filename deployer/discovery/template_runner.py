"""Rendering templates once, or following the catalog: the ``Runner``.

``Runner`` ties the steps of ``templates.py`` (render, check, swap, reload)
together for ``deployer render`` (``run_once``) and
``deployer templates watch CONFIG`` (``watch``). One pass renders EVERY
template first, stages the changed ones as candidates next to their
destinations, checks each candidate, and only when all of them pass renames
them over the live files and runs each distinct reload command once. A render
error or a failed check leaves every live file and the reloaded service alone.

Watching follows consul-template: each dependency a template read is followed
with Consul blocking queries (``watcher.Watcher``); changes wait for
quiescence (``wait.min`` without a further change, at most ``wait.max`` after
the first). Consul unreachable: nothing is written, reads back off
exponentially (capped) and reconnect.

The rule against consul-template #727 (data read just after Consul restarted
or reconnected is incomplete: rendered as is, upstreams lose their servers):

1. While any followed dependency is failing (Consul unreachable, no leader,
   no known servers), no pass runs; the last good files stay live.
2. After a *reconnection* (the first good read after a failure, or a read
   whose Consul index went backwards: Consul lost its state) a *settle
   window* of ``settle`` seconds opens. Inside it:
   a. the agent must report a leader, or the pass is retried after a backoff;
   b. data that *lost* something compared with what the live files were
      rendered from (an instance of a service, a service name, a key) is not
      trusted: the pass is deferred. It runs as soon as nothing is missing any
      more (quiescence starting over with the data coming back), or when the
      window closes: then the loss is real and is written.
   Gains and changes are written at once (after quiescence).
3. At start-up nothing is known about what the live files hold. For
   ``settle`` seconds after the first connection, if a destination already
   exists, a first pass in which a service (or the service list) reads empty
   is deferred the same way. A missing KV key does not count: templates
   often default them.
4. Outside the window data is trusted: a service whose instances all fail
   their checks loses its upstream after the normal quiescence wait.
A service is never written with an empty ``upstream`` block anyway: the
shipped template gives it a 503 location instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deployer.discovery.catalog import Catalog, Dependency, HealthQuery, KeyQuery, ServicesQuery
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.template_config import ConsulSettings, TemplateSpec, WatchConfig, load_config
from deployer.discovery.templates import check, environment, promote, reload, render_reading, show_command, stage
from deployer.discovery.watcher import Watcher
from deployer.errors import CheckFailed, ConfigError, ConsulError, ConsulUnavailable, ReloadFailed, TemplateError

log = logging.getLogger(__name__)


@dataclass
class _Outcome:
    kind: str  # done | failed | unavailable | deferred | reload_failed
    message: str = ""
    until: float | None = None  # deferred: retry at this time (None: when the watcher says so)
    written: list[Path] = field(default_factory=list)


class Runner:
    """Renders a set of templates once (``run_once``) or following the catalog (``watch``).

    ``catalog`` defaults to a ``ConsulCatalog`` for ``config.consul``; any
    ``Catalog`` works (one without blocking queries is polled every
    ``config.poll_interval``). ``on_event(kind, detail)`` is called for
    ``written`` (destination), ``reloaded`` (command), ``deferred``,
    ``failed``, ``unavailable`` (reason); ``stats`` counts them and passes.
    """

    def __init__(
        self,
        config: WatchConfig,
        catalog: Catalog | None = None,
        *,
        on_event: Callable[[str, str], None] | None = None,
    ):
        if catalog is None:
            if config.consul is None:
                raise ConfigError(config.path or "<config>", "no Consul address, and no catalog was given", field="consul")
            catalog = ConsulCatalog(
                config.consul.address,
                token=config.consul.token,
                datacenter=config.consul.datacenter,
                timeout=config.consul.timeout,
            )
        self.config = config
        self.catalog = catalog
        self.on_event = on_event or (lambda kind, detail: None)
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        settings = config.consul or ConsulSettings(address="")
        self._blocking_wait = settings.blocking_wait
        self._backoff = settings.backoff
        self._max_backoff = settings.max_backoff
        self._envs: dict[Path, Any] = {}
        self._live: dict[Dependency, Any] | None = None  # what the live files were rendered from
        self._reload_pending: list[str | list[str]] = []
        self._protect_startup = False

    def _event(self, kind: str, detail: str) -> None:
        self.stats[kind] += 1
        self.on_event(kind, detail)

    # -- one pass --

    def _render_all(self, resolve: Callable[[Dependency], Any]) -> tuple[list[tuple[TemplateSpec, str]], dict[Dependency, Any]]:
        rendered = []
        used: dict[Dependency, Any] = {}
        for spec in self.config.templates:
            folder = spec.source.absolute().parent
            env = self._envs.get(folder)
            if env is None:
                env = self._envs[folder] = environment(folder)
            text, reads = render_reading(spec.source, resolve, spec.vars, env)
            rendered.append((spec, text))
            used.update(reads)
        self.stats["renders"] += 1
        return rendered, used

    def _apply(self, rendered: list[tuple[TemplateSpec, str]]) -> list[Path]:
        """Stage every changed file, check all candidates, then swap and reload."""
        candidates: list[tuple[TemplateSpec, Path]] = []
        try:
            for spec, text in rendered:
                candidate = stage(spec.destination, text)
                if candidate is not None:
                    candidates.append((spec, candidate))
            for spec, candidate in candidates:
                if spec.check:
                    check(candidate, spec.check, timeout=spec.command_timeout, destination=spec.destination)
        except BaseException:
            for _, candidate in candidates:
                candidate.unlink(missing_ok=True)
            raise
        for spec, candidate in candidates:
            promote(candidate, spec.destination)
            log.info("wrote %s", spec.destination)
            self._event("written", str(spec.destination))
        commands = list(self._reload_pending)
        for spec, _ in candidates:
            if spec.reload and spec.reload not in commands:
                commands.append(spec.reload)
        self._reload_pending = []
        timeouts = {show_command(s.reload): s.command_timeout for s in self.config.templates if s.reload}
        for n, command in enumerate(commands):
            try:
                reload(command, timeout=timeouts.get(show_command(command), 30.0))
            except ReloadFailed:
                self._reload_pending = commands[n:]
                raise
            log.info("reloaded: %s", show_command(command))
            self._event("reloaded", show_command(command))
        return [spec.destination for spec, _ in candidates]

    def run_once(self) -> list[Path]:
        """Render every template once, check, swap the changed ones and reload.

        Returns the destinations written. Raises TemplateError, CheckFailed,
        ConsulUnavailable (also while Consul has no leader) or ReloadFailed.
        """
        leader = getattr(self.catalog, "leader", None)
        if callable(leader) and not leader():
            raise ConsulUnavailable(getattr(self.catalog, "address", "?"), "no cluster leader")
        rendered, _ = self._render_all(lambda dep: dep.read(self.catalog))
        return self._apply(rendered)

    def _losses(self, used: dict[Dependency, Any]) -> list[str]:
        """What the live files had that the data just read lacks: instances (by id),
        service names, keys. Gains and changes are not losses."""
        assert self._live is not None
        out = []
        for dep, old in self._live.items():
            new = used.get(dep)
            if isinstance(dep, HealthQuery):
                gone = sorted({i.id for i in old} - {i.id for i in new or ()})
            elif isinstance(dep, ServicesQuery):
                gone = sorted(set(old) - set(new or ()))
            else:
                gone = ["its value"] if old is not None and new is None else []
            if gone:
                out.append(f"{dep} lost {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}")
        return out

    def _watch_pass(self, watcher: Watcher) -> _Outcome:
        try:
            rendered, used = self._render_all(watcher.get)
        except TemplateError as exc:
            return _Outcome("failed", exc.one_line())
        except ConsulError as exc:
            return _Outcome("unavailable", exc.one_line())
        failing = watcher.failing()
        if failing:
            dep, why = next(iter(failing.items()))
            return _Outcome("deferred", f"reading {dep} fails ({why}); keeping the last good files")
        now = time.monotonic()
        reconnected = watcher.reconnected_at is not None
        settle_until = (watcher.reconnected_at or watcher.connected_at or now) + self.config.settle
        if now < settle_until:
            leader = getattr(self.catalog, "leader", None)
            if callable(leader):
                try:
                    if not leader():
                        return _Outcome("deferred", "Consul has no leader yet; keeping the last good files", now + self._backoff)
                except ConsulError as exc:
                    return _Outcome("unavailable", exc.one_line())
            if self._live is None:  # nothing rendered yet: what the live files hold is unknown
                losses = [
                    f"{d} is empty" for d, v in used.items() if not isinstance(d, KeyQuery) and d.empty(v)
                ] if self._protect_startup else []
            else:
                losses = self._losses(used) if reconnected else []
            if losses:
                what = "; ".join(losses[:3]) + ("; ..." if len(losses) > 3 else "")
                return _Outcome(
                    "deferred",
                    f"just after Consul {'reconnected' if reconnected else 'connected'}: {what}"
                    f"; keeping the last good files for up to {settle_until - now:.1f}s unless the data comes back",
                    settle_until,
                )
        try:
            written = self._apply(rendered)
        except CheckFailed as exc:
            return _Outcome("failed", exc.one_line())
        except ReloadFailed as exc:
            self._live = dict(used)
            return _Outcome("reload_failed", exc.one_line())
        except OSError as exc:
            return _Outcome("failed", f"writing files: {exc}")
        self._live = dict(used)
        watcher.retain(used)
        return _Outcome("done", written=written)

    # -- watching --

    def _mtimes(self) -> tuple:
        out = []
        for spec in self.config.templates:
            try:
                out.append(spec.source.stat().st_mtime_ns)
            except OSError:
                out.append(None)
        return tuple(out)

    def watch(self, stop_event: threading.Event) -> None:
        """Follow the catalog until ``stop_event`` is set (see the module doc for the rules)."""
        wake = threading.Event()
        watcher = Watcher(
            self.catalog,
            blocking_wait=self._blocking_wait,
            poll_interval=self.config.poll_interval,
            backoff=self._backoff,
            max_backoff=self._max_backoff,
            on_change=wake.set,
        )
        self._protect_startup = any(spec.destination.exists() for spec in self.config.templates)
        try:
            self._loop(watcher, wake, stop_event)
        finally:
            watcher.close()

    def _loop(self, watcher: Watcher, wake: threading.Event, stop: threading.Event) -> None:
        wait_min, wait_max = self.config.wait_min, self.config.wait_max
        pending = True  # the first pass runs at once
        first = last = None  # quiescence: the first and latest change not yet rendered
        not_before = 0.0
        backoff = self._backoff
        seen = (watcher.generation, self._mtimes())
        deferred_reason = None
        while not stop.is_set():
            woke = wake.is_set()
            wake.clear()
            now = time.monotonic()
            current = (watcher.generation, self._mtimes())
            if current != seen:
                seen = current
                if not pending or not_before > now:
                    first = now  # idle, or a deferred pass: quiescence starts over with this change
                pending, last = True, now
                not_before = 0.0  # new data: re-evaluate a deferred pass (after quiescence)
            elif woke and not_before == float("inf"):
                not_before = 0.0  # failing -> recovered
            quiet = first is None or now - last >= wait_min or now - first >= wait_max
            if pending and quiet and now >= not_before:
                outcome = self._watch_pass(watcher)
                now = time.monotonic()
                if outcome.kind == "done":
                    pending, first, last, not_before = False, None, None, 0.0
                    backoff = self._backoff
                    if deferred_reason:
                        log.info("data settled; templates rendered")
                    deferred_reason = None
                    self.last_error = None
                elif outcome.kind == "failed":
                    pending, first, last = False, None, None  # retried on the next change
                    self.last_error = outcome.message
                    log.error("%s; the last good files stay live, retrying on the next change", outcome.message)
                    self._event("failed", outcome.message)
                elif outcome.kind == "deferred":
                    not_before = outcome.until if outcome.until is not None else float("inf")
                    reason = outcome.message.split(";")[0]
                    if reason != deferred_reason:  # once per episode, not on every retry
                        log.warning("%s", outcome.message)
                        self._event("deferred", outcome.message)
                    deferred_reason = reason
                else:  # unavailable, reload_failed: retry with backoff
                    not_before = now + backoff
                    backoff = min(backoff * 2, self._max_backoff)
                    self.last_error = outcome.message
                    log.warning("%s; retrying in %.1fs", outcome.message, not_before - now)
                    self._event("unavailable" if outcome.kind == "unavailable" else "failed", outcome.message)
            timeout = 0.25  # also how often stop_event and the template files are looked at
            if pending:
                quiet_at = now if first is None else min(last + wait_min, first + wait_max)
                timeout = min(timeout, max(quiet_at, not_before) - now)
            wake.wait(max(timeout, 0.005))


def _as_config(config: WatchConfig | str | Path) -> WatchConfig:
    return config if isinstance(config, WatchConfig) else load_config(config)


def run_once(config: WatchConfig | str | Path, catalog: Catalog | None = None) -> list[Path]:
    """``deployer render``: render every template once; the destinations written."""
    return Runner(_as_config(config), catalog).run_once()


def watch(config: WatchConfig | str | Path, stop_event: threading.Event, catalog: Catalog | None = None) -> None:
    """``deployer templates watch CONFIG``: follow the catalog until ``stop_event`` is set."""
    Runner(_as_config(config), catalog).watch(stop_event)
