"""Build claims on the build engine: two watchers of one source repository build each commit once.

Why the build engine: every watcher has one (it is where the build runs, so no
Consul or other service is needed, and ``watch-builds --registry`` alone has no
datacenter to find a Consul in), watchers that are meant to share the work share
it (the datacenter's build host), and ``engine.node_lock`` already makes a
cross-machine claim of it: a container name is reserved atomically by the engine
(a second create gets 409), with a lease the holder renews, broken when it
expires (the holder's machine died) or at once when the holder was a process of
this machine that is gone (``kill -9``). The registry tag alone is no claim: two
watchers both see it missing and both build; it is what a watcher that gets the
claim after another finished sees (``build_image`` then neither builds nor pushes).

* APP is the repository's name (its directory, without ``.git``), plus ``-SUBDIR`` for an
  app in a subdirectory: what the image is named after when deployer.yml names none;
* the claim of commit SHA of app APP is the lock object ``deployer-lock.build.APP.SHA``
  (``EngineLock`` of target ``build/APP/SHA``), held while the commit is built;
* a commit that failed to build leaves a failure marker, a manual lock object
  ``deployer-lock.build-failed.APP.SHA`` whose holder's ``reason`` is the error: the
  other watchers record the failure from it instead of building the commit again.
  They stay on the engine (one empty, never-started container per failed commit);
  ``deployer lock`` does not list them (they are no node's lock).

Watchers that build on different engines are not coordinated by claims; only the
registry check keeps them from pushing twice, and a commit can then be built by both.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from deployer.engine.node_lock import EngineLock, describe_holder, lock_name, read_lock
from deployer.errors import NodeLockHeld
from deployer.ops.locks import holder_info

CLAIM_TTL = 30.0  # seconds: a watcher that vanished without its pid being checkable is taken over after this
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _part(app: str) -> str:
    return _NAME.sub("-", app) or "app"


def claim_target(app: str, sha: str) -> str:
    return f"build/{_part(app)}/{sha}"


def failure_target(app: str, sha: str) -> str:
    return f"build-failed/{_part(app)}/{sha}"


class EngineClaims:
    """Claims and failure markers as lock objects on the build engine (``client``, a DockerClient)."""

    def __init__(self, client: Any, *, ttl: float = CLAIM_TTL, progress: Callable[[str], None] | None = None):
        self.client = client
        self.ttl = ttl
        self.progress = progress or (lambda msg: None)

    def claim(self, app: str, sha: str) -> tuple[Any, str]:
        info = holder_info(reason=f"building {sha[:12]}")
        lock = EngineLock(self.client, claim_target(app, sha), info, ttl=self.ttl, progress=self.progress)
        try:
            return lock.acquire(wait=0), ""
        except NodeLockHeld as exc:
            return None, describe_holder(exc.holder)

    def failed(self, app: str, sha: str) -> str | None:
        marker = read_lock(self.client.api, lock_name(failure_target(app, sha)))
        if marker is None:
            return None
        return str((marker.holder or {}).get("reason") or "failed to build (another watcher's record)")

    def mark_failed(self, app: str, sha: str, error: str) -> None:
        info = holder_info(reason=error[:2000])
        marker = EngineLock(self.client, failure_target(app, sha), info, manual=True)
        try:
            marker.acquire(wait=0)
        except NodeLockHeld:
            return  # marked already
        marker.detach()
