"""The `deployer` command: parse, call deployer.api, print. Nothing else lives here.

Conventions for every command: ``--repo PATH`` (or DEPLOYER_REPO) picks the
infrastructure repository, ``--json`` prints data for machines, errors are one
line on stderr (``error: file:line: field: message``) with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable

import click

from deployer.errors import DeployerError, HealthCheckFailed, ValidationFailed


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


def _repo_root(ctx: click.Context) -> str:
    from deployer.loader import find_root

    return str(find_root(ctx.obj["repo"]))


def _progress(quiet: bool) -> Callable[[str], None]:
    def show(msg: str) -> None:
        if not quiet:
            click.echo(f"  {msg}", err=True)

    return show


def _table(rows: Iterable[Iterable[Any]], headers: list[str]) -> None:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
wait_option = click.option("--wait", type=float, default=0, metavar="SECONDS",
                           help="Wait up to SECONDS for another deployer's lock instead of failing at once.")
author_option = click.option("--author", metavar="'NAME <EMAIL>'", help="Commit author (default: git config).")
message_option = click.option("--message", "-m", metavar="TEXT", help="Why: added to the commit message.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show the YAML diff and container actions; change nothing.")
settle_option = click.option("--settle", type=float, default=None, metavar="SECONDS",
                             help="How long a container without healthcheck must run without restarting (default 2).")
timeout_option = click.option("--health-timeout", type=float, default=None, metavar="SECONDS",
                              help="Give up waiting for health after SECONDS (default: from the healthcheck).")


@click.group(cls=DeployerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "-C", default=lambda: os.environ.get("DEPLOYER_REPO", "."), metavar="PATH",
              help="The infrastructure repository (default: DEPLOYER_REPO or the current directory).")
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


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--example", is_flag=True, help="Copy the example infrastructure (datacenters from the talk).")
@click.option("--docker", "docker_url", default="unix:///var/run/docker.sock", show_default=True,
              help="How the 'local' node reaches its Docker engine.")
@click.option("--no-images", is_flag=True, help="Do not build the sample images on the local engine.")
def init(directory: str, example: bool, docker_url: str, no_images: bool) -> None:
    """Create a new infrastructure repository in DIRECTORY."""
    from deployer.scaffold import init_repo

    result = init_repo(directory, example=example, docker_url=docker_url, build_images=not no_images,
                       progress=_progress(False))
    click.echo(f"created {result.root} ({result.commit[:7]}): {', '.join(result.targets)}")
    for line in result.notes:
        click.echo(line)


@main.command()
@click.argument("path", required=False)
@json_option
@click.pass_context
def validate(ctx: click.Context, path: str | None, as_json: bool) -> None:
    """Load the whole repository and report every problem (exit 2 if any)."""
    from deployer.loader import check, find_root

    root = find_root(path or ctx.obj["repo"])
    infra, problems = check(root)
    if as_json:
        _json({"ok": not problems, "problems": [
            {"path": p.path, "line": p.line, "field": p.field, "message": p.message} for p in problems]})
    else:
        for p in problems:
            click.echo(p.render())
        if not problems:
            n_nodes = sum(1 for _ in infra.nodes())
            n_svc = sum(1 for _ in infra.services())
            click.echo(f"ok: {len(infra.datacenters)} datacenters, {n_nodes} nodes, {n_svc} containers")
    if problems:
        sys.exit(2)


@main.command(name="ls")
@click.argument("target", required=False)
@json_option
@click.pass_context
def ls_command(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """List datacenters, nodes and containers with their images."""
    from deployer.loader import load

    infra = load(_repo_root(ctx))
    resolved = infra.resolve(target) if target else None
    nodes = infra.select_nodes(resolved)
    if as_json:
        _json([{
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
    _table(rows, ["datacenter", "node", "service", "image", "docker"])


def _print_result(result, as_json: bool) -> None:
    if as_json:
        _json(result.to_json())
        return
    change = result.change
    if result.dry_run:
        click.echo(f"dry run: {result.action} {result.target}: {result.previous_image or '(new service)'} -> {result.image}")
        if result.diff:
            click.echo(result.diff.rstrip("\n"))
        else:
            click.echo("repository: no change")
        if change is not None:
            click.echo(f"container: {change.summary()}")
        return
    for step in result.steps:
        click.echo(f"  {step}")
    if result.commit:
        click.echo(f"{result.action} {result.target}: {result.previous_image or '(new service)'} -> {result.image} "
                   f"[{result.commit[:7]}] ({result.seconds:.1f}s)")
    elif change is not None and change.action != "none":
        click.echo(f"{result.target}: {result.image} is already written; repaired the container ({change.action}), "
                   "no commit")
    else:
        click.echo(f"{result.target}: already runs {result.image}; nothing to do")


@main.command()
@click.argument("image")
@click.argument("target")
@click.option("--service", metavar="NAME", help="The service to deploy to (a new name adds a service).")
@wait_option
@author_option
@message_option
@dry_run_option
@settle_option
@timeout_option
@json_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def deploy(ctx, image, target, service, wait, author, message, dry_run, settle, health_timeout, as_json, quiet):
    """Deploy IMAGE to TARGET (dc/node or dc/node/service) and commit the change."""
    from deployer.api import Deployer

    api = Deployer(_repo_root(ctx), progress=_progress(quiet or as_json))
    result = api.deploy(image, target, service, wait=wait, dry_run=dry_run, author=author, message=message,
                        settle=settle, health_timeout=health_timeout)
    _print_result(result, as_json)


@main.command()
@click.argument("target")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True, help="Go N deploys back.")
@click.option("--to", "to_rev", metavar="REV", help="Go back to the image the service had at commit REV.")
@wait_option
@author_option
@message_option
@dry_run_option
@settle_option
@timeout_option
@json_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def rollback(ctx, target, steps, to_rev, wait, author, message, dry_run, settle, health_timeout, as_json, quiet):
    """Deploy the image TARGET (dc/node/service) ran before, found in git history."""
    from deployer.api import Deployer

    api = Deployer(_repo_root(ctx), progress=_progress(quiet or as_json))
    result = api.rollback(target, steps=steps, to=to_rev, wait=wait, dry_run=dry_run, author=author,
                          message=message, settle=settle, health_timeout=health_timeout)
    _print_result(result, as_json)


@main.command()
@click.argument("target", required=False)
@click.option("-n", "limit", type=click.IntRange(min=1), default=None, help="Show the last N entries.")
@json_option
@click.pass_context
def history(ctx, target, limit, as_json):
    """One line per deploy or rollback: time, who, action, target, images, commit."""
    from deployer.api import Deployer

    entries = Deployer(_repo_root(ctx)).history(target, limit)
    if as_json:
        _json([e.to_json() if hasattr(e, "to_json") else e.__dict__ for e in entries])
        return
    _table(((e.time, e.author, e.action, ",".join(e.targets), e.previous_image, e.image, e.short) for e in entries),
           ["time", "who", "action", "target", "from", "to", "commit"])


@main.command()
@click.argument("target", required=False)
@json_option
@click.pass_context
def status(ctx, target, as_json):
    """Compare what the repository says with what runs (exit 1 unless everything matches)."""
    from deployer.api import Deployer

    rows = Deployer(_repo_root(ctx)).status(target)
    if as_json:
        _json([r.to_json() for r in rows])
    else:
        _table(((r.target, r.image, r.running_image or "-", r.state, r.detail) for r in rows),
               ["target", "written", "running", "state", "detail"])
    if not all(r.match for r in rows):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
