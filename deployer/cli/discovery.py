"""CLI commands for discovery: added to the main group by deployer.cli.main.

    deployer registrator TARGET... [--resync 30s] [--once]
    deployer services [DC] [--json]
    deployer render TEMPLATE --out FILE [--dc DC | --consul ADDR] [--var K=V ...]
    deployer templates watch CONFIG [--dc DC] [--once]

Only click is imported at module level: ``deployer --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import (DURATION, QUIET_NOTHING, json_option, quiet_option, repo_root, setup_logging,
                                  verbose_option)
from deployer.cli.output import print_json, table
from deployer.errors import EXIT_CHANGES, EXIT_FAILED


def _stop_on_signals():
    """An Event set by SIGINT or SIGTERM (the long-running commands stop cleanly on either)."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _logging(quiet: bool, verbose: bool) -> None:
    import logging

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("urllib3", "docker", "paramiko"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    setup_logging(verbose)  # their records reach the log only with -v (or DEPLOYER_DEBUG=1)


def _pick_dc(infra, dc: str | None):
    from deployer.errors import TargetError

    if dc is not None:
        if dc not in infra.datacenters:
            raise TargetError(f"unknown datacenter {dc!r} (known: {', '.join(sorted(infra.datacenters)) or 'none'})")
        return infra.datacenters[dc]
    if len(infra.datacenters) == 1:
        return next(iter(infra.datacenters.values()))
    raise TargetError(f"name a datacenter with --dc (known: {', '.join(sorted(infra.datacenters)) or 'none'})")


def _parse_vars(items: tuple[str, ...]) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: write NAME=VALUE", param_hint="--var")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


logging_quiet_option = quiet_option("Only warnings and errors.")
logging_verbose_option = verbose_option("Debug logging.")


@click.command()
@click.argument("targets", nargs=-1, required=True, shell_complete=complete_targets("dc", "node"))
@click.option("--resync", type=DURATION, default="30s", show_default=True, metavar="DURATION",
              help="Compare every node with Consul this often (events handle the rest).")
@click.option("--once", is_flag=True, help="One resync of every node, then exit (for tests and cron).")
@click.option("--leader", is_flag=True,
              help="Act only while elected leader among the registrators of the same datacenters (a Consul "
                   "session lock); the others wait and take over.")
@json_option("With --once: print what was done as JSON.")
@logging_quiet_option
@logging_verbose_option
@click.pass_context
def registrator(ctx, targets, resync, once, leader, as_json, quiet, verbose):
    """Keep Consul's registrations equal to the containers running on TARGETS (dc/node or dc).

    Follows each node's Docker events and resyncs periodically: a managed
    container started by hand is registered, one that stopped is deregistered.
    Only registrations the deployer made (their meta says so) are ever removed.
    Runs until SIGINT/SIGTERM.
    """
    from deployer.discovery.registrator import Registrator
    from deployer.config.loader import load

    _logging(quiet or (once and as_json), verbose)
    root = repo_root(ctx)
    infra = load(root)
    nodes = []
    for text in targets:
        for node in infra.select_nodes(infra.resolve(text)):
            pair = (infra.datacenters[node.dc], node)
            if all(n.target != node.target for _, n in nodes):
                nodes.append(pair)
    if not nodes:
        raise click.UsageError("no node selected")
    if leader and (once or None in {dc.consul for dc, _ in nodes} or len({dc.consul for dc, _ in nodes}) != 1):
        raise click.UsageError("--leader needs TARGETS whose datacenters name one Consul, and no --once")
    reg = Registrator(root, nodes, resync=resync)
    if once:
        try:
            reports = reg.sync_all()
        finally:
            reg.close()
        if as_json:
            print_json([r.to_json() for r in reports])
        else:
            for r in reports:
                for sid in r.registered:
                    click.echo(f"{r.node}: registered {sid}")
                for sid in r.deregistered:
                    click.echo(f"{r.node}: deregistered {sid}")
                for why in r.refused:
                    click.echo(f"{r.node}: refused {why}")
                if r.error:
                    click.echo(f"{r.node}: ERROR {r.error}")
                else:
                    click.echo(f"{r.node}: in sync ({len(r.registered)} registered, {len(r.deregistered)} "
                               f"deregistered, {r.kept} unchanged)")
        if any(r.error for r in reports):
            sys.exit(EXIT_FAILED)
        return
    stop = _stop_on_signals()
    if leader:
        from deployer.discovery.consul_lock import lead
        from deployer.discovery.registration import consul_for

        name = "registrator/" + "+".join(sorted({dc.name for dc, _ in nodes}))

        def follow(leading) -> None:
            click.echo(f"registrator: leading; following {', '.join(n.target for _, n in nodes)} "
                       f"(resync every {resync:g}s)", err=True)
            reg.run(leading)

        lead(consul_for(nodes[0][0]), name, stop, follow, command="deployer registrator --leader",
             progress=lambda msg: click.echo(f"registrator: {msg}", err=True))
        click.echo("registrator: stopped", err=True)
        return
    click.echo(f"registrator: following {', '.join(n.target for _, n in nodes)} (resync every {resync:g}s)", err=True)
    reg.run(stop)
    click.echo("registrator: stopped", err=True)


@click.command()
@click.argument("dc", required=False, shell_complete=complete_targets("dc"))
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def services(ctx, dc, as_json, quiet, verbose):
    """What Consul knows (instances and health) beside what the repository says should run.

    States: passing, warning, critical (registered, by health), missing (written
    with a published port but not registered), extra (registered by the deployer
    but not in the repository), external (not registered by the deployer).
    Exit 2 when anything is missing, critical or extra, 1 when a datacenter
    could not be read. A datacenter without consul is read from its Docker
    engines.
    """
    from deployer.discovery.report import PROBLEM_STATES, ServiceRow, service_report
    from deployer.errors import DeployerError, TargetError
    from deployer.config.loader import load

    root = repo_root(ctx)
    infra = load(root)
    if dc is not None and dc not in infra.datacenters:
        raise TargetError(f"unknown datacenter {dc!r} (known: {', '.join(sorted(infra.datacenters)) or 'none'})")
    rows = []
    for name in [dc] if dc else sorted(infra.datacenters):
        datacenter = infra.datacenters[name]
        if not datacenter.nodes:
            continue
        try:
            rows.extend(service_report(datacenter, root))
        except DeployerError as exc:
            if dc:
                raise
            rows.append(ServiceRow(name, "-", None, None, None, "error", exc.one_line()))
    if as_json:
        print_json([r.to_json() for r in rows])
    else:
        table(((r.dc, r.service, r.node or "-", r.instance or "-", r.endpoint or "-", r.state, r.detail)
               for r in rows), ["dc", "service", "node", "instance", "endpoint", "state", "detail"])
    if any(r.state == "error" for r in rows):
        sys.exit(EXIT_FAILED)
    if any(r.state in PROBLEM_STATES for r in rows):
        sys.exit(EXIT_CHANGES)


@click.command()
@click.argument("template", type=click.Path(dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False), help="The file to write.")
@click.option("--dc", help="Read this datacenter's Consul (or, without consul, its Docker engines).",
              shell_complete=complete_targets("dc"))
@click.option("--consul", "consul_address", metavar="HOST:PORT", help="Read this Consul instead of a datacenter's.")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE", help="A template variable (vars.NAME).")
@click.option("--check", "check_command", metavar="CMD", help="Validate the candidate first ({file} is its path).")
@click.option("--reload", "reload_command", metavar="CMD", help="Run after the file changed.")
@json_option("Print the file, whether it was written and the catalog read, as JSON.")
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def render(ctx, template, out, dc, consul_address, variables, check_command, reload_command, as_json, quiet,
           verbose):
    """Render TEMPLATE once from the catalog into FILE (atomically, only when it changed)."""
    from pathlib import Path

    from deployer.discovery.template_config import TemplateSpec, WatchConfig
    from deployer.discovery.template_runner import Runner

    spec = TemplateSpec(Path(template).absolute(), Path(out).absolute(), check=check_command, reload=reload_command,
                        vars=_parse_vars(variables))
    if consul_address:
        from deployer.discovery.consul_catalog import ConsulCatalog

        catalog, source = ConsulCatalog(consul_address), f"consul at {consul_address}"
    else:
        from deployer.discovery.docker_catalog import catalog_for
        from deployer.config.loader import load

        root = repo_root(ctx)
        datacenter = _pick_dc(load(root), dc)
        catalog = catalog_for(datacenter, root)
        source = f"consul at {datacenter.consul}" if datacenter.consul else f"the Docker engines of {datacenter.name}"
    try:
        written = Runner(WatchConfig([spec]), catalog).run_once()
    finally:
        close = getattr(catalog, "close", None)
        if callable(close):
            close()
    if as_json:
        print_json({"file": out, "written": bool(written), "source": source})
    elif written:
        click.echo(f"wrote {out} (from {source})")
    else:
        click.echo(f"{out} is up to date (from {source})")


@click.group()
def templates():
    """Config files rendered from the service catalog."""


@templates.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--dc", help="With `consul: null` in CONFIG: read this datacenter's Docker engines.",
              shell_complete=complete_targets("dc"))
