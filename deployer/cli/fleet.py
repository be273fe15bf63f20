"""Status, plan, apply: the whole repository against every node, nodes in parallel.

Each exits non-zero when the nodes differ from the repository (status 1,
plan 2, or 1 when a node could not be read) or when apply failed somewhere.
"""

from __future__ import annotations

import sys

import click

from deployer.cli.options import (health_timeout_option, json_option, no_consul_option, parallel_option,
                                  quiet_option, repo_root, settle_option, swap_settings, wait_option)
from deployer.cli.output import print_json, progress, table


@click.command()
@click.argument("targets", nargs=-1)
@parallel_option
@json_option()
@click.pass_context
def status(ctx, targets, parallel, as_json):
    """Compare what the repository says with what runs (exit 1 unless everything matches)."""
    from deployer.ops.deploy import Deployer

    rows = Deployer(repo_root(ctx)).status(list(targets) or None, parallel=parallel)
    if as_json:
        print_json([r.to_json() for r in rows])
    else:
        table(((r.target, r.image, r.running_image or "-", r.state, r.detail) for r in rows),
              ["target", "written", "running", "state", "detail"])
    if not all(r.match for r in rows):
        sys.exit(1)


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--prune", is_flag=True, help="Also plan removing managed containers the repository no longer lists.")
@parallel_option
@json_option()
@click.pass_context
def plan(ctx, targets, prune, parallel, as_json):
    """What apply would do: compare the repository with every node (exit 0 none, 2 changes, 1 errors)."""
    from deployer.ops.deploy import Deployer

    plans = Deployer(repo_root(ctx)).plan(list(targets) or None, prune=prune, parallel=parallel)
    if as_json:
        print_json([p.to_json() for p in plans])
    else:
        for p in plans:
            if p.error:
                click.echo(f"{p.node}: ERROR {p.error}")
                continue
            for c in p.changes:
                click.echo(f"{c.target}: {c.action}" + (f" ({'; '.join(c.reasons)})" if c.reasons else ""))
        pending = sum(len(p.pending) for p in plans)
        errors = sum(1 for p in plans if p.error)
        click.echo(f"plan: {pending} to change, {errors} nodes unreachable or failing")
    if any(p.error for p in plans):
        sys.exit(1)
    if any(p.pending for p in plans):
        sys.exit(2)


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--prune", is_flag=True, help="Remove managed containers the repository no longer lists.")
@parallel_option
@wait_option
@settle_option
@health_timeout_option
@no_consul_option
@json_option()
@quiet_option()
@click.pass_context
def apply(ctx, targets, prune, parallel, wait, settle, health_timeout, no_consul, as_json, quiet):
    """Converge the nodes to the repository, health-gated, nodes in parallel (exit 1 if any failed)."""
    from deployer.ops.deploy import Deployer

    results = Deployer(repo_root(ctx), progress=progress(quiet or as_json), consul=not no_consul).apply(
        list(targets) or None, prune=prune, parallel=parallel, wait=wait,
        swap=swap_settings(settle, health_timeout))
    if as_json:
        print_json([r.to_json() for r in results])
    else:
        for r in results:
            if r.error:
                click.echo(f"{r.node}: FAILED {r.error}")
                continue
            for item in r.items:
                if item.action == "none" and item.status == "ok":
                    continue
                failed = item.status != "ok"
                click.echo(f"{item.target}: {item.action} {item.status}" + (f" ({item.detail})" if failed else ""))
            changed = sum(1 for i in r.items if i.action != "none")
            click.echo(f"{r.node}: {'ok' if r.ok else 'FAILED'}, {changed} changed")
    if not all(r.ok for r in results):
        sys.exit(1)


COMMANDS = (status, plan, apply)
