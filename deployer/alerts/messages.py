"""What an alert says: one line of text per announcement, and the alert as a dict.

An alert is the event that goes to the sinks and to ``serve``'s broker::

    {"type": "alert", "t": 1764600000.0, "kind": "health", "state": "critical",
     "text": "test: service web is down: check 'Service 'web' check' (web-1 on node n1) failing: ...",
     "key": "...", ...details}

``kind`` is health, consul, deploy, rollback, lock, drift or test. The texts follow
the talk's alerts channel: "service http_to_nsq is down: check ... failing", then
"back to normal".
"""

from __future__ import annotations

import time
from typing import Any

from deployer.alerts.rules import RECOVERED, REMINDER, Transition
from deployer.values import format_duration

OUTPUT_LIMIT = 300
_WORD = {"critical": "down", "warning": "warning", "maintenance": "in maintenance"}


def one_line(text: Any, limit: int = OUTPUT_LIMIT) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def alert(kind: str, state: str, text: str, *, t: float | None = None, **details: Any) -> dict[str, Any]:
    return {"type": "alert", "t": time.time() if t is None else t, "kind": kind, "state": state, "text": text,
            **details}


def _held(tr: Transition, now: float) -> str:
    return format_duration(round(max(0.0, now - tr.since)))


def health_alert(tr: Transition, now: float, wall: float | None = None) -> dict[str, Any]:
    """A Consul check's announcement; ``tr.info`` holds the check as Consul lists it (and ``dc``)."""
    c = tr.info
    dc = c.get("dc")
    service = c.get("ServiceName") or ""
    subject = f"service {service}" if service else f"node {c.get('Node', '?')}"
    where = f"{c.get('ServiceID')} on node {c.get('Node')}" if service else f"node {c.get('Node')}"
    check = f"check '{one_line(c.get('Name') or c.get('CheckID'), 80)}' ({where})"
    prefix = f"{dc}: " if dc else ""
    output = one_line(c.get("Output"))
    if tr.kind == RECOVERED:
        text = f"{prefix}{subject} is back to normal: {check} passing"
        if tr.old_since is not None:
            text += f" (was {tr.old} for {format_duration(round(max(0.0, tr.since - tr.old_since)))})"
    else:
        word = _WORD.get(tr.new, tr.new)
        text = f"{prefix}{subject} is {word}: {check} {'failing' if tr.new == 'critical' else tr.new}" + (
            f": {output}" if output else "")
        if tr.kind == REMINDER:
            text = f"still: {text} (for {_held(tr, now)})"
    return alert("health", tr.new, text, t=wall, key=tr.key, reminder=tr.kind == REMINDER, dc=dc, service=service,
                 node=c.get("Node"), check=c.get("CheckID"), check_name=c.get("Name"), output=output)


def consul_alert(tr: Transition, now: float, wall: float | None = None) -> dict[str, Any]:
    """The watcher's own state: it lost Consul, or has it back."""
    address = tr.info.get("address", "?")
    dcs = ", ".join(tr.info.get("dcs") or ())
    where = f"Consul at {address}" + (f" ({dcs})" if dcs else "")
    if tr.kind == RECOVERED:
        text = f"alerts watcher is back on {where}: health is known again"
        state = "ok"
    else:
        text = f"alerts watcher lost {where}: {one_line(tr.info.get('error'), 200)}; health is unknown until it " \
               "is back"
        if tr.kind == REMINDER:
            text = f"still: {text} (for {_held(tr, now)})"
        state = "lost"
    return alert("consul", state, text, t=wall, key=tr.key, address=address, reminder=tr.kind == REMINDER)
