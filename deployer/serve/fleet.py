"""The fleet status model: datacenter -> node -> service, as the API and the page show it.

Each service: the image written in the repository, the image running, the
state word of ``deployer status`` (healthy, running, drifted, missing, stopped,
unhealthy, starting, unreachable), Consul's health (the worst of its checks:
passing, warning, critical; ``unknown`` when the datacenter has no Consul, the
service is not registered or Consul cannot be reached), its node's lock
holder, its last deploy (commit, time, author, action, image, reason) and
whether it drifted (what runs is not what is written).

:func:`fleet_model` builds the model from plain inputs (pure, unit-tested
with captured data); :class:`FleetCache` gathers those inputs (ops.fleet
status, ops.locks lock_status, Consul's agent, the deploy log) in a
background thread every ``status_interval`` seconds and after every job, so
``GET /api/v1/status`` answers from memory.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

from deployer.config import loader
from deployer.errors import DeployerError
from deployer.gitrepo.repo import InfraRepo
from deployer.ops import fleet as ops_fleet
from deployer.ops.locks import lock_status
from deployer.ops.targets import run_parallel

HEALTH_ORDER = ("passing", "warning", "critical")  # worst wins
PARALLEL = 16
HISTORY_DEPTH = 500  # deploy commits read for the "last deploy" of each service


def worst_health(statuses: Iterable[str]) -> str:
    found = [s for s in statuses if s in HEALTH_ORDER]
    return max(found, key=HEALTH_ORDER.index) if found else "unknown"


def consul_checks(services: dict[str, dict], checks: dict[str, dict]) -> dict[str, list[dict]]:
    """Consul agent's services and checks -> {dc/node/service: [{name, status, output}]}, by the
    deployer-dc / deployer-node / deployer-service meta the registration writes."""
    by_id: dict[str, str] = {}
    for sid, svc in services.items():
        meta = svc.get("Meta") or {}
        if meta.get("deployer-dc") and meta.get("deployer-node") and meta.get("deployer-service"):
            by_id[sid] = f"{meta['deployer-dc']}/{meta['deployer-node']}/{meta['deployer-service']}"
    out: dict[str, list[dict]] = {target: [] for target in by_id.values()}
    for check in checks.values():
        target = by_id.get(check.get("ServiceID") or "")
        if target is not None:
            out[target].append({"name": check.get("Name", ""), "status": check.get("Status", ""),
                                "output": (check.get("Output") or "").strip()[:500]})
    return out


def last_deploys(entries: Iterable[Any]) -> dict[str, dict]:
    """The newest deploy log entry of each target (entries newest first, as ``deploy_log`` gives them)."""
    out: dict[str, dict] = {}
    for e in entries:
        for target in e.targets:
            if target not in out:
                out[target] = {"commit": e.commit, "short": e.short, "time": e.time, "author": e.author,
                               "action": e.action, "image": e.image, "previous_image": e.previous_image,
                               "reason": e.reason}
    return out


def fleet_model(layout: list[tuple[str, str | None, list[tuple[str, list[str]]]]], rows: Iterable[Any],
                locks: Iterable[Any], health: dict[str, dict[str, list[dict]] | str | None],
                deploys: dict[str, dict]) -> list[dict]:
    """The model: ``layout`` is [(dc, consul address or None, [(node, [service names])])]; ``rows`` the
    StatusRows of ``ops.fleet.status``; ``locks`` the LockStatus of every node; ``health`` per dc: checks by
    target, an error line (Consul unreachable), or None (no Consul)."""
    by_target = {r.target: r for r in rows}
    lock_by_node = {lk.target: lk for lk in locks}
    out = []
    for dc, consul, nodes in layout:
        dc_health = health.get(dc)
        consul_error = dc_health if isinstance(dc_health, str) else None
        checks_by_target = dc_health if isinstance(dc_health, dict) else {}
        dc_out = {"name": dc, "consul": consul, "consul_error": consul_error, "nodes": []}
        for node, services in nodes:
            target = f"{dc}/{node}"
            lk = lock_by_node.get(target)
            node_out = {"name": node, "target": target,
                        "lock": (lk.to_json() if lk is not None and (lk.held or lk.error) else None),
                        "services": []}
            for name in services:
                st = f"{target}/{name}"
                row = by_target.get(st)
                checks = checks_by_target.get(st, [])
                node_out["services"].append({
                    "name": name, "target": st,
                    "image": row.image if row else None,
                    "running_image": row.running_image if row else None,
                    "container": row.container if row else None,
                    "state": row.state if row else "unknown",
                    "detail": row.detail if row else "",
                    "replicas": row.replicas if row else "",
                    "drift": (not row.match) if row else None,
                    "health": worst_health(c["status"] for c in checks) if not consul_error else "unknown",
                    "checks": checks,
                    "last_deploy": deploys.get(st),
                })
            dc_out["nodes"].append(node_out)
        out.append(dc_out)
    return out


def summary(datacenters: list[dict]) -> dict[str, int]:
    services = [s for dc in datacenters for n in dc["nodes"] for s in n["services"]]
    return {"services": len(services), "drifted": sum(1 for s in services if s["drift"]),
            "critical": sum(1 for s in services if s["health"] == "critical"),
            "locked": sum(1 for dc in datacenters for n in dc["nodes"] if n["lock"] and n["lock"].get("held"))}


class FleetCache:
    def __init__(self, state: Any):
        self.state = state
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- gathering --------------------------------------------------------------------

    def _health(self, infra) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, dc in infra.datacenters.items():
            if not dc.consul or not self.state.settings.consul:
                out[name] = None
                continue
            from deployer.discovery.registration import consul_for

            catalog = consul_for(dc, timeout=3.0)
            try:
                services = catalog.call("read the agent's services", lambda c: c.agent.services())
                checks = catalog.call("read the agent's checks", lambda c: c.agent.checks())
                out[name] = consul_checks(services, checks)
            except DeployerError as exc:
                out[name] = exc.one_line()
        return out

    def gather(self) -> dict[str, Any]:
        started = time.time()
        root = self.state.root
        try:
            infra = loader.load(root)
        except DeployerError as exc:
            return {"generated": started, "error": exc.one_line(), "datacenters": [], "summary": summary([]),
                    "sync": self.state.sync.status()}
        layout = [(dc, infra.datacenters[dc].consul,
                   [(n, sorted(infra.datacenters[dc].nodes[n].services)) for n in sorted(infra.datacenters[dc].nodes)])
                  for dc in sorted(infra.datacenters)]
        consul = self.state.settings.consul
        rows: list[Any] = []
        locks: list[Any] = []
        health: dict[str, Any] = {}

        def status() -> None:
            rows.extend(ops_fleet.status(root, infra, None, PARALLEL))

        def lock_rows() -> None:
            nodes = [n.target for n in infra.nodes()]
            found: dict[str, list] = {}
            run_parallel(lambda t: found.__setitem__(t, lock_status(root, infra, [t], consul=consul)), nodes,
                         PARALLEL)
            for t in nodes:
                locks.extend(found[t])

        def consul_health() -> None:
            health.update(self._health(infra))

        run_parallel(lambda f: f(), [status, lock_rows, consul_health], 3)
        try:
            with InfraRepo.open(root) as repo:
                deploys = last_deploys(repo.deploy_log(None, HISTORY_DEPTH))
                head = repo.rev_parse("HEAD")
        except DeployerError:
            deploys, head = {}, None
        datacenters = fleet_model(layout, rows, locks, health, deploys)
        return {"generated": started, "took": round(time.time() - started, 3), "commit": head, "error": None,
                "datacenters": datacenters, "summary": summary(datacenters), "sync": self.state.sync.status()}

    def refresh(self) -> dict[str, Any]:
        snap = self.gather()
        with self._lock:
            old = self._snapshot
            self._snapshot = snap
        self._ready.set()
        if old is None or _comparable(old) != _comparable(snap):
            self.state.broker.publish("status", summary=snap["summary"], commit=snap.get("commit"))
        return snap

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="serve-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def refresh_soon(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the loop must survive; the error shows in the status
                with self._lock:
                    self._snapshot = {**(self._snapshot or {"datacenters": [], "summary": summary([])}),
                                      "error": f"status failed: {type(exc).__name__}: {exc}"}
                self._ready.set()
            self._wake.wait(self.state.settings.status_interval)
            self._wake.clear()

    def snapshot(self, wait: float = 0) -> dict[str, Any] | None:
        """The last snapshot (with the sync status as of now); waits up to ``wait`` s for the first one."""
        if wait:
            self._ready.wait(wait)
        with self._lock:
            snap = self._snapshot
        return None if snap is None else {**snap, "sync": self.state.sync.status()}


def _comparable(snap: dict[str, Any]) -> Any:
    return [(s["target"], s["state"], s["health"], s["running_image"], s["image"], bool(n["lock"]))
            for dc in snap.get("datacenters", []) for n in dc["nodes"] for s in n["services"]], snap.get("error")
