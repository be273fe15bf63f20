"""Which images on one engine a prune removes: pure, from image listings and container states.

The rule (``deployer prune``'s help and the README say the same):

* an image any container on the engine uses, running or stopped, managed or not, stays;
* an image whose id is one of ``keep`` (the last N versions of every service of
  the node, from git history, and the image each compose file names) stays;
* an ancestor of an image that stays, stays (the engine would refuse);
* of the rest, only the deployer's own go: images whose every reference (tag or
  digest) is in a repository some service of the node has run, per git history
  (``owned``), and dangling images (no tag and no digest) when the whole node is pruned. An image with a reference
  in any other repository is someone else's and stays.

No I/O here: ``engine.images`` reads the listings and removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from deployer.imageref import ImageRef

#: Why an image stays, as the dry run and --json report it.
IN_USE = "used by a container"
KEPT = "one of the versions kept for rollback"
PARENT = "parent of an image that stays"
FOREIGN = "not the deployer's (a repository no service of the node has run)"


@dataclass(frozen=True)
class ImageInfo:
    """One image of the engine's image list (``GET /images/json``)."""

    id: str
    tags: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    parent: str = ""
    size: int = 0  # the image's whole size, its shared layers included (the engine's ``Size``)
    created: int = 0

    @property
    def dangling(self) -> bool:
        return not self.tags and not self.digests

    @property
    def references(self) -> tuple[str, ...]:
        return self.tags + self.digests

    def describe(self) -> str:
        return ", ".join(self.references) if self.references else f"<none> ({self.id[7:19]})"


def image_from_summary(summary: dict[str, Any]) -> ImageInfo:
    """One entry of ``GET /images/json`` as an ImageInfo; ``<none>:<none>`` placeholders dropped."""
    tags = tuple(t for t in summary.get("RepoTags") or () if t and t != "<none>:<none>")
    digests = tuple(d for d in summary.get("RepoDigests") or () if d and not d.startswith("<none>@"))
    return ImageInfo(id=summary["Id"], tags=tags, digests=digests, parent=summary.get("ParentId") or "",
                     size=int(summary.get("Size") or 0), created=int(summary.get("Created") or 0))


def repository_of(reference: str) -> str | None:
    """The repository of a tag or digest reference in Docker's short form; None if it does not parse."""
    try:
        return ImageRef.parse(reference).familiar_repository
    except Exception:  # noqa: BLE001 - an engine's odd reference is simply not ours
        return None


@dataclass
class PruneDecision:
    remove: list[ImageInfo] = field(default_factory=list)
    stay: list[tuple[ImageInfo, str]] = field(default_factory=list)  # (image, why)
    ancestors: set[str] = field(default_factory=set)  # removed images another removed one is built on

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.remove)


def images_to_remove(images: Iterable[ImageInfo], used_ids: Iterable[str], keep_ids: Iterable[str],
                     owned: Iterable[str], *, dangling: bool = True) -> PruneDecision:
    """Split the engine's images (``GET /images/json?all=1``) into those a prune removes and those that stay.

    ``used_ids``: the image id of every container on the engine; ``keep_ids``: the ids the
    kept versions resolve to on this engine; ``owned``: the repositories (any form) the
    node's services have run; ``dangling``: whether untagged images go too (a whole node
    pruned). Newest first: an image built on another comes before it (the order to remove them in).
    """
    images = list(images)
    used, keep = set(used_ids), set(keep_ids)
    mine = {r for r in (repository_of(o) for o in owned) if r}
    by_id = {i.id: i for i in images}
    # the classic builder's intermediate images (untagged, with children): never decided on, the engine
    # removes them with their last child; walked through to find the ancestors of what stays
    parents = {i.parent for i in images if i.parent}
    intermediate = {i.id for i in images if i.dangling and i.id in parents}
    why: dict[str, str] = {}
    for image in images:
        if image.id in intermediate:
            continue
        if image.id in used:
            why[image.id] = IN_USE
        elif image.id in keep:
            why[image.id] = KEPT
        elif image.dangling and not dangling:
            why[image.id] = FOREIGN
        elif not image.dangling and not all(repository_of(r) in mine for r in image.references):
            why[image.id] = FOREIGN
    # every ancestor of an image that stays stays too (the engine refuses to remove it)
    for start in list(why):
        parent = by_id[start].parent
        while parent in by_id and parent not in why:
            why[parent] = PARENT
            parent = by_id[parent].parent
    decision = PruneDecision()
    for image in sorted(images, key=lambda i: (-i.created, i.id)):
        if image.id in intermediate:
            continue
        if image.id in why:
            decision.stay.append((image, why[image.id]))
        else:
            decision.remove.append(image)
    going = {i.id for i in decision.remove}
    for image in decision.remove:
        parent = image.parent
        while parent in by_id:
            if parent in going:
                decision.ancestors.add(parent)
            parent = by_id[parent].parent
    return decision
