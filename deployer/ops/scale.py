"""scale: how many containers a service runs on its node, a commit like any other.

``deployer scale dc/node/service N`` is a route through the same seams as a deploy::

    RepoTransaction: lock -> node lock -> finish -> pull          (gitrepo.transaction, ops.locks)
      load under the lock, refuse a dirty compose file
      set deploy.replicas (or scale) in memory                    (config.yamlreplicas)
      validate the edited file, build the service's spec           (config.loader, compose_spec)
      EngineSession: plan the service, apply it health-gated       (engine.session, engine.apply)
      stage the compose file, commit with trailers, push           (RepoTransaction.commit)

Scaling up starts the new replicas (each health-gated, registered in Consul
when the datacenter has one); scaling down retires the highest ones (taken
out of Consul and drained first). The file is written only after that worked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from deployer.config import loader, yamledit
from deployer.config.compose_deploy import replicas_of
from deployer.config.compose_spec import container_spec, node_resources
from deployer.config.yamlreplicas import set_service_replicas
from deployer.engine.apply import SwapOptions
from deployer.engine.plan import NONE
from deployer.errors import TargetError
from deployer.gitrepo.commit import ACTION_SCALE, deployer_trailers
from deployer.gitrepo.transaction import RepoTransaction
from deployer.ops.locks import NodeLocks, node_session
from deployer.ops.results import DeployResult, TargetResult
from deployer.ops.targets import discovery_hooks, node_failure, target_progress


def scale(root: str | Path, target: str, count: int, *, wait: float = 0, dry_run: bool = False,
          author: str | None = None, message: str | None = None, swap: SwapOptions | None = None,
          consul: bool = True, progress: Callable[[str], None] | None = None) -> DeployResult:
    """Run ``count`` replicas of the service ``target`` names (dc/node/service), health-gated, and commit it."""
    root = Path(root).resolve()
    say = progress or (lambda msg: None)
    started = time.monotonic()
    before_pull = loader.load(root)
    resolved = before_pull.resolve(target)
    if resolved.service is None:
        raise TargetError(f"scale needs a service: write dc/node/service (got {target!r})")
    locks = NodeLocks(root, before_pull, [before_pull.node(resolved.dc, resolved.node)], wait=wait, consul=consul,
                      progress=say)  # the node's lock, in Consul or on its engine (ops.locks)
    with RepoTransaction(root, wait=wait, dry_run=dry_run, progress=say, node_locks=locks) as tx:
        infra = loader.load(root)  # under the lock, after the pull
        resolved = infra.resolve(str(resolved))
        node = infra.node(resolved.dc, resolved.node)
        svc = node.services[resolved.service]
        rel = node.compose_path or svc.location.path
        tx.require_clean(rel)
        old_text = (root / rel).read_bytes().decode("utf-8")
        before = replicas_of(svc.config)
        new_text = old_text if before == count else set_service_replicas(old_text, svc.name, count, path=rel)
        new_node = loader.with_compose_text(root, node, new_text)  # the edited file passes every check
        spec = container_spec(new_node, new_node.services[svc.name], root)
        result = DeployResult(ACTION_SCALE, svc.image, dry_run=dry_run)
        done = TargetResult(str(resolved), svc.image,
                            diff=yamledit.yaml_diff(old_text, new_text, rel) if new_text != old_text else "")
        result.targets = [done]
        node_say = target_progress(say, node.target)
        try:
            hooks = None if dry_run else discovery_hooks(infra.datacenters[node.dc], new_node, consul, node_say)
            with node_session(None if dry_run else locks, node, root) as session:
                have = session.image_id(spec.image)
                change = done.change = session.plan([spec])[0]
                if not dry_run:
                    problem = locks.problem(node)
                    if problem is not None:
                        raise problem
                    applier = session.applier(swap, hooks, node_say, guard=locks.guard(node), lock_id=locks.id)
                    if change.action != NONE:
                        if have is None:
                            applier.ensure_image(spec.image)
                        applier.ensure_resources(*node_resources(new_node))
                    outcome = applier.apply(change, session.state)
                    done.steps = outcome.steps
                    done.image_id = outcome.container.image_id if outcome.container else None
        except Exception as exc:  # ours, or the engine refused or went away: one line naming the node
            raise node_failure(node, exc) from exc
        if new_text != old_text and not dry_run:
            tx.stage(rel, new_text)
            trailers = deployer_trailers(ACTION_SCALE, [str(resolved)])
            result.commit = tx.commit(f"scale {resolved}: {before} -> {count} replicas", trailers, reason=message,
                                      author=author, world_changed=True).sha
        result.seconds = time.monotonic() - started
    return result
