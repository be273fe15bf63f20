"""What the operations share: choosing services and nodes from targets, working on nodes in parallel,
the discovery hooks of a node, and turning any failure on a node into one line.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from deployer.engine.apply import Hooks
from deployer.engine.connect import describe
from deployer.engine.plan import REMOVE, Change
from deployer.engine.state import NodeState
from deployer.errors import DeployerError, HostError, ServiceMatchError, TargetError
from deployer.imageref import ImageRef
from deployer.model import Datacenter, Infrastructure, Node, Service, Target

#: Nodes worked on at once unless ``--parallel`` says otherwise: every target, up to this many. A node's work
#: is waiting on its engine (a container's start, its health checks), not the deployer's CPU: measured with
#: bench/bench_fleet.py, 20 nodes' apply cost the deployer about 0.5 s of CPU in all, and each node's worker
#: thread and engine session about 0.3 MB (docs/design.md, "How many nodes at once"). The cap bounds the
#: threads, connections and open files of a command over a very large fleet; the CLI's default
#: (cli/options.py parallel_option) is this number.
DEFAULT_PARALLEL = 64


def pick_service(node: Node, image_repository: str, familiar: str, explicit: str | None) -> tuple[str, bool]:
    """The service an image is deployed to: (name, is_new)."""
    if explicit:
        return explicit, explicit not in node.services
    matches = []
    for svc in node.services.values():
        try:
            ref = ImageRef.parse(svc.image)
        except Exception:
            continue
        if ref.repository == image_repository or ref.familiar_repository == familiar:
            matches.append(svc.name)
    if len(matches) == 1:
        return matches[0], False
    listing = ", ".join(f"{s.name} ({s.image})" for s in node.services.values()) or "none"
    if not matches:
        raise ServiceMatchError(
            f"no service on {node.target} runs {image_repository}; services there: {listing}. "
            "Pick one with --service NAME (a new name adds a service)"
        )
    raise ServiceMatchError(
        f"{len(matches)} services on {node.target} run {image_repository}: {', '.join(sorted(matches))}; "
        "pick one with --service NAME"
    )


def deploy_targets(infra: Infrastructure, ref: ImageRef, texts: list[str], service: str | None) -> list[Target]:
    """The (node, service) pairs a deploy of ``ref`` to these targets changes: one service per node."""
    chosen: list[Target] = []
    for text in texts:
        resolved = infra.resolve(text)
        if resolved.service and service and resolved.service != service:
            raise TargetError(f"target {text} names service {resolved.service} but --service says {service}")
        if resolved.node is None:  # a whole datacenter: every node that runs the image's repository
            found = []
            for node in infra.datacenters[resolved.dc].nodes.values():
                try:
                    name, new = pick_service(node, ref.repository, ref.familiar_repository, service)
                except ServiceMatchError:
                    continue
                if not new:
                    found.append(Target(node.dc, node.name, name))
            if not found:
                raise ServiceMatchError(f"no node in {resolved.dc} runs {service or ref.repository}")
            chosen.extend(found)
            continue
        node = infra.node(resolved.dc, resolved.node)
        name, _ = pick_service(node, ref.repository, ref.familiar_repository, service or resolved.service)
        chosen.append(Target(node.dc, node.name, name))
    unique = list(dict.fromkeys(chosen))
    if len({(t.dc, t.node) for t in unique}) != len(unique):
        raise TargetError("one deploy changes one service per node; deploy the others separately")
    return unique


def selection(infra: Infrastructure, targets: list[str] | None) -> list[tuple[Node, list[Service], bool]]:
    """(node, its selected services, whether the whole node was selected) for the targets, in order."""
    if not targets:
        return [(n, [n.services[k] for k in sorted(n.services)], True) for n in infra.nodes()]
    picked: dict[str, tuple[Node, dict[str, Service], bool]] = {}
    for text in targets:
        resolved = infra.resolve(text)
        for node in infra.select_nodes(resolved):
            whole = resolved.service is None
            entry = picked.setdefault(node.target, (node, {}, False))
            # the node's own services the target covers (``infra.select`` walks every service of the repository:
            # once per node of a datacenter target, that grew with the square of the fleet)
            services = ({name: node.services[name] for name in sorted(node.services)} if whole
                        else {resolved.service: node.services[resolved.service]}
                        if resolved.service in node.services else {})
            entry[1].update(services)
            picked[node.target] = (node, entry[1], entry[2] or whole)
    order = {n.target: i for i, n in enumerate(infra.nodes())}
    return [(n, [svcs[k] for k in sorted(svcs)], whole)
            for n, svcs, whole in sorted(picked.values(), key=lambda e: order[e[0].target])]


def prune_changes(node: Node, state: NodeState) -> list[Change]:
    """Removals of the managed containers whose service the node's compose file no longer lists."""
    return [Change(f"{node.target}/{c.service}", REMOVE, ["no longer in the repository"], None, c, [])
            for c in state.managed if c.service not in node.services]


def node_failure(node: Node, exc: BaseException) -> DeployerError:
    """Any failure on a node as a DeployerError with one line: ours as they are, the engine's naming the node."""
    if isinstance(exc, DeployerError):
        return exc
    return HostError(node.target, node.docker, describe(exc))


def discovery_hooks(datacenter: Datacenter | None, node: Node, enabled: bool,
                    progress: Callable[[str], None]) -> Hooks | None:
    """Consul registration around container switches, when the node's datacenter names a Consul.

    Consul must answer before any container is touched (``--no-consul`` skips it)."""
    if not enabled or datacenter is None or not datacenter.consul:
        return None
    # Imported here, not at the top: the Consul client and the catalog cost about 15 ms of every
    # deploy's start-up (python -X importtime), and a datacenter without Consul never needs them.
    from deployer.discovery.hooks import deploy_hooks

    return deploy_hooks(datacenter, node, progress=progress)


def target_progress(progress: Callable[[str], None], target: str) -> Callable[[str], None]:
    """The progress callable of one target's steps: the one ``progress`` makes (``for_target``: the
    CLI's live and JSON views keep a line per target), else ``progress`` with ``target: `` before each step."""
    own = getattr(progress, "for_target", None)
    if own is not None:
        return own(target)
    return lambda msg: progress(f"{target}: {msg}")


def run_parallel(work: Callable[[Any], None], items: list, parallel: int) -> None:
    """Run ``work`` over items, at most ``parallel`` at a time (one thread per item when there are fewer);
    exceptions propagate."""
    if len(items) <= 1 or parallel <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()
