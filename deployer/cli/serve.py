"""``deployer serve`` (the HTTP service, deployer.serve) and ``deployer token`` (its API tokens).

``token add NAME --scope read,deploy`` prints the new token once on stdout;
the tokens file keeps only its SHA-256 (deployer.serve.auth). Every option
has its DEPLOYER_ variable; the tokens file is also DEPLOYER_TOKENS.
"""

from __future__ import annotations

import sys

import click

from deployer.cli.options import (DURATION, POSITIVE_DURATION, QUIET_NOTHING, VERBOSE_NOTHING, json_option,
                                  no_consul_option, quiet_option, verbose_option)
from deployer.cli.output import print_json, table

tokens_option = click.option(
    "--tokens", "tokens_file", envvar="DEPLOYER_TOKENS", metavar="FILE", default=None,
    help="The tokens file (default: DEPLOYER_TOKENS or $XDG_CONFIG_HOME/deployer/tokens.json).")


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        from deployer.values import BadValue, parse_bytes

        if isinstance(value, int):
            return value
        try:
            size = parse_bytes(value)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)
        if size <= 0:
            self.fail("must be more than zero", param, ctx)
        return size


def _listen(text: str) -> tuple[str, int]:
    from deployer.values import BadValue, parse_port_number

    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise click.BadParameter(f"{text!r}: write HOST:PORT, e.g. 127.0.0.1:8700", param_hint="--listen")
    try:
        number = parse_port_number(port, "--listen port")
    except BadValue as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    return host.strip("[]"), number


@click.command()
@click.option("--remote", metavar="URL", help="Clone this repository (into --clone) and serve it, instead of --repo.")
@click.option("--clone", "clone_dir", metavar="DIR",
              help="Where --remote is cloned (default: $XDG_STATE_HOME/deployer/serve/<name>); reused when it exists.")
@click.option("--listen", default="127.0.0.1:8700", show_default=True, metavar="HOST:PORT",
              help="Address and port to listen on.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Serve HTTPS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="The certificate's private key (PEM).")
@tokens_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="The serve config file (webhook receivers and their secrets), outside the repository.")
@click.option("--sync-interval", type=POSITIVE_DURATION, default=30, show_default=True, metavar="DURATION",
              help="How often the clone pulls from its remote (also before every job).")
@click.option("--status-interval", type=POSITIVE_DURATION, default=15, show_default=True, metavar="DURATION",
              help="How often the fleet status is read again (also after every job).")
@click.option("--max-body", type=ByteSize(), default="1MiB", show_default=True, metavar="SIZE",
              help="The largest request body accepted (413 beyond it).")
@click.option("--alerts/--no-alerts", default=True, show_default=True,
              help="Run the alerts watcher (Consul health and deploy events to the configured webhooks).")
@click.option("--drift-interval", type=DURATION, default=300, show_default=True, metavar="DURATION",
              help="How often the drift watch plans the fleet (0: never).")
@click.option("--self-heal", is_flag=True, help="Apply the repository to drifted nodes (never while a lock is held).")
@no_consul_option
@json_option("Print the start-up line as JSON on stdout (the URL, the repository, the tokens file).")
@quiet_option("No start-up line.")
@verbose_option()
@click.pass_context
def serve(ctx, remote, clone_dir, listen, tls_cert, tls_key, tokens_file, config_file, sync_interval,
          status_interval, max_body, alerts, drift_interval, self_heal, no_consul, as_json, quiet, verbose):
    """Serve the repository over HTTP: fleet status, history, plan, deploys, locks, events, webhooks.

    Every endpoint needs a token (deployer token add). Deploys, rollbacks and
    locks are jobs, run one at a time through the same transaction and node
    locks as the CLI. See docs/serve.md.
    """
    import os
    from pathlib import Path

    from deployer.serve.auth import default_tokens_path

    host, port = _listen(listen)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if remote:
        root = _clone(remote, clone_dir)
    else:
        from deployer.cli.options import repo_root

        root = repo_root(ctx)
    import uvicorn

    from deployer.serve.app import create_app
    from deployer.serve.state import ServeSettings, ServeState

    settings = ServeSettings(root=Path(root), remote=remote, listen=f"{host}:{port}",
                             tls_cert=Path(tls_cert) if tls_cert else None, tls_key=Path(tls_key) if tls_key else None,
                             tokens=Path(tokens_file) if tokens_file else default_tokens_path(),
                             config=Path(config_file) if config_file else None, sync_interval=sync_interval,
                             status_interval=status_interval, max_body=max_body, consul=not no_consul,
                             alerts=alerts, drift_interval=drift_interval, self_heal=self_heal)
    state = ServeState(settings)
    state.tokens.entries()  # a bad tokens file stops the start, with its one line
    app = create_app(state)
    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                            log_level="warning", access_log=False, timeout_graceful_shutdown=3,
                            lifespan="on", server_header=False)
    url = f"{'https' if tls_cert else 'http'}://{host}:{port}"
    if as_json:
        import json  # one line: a supervisor (or a test) reads it as the first line of stdout

        click.echo(json.dumps({"url": url, "repo": str(root), "tokens": str(settings.tokens), "pid": os.getpid()}))
        sys.stdout.flush()
    elif not quiet:
        click.echo(f"deployer serve: {url} over {root} (tokens: {settings.tokens})", err=True)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(1)


