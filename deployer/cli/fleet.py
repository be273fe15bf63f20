"""Status, plan, apply: the whole repository against every node, nodes in parallel.

Exit codes (deployer.errors' EXIT_*): status and plan exit 2 when the nodes
differ from the repository (drift, changes pending), 1 when a node could not be
read; apply exits 1 when it failed somewhere; 0 otherwise.
"""

from __future__ import annotations

import sys

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import (QUIET_NOTHING, health_timeout_option, json_option, no_consul_option,
                                  parallel_option, progress_options, quiet_option, repo_root, settle_option, swap_settings,
                                  verbose_option, wait_option)
from deployer.cli.output import end_progress, print_json, progress, table
from deployer.errors import EXIT_CHANGES, EXIT_FAILED


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_targets())
@parallel_option
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def status(ctx, targets, parallel, as_json, quiet, verbose):
    """Compare what the repository says with what runs (exit 0 all match, 2 drift, 1 a node unreadable)."""
    from deployer.ops.deploy import Deployer

    rows = Deployer(repo_root(ctx)).status(list(targets) or None, parallel=parallel)
    if as_json:
        print_json([r.to_json() for r in rows])
    else:
        # a replicated service's state carries its count: "healthy 3/3"
        table(((r.target, r.image, r.running_image or "-", " ".join(filter(None, (r.state, getattr(r, "replicas", "")))),
                r.detail) for r in rows),
              ["target", "written", "running", "state", "detail"])
    if any(r.state == "unreachable" for r in rows):
        sys.exit(EXIT_FAILED)
    if not all(r.match for r in rows):
        sys.exit(EXIT_CHANGES)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_targets())
@click.option("--prune", is_flag=True, help="Also plan removing managed containers the repository no longer lists.")
@parallel_option
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def plan(ctx, targets, prune, parallel, as_json, quiet, verbose):
    """What apply would do: compare the repository with every node (exit 0 none, 2 changes, 1 errors, 3 bad input)."""
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
        sys.exit(EXIT_FAILED)
    if any(p.pending for p in plans):
        sys.exit(EXIT_CHANGES)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_targets())
@click.option("--prune", is_flag=True, help="Remove managed containers the repository no longer lists.")
@parallel_option
@wait_option
@settle_option
@health_timeout_option
@no_consul_option
@json_option()
@quiet_option()
@verbose_option()
@progress_options
@click.pass_context
def apply(ctx, targets, prune, parallel, wait, settle, health_timeout, no_consul, as_json, quiet, verbose):
    """Converge the nodes to the repository, health-gated, nodes in parallel (exit 1 if any failed)."""
    from deployer.ops.deploy import Deployer

    results = Deployer(repo_root(ctx), progress=progress(quiet or as_json), consul=not no_consul).apply(
        list(targets) or None, prune=prune, parallel=parallel, wait=wait,
        swap=swap_settings(settle, health_timeout))
    end_progress(failed=[r.node for r in results if not r.ok])
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
        sys.exit(EXIT_FAILED)


COMMANDS = (status, plan, apply)
