"""Keeping the service's clone up to date with its remote; the last pull's result is part of the status.

A pull is the repository transaction entered and left without a change
(``gitrepo.transaction.RepoTransaction``: the repository's flock, an
interrupted commit finished from the journal, then ``pull --rebase``), so it
never races a deploy of this clone or a CLI deployer working in it, and a
service killed during a deploy finds the repository consistent at its first
pull. The job worker runs every pull (``jobs``): on its interval while idle and
before each job, so pulls and jobs never overlap.

A pull that fails (the remote unreachable, a conflict) changes nothing in the
clone: the status says so (``ok: false`` with git's line), the service keeps
serving what it has, jobs still run on top of what is there and their own
pull reports the same error, and the next pull that works clears it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from deployer.errors import DeployerError
from deployer.gitrepo.repo import InfraRepo
from deployer.gitrepo.transaction import RepoTransaction


class RepoSync:
    def __init__(self, state: Any):
        self.state = state
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"ok": None, "at": None, "error": None, "head": None,
                                        "remote": None, "last_ok": None}

    def start(self) -> None:
        self._status["remote"] = self._remote_configured()
        self._status["head"] = self._head()

    def stop(self) -> None:
        pass

    def _remote_configured(self) -> bool:
        try:
            with InfraRepo.open(self.state.root) as repo:
                return repo.has_remote()
        except DeployerError:
            return False

    def _head(self) -> str | None:
        try:
            with InfraRepo.open(self.state.root) as repo:
                return repo.rev_parse("HEAD")
        except DeployerError:
            return None

    def pull(self) -> bool:
        """One pull under the repository's lock; True when new commits came in. Never raises a DeployerError."""
        before = self._head()
        error = None
        try:
            with RepoTransaction(self.state.root, wait=self.state.settings.lock_wait,
                                 command="deployer serve: pull"):
                pass
        except DeployerError as exc:
            error = exc.one_line()
        head = self._head()
        now = time.time()
        with self._lock:
            was = (self._status["ok"], self._status["error"])
            self._status.update(ok=error is None, at=now, error=error, head=head)
            if error is None:
                self._status["last_ok"] = now
            changed = was != (self._status["ok"], self._status["error"])
        if changed or head != before:
            self.state.broker.publish("sync", ok=error is None, error=error, head=head)
        return head != before

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)
