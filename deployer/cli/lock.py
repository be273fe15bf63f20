"""The ``lock`` group: see, take and lift node locks (Consul session locks, or the lock on a node's engine).

The work is done by deployer.ops.locks (``lock_status``, ``manual_lock``, ``release_locks``).
"""

from __future__ import annotations

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import QUIET_NOTHING, json_option, no_consul_option, quiet_option, repo_root, verbose_option
from deployer.cli.output import print_json, progress, table


@click.group()
def lock() -> None:
    """See, take and lift the node locks every deployer respects."""


@lock.command(name="status")
@click.argument("targets", nargs=-1, metavar="[TARGET]...", shell_complete=complete_targets("node"))
@no_consul_option
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def lock_status(ctx, targets, no_consul, as_json, quiet, verbose):
    """Who holds the lock of each node (all nodes, or the TARGETs: dc or dc/node)."""
    from deployer.config import loader
    from deployer.ops.locks import lock_status as status

    root = repo_root(ctx)
    rows = status(root, loader.load(root), list(targets) or None, consul=not no_consul)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    table([(r.target, r.kind, "error" if r.error else ("held" if r.held else "free"),
            "" if not r.held and not r.error else r.describe()) for r in rows], ["node", "lock", "state", "holder"])


@lock.command(name="acquire")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...", shell_complete=complete_targets("node"))
@click.option("--message", "-m", "reason", required=True, metavar="REASON",
              help="Why: shown to every deployer the lock stops.")
@no_consul_option
@json_option()
@quiet_option()
@verbose_option()
@click.pass_context
def lock_acquire(ctx, targets, reason, no_consul, as_json, quiet, verbose):
    """Lock the TARGET nodes until 'deployer lock release': deploy, apply and watch-builds --deploy stop there."""
    from deployer.config import loader
    from deployer.ops.locks import manual_lock

    root = repo_root(ctx)
    rows = manual_lock(root, loader.load(root), list(targets), reason, consul=not no_consul,
                       progress=progress(quiet or as_json))
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    for r in rows:
        click.echo(f"locked {r.target} ({r.kind}): {reason}")


@lock.command(name="release")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...", shell_complete=complete_targets("node"))
@click.option("--force", is_flag=True, help="Also break the lock of a deploy that is running (or died).")
@no_consul_option
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def lock_release(ctx, targets, force, no_consul, as_json, quiet, verbose):
    """Lift the manual locks of the TARGET nodes (--force: any lock)."""
    from deployer.config import loader
    from deployer.ops.locks import release_locks

    root = repo_root(ctx)
    rows = release_locks(root, loader.load(root), list(targets), force=force, consul=not no_consul)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    for r in rows:
        click.echo(f"released {r.target} ({r.kind}): was {r.describe_released()}" if r.holder
                   else f"{r.target} ({r.kind}) was not locked")


COMMANDS = (lock,)
