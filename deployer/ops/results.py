"""What the operations return: plain data, printed by the CLI as tables or --json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployer.engine.plan import Change


@dataclass
class TargetResult:
    """What a deploy did (or would do) to one service on one node."""

    target: str
    previous_image: str | None
    change: Change | None = None
    steps: list[str] = field(default_factory=list)
    image_id: str | None = None
    diff: str = ""
    error: str | None = None
    image: str | None = None  # the image this target was switched to (a rollback's may differ per target)
    rolled_back: bool = False  # switched, then back to previous_image by --on-failure rollback
    rollback_error: str | None = None  # the switch back failed: it still runs ``image``
    committed: bool = False  # the command's commit holds this target

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "image": self.image,
            "previous_image": self.previous_image,
            "image_id": self.image_id,
            "container_action": self.change.action if self.change else None,
            "reasons": self.change.reasons if self.change else [],
            "steps": self.steps,
            "error": self.error,
            "rolled_back": self.rolled_back,
            "rollback_error": self.rollback_error,
            "committed": self.committed,
        }


@dataclass
class DeployResult:
    action: str
    image: str
    targets: list[TargetResult] = field(default_factory=list)
    commit: str | None = None  # None when nothing was committed
    dry_run: bool = False
    rollback_to: str | None = None
    seconds: float = 0.0
    stopped: str | None = None  # why the rollout stopped before its last batch (None: it did not)

    # The single-target view, which is what most deploys are.
    @property
    def target(self) -> str:
        return ", ".join(t.target for t in self.targets)

    @property
    def previous_image(self) -> str | None:
        return self.targets[0].previous_image if self.targets else None

    @property
    def change(self) -> Change | None:
        return self.targets[0].change if len(self.targets) == 1 else None

    @property
    def steps(self) -> list[str]:
        return [step for t in self.targets for step in t.steps]

    @property
    def diff(self) -> str:
        return "".join(t.diff for t in self.targets)

    @property
    def failed(self) -> list[TargetResult]:
        return [t for t in self.targets if t.error]

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "image": self.image,
            "commit": self.commit,
            "dry_run": self.dry_run,
            "rollback_to": self.rollback_to,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "targets": [t.to_json() for t in self.targets],
        }


@dataclass
class StatusRow:
    target: str
    image: str  # written in the repo
    container: str | None
    running_image: str | None
    state: str  # healthy | running | drifted | missing | stopped | unhealthy | starting | unreachable
    match: bool
    detail: str = ""
    replicas: str = ""  # a replicated service: "ready/wanted", e.g. "3/3"; "" for one container

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()



@dataclass
class NodePlan:
    node: str
    changes: list[Change]
    error: str | None = None

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.changes_anything]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "error": self.error, "changes": [c.to_json() for c in self.changes]}


@dataclass
class AppliedChange:
    target: str
    action: str
    status: str  # ok | failed | skipped
    detail: str = ""


@dataclass
class NodeApply:
    node: str
    items: list[AppliedChange] = field(default_factory=list)
    error: str | None = None  # the node could not be worked on at all

    @property
    def ok(self) -> bool:
        return self.error is None and all(i.status == "ok" for i in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "ok": self.ok, "error": self.error, "changes": [i.__dict__ for i in self.items]}

