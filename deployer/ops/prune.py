"""prune: remove the images on the nodes that no service needs, keeping what a rollback needs.

Inside the repository transaction (the lock, without a commit: a deploy in flight
holds it, so prune waits with ``--wait`` or fails naming the holder, and never
removes an image being deployed)::

    RepoTransaction: lock -> finish an interrupted commit -> pull   (gitrepo.transaction)
      load the repository under the lock                          (config.loader.load)
      per engine: the last N images of every service of its nodes (gitrepo.history.service_versions)
                  and every repository those services ever ran
      per engine, in parallel, one engine session each:
        list images, resolve the kept references to ids           (engine.images, EngineSession.image_id)
        decide (pure)                                              (engine.image_plan.images_to_remove)
        remove, unless a dry run                                   (engine.images.remove_image)

Nodes of the repository that name the same engine are pruned together: what any
of them keeps stays. A dry run takes no lock and removes nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deployer.config import loader
from deployer.engine.image_plan import ImageInfo, images_to_remove
from deployer.engine.images import list_images, remove_image
from deployer.engine.session import EngineSession
from deployer.errors import BadValue
from deployer.gitrepo.repo import InfraRepo
from deployer.gitrepo.transaction import RepoTransaction
from deployer.ops.locks import NodeLocks
from deployer.model import Infrastructure, Node
from deployer.ops.targets import DEFAULT_PARALLEL, node_failure, run_parallel, selection

DEFAULT_KEEP = 3
#: Seconds for one engine API call (removing a large image can take a while).
PRUNE_TIMEOUT = 120
#: Image removals at once on one engine.
REMOVE_PARALLEL = 4


@dataclass
class PrunedImage:
    id: str
    references: list[str]
    size: int
    kept: str | None = None  # why it stays (the engine refused it); None: removed (or would be)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "references": self.references, "size": self.size}
        if self.kept:
            out["kept"] = self.kept
        return out


@dataclass
class NodePrune:
    """What prune did (or, in a dry run, would do) on one engine, named by its nodes."""

    nodes: list[str]
    dry_run: bool = False
    removed: list[PrunedImage] = field(default_factory=list)
    refused: list[PrunedImage] = field(default_factory=list)  # decided to go, the engine kept them
    stayed: int = 0  # images left alone by the rule
    error: str | None = None

    @property
    def node(self) -> str:
        return ", ".join(self.nodes)

    @property
    def bytes(self) -> int:
        """The sum of the removed images' sizes; layers they share with each other or with images
        that stay are counted in each image, so the disk space freed can be less."""
        return sum(i.size for i in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "dry_run": self.dry_run, "removed": [i.to_json() for i in self.removed],
                "refused": [i.to_json() for i in self.refused], "stayed": self.stayed, "bytes": self.bytes,
                "bytes_counts_shared_layers": True, "error": self.error}


@dataclass
class _Engine:
    """One engine to prune: the nodes of the repository that name it, what they keep and own."""

    nodes: list[Node]
    selected: set[str] = field(default_factory=set)  # dc/node/service targets whose images may go
    keep_refs: set[str] = field(default_factory=set)
    owned: set[str] = field(default_factory=set)
    whole: bool = False  # a whole node was selected: dangling images go too


def prune(root: str | Path, targets: list[str] | None = None, *, keep: int = DEFAULT_KEEP, dry_run: bool = False,
          wait: float = 0, parallel: int = DEFAULT_PARALLEL,
          progress: Callable[[str], None] | None = None) -> list[NodePrune]:
    """Prune the images of the selected nodes' engines; one result per engine, in the nodes' order."""
    if keep < 1:
        raise BadValue(f"--keep {keep}: keep at least 1 version of each service (the one written)")
    say = progress or (lambda msg: None)
    root = Path(root).resolve()
    before = loader.load(root)  # every node of the engines pruned is locked: no deploy pulls an image meanwhile
    locks = NodeLocks(root, before, [n for eng in _engines(before, targets) for n in eng.nodes], wait=wait,
                      progress=say)
    with RepoTransaction(root, wait=wait, dry_run=dry_run, progress=say, node_locks=locks) as tx:
        infra = loader.load(root)
        engines = _engines(infra, targets)
        assert tx.repo is not None
        for eng in engines:
            _from_history(tx.repo, eng, keep)
        results: dict[int, NodePrune] = {}
        run_parallel(lambda item: results.__setitem__(item[0], _prune_engine(root, item[1], dry_run, say)),
                     list(enumerate(engines)), parallel)
    return [results[i] for i in range(len(engines))]


def _engines(infra: Infrastructure, targets: list[str] | None) -> list[_Engine]:
    """The engines of the selected nodes, each with every node of the repository that names it."""
    chosen: dict[str, _Engine] = {}
    for node, services, whole in selection(infra, targets):
        eng = chosen.setdefault(node.docker, _Engine([n for n in infra.nodes() if n.docker == node.docker]))
        eng.selected.update(s.target for s in services)
        eng.whole = eng.whole or whole
    return list(chosen.values())


def _from_history(repo: InfraRepo, eng: _Engine, keep: int) -> None:
    """Fill in the references the engine keeps (every service of its nodes) and the repositories
    the selected services ever ran (only their images may go)."""
    for node in eng.nodes:
        for svc in node.services.values():
            versions = [v.image for v in repo.service_versions(svc.location.path, svc.name)]
            eng.keep_refs.add(svc.image)
            eng.keep_refs.update(versions[:keep])
            if svc.target in eng.selected:
                eng.owned.update([svc.image, *versions])


def _prune_engine(root: Path, eng: _Engine, dry_run: bool, say: Callable[[str], None]) -> NodePrune:
    node = eng.nodes[0]
    result = NodePrune([n.target for n in eng.nodes], dry_run=dry_run)
    try:
        with EngineSession(node, root, timeout=PRUNE_TIMEOUT) as session:
            assert session.client is not None and session.state is not None
            images = list_images(session.client)
            used = {c.image_id for c in session.state.names.values() if c.image_id}
            keep_ids = {i for i in (session.image_id(ref) for ref in sorted(eng.keep_refs)) if i}
            decision = images_to_remove(images, used, keep_ids, eng.owned, dangling=eng.whole)
            result.stayed = len(decision.stay)
            if dry_run:
                result.removed = [_pruned(image) for image in decision.remove]
                return result
            client = session.client

            def remove(image: ImageInfo) -> None:
                refused = remove_image(client, image)
                if refused:
                    result.refused.append(_pruned(image, refused))
                    return
                say(f"{node.target}: removed {image.describe()}")
                result.removed.append(_pruned(image))

            # a few removals at once (the engine serves them in parallel); an image another removed
            # one was built on goes after it, one at a time (newest first: children before parents)
            later = decision.ancestors
            with ThreadPoolExecutor(max_workers=REMOVE_PARALLEL) as pool:
                list(pool.map(remove, [i for i in decision.remove if i.id not in later]))
            for image in decision.remove:
                if image.id in later:
                    remove(image)
            order = {i.id: n for n, i in enumerate(decision.remove)}
            result.removed.sort(key=lambda p: order[p.id])
            result.refused.sort(key=lambda p: order[p.id])
    except Exception as exc:  # ours, or the engine refused or went away: this engine only
        result.error = node_failure(node, exc).one_line()
    return result


def _pruned(image: ImageInfo, kept: str | None = None) -> PrunedImage:
    return PrunedImage(image.id, list(image.references), image.size, kept)

