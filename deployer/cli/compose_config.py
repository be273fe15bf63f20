"""``deployer config``: a node's compose file fully resolved, as ``docker compose config`` prints it."""

from __future__ import annotations

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import QUIET_NOTHING, VERBOSE_NOTHING, json_option, quiet_option, repo_root, verbose_option
from deployer.cli.output import print_json


@click.command(name="config")
@click.argument("target", shell_complete=complete_targets("node"))
@json_option("Print the resolved compose file as JSON instead of YAML.")
@quiet_option(QUIET_NOTHING)
@verbose_option(VERBOSE_NOTHING)
@click.pass_context
def config_command(ctx: click.Context, target: str, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Print the compose file of node TARGET (dc/node) after interpolation, include and extends.

    Variables come from the repository only (node.yml, the .env beside the
    compose file, datacenter.yml); exit 3 if the repository has a problem.
    """
    from deployer.config.loader import load
    from deployer.config.resolved import resolved_document
    from deployer.errors import TargetError

    infra = load(repo_root(ctx))
    resolved = infra.resolve(target)
    if resolved.node is None or resolved.service is not None:
        raise TargetError(f"{target}: name one node (dc/node)")
    doc = resolved_document(infra.node(resolved.dc, resolved.node))
    if as_json:
        print_json(doc)
        return
    import yaml

    click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True), nl=False)


COMMANDS = [config_command]
