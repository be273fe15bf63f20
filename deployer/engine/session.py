"""One engine session: one node, one command, one connection.

Deploy, rollback, apply, status and plan all meet a node the same way::

    with EngineSession(node, root) as session:          # connect once, read the node once
        changes = session.plan(specs)                    # pure: state + specs -> changes
        applier = session.applier(options, hooks, say)   # the same connection applies
        ...

The state is read once, when the session opens: every service of the command
is planned against it, and the discovery hooks get what they need (published
ports included) from the states the applier reads, never from a connection of
their own. Image ids are looked up once per reference.

A command that locks its nodes on their engines (``ops.locks.NodeLocks``) opens
each node's session when it takes the lock: ``connect()`` only connects (the
state is read when the session is entered, after the lock is held), the engine
lock works over ``session.client``, and the command's later ``with session:``
blocks use that same connection (``shared``: leaving such a block does not
close it; the lock's owner closes it after releasing the lock). Entering a
session reads the node's state afresh each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from deployer.engine.apply import Applier, Hooks, SwapOptions
from deployer.engine.connect import DEFAULT_TIMEOUT, connect
from deployer.engine.plan import Change, plan_rollout
from deployer.engine.state import NodeState, image_id, read_node
from deployer.spec import ContainerSpec

if TYPE_CHECKING:  # pragma: no cover
    import docker

    from deployer.model import Node


class EngineSession:
    """Connect to one node's engine, read what runs there, plan and apply over the same connection."""

    def __init__(self, node: "Node", root: str | Path, *, timeout: float = DEFAULT_TIMEOUT, shared: bool = False):
        self.node = node
        self.root = Path(root)
        self.timeout = timeout
        #: held open across ``with`` blocks (by the node lock that opened it); ``close()`` ends it
        self.shared = shared
        self.client: "docker.DockerClient | None" = None
        self.state: NodeState | None = None
        self._image_ids: dict[str, str | None] = {}
        self._inside = False

    def connect(self) -> "EngineSession":
        """Connect (once) without reading the node: what the node lock needs before the state may be read."""
        if self.client is None:
            self.client = connect(self.node, self.root, timeout=self.timeout)
        return self

    def __enter__(self) -> "EngineSession":
        if self.shared and self._inside:  # one state per session: two blocks at once would read over each other
            raise RuntimeError(f"the engine session of {self.node.target} is in use")
        self.connect()
        self._inside = True
        try:
            self.state = read_node(self._client, self.node.dc, self.node.name)  # afresh: what runs now
            self._image_ids = {}
        except BaseException:
            self._inside = False
            if not self.shared:
                self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._inside = False
        if not self.shared:
            self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def image_id(self, ref: str) -> str | None:
        """The id of the image ``ref`` names on this engine (None: not there), looked up once."""
        if ref not in self._image_ids:
            self._image_ids[ref] = image_id(self._client, ref)
        return self._image_ids[ref]

    def plan(self, specs: list[ContainerSpec]) -> list[Change]:
        """What each spec's service needs on this node (all its replicas), in the order given."""
        state = self._state
        return [plan_rollout(spec, state.for_service(spec.service), self.image_id(spec.image)) for spec in specs]

    def applier(self, options: SwapOptions | None = None, hooks: Hooks | None = None,
                progress: Callable[[str], None] | None = None, *, guard: Callable[[], None] | None = None,
                lock_id: str | None = None) -> Applier:
        """An Applier over this session's connection (``guard``/``lock_id``: the node lock, see ops.locks)."""
        return Applier(self._client, options, hooks=hooks, progress=progress,
                       registry_credentials=self.node.registry_credentials, guard=guard, lock_id=lock_id)

    @property
    def _client(self) -> "docker.DockerClient":
        if self.client is None:
            raise RuntimeError(f"the engine session of {self.node.target} is closed")
        return self.client

    @property
    def _state(self) -> NodeState:
        if self.state is None:
            raise RuntimeError(f"the engine session of {self.node.target} has not been opened")
        return self.state
