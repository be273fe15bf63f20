"""What the dashboard's pages show, as plain dicts of text: the fleet rows, a service's history, a job, the feed.

The pages (``pages``) render these with autoescaping templates and the page's script receives the
same rows from ``/fleet.json``; nothing here is HTML. The fleet comes from ``state.fleet``'s last
snapshot (``fleet.FleetCache``), a service's history from the repository (``gitrepo`` history
reads: the versions its compose file had, with the deploy log's author and reason), the feed from
the broker's kept events and the deploy log.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from typing import Any, Iterable

from deployer.config import loader
from deployer.errors import DeployerError
from deployer.gitrepo.repo import InfraRepo

HEALTH = ("passing", "warning", "critical", "unknown")
VERSIONS = 30  # versions of a service shown
FIRST_SNAPSHOT_WAIT = 20.0  # seconds the first page waits for the fleet's first snapshot
DESCRIBE_KEYS = ("state", "text", "targets", "target", "node", "image", "commit", "who", "by", "holder", "reason",
                 "message", "error", "line")
PLAIN_KEYS = ("text", "message", "line")  # shown as they are; the others as "key value"


def stamp(t: float | None) -> str:
    if not t:
        return ""
    return _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso_epoch(text: str | None) -> float:
    try:
        return _dt.datetime.fromisoformat(text or "").timestamp()
    except ValueError:
        return 0.0


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def lock_text(lock: dict | None) -> str:
    if not lock:
        return ""
    if lock.get("error"):
        return "unknown"
    if not lock.get("held"):
        return ""
    holder = lock.get("holder") or {}
    who = f"{holder.get('who') or holder.get('user') or '?'}@{holder.get('host', '?')}"
    text = ("manual lock by " if lock.get("manual") else "locked by ") + who
    if holder.get("command") and not lock.get("manual"):
        text += f" ({holder['command']})"
    if holder.get("reason"):
        text += f": {holder['reason']}"
    return text


def _service_row(dc: str, node: dict, svc: dict | None) -> dict[str, Any]:
    node_name = node["name"]
    if svc is None:
        return {"key": f"{dc}/{node_name}", "dc": dc, "node": node_name, "service": None, "href": None,
                "image": "", "running": "", "commit": "", "state": "", "health": "", "health_class": "unknown",
                "lock": lock_text(node.get("lock")), "lock_error": (node.get("lock") or {}).get("error") or "",
                "checks": "", "checks_list": [], "drift": "", "node_error": ""}
    health = svc.get("health") if svc.get("health") in HEALTH else "unknown"
    last = svc.get("last_deploy") or {}
    failing = [c for c in svc.get("checks") or [] if c.get("status") not in ("passing", None)]
    state = svc.get("state") or "unknown"
    return {
        "key": svc["target"], "dc": dc, "node": node_name, "service": svc["name"],
        "href": f"/services/{svc['target']}",
        "image": svc.get("image") or "", "running": svc.get("running_image") or "",
        "commit": last.get("short") or "", "state": state,
        "health": health, "health_class": health,
        "checks": "; ".join(f"{c.get('name', '')}: {c.get('output', '')}" for c in failing),
        "lock": lock_text(node.get("lock")), "lock_error": (node.get("lock") or {}).get("error") or "",
        "checks_list": [{"name": _text(c.get("name")), "status": _text(c.get("status")),
                         "output": _text(c.get("output"))} for c in svc.get("checks") or []],
        "drift": "drifted" if svc.get("drift") else "",
        "node_error": svc.get("detail") if state == "unreachable" else "",
    }


def fleet_view(state: Any) -> dict[str, Any]:
    """The fleet as the page shows it: a table of rows per datacenter, the sync and Consul errors."""
    snap = state.fleet.snapshot(wait=FIRST_SNAPSHOT_WAIT) or {"datacenters": [], "sync": state.sync.status(),
                                                              "error": "the fleet's status is not read yet"}
    sync = snap.get("sync") or {}
    datacenters = []
    for dc in snap.get("datacenters") or []:
        rows = []
        for node in dc.get("nodes") or []:
            services = node.get("services") or []
            rows.extend(_service_row(dc["name"], node, s) for s in services)
            if not services:
                rows.append(_service_row(dc["name"], node, None))
        datacenters.append({"name": dc["name"], "consul_error": dc.get("consul_error") or "", "rows": rows})
    return {
        "datacenters": datacenters,
        "sync_error": (sync.get("error") or "") if sync.get("ok") is False else "",
        "status_error": snap.get("error") or "",
        "head": (snap.get("commit") or "")[:12],
        "synced": stamp(sync.get("last_ok")),
        "generated": stamp(snap.get("generated")),
    }


def fleet_row(state: Any, target: str) -> dict[str, Any] | None:
    for dc in fleet_view(state)["datacenters"]:
        for row in dc["rows"]:
            if row["key"] == target:
                return row
    return None


def service_history(state: Any, dc: str, node: str, service: str) -> dict[str, Any] | None:
    """The service's facts (its fleet row) and versions, newest first; None when the repository has no such service."""
    try:
        infra = loader.load(state.root)
    except DeployerError:
        infra = None
    svc = None
    if infra is not None:
        svc = (infra.datacenters.get(dc) and infra.datacenters[dc].nodes.get(node)
               and infra.datacenters[dc].nodes[node].services.get(service))
    if not svc:
        return None
    target = f"{dc}/{node}/{service}"
    with InfraRepo.open(state.root) as repo:
        versions = repo.service_versions(svc.location.path, svc.name, limit=VERSIONS)
        log = {e.commit: e for e in repo.deploy_log(target, VERSIONS * 4)}
    rows = []
    for v in versions:
        entry = log.get(v.commit)
        rows.append({"commit": v.commit, "short": v.short, "time": v.time, "image": v.image,
                     "author": entry.author if entry else "", "subject": v.subject,
                     "reason": entry.reason.strip() if entry else "", "current": v.image == svc.image})
    row = fleet_row(state, target) or {"key": target, "image": svc.image, "running": "", "state": "unknown",
                                       "health": "unknown", "health_class": "unknown", "lock": "", "lock_error": "",
                                       "checks": "", "checks_list": [], "drift": ""}
    row = {**row, "image": svc.image}  # what the repository says now, also before the next snapshot
    return {"target": target, "row": row, "versions": rows}