@click.option("--once", is_flag=True, help="One pass (render, check, swap, reload), then exit.")
@click.option("--leader", metavar="NAME",
              help="Act only while elected leader NAME among several watchers (a session lock in CONFIG's "
                   "Consul); the others wait and take over.")
@json_option("With --once: print the files written as JSON.")
@logging_quiet_option
@logging_verbose_option
@click.pass_context
def watch(ctx, config, dc, once, leader, as_json, quiet, verbose):
    """Render CONFIG's templates whenever the catalog changes, until SIGINT/SIGTERM.

    Changes wait for quiescence; each pass renders every template, checks the
    candidates, swaps them in atomically and reloads (see `deployer/templates.py`).
    """
    from deployer.discovery.template_config import load_config
    from deployer.discovery.template_runner import Runner

    _logging(quiet, verbose)
    cfg = load_config(config)
    catalog = None
    if cfg.consul is None:
        from deployer.discovery.docker_catalog import DockerCatalog
        from deployer.config.loader import load

        root = repo_root(ctx)
        datacenter = _pick_dc(load(root), dc)
        catalog = DockerCatalog(datacenter.nodes.values(), root)
    if leader is not None and (once or cfg.consul is None or not leader.strip()):
        raise click.UsageError("--leader NAME needs a CONFIG with a consul: to elect in, and no --once")
    runner = Runner(cfg, catalog)
    if once:
        written = runner.run_once()
        if as_json:
            print_json({"written": [str(p) for p in written]})
            return
        for path in written:
            click.echo(f"wrote {path}")
        return
    stop = _stop_on_signals()
    source = cfg.consul.address if cfg.consul else f"the Docker engines of {datacenter.name}"
    if leader is not None:
        from deployer.discovery.consul_lock import lead

        def follow(leading) -> None:
            click.echo(f"templates: leading; watching {source} for {len(cfg.templates)} template(s)", err=True)
            runner.watch(leading)

        lead(runner.catalog, f"templates/{leader.strip()}", stop, follow, command="deployer templates watch --leader",
             progress=lambda msg: click.echo(f"templates: {msg}", err=True))
        click.echo("templates: stopped", err=True)
        return
    click.echo(f"templates: watching {source} for {len(cfg.templates)} template(s)", err=True)
    runner.watch(stop)
    click.echo("templates: stopped", err=True)


COMMANDS = (registrator, services, render, templates)
