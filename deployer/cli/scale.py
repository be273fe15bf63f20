"""scale: run N containers of a service on its node, and commit it (``deploy.replicas``).

The work is done by deployer.ops.scale; steps show as progress lines on stderr
while they happen, the result prints at the end.
"""

from __future__ import annotations

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import repo_root, swap_options, swap_settings
from deployer.cli.output import end_progress, print_json, progress


@click.command()
@click.argument("target", shell_complete=complete_targets("service"))
@click.argument("replicas", type=click.IntRange(min=0))
@swap_options
@click.pass_context
def scale(ctx, target, replicas, wait, author, message, dry_run, settle, health_timeout, no_consul, as_json, quiet,
          verbose):
    """Run REPLICAS containers of TARGET (dc/node/service), health-gated, and commit deploy.replicas."""
    from deployer.ops.scale import scale as scale_service

    result = scale_service(repo_root(ctx), target, replicas, wait=wait, dry_run=dry_run, author=author,
                           message=message, swap=swap_settings(settle, health_timeout), consul=not no_consul,
                           progress=progress(quiet or as_json))
    end_progress()
    if as_json:
        print_json(result.to_json())
        return
    done = result.targets[0]
    if result.dry_run:
        click.echo(f"dry run: scale {done.target} to {replicas}")
        click.echo(done.diff.rstrip("\n") if done.diff else "repository: no change")
        if done.change is not None:
            click.echo(f"containers: {done.change.summary()}")
        return
    if result.commit:
        click.echo(f"scale {done.target}: {replicas} replicas [{result.commit[:7]}] ({result.seconds:.1f}s)")
    elif done.change is not None and done.change.action != "none":
        click.echo(f"{done.target}: {replicas} replicas are already written; repaired the containers "
                   f"({done.change.action}), no commit")
    else:
        click.echo(f"{done.target}: already runs {replicas} replicas; nothing to do")


COMMANDS = (scale,)
