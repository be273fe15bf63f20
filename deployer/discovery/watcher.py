"""Following dependencies: the ``Watcher`` keeps the latest value of everything templates read.

One thread per dependency (consul-template's ``View``) follows it: with Consul
blocking queries when the catalog has ``query`` (``ConsulCatalog``), by polling
any other ``Catalog``. It keeps the latest value, retries with capped
exponential backoff, and records when it (re)connected, so that the template
runner can distrust data that was read just after Consul came back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Iterable

from deployer.discovery.catalog import Catalog, Dependency
from deployer.errors import DeployerError

log = logging.getLogger(__name__)


class _View:
    """One dependency being followed by a thread (consul-template's ``View``)."""

    def __init__(self, watcher: "Watcher", dep: Dependency, index: int, value: Any):
        self.watcher = watcher
        self.dep = dep
        self.index = index
        self.value = value
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"watch {dep}", daemon=True)

    def _run(self) -> None:
        w = self.watcher
        blocking = hasattr(w.source, "query")
        index = self.index
        backoff = w.backoff
        failing = False
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if blocking:
                    new_index, value = w.source.query(self.dep, index=index or None, wait=w.blocking_wait)
                else:
                    if self.stop.wait(w.poll_interval):
                        return
                    new_index, value = 0, self.dep.read(w.source)
            except Exception as exc:  # noqa: BLE001 - a view must never die silently
                if self.stop.is_set():
                    return
                message = exc.one_line() if isinstance(exc, DeployerError) else f"{type(exc).__name__}: {exc}"
                w._failed(self, message, first=not failing)
                failing = True
                # After a failure, start again from a plain read: if Consul was restarted
                # its index went backwards, and a blocking query for an index it has not
                # reached yet would only answer after the whole wait.
                index = 0
                if self.stop.wait(backoff * random.uniform(0.8, 1.2)):
                    return
                backoff = min(backoff * 2, w.max_backoff)
                continue
            if self.stop.is_set():
                return
            backoff = w.backoff
            reset = blocking and bool(index) and new_index < index
            if reset:
                log.info("%s: Consul index went backwards (%s -> %s); Consul's state was reset", self.dep, index, new_index)
            w._succeeded(self, value, reconnected=failing or reset)
            failing = False
            if blocking:
                unchanged = new_index == index
                index = max(new_index, 1)
                if unchanged and time.monotonic() - started < w.min_query_interval:
                    # An answer that came back at once without a change: do not spin.
                    self.stop.wait(w.min_query_interval)


class Watcher:
    """Follows every dependency it was asked for and keeps its latest value.

    ``get(dep)`` answers from memory once a dependency is known; the first time,
    it reads it at once (raising ``ConsulUnavailable`` and friends) and starts a
    thread that follows it. ``on_change`` is called (from those threads) when a
    value changes, when a dependency starts failing, and when it recovers.

    ``connected_at`` is the monotonic time of the first successful read;
    ``reconnected_at`` that of the latest reconnection: a success after
    failures, or Consul's index going backwards (its state was reset), None
    while there was none. ``failing()`` lists the dependencies whose last read
    failed; their values are the last good ones.
    """

    def __init__(
        self,
        source: Catalog,
        *,
        blocking_wait: float = 60.0,
        poll_interval: float = 2.0,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        min_query_interval: float = 0.05,
        on_change: Callable[[], None] | None = None,
    ):
        self.source = source
        self.blocking_wait = blocking_wait
        self.poll_interval = poll_interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.min_query_interval = min_query_interval
        self.on_change = on_change or (lambda: None)
        self.generation = 0  # bumped on every change of a value
        self.connected_at: float | None = None
        self.reconnected_at: float | None = None
        self._lock = threading.Lock()
        self._views: dict[Dependency, _View] = {}
        self._failing: dict[Dependency, str] = {}
        self._closed = False

    def get(self, dep: Dependency) -> Any:
        with self._lock:
            view = self._views.get(dep)
            if view is not None:
                return view.value
        if hasattr(self.source, "query"):
            index, value = self.source.query(dep)
        else:
            index, value = 0, dep.read(self.source)
        with self._lock:
            if dep in self._views:  # another caller got there first
                return self._views[dep].value
            if self.connected_at is None:
                self.connected_at = time.monotonic()
            view = _View(self, dep, index, value)
            self._views[dep] = view
            if not self._closed:
                view.thread.start()
        return value

    def retain(self, deps: Iterable[Dependency]) -> None:
        """Stop following every dependency not in ``deps``."""
        keep = set(deps)
        with self._lock:
            for dep in [d for d in self._views if d not in keep]:
                self._views.pop(dep).stop.set()
                self._failing.pop(dep, None)

    def failing(self) -> dict[Dependency, str]:
        with self._lock:
            return dict(self._failing)

    def dependencies(self) -> list[Dependency]:
        with self._lock:
            return list(self._views)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            views = list(self._views.values())
            self._views.clear()
        for view in views:
            view.stop.set()

    # -- called by views --

    def _failed(self, view: _View, message: str, first: bool) -> None:
        with self._lock:
            if self._views.get(view.dep) is not view:
                return
            self._failing[view.dep] = message
        if first:
            log.warning("watching %s: %s (retrying with backoff)", view.dep, message)
            self.on_change()
        else:
            log.debug("watching %s: still failing: %s", view.dep, message)

    def _succeeded(self, view: _View, value: Any, reconnected: bool) -> None:
        with self._lock:
            if self._views.get(view.dep) is not view:
                return
            changed = value != view.value
            if changed:
                view.value = value
                self.generation += 1
            if reconnected:
                self._failing.pop(view.dep, None)
                self.reconnected_at = time.monotonic()
        if reconnected:
            log.info("watching %s: connected again", view.dep)
        if changed or reconnected:
            self.on_change()
