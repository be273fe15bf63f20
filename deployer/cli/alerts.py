"""The ``alerts`` group: ``watch`` (Consul health, deploy events, drift -> webhooks) and ``test`` (one message to
every sink). The work is done by deployer.alerts (``AlertService``, ``sinks.deliver``)."""

from __future__ import annotations

import json
import sys
import time

import click

from deployer.cli.options import POSITIVE_DURATION, json_option, quiet_option, repo_root, verbose_option

secrets_option = click.option(
    "--secrets", metavar="FILE", type=click.Path(dir_okay=False),
    help="The dotenv file outside the repository that ${NAME} in alerts.yml's URLs and headers come from "
         "(default: $XDG_CONFIG_HOME/deployer/alerts.env).")


@click.group()
def alerts() -> None:
    """Consul health, deploys, locks and drift, sent to the webhooks alerts.yml names."""


def _line(event: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(event, sort_keys=True, default=str)
    stamp = time.strftime("%H:%M:%S", time.gmtime(event.get("t") or time.time()))
    held = "" if event.get("sent", True) else " (not sent: another instance leads)"
    return f"{stamp} {event['kind']} {event['state']}: {event['text']}{held}"


@alerts.command()
@click.option("--once", is_flag=True, help="Read Consul once and send what is not passing now (no threshold), "
                                           "one drift pass, then exit.")
@click.option("--self-heal", is_flag=True, help="Apply the repository to drifted nodes (never while a node's lock is "
                                                "held; pruning only with alerts.yml drift: {prune: true}).")
@click.option("--drift-interval", type=POSITIVE_DURATION, metavar="DURATION",
              help="Plan across the fleet this often (default: alerts.yml drift.interval, or 5m).")
@click.option("--no-drift", is_flag=True, help="No drift watch: Consul health only.")
@click.option("--leader", is_flag=True, help="Send only while elected leader among the watchers of the same "
                                             "datacenters (a Consul session lock); the others take over.")
@secrets_option
@json_option("Print each alert as one JSON object per line.")
@quiet_option("Only warnings and errors on stderr.")
@verbose_option("Debug logging.")
@click.pass_context
def watch(ctx, once, self_heal, drift_interval, no_drift, leader, secrets, as_json, quiet, verbose):
    """Watch Consul's checks (blocking queries) and the fleet's drift; post alerts to the webhooks.

    A change is sent once it held for alerts.yml's threshold (default 30s), once per (check, state), with
    an optional reminder; "back to normal" when it recovers. Runs until SIGINT/SIGTERM.
    """
    import logging
    import signal
    import threading

    from deployer.alerts.service import AlertService
    from deployer.cli.options import setup_logging

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("urllib3", "docker", "paramiko"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    setup_logging(verbose)
    if once and leader:
        raise click.UsageError("--leader needs a long-running watch, not --once")
    root = repo_root(ctx)
    svc = AlertService(root, secrets_file=secrets, self_heal=self_heal, drift_interval=drift_interval,
                       drift=not no_drift, leader=leader)
    out = lambda e: e.get("type") == "alert" and click.echo(_line(e, as_json))  # noqa: E731
    svc.subscribe(out)
    where = ", ".join(f"Consul at {w.address} ({', '.join(w.dcs)})" for w in svc.watches) or "no Consul"
    sinks = ", ".join(f"{s.name} ({s.format})" for s in svc.config.sinks) or "no sink (alerts.yml names none)"
    if once:
        svc.check_once()
        failed = [s for s in svc.sinks.sinks if s.stats.failed]
        svc.stop()
        for s in failed:
            click.echo(f"error: {s.stats.last_error}", err=True)
        sys.exit(1 if failed else 0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    click.echo(f"alerts: watching {where}; threshold {svc.rules.threshold:g}s; sending to {sinks}"
               + ("" if no_drift else f"; drift every {svc.drift_interval:g}s" + (" with self-heal" if self_heal
                                                                                   else "")), err=True)
    svc.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        svc.stop()
        click.echo("alerts: stopped", err=True)


@alerts.command(name="test")
@secrets_option
@json_option()
@quiet_option("Accepted by every command; this one prints no progress lines.")
@verbose_option()
@click.pass_context
def test_sinks(ctx, secrets, as_json, quiet, verbose):
    """Send a test message to every sink alerts.yml names (exit 1 if one failed)."""
    import socket

    from deployer.alerts.config import load_alerts
    from deployer.alerts.messages import alert
    from deployer.alerts.sinks import deliver
    from deployer.cli.output import print_json, table
    from deployer.errors import AlertSinkError, ConfigError

    root = repo_root(ctx)
    cfg = load_alerts(root, secrets)
    if not cfg.sinks:
        raise ConfigError("alerts.yml", "no sinks: name at least one under sinks:")
    message = alert("test", "test", f"deployer alerts test from {socket.gethostname()}: this sink works")
    rows = []
    for sink in cfg.sinks:
        try:
            deliver(sink, {**message, "sink": sink.name})
            rows.append({"sink": sink.name, "format": sink.format, "url": sink.redacted_url(), "ok": True,
                         "error": None})
        except AlertSinkError as exc:
            rows.append({"sink": sink.name, "format": sink.format, "url": sink.redacted_url(), "ok": False,
                         "error": exc.reason})
    if as_json:
        print_json(rows)
    else:
        table(((r["sink"], r["format"], r["url"], "sent" if r["ok"] else f"failed: {r['error']}") for r in rows),
              ["sink", "format", "url", "result"])
    if not all(r["ok"] for r in rows):
        sys.exit(1)


COMMANDS = (alerts,)
