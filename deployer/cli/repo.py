"""The repository commands: init, validate, ls. They need no Docker engine."""

from __future__ import annotations

import sys

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import QUIET_NOTHING, VERBOSE_NOTHING, json_option, quiet_option, repo_root, verbose_option
from deployer.cli.output import print_json, progress, table
from deployer.errors import EXIT_BAD_INPUT


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--example", is_flag=True, help="Copy the example infrastructure (datacenters from the talk).")
@click.option("--docker", "docker_url", default="unix:///var/run/docker.sock", show_default=True,
              help="How the 'local' node reaches its Docker engine.")
@click.option("--no-images", is_flag=True, help="Do not build the sample images on the local engine.")
@json_option("Print the repository made (root, commit, targets, notes) as JSON.")
@quiet_option("No progress lines (the sample image builds).")
@verbose_option()
def init(directory: str, example: bool, docker_url: str, no_images: bool, as_json: bool, quiet: bool,
         verbose: bool) -> None:
    """Create a new infrastructure repository in DIRECTORY."""
    from deployer.ops.scaffold import init_repo

    result = init_repo(directory, example=example, docker_url=docker_url, build_images=not no_images,
                       progress=progress(quiet or as_json))
    if as_json:
        print_json({"root": str(result.root), "commit": result.commit, "targets": list(result.targets),
                    "notes": list(result.notes)})
        return
    click.echo(f"created {result.root} ({result.commit[:7]}): {', '.join(result.targets)}")
    for line in result.notes:
        click.echo(line)


@click.command()
@click.argument("path", required=False)
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option(VERBOSE_NOTHING)
@click.pass_context
def validate(ctx: click.Context, path: str | None, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Load the whole repository and report every problem (exit 3 if any: bad input)."""
    from deployer.config.loader import check, find_root

    root = find_root(path or ctx.obj["repo"])
    infra, problems = check(root)
    if as_json:
        print_json({"ok": not problems, "problems": [
            {"path": p.path, "line": p.line, "field": p.field, "message": p.message} for p in problems]})
    else:
        for p in problems:
            click.echo(p.render())
        if not problems:
            n_nodes = sum(1 for _ in infra.nodes())
            n_svc = sum(1 for _ in infra.services())
            click.echo(f"ok: {len(infra.datacenters)} datacenters, {n_nodes} nodes, {n_svc} containers")
    if problems:
        sys.exit(EXIT_BAD_INPUT)


@click.command(name="ls")
@click.argument("target", required=False, shell_complete=complete_targets())
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option(VERBOSE_NOTHING)
@click.pass_context
def ls_command(ctx: click.Context, target: str | None, as_json: bool, quiet: bool, verbose: bool) -> None:
    """List datacenters, nodes and containers with their images."""
    from deployer.config.loader import load

    infra = load(repo_root(ctx))
    resolved = infra.resolve(target) if target else None
    nodes = infra.select_nodes(resolved)
    if as_json:
        print_json([{
            "datacenter": n.dc, "node": n.name, "docker": n.docker,
            "containers": [{"service": s.name, "image": s.image, "target": s.target}
                           for s in infra.select(resolved) if s.dc == n.dc and s.node == n.name],
        } for n in nodes])
        return
    rows = []
    for n in nodes:
        services = [s for s in infra.select(resolved) if s.dc == n.dc and s.node == n.name]
        if not services:
            rows.append((n.dc, n.name, "-", "-", n.docker))
        for s in services:
            rows.append((n.dc, n.name, s.name, s.image, n.docker))
    table(rows, ["datacenter", "node", "service", "image", "docker"])


COMMANDS = (init, validate, ls_command)