def _clone(remote: str, clone_dir: str | None) -> str:
    import hashlib
    import os
    from pathlib import Path

    from deployer.gitrepo.create import clone_repository

    if clone_dir is None:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        name = remote.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "repo"
        clone_dir = os.path.join(base, "deployer", "serve", f"{name}-{hashlib.sha256(remote.encode()).hexdigest()[:8]}")
    target = Path(clone_dir)
    if (target / ".git").exists():
        return str(target)
    return clone_repository(remote, target)


@click.group()
def token() -> None:
    """The API tokens of 'deployer serve': add (shown once), list, remove."""


@token.command(name="add")
@click.argument("name")
@click.option("--scope", "scopes", required=True, metavar="SCOPES",
              help="Comma-separated: read, deploy, lock, admin (admin allows everything).")
@tokens_option
@json_option("Print {name, scopes, token} as JSON.")
@quiet_option("No line on stderr, only the token on stdout.")
@verbose_option(VERBOSE_NOTHING)
def token_add(name, scopes, tokens_file, as_json, quiet, verbose):
    """Add a token NAME and print it on stdout (the only time it is shown; the file keeps its SHA-256)."""
    from deployer.serve.auth import TokenStore, default_tokens_path, parse_scopes

    store = TokenStore(tokens_file or default_tokens_path())
    secret = store.add(name, scopes)
    if as_json:
        print_json({"name": name, "scopes": list(parse_scopes(scopes)), "token": secret})
    else:
        click.echo(secret)
    if not quiet:
        click.echo(f"token {name!r} added to {store.path}; it is shown only now", err=True)


@token.command(name="ls")
@tokens_option
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option(VERBOSE_NOTHING)
def token_ls(tokens_file, as_json, quiet, verbose):
    """The tokens: name, scopes, when made (never the token)."""
    from deployer.serve.auth import TokenStore, default_tokens_path

    entries = TokenStore(tokens_file or default_tokens_path()).entries()
    if as_json:
        print_json([{"name": e.name, "scopes": list(e.scopes), "created": e.created} for e in entries])
        return
    table(((e.name, ",".join(e.scopes), e.created) for e in entries), ["name", "scopes", "created"])


@token.command(name="rm")
@click.argument("name")
@tokens_option
@json_option("Print the removed token's {name, scopes, created} as JSON.")
@quiet_option("No line on stderr.")
@verbose_option(VERBOSE_NOTHING)
def token_rm(name, tokens_file, as_json, quiet, verbose):
    """Remove the token NAME: requests with it get 401 from then on (a running serve reads the file again)."""
    from deployer.serve.auth import TokenStore, default_tokens_path

    store = TokenStore(tokens_file or default_tokens_path())
    entry = store.remove(name)
    if as_json:
        print_json({"name": entry.name, "scopes": list(entry.scopes), "created": entry.created})
    if not quiet:
        click.echo(f"token {name!r} removed from {store.path}", err=True)


COMMANDS = (serve, token)