def job_view(job: Any) -> dict[str, Any]:
    """A job (``jobs.Job``, or its JSON) as text fields."""
    data = job.to_json() if hasattr(job, "to_json") else dict(job)
    params = data.get("params") or {}
    targets = params.get("targets") or data.get("targets") or ([params["target"]] if params.get("target") else [])
    if isinstance(targets, str):
        targets = [targets]
    state = _text(data.get("state"))
    return {
        "id": _text(data.get("id")), "kind": _text(data.get("kind")), "state": state,
        "state_class": "".join(ch for ch in state if ch.isalpha()),
        "author": _text(data.get("who") or data.get("author")),
        "targets": ", ".join(_text(t) for t in targets), "target_list": [str(t) for t in targets],
        "reason": _text(data.get("reason")),
        "result": _result_text(data),
        "lines": [_text(line) for line in data.get("lines") or []],
    }


def _result_text(data: dict) -> str:
    if data.get("error"):
        return _text(data["error"])
    result = data.get("result")
    if isinstance(result, dict) and result.get("commit"):
        return f"commit {str(result['commit'])[:12]}"
    return "" if result is None else _text(result)


def describe(event: dict) -> str:
    """One line of an event for the feed (the page's script writes the same for live ones)."""
    parts = [] if event.get("ok") is None else ["ok" if event["ok"] else "failed"]
    for key in DESCRIBE_KEYS:
        value = event.get(key)
        if value is None or value == "":
            continue
        text = _text(value)
        parts.append(text if key in PLAIN_KEYS else f"{key} {text}")
    return " · ".join(parts)


class DeployLogCache:
    """The deploy log's newest entries, read again only when the fleet snapshot's commit changes.

    Every page shows the feed; without this each render ran a ``git log`` (20 ms on a quiet machine, far
    more under load). The snapshot's commit moves after every job and every pull, so the feed is as fresh
    as the fleet table beside it."""

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._entries: list = []
        self._lock = threading.Lock()

    def entries(self, state: Any, limit: int) -> list:
        head = (state.fleet.snapshot() or {}).get("commit")
        key = (head, limit) if head else None
        with self._lock:
            if key is not None and key == self._key:
                return self._entries
        with InfraRepo.open(state.root) as repo:
            entries = repo.deploy_log(None, limit)
        with self._lock:
            self._key, self._entries = key, entries
        return entries


def activity_items(state: Any, types: Iterable[str], limit: int,
                   log: DeployLogCache | None = None) -> list[dict[str, str]]:
    """The feed, newest first: the broker's kept events of ``types``, and the deploy log's commits it lacks."""
    events = state.broker.recent(types, limit)
    seen = {e.get("commit") for e in events if e.get("commit")}
    try:
        for entry in (log or DeployLogCache()).entries(state, limit):
            if entry.commit in seen or entry.short in seen:
                continue
            events.append({"type": entry.action if entry.action in ("deploy", "rollback") else "deploy",
                           "t": _iso_epoch(entry.time), "targets": entry.targets, "image": entry.image,
                           "commit": entry.short, "by": entry.author, "reason": entry.reason.strip() or None})
    except DeployerError:
        pass
    events.sort(key=lambda e: float(e.get("t") or 0), reverse=True)
    return [{"kind": _text(e.get("type")), "kind_class": "".join(ch for ch in _text(e.get("type")) if ch.isalpha()),
             "when": stamp(e.get("t")), "text": describe(e)} for e in events[:limit]]
