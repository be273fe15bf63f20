"""Where alerts go: webhooks, each with its own queue and thread, so one slow or failing sink never holds
up the others.

Two formats (``alerts.yml`` ``format:``):

* ``slack``: ``{"text": "..."}``, what Slack's incoming webhooks (and Mattermost's, Rocket.Chat's) take;
* ``json``: the alert itself: ``{"type": "alert", "kind", "state", "text", "t", ...details}``.

Each POST has the sink's ``timeout``; a failure (no answer, a non-2xx status) is retried ``retries`` times,
one second apart, then logged and counted (``SinkStats``). Proxies come from the environment as urllib reads
them (``https_proxy``, ``no_proxy``), as for any outgoing HTTP client. The sink's URL is never logged
whole: its path usually is the secret.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from deployer.alerts.config import SinkConfig
from deployer.errors import AlertSinkError

log = logging.getLogger(__name__)
RETRY_DELAY = 1.0
MAX_QUEUE = 1000


def body(sink: SinkConfig, alert: dict[str, Any]) -> bytes:
    if sink.format == "slack":
        return json.dumps({"text": alert["text"]}).encode()
    return json.dumps(alert, sort_keys=True, default=str).encode()


def post(sink: SinkConfig, alert: dict[str, Any]) -> None:
    """One attempt; AlertSinkError (one line, the URL redacted) when it fails."""
    request = urllib.request.Request(sink.url, data=body(sink, alert), method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "deployer-alerts", **sink.headers})
    try:
        with urllib.request.urlopen(request, timeout=sink.timeout) as answer:
            answer.read(65536)
    except urllib.error.HTTPError as exc:
        raise AlertSinkError(sink.name, sink.redacted_url(), f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertSinkError(sink.name, sink.redacted_url(), " ".join(str(reason).split()) or type(exc).__name__) \
            from None


def deliver(sink: SinkConfig, alert: dict[str, Any], stop: threading.Event | None = None) -> None:
    """POST with the sink's retries; raises the last AlertSinkError."""
    for attempt in range(sink.retries + 1):
        try:
            post(sink, alert)
            return
        except AlertSinkError:
            if attempt == sink.retries or (stop is not None and stop.wait(RETRY_DELAY)) or (
                    stop is None and time.sleep(RETRY_DELAY)):
                raise


@dataclass
class SinkStats:
    sent: int = 0
    failed: int = 0
    last_error: str | None = None
    delays: list[float] = field(default_factory=list)  # seconds from the alert's creation to its delivery


class Sink:
    """One configured webhook with its own queue and sending thread."""

    def __init__(self, config: SinkConfig):
        self.config = config
        self.stats = SinkStats()
        self._queue: queue.Queue = queue.Queue(MAX_QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alert sink {config.name}", daemon=True)
        self._thread.start()

    def send(self, alert: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.stats.failed += 1
            log.error("alert sink %s: queue full, dropped: %s", self.config.name, alert.get("text"))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if alert is None:
                self._queue.task_done()
                return
            try:
                deliver(self.config, alert, self._stop)
                self.stats.sent += 1
                self.stats.delays.append(time.time() - float(alert.get("t") or time.time()))
            except AlertSinkError as exc:
                self.stats.failed += 1
                self.stats.last_error = exc.one_line()
                log.error("%s (alert dropped: %s)", exc.one_line(), alert.get("text"))
            finally:
                self._queue.task_done()

    def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until everything queued was tried."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)


class Sinks:
    """Every sink of the configuration: ``send`` hands an alert to each one's queue."""

    def __init__(self, configs: tuple[SinkConfig, ...] | list[SinkConfig]):
        self.sinks = [Sink(c) for c in configs]

    def send(self, alert: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.send(alert)

    def close(self, timeout: float = 5.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)
