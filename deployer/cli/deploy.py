"""Deploy, rollback, history: change one service's image (a commit), or read the deploys made.

The work is done by deployer.ops.deploy's ``Deployer``; steps show as
progress lines on stderr while they happen, the result prints at the end.
"""

from __future__ import annotations

import click

from deployer.cli.completion import complete_images, complete_targets
from deployer.cli.options import (QUIET_NOTHING, VERBOSE_NOTHING, batch_option, json_option, parallel_option,
                                  quiet_option, repo_root, service_option, swap_options, swap_settings,
                                  verbose_option)
from deployer.cli.output import print_deploy_result, print_json, progress, table


@click.command()
@click.argument("image", shell_complete=complete_images)
@click.argument("targets", nargs=-1, required=True, shell_complete=complete_targets())
@service_option
@batch_option
@parallel_option
@swap_options
@click.pass_context
def deploy(ctx, image, targets, service, batch, parallel, wait, author, message, dry_run, settle, health_timeout,
           no_consul, as_json, quiet, verbose):
    """Deploy IMAGE to TARGETS and commit the change.

    A target is dc/node, dc/node/service, or a whole dc (every node there
    that runs the image's repository). Several targets make one commit.
    """
    from deployer.errors import PartialDeploy
    from deployer.ops.deploy import Deployer

    api = Deployer(repo_root(ctx), progress=progress(quiet or as_json), consul=not no_consul)
    try:
        result = api.deploy(image, list(targets), service, wait=wait, dry_run=dry_run, author=author,
                            message=message, swap=swap_settings(settle, health_timeout), batch=batch,
                            parallel=parallel)
    except PartialDeploy as exc:
        print_deploy_result(exc.result, as_json)
        raise
    print_deploy_result(result, as_json)


@click.command()
@click.argument("target", shell_complete=complete_targets("service"))
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True, help="Go N deploys back.")
@click.option("--to", "to_rev", metavar="REV", help="Go back to the image the service had at commit REV.")
@swap_options
@click.pass_context
def rollback(ctx, target, steps, to_rev, wait, author, message, dry_run, settle, health_timeout, no_consul, as_json,
             quiet, verbose):
    """Deploy the image TARGET (dc/node/service) ran before, found in git history."""
    from deployer.ops.deploy import Deployer

    api = Deployer(repo_root(ctx), progress=progress(quiet or as_json), consul=not no_consul)
    result = api.rollback(target, steps=steps, to=to_rev, wait=wait, dry_run=dry_run, author=author,
                          message=message, swap=swap_settings(settle, health_timeout))
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
