"""Waiting for real systems (engines, Consul, nginx) in tests: bounded polls, never bare sleeps."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """The first truthy value ``predicate()`` returns within ``timeout`` seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")
