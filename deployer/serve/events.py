"""The service's events: an in-process publish/subscribe broker and their server-sent-events encoding.

An event is a dict ``{"type": ..., "t": epoch seconds, "id": N, ...}``; types:
``status`` (the fleet changed), ``job`` (job id, state, line), ``deploy`` /
``rollback`` (ok or failed, targets, image, commit), ``lock`` (taken or
released), ``sync`` (the clone's pull: ok or the error), and, from
``deployer.alerts``, ``alert`` and ``drift``. ``id`` grows by one per event,
so an event stream that reconnects with ``Last-Event-ID`` gets what it
missed (of the last ``KEEP`` events).

``publish`` may be called from any thread (the job worker runs in one).
Subscribers are either asyncio queues (an SSE client: :meth:`EventBroker.subscribe`
inside the event loop) or plain callbacks run in the publishing thread
(:meth:`EventBroker.listen`, for the alerts watcher: keep them quick). A slow
SSE client whose queue is full loses events and is told so (a ``lagged``
event), it never slows the publisher.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

KEEP = 500
QUEUE = 1000


class Subscription:
    """One SSE client's queue, filled from any thread."""

    def __init__(self, broker: "EventBroker", loop: asyncio.AbstractEventLoop, types: frozenset[str] | None):
        self.broker = broker
        self.loop = loop
        self.types = types
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE)
        self.lagged = False

    def wants(self, event: dict) -> bool:
        return self.types is None or event["type"] in self.types

    def _put(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True

    def deliver(self, event: dict) -> None:
        if not self.wants(event):
            return
        try:
            self.loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the loop is closed: the client is gone
            self.broker.unsubscribe(self)

    async def get(self, timeout: float) -> dict | None:
        """The next event, or None after ``timeout`` seconds (the caller sends a keep-alive)."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self.broker.unsubscribe(self)


class EventBroker:
    def __init__(self, keep: int = KEEP):
        self._lock = threading.Lock()
        self._seq = 0
        self._recent: deque[dict] = deque(maxlen=keep)
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[dict], None]] = []

    def publish(self, type: str, **fields: Any) -> dict:
        event = {"type": type, "t": round(time.time(), 3), **fields}
        with self._lock:
            self._seq += 1
            event["id"] = self._seq
            self._recent.append(event)
            subs = list(self._subs)
            listeners = list(self._listeners)
        for sub in subs:
            sub.deliver(event)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the publisher
                pass
        return event

    def subscribe(self, types: Iterable[str] | None = None, since: int | None = None) -> Subscription:
        """A queue of the events to come (of ``types``), first those after id ``since`` still kept."""
        sub = Subscription(self, asyncio.get_running_loop(), frozenset(types) if types else None)
        with self._lock:
            self._subs.add(sub)
            backlog = [e for e in self._recent if since is not None and e["id"] > since]
        for event in backlog:
            if sub.wants(event):
                sub._put(event)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def listen(self, callback: Callable[[dict], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def recent(self, types: Iterable[str] | None = None, limit: int | None = None) -> list[dict]:
        """The kept events (of ``types``), oldest first, at most ``limit`` (the newest)."""
        wanted = frozenset(types) if types else None
        with self._lock:
            events = [e for e in self._recent if wanted is None or e["type"] in wanted]
        return events[-limit:] if limit else events

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)


def sse(event: dict) -> bytes:
    """One event as server-sent-events bytes: ``id``, ``event`` (its type) and one ``data`` line of JSON."""
    data = json.dumps(event, separators=(",", ":"), default=str)  # JSON never holds a raw newline
    return f"id: {event.get('id', '')}\nevent: {event['type']}\ndata: {data}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"
