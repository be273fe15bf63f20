"""The `deployer` command: parse, call deployer.ops.deploy, print. Nothing else lives here.

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


def _repo_root(ctx: click.Context) -> str:
    from deployer.config.loader import find_root

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


def _swap(settle: float | None, health_timeout: float | None):
    """--settle and --health-timeout, as the engine layer takes them."""
    from deployer.engine.apply import SwapOptions

    return SwapOptions(settle=settle, health_timeout=health_timeout)


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
no_consul_option = click.option("--no-consul", is_flag=True,
                                 help="Do not register containers in Consul (deploy even when Consul is down).")
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
    from deployer.ops.scaffold import init_repo

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
    from deployer.config.loader import check, find_root

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
    from deployer.config.loader import load

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
    if result.dry_run:
        for t in result.targets:
            click.echo(f"dry run: {result.action} {t.target}: {t.previous_image or '(new service)'} -> {result.image}")
            click.echo(t.diff.rstrip("\n") if t.diff else "repository: no change")
            if t.change is not None:
                click.echo(f"container: {t.change.summary()}")
        return
    for t in result.targets:  # the steps were shown as progress while they happened
        if t.error:
            click.echo(f"{t.target}: FAILED: {t.error}")
    if result.commit:
        olds = {t.previous_image for t in result.targets if not t.error}
        old = olds.pop() if len(olds) == 1 else "(various)"
        click.echo(f"{result.action} {result.target}: {old or '(new service)'} -> {result.image} "
                   f"[{result.commit[:7]}] ({result.seconds:.1f}s)")
        return
    for t in result.targets:
        if t.error:
            continue
        if t.change is not None and t.change.action != "none":
            click.echo(f"{t.target}: {result.image} is already written; repaired the container "
                       f"({t.change.action}), no commit")
        else:
            click.echo(f"{t.target}: already runs {result.image}; nothing to do")


parallel_option = click.option("--parallel", type=click.IntRange(min=1), default=8, show_default=True,
                               help="Work on at most N nodes at once.")


def swap_options(f: Callable) -> Callable:
    """The options every command that swaps containers and commits takes (deploy, rollback)."""
    for option in reversed([wait_option, author_option, message_option, dry_run_option, settle_option,
                            timeout_option, no_consul_option, json_option,
                            click.option("--quiet", "-q", is_flag=True, help="No progress lines.")]):
        f = option(f)
    return f


@main.command()
@click.argument("image")
@click.argument("targets", nargs=-1, required=True)
@click.option("--service", metavar="NAME", help="The service to deploy to (a new name adds a service).")
@click.option("--batch", type=click.IntRange(min=1), default=None, metavar="N",
              help="Deploy to N nodes at a time; stop at the first batch that fails.")
@parallel_option
@swap_options
@click.pass_context
def deploy(ctx, image, targets, service, batch, parallel, wait, author, message, dry_run, settle, health_timeout,
           no_consul, as_json, quiet):
    """Deploy IMAGE to TARGETS and commit the change.

    A target is dc/node, dc/node/service, or a whole dc (every node there
    that runs the image's repository). Several targets make one commit.
    """
    from deployer.ops.deploy import Deployer
    from deployer.errors import PartialDeploy

    api = Deployer(_repo_root(ctx), progress=_progress(quiet or as_json), consul=not no_consul)
    try:
        result = api.deploy(image, list(targets), service, wait=wait, dry_run=dry_run, author=author,
                            message=message, swap=_swap(settle, health_timeout), batch=batch,
                            parallel=parallel)
    except PartialDeploy as exc:
        _print_result(exc.result, as_json)
        raise
    _print_result(result, as_json)


@main.command()
@click.argument("target")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True, help="Go N deploys back.")
@click.option("--to", "to_rev", metavar="REV", help="Go back to the image the service had at commit REV.")
@swap_options
@click.pass_context
def rollback(ctx, target, steps, to_rev, wait, author, message, dry_run, settle, health_timeout, no_consul, as_json,
             quiet):
    """Deploy the image TARGET (dc/node/service) ran before, found in git history."""
    from deployer.ops.deploy import Deployer

    api = Deployer(_repo_root(ctx), progress=_progress(quiet or as_json), consul=not no_consul)
    result = api.rollback(target, steps=steps, to=to_rev, wait=wait, dry_run=dry_run, author=author,
                          message=message, swap=_swap(settle, health_timeout))
    _print_result(result, as_json)


@main.command()
@click.argument("target", required=False)
@click.option("-n", "limit", type=click.IntRange(min=1), default=None, help="Show the last N entries.")
@json_option
@click.pass_context
def history(ctx, target, limit, as_json):
    """One line per deploy or rollback: time, who, action, target, images, commit."""
    from deployer.ops.deploy import Deployer

    entries = Deployer(_repo_root(ctx)).history(target, limit)
    if as_json:
        _json([e.to_json() if hasattr(e, "to_json") else e.__dict__ for e in entries])
        return
    _table(((e.time, e.author, e.action, ",".join(e.targets), e.previous_image, e.image, e.short) for e in entries),
           ["time", "who", "action", "target", "from", "to", "commit"])


@main.command()
@click.argument("targets", nargs=-1)
@parallel_option
@json_option
@click.pass_context
def status(ctx, targets, parallel, as_json):
    """Compare what the repository says with what runs (exit 1 unless everything matches)."""
    from deployer.ops.deploy import Deployer

    rows = Deployer(_repo_root(ctx)).status(list(targets) or None, parallel=parallel)
    if as_json:
        _json([r.to_json() for r in rows])
    else:
        _table(((r.target, r.image, r.running_image or "-", r.state, r.detail) for r in rows),
               ["target", "written", "running", "state", "detail"])
    if not all(r.match for r in rows):
        sys.exit(1)


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--prune", is_flag=True, help="Also plan removing managed containers the repository no longer lists.")
@parallel_option
@json_option
@click.pass_context
def plan(ctx, targets, prune, parallel, as_json):
    """What apply would do: compare the repository with every node (exit 0 none, 2 changes, 1 errors)."""
    from deployer.ops.deploy import Deployer

    plans = Deployer(_repo_root(ctx)).plan(list(targets) or None, prune=prune, parallel=parallel)
    if as_json:
        _json([p.to_json() for p in plans])
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


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--prune", is_flag=True, help="Remove managed containers the repository no longer lists.")
@parallel_option
@wait_option
@settle_option
@timeout_option
@no_consul_option
@json_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def apply(ctx, targets, prune, parallel, wait, settle, health_timeout, no_consul, as_json, quiet):
    """Converge the nodes to the repository, health-gated, nodes in parallel (exit 1 if any failed)."""
    from deployer.ops.deploy import Deployer

    results = Deployer(_repo_root(ctx), progress=_progress(quiet or as_json), consul=not no_consul).apply(
        list(targets) or None, prune=prune, parallel=parallel, wait=wait,
        swap=_swap(settle, health_timeout))
    if as_json:
        _json([r.to_json() for r in results])
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


@main.group()
def node() -> None:
    """Add or remove nodes (Docker hosts) in the repository."""


@node.command(name="add")
@click.argument("target", metavar="DC/NODE")
@click.option("--docker", "docker_url", required=True, metavar="URL",
              help="unix:///var/run/docker.sock | ssh://user@host[:port] | tcp://host:2376")
@click.option("--accept-host-key", is_flag=True, help="Trust and pin the SSH host key the node presents now.")
@click.option("--identity-file", type=click.Path(), help="SSH private key for this node.")
@click.option("--tls-ca", type=click.Path(), help="CA certificate (tcp:// nodes).")
@click.option("--tls-cert", type=click.Path(), help="Client certificate (tcp:// nodes).")
@click.option("--tls-key", type=click.Path(), help="Client key (tcp:// nodes).")
@click.option("--address", help="The address other hosts reach this node's published ports on.")
@click.option("--description")
@author_option
@wait_option
@json_option
@click.pass_context
def node_add(ctx, target, docker_url, accept_host_key, identity_file, tls_ca, tls_cert, tls_key, address,
             description, author, wait, as_json):
    """Record a node: pin its SSH host key, check its engine answers, commit node.yml."""
    from deployer.ops.nodes import add_node

    tls = None
    if tls_ca or tls_cert or tls_key:
        tls = {k: os.path.abspath(v) for k, v in (("ca", tls_ca), ("cert", tls_cert), ("key", tls_key)) if v}
    result = add_node(_repo_root(ctx), target, docker_url, accept_host_key=accept_host_key,
                      identity_file=os.path.abspath(identity_file) if identity_file else None, tls=tls,
                      address=address, description=description, author=author, wait=wait)
    if as_json:
        _json(result.to_json())
        return
    if result.host_key is not None:
        click.echo(f"host key {result.host_key.type} {result.host_key.fingerprint}"
                   + (" (accepted and pinned)" if result.host_key_accepted else " (already known, pinned)"))
    click.echo(f"add node {result.target}: engine {result.engine_version or '?'} answers [{result.commit[:7]}]")


@node.command(name="rm")
@click.argument("target", metavar="DC/NODE")
@author_option
@wait_option
@click.pass_context
def node_rm(ctx, target, author, wait):
    """Remove a node that no longer has containers written for it, and commit."""
    from deployer.ops.nodes import remove_node

    result = remove_node(_repo_root(ctx), target, author=author, wait=wait)
    click.echo(f"remove node {target} [{result.commit[:7]}]")


# Commands that live next to their subject (each module imports its heavy parts lazily).
from deployer.cli import build as cli_build
from deployer.cli import discovery as cli_discovery  # noqa: E402

cli_build.register(main)
cli_discovery.register(main)


if __name__ == "__main__":  # pragma: no cover
    main()
