"""Deploy, rollback, history: change one service's image (a commit), or read the deploys made.

The work is done by deployer.ops.deploy's ``Deployer``; steps show as
progress lines on stderr while they happen, the result prints at the end.
"""

from __future__ import annotations

import click

from deployer.cli.completion import complete_images, complete_targets
from deployer.cli.options import (QUIET_NOTHING, VERBOSE_NOTHING, json_option, parallel_option, quiet_option,
                                  repo_root, rollout_options, rollout_settings, service_option, swap_options,
                                  swap_settings, verbose_option)
from deployer.cli.output import print_deploy_result, print_json, progress, table


@click.command()
@click.argument("image", shell_complete=complete_images)
@click.argument("targets", nargs=-1, required=True, shell_complete=complete_targets())
@service_option
@rollout_options
@parallel_option
@swap_options
@click.pass_context
def deploy(ctx, image, targets, service, batch, canary, max_fail, on_failure, pause, parallel, wait, author, message,
           dry_run, settle, health_timeout, no_consul, as_json, quiet, verbose):
    """Deploy IMAGE to TARGETS and commit the change.

    A target is dc/node, dc/node/service, or a whole dc (every node there
    that runs the image's repository). Several targets make one commit,
    which holds the targets that run IMAGE at the end. Over many nodes,
    --batch, --canary, --max-fail, --pause and --on-failure say in which
    order they are switched and what a failure does.
    """
    from deployer.errors import PartialDeploy
    from deployer.ops.deploy import Deployer

    rollout = rollout_settings(batch, canary, max_fail, on_failure, pause)
    api = Deployer(repo_root(ctx), progress=progress(quiet or as_json), consul=not no_consul)
    try:
        result = api.deploy(image, list(targets), service, wait=wait, dry_run=dry_run, author=author,
                            message=message, swap=swap_settings(settle, health_timeout), parallel=parallel,
                            rollout=rollout)
    except PartialDeploy as exc:
        print_deploy_result(exc.result, as_json)
        raise
    print_deploy_result(result, as_json)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_targets())
@click.option("--commit", "commit", metavar="SHA",
              help="Undo that deploy: every target it changed goes back to the image it had before it.")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Go N deploys back (a target naming a service).")
@click.option("--to", "to_rev", metavar="REV",
              help="Go back to the image the service had at commit REV (a target naming a service).")
@rollout_options
@parallel_option
@swap_options
@click.pass_context
def rollback(ctx, targets, commit, steps, to_rev, batch, canary, max_fail, on_failure, pause, parallel, wait, author,
             message, dry_run, settle, health_timeout, no_consul, as_json, quiet, verbose):
    """Deploy the image each target ran before, found in git history; one commit.

    dc/node/service goes back one version (--steps, --to); a dc or dc/node
    undoes the latest deploy there (each of its targets to its image before
    it); --commit SHA undoes that deploy (only its targets under TARGETS,
    when given). Health-gated like deploy.
    """
    from deployer.errors import PartialDeploy
    from deployer.ops.deploy import Deployer

    if not targets and commit is None:
        raise click.UsageError("give a target (dc, dc/node or dc/node/service) or --commit SHA")
    rollout = rollout_settings(batch, canary, max_fail, on_failure, pause)
    api = Deployer(repo_root(ctx), progress=progress(quiet or as_json), consul=not no_consul)
    try:
        result = api.rollback(list(targets), steps=steps, to=to_rev, commit=commit, wait=wait, dry_run=dry_run,
                              author=author, message=message, swap=swap_settings(settle, health_timeout),
                              parallel=parallel, rollout=rollout)
    except PartialDeploy as exc:
        print_deploy_result(exc.result, as_json)
        raise
    print_deploy_result(result, as_json)


@click.command()
@click.argument("target", required=False, shell_complete=complete_targets())
@click.option("-n", "limit", type=click.IntRange(min=1), default=None, help="Show the last N entries.")
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option(VERBOSE_NOTHING)
@click.pass_context
def history(ctx, target, limit, as_json, quiet, verbose):
    """One line per deploy or rollback: time, who, action, target, images, commit."""
    from deployer.ops.deploy import Deployer

    entries = Deployer(repo_root(ctx)).history(target, limit)
    if as_json:
        print_json([e.to_json() if hasattr(e, "to_json") else e.__dict__ for e in entries])
        return
    table(((e.time, e.author, e.action, ",".join(e.targets), e.previous_image, e.image, e.short) for e in entries),
          ["time", "who", "action", "target", "from", "to", "commit"])


COMMANDS = (deploy, rollback, history)
