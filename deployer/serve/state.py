"""What one ``deployer serve`` process holds: its settings and the parts every request uses.

:class:`ServeState` is made once by the CLI (``deployer serve``) or a test and
handed to ``app.create_app``; every handler reaches it as
``request.app.state.serve``. Its parts:

* ``settings``: :class:`ServeSettings` (the clone, where to listen, files, intervals);
* ``tokens`` (``auth.TokenStore``), ``sessions`` (``auth.SessionStore``),
  ``limiter`` (``auth.RateLimiter``): who may do what;
* ``broker``: ``events.EventBroker``, every event of the service;
* ``jobs``: ``jobs.JobQueue``: deploy / rollback / lock requests, one at a time,
  in order (``jobs.submit(kind, params, identity, reason) -> Job``, ``jobs.get(id)``);
* ``sync``: ``sync.RepoSync``: the clone's pulls and its last result (``sync.status()``);
* ``fleet``: ``fleet.FleetCache``: the last fleet snapshot (``fleet.snapshot()``, refreshed in
  the background and after each job; ``fleet.refresh_soon()``);
* ``hooks``: ``webhook.Receivers``: the configured webhook receivers;
* ``health``: ``live.HealthWake``: the one Consul health watch of the process (one per Consul
  address), whose changes wake the fleet snapshot and feed the alert rules
  (``health_watches``); it is the first of the ``services``;
* ``services``: the background parts (the health watch, the alerts watcher): objects with
  ``start(state)`` and ``stop()``, started and stopped with the application
  (``add_service``), after the sync and before the job worker's first pull.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.serve.auth import RateLimiter, SessionStore, TokenStore, default_tokens_path
from deployer.serve.events import EventBroker

DEFAULT_LISTEN = "127.0.0.1:8700"
MAX_BODY = 1024 * 1024  # bytes of a request body, then 413


@dataclass
class ServeSettings:
    root: Path  # the clone the service works in
    remote: str | None = None  # the URL it was cloned from (--remote), None: --repo
    listen: str = DEFAULT_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: Path = field(default_factory=default_tokens_path)
    config: Path | None = None  # the serve config file (webhook receivers), outside the repository
    sync_interval: float = 30.0  # seconds between pulls of the clone
    status_interval: float = 15.0  # seconds between fleet snapshots
    lock_wait: float = 60.0  # seconds a job waits for the repository's lock (another deployer on this clone)
    max_body: int = MAX_BODY
    consul: bool = True
    alerts: bool = True
    drift_interval: float = 300.0
    self_heal: bool = False
    state_dir: Path | None = None  # the service's own files (webhook deliveries seen); default .git/deployer/serve

    @property
    def own_dir(self) -> Path:
        return self.state_dir or (self.root / ".git" / "deployer" / "serve")


class ServeState:
    def __init__(self, settings: ServeSettings):
        from deployer.serve.fleet import FleetCache
        from deployer.serve.jobs import JobQueue
        from deployer.serve.live import HealthWake
        from deployer.serve.sync import RepoSync
        from deployer.serve.webhook import Receivers

        self.settings = settings
        self.root = Path(settings.root).resolve()
        self.tokens = TokenStore(settings.tokens)
        self.sessions = SessionStore()
        self.limiter = RateLimiter()
        self.broker = EventBroker()
        self.sync = RepoSync(self)
        self.fleet = FleetCache(self)
        self.jobs = JobQueue(self)
        self.hooks = Receivers.load(settings.config, settings.own_dir)
        self.health = HealthWake()
        self.services: list[Any] = [self.health]
        self.started = False

    def health_watches(self) -> list[Any]:
        """The health watches ``health`` started (``alerts.health.HealthWatch``, one per Consul), for the alerts."""
        return list(self.health.watches)

    def add_service(self, service: Any) -> None:
        self.services.append(service)

    def start(self) -> None:
        """Start the background parts (the application's lifespan calls this)."""
        os.makedirs(self.settings.own_dir, exist_ok=True)
        self.sync.start()
        self.fleet.start()
        for service in self.services:  # before the job worker: its first pull is seen by the alerts' deploy log
            service.start(self)
        self.jobs.start()
        self.started = True

    def stop(self) -> None:
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - stop every part
                pass
        self.fleet.stop()
        self.jobs.stop()
        self.sync.stop()
        self.started = False
