"""The `deployer` command: the group, its error translation, and the commands of every subject.

Conventions for every command: ``--repo PATH`` (or DEPLOYER_REPO) picks the
infrastructure repository, ``--json`` prints data for machines, errors are one
line on stderr (``error: file:line: field: message``) with a non-zero exit.

The commands live by subject (repo, deploy, fleet, nodes, build, discovery);
this module imports them and adds them to the group. Nothing imports it but
the console script and ``python -m deployer``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from deployer.cli import build, deploy, discovery, fleet, nodes, repo
from deployer.cli.options import repo_option, setup_logging
from deployer.errors import DeployerError, HealthCheckFailed


def _fail(exc: DeployerError) -> None:
    if isinstance(exc, HealthCheckFailed) and exc.logs:
        click.echo(f"--- last log lines of {exc.container or 'the new container'} ---", err=True)
        click.echo(exc.logs.rstrip("\n"), err=True)
        click.echo("---", err=True)
    click.echo(f"error: {exc.one_line()}", err=True)
    sys.exit(exc.exit_code)


class DeployerGroup(click.Group):
    """Turns DeployerError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeployerError as exc:
            _fail(exc)


@click.group(cls=DeployerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@repo_option
@click.version_option(package_name="deployer")
@click.pass_context
def main(ctx: click.Context, repo: str) -> None:
    """Deploy Docker containers from an infrastructure git repository.

    The repository holds datacenters/<dc>/<node>/ with a node.yml (how to reach
    the node's Docker engine) and a docker-compose.yml (what it must run). Every
    deploy is a git commit.
    """
    ctx.ensure_object(dict)
    ctx.obj["repo"] = repo
    setup_logging()


for _subject in (repo, deploy, fleet, nodes, build, discovery):
    for _command in _subject.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
