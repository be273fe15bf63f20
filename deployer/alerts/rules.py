"""When a change becomes an alert: the threshold, once per (key, state), reminders, "back to normal".

Pure logic, no I/O and no threads: the caller feeds observations (``observe``) and
asks, on a clock it owns, which alerts are due (``tick``). consul-alerts' change
threshold is the model: a check that turns critical is announced only once it has
stayed critical for ``threshold`` seconds, so a check that flaps faster than that
sends nothing.

* every key (a Consul check, "Consul itself") has a *normal* state; the announced
  state starts out normal (what is already down when the watch starts is announced
  after the threshold, like any other change);
* ``observe(key, state)``: a state other than the announced one starts (or keeps) a
  pending change; the announced state again cancels it;
* ``tick(now)``: a pending change that held ``threshold`` seconds is announced once,
  and becomes the announced state: one alert per (key, state); while a key is announced
  in a state other than normal and ``reminder`` is set, a reminder every ``reminder``
  seconds; a return to normal is announced as "recovered" (only if the bad state was);
* ``forget(key)``: the key is gone (deregistered): nothing is announced for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: kinds of ``Transition``
CHANGED, RECOVERED, REMINDER = "changed", "recovered", "reminder"


@dataclass
class Transition:
    """One announcement: ``key`` went from ``old`` to ``new`` (``kind`` changed / recovered / reminder)."""

    key: str
    kind: str
    old: str
    new: str
    since: float  # when the state began (the first observation of it)
    info: dict[str, Any] = field(default_factory=dict)  # the latest observation's details (check name, output)
    old_since: float | None = None  # when the old state began (None: it is the initial, normal one)


@dataclass
class _Key:
    normal: str
    announced: str
    info: dict[str, Any]
    announced_at: float | None = None
    pending: str | None = None
    pending_since: float = 0.0
    last_sent: float = 0.0


class Rules:
    """The threshold / once / reminder / recovery rules over many keys (see the module doc)."""

    def __init__(self, threshold: float = 30.0, reminder: float | None = None):
        if threshold < 0:
            raise ValueError("threshold must not be negative")
        if reminder is not None and reminder <= 0:
            raise ValueError("reminder must be positive")
        self.threshold = float(threshold)
        self.reminder = reminder
        self._keys: dict[str, _Key] = {}

    def observe(self, key: str, state: str, now: float, *, normal: str = "passing",
                info: dict[str, Any] | None = None) -> None:
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _Key(normal=normal, announced=normal, info={})
        if info is not None:
            k.info = dict(info)
        if state == k.announced:
            k.pending = None
        elif state != k.pending:
            k.pending, k.pending_since = state, now

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)

    def keys(self) -> list[str]:
        return sorted(self._keys)

    def announced(self, key: str) -> str | None:
        k = self._keys.get(key)
        return None if k is None else k.announced

    def tick(self, now: float) -> list[Transition]:
        out = []
        for key in sorted(self._keys):
            k = self._keys[key]
            if k.pending is not None and now - k.pending_since >= self.threshold:
                old, new, old_since = k.announced, k.pending, k.announced_at
                k.announced, k.pending, k.last_sent, k.announced_at = new, None, now, k.pending_since
                out.append(Transition(key, RECOVERED if new == k.normal else CHANGED, old, new, k.pending_since,
                                      dict(k.info), old_since))
            elif (self.reminder and k.announced != k.normal and k.announced_at is not None
                  and now - k.last_sent >= self.reminder):
                k.last_sent = now
                out.append(Transition(key, REMINDER, k.announced, k.announced, k.announced_at, dict(k.info)))
        return out


class OncePer:
    """Argo CD's ``oncePer``: ``first(key)`` is True the first time a key is seen, False after (bounded memory)."""

    def __init__(self, limit: int = 10000):
        self.limit = limit
        self._seen: dict[str, None] = {}

    def first(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.limit:
            self._seen.pop(next(iter(self._seen)))
        return True
