"""logs, exec, restart: look at and touch the running services, over each node's normal connection.

``logs`` prints each line prefixed with its source, ``dc/node/service `` (coloured
per source when stdout is a terminal and NO_COLOR is unset); the container's
stderr lines go to our stderr. ``exec`` passes the command's exit code through.
``restart`` restarts health-gated, one container at a time, and commits nothing.

Exit codes (deployer.errors' scheme): 0 done; 1 a target that is not running,
a node that failed (for logs: a node of several that could not be reached, once
the others' lines are out), a container not healthy after its restart, a followed log
that ended by an error; 3 bad usage or a target that does not exist or is not
one service (exec); 130 interrupted (Ctrl-C); for exec, otherwise the
command's own code (126/127 when the engine could not start it).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import datetime, timezone
from typing import Any, BinaryIO

import click

from deployer.cli.options import (QUIET_NOTHING, colour_allowed, health_timeout_option, json_option, no_color_option,
                                  parallel_option, progress_options, quiet_option, repo_root, settle_option,
                                  swap_settings, verbose_option, wait_option)
from deployer.cli.completion import complete_targets
from deployer.cli.output import end_progress, print_json, progress
from deployer.errors import HostError, printable
from deployer.values import BadValue, parse_duration

#: Foreground colours the sources take in turn (green, yellow, blue, magenta, cyan, and the bright ones).
COLOURS = (32, 33, 34, 35, 36, 92, 93, 94, 95, 96)
INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


class Since(click.ParamType):
    """``--since``: a duration back from now (``10m``, ``90s``, ``1h30m``) or a timestamp (``2026-12-01T10:00:00Z``,
    ``2026-12-01 10:00``; no zone: UTC) -> unix time."""

    name = "duration|timestamp"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            return datetime.now(timezone.utc).timestamp() - parse_duration(text)
        except BadValue:
            pass
        try:
            when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            self.fail(f"{text!r} is neither a duration (10m, 1h30m, 90s) nor a timestamp (2026-12-01T10:00:00Z)",
                      param, ctx)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()


def colour_wanted(stream: Any = None, environ: dict | None = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set to anything non-empty (https://no-color.org)
    or ``--no-color`` given (the group's or the command's)."""
    stream = sys.stdout if stream is None else stream
    return colour_allowed(environ) and bool(getattr(stream, "isatty", lambda: False)())


class LinePrinter:
    """Writes whole lines, each prefixed with its source, stdout lines to ``out`` and stderr lines to ``err``.

    One lock for both: a line is written at once, never interleaved with another thread's."""

    def __init__(self, out: BinaryIO, err: BinaryIO, colour: bool, flush: bool = False, as_json: bool = False,
                 quiet: bool = False):
        self.out, self.err, self.colour, self.flush = out, err, colour, flush
        self.as_json, self.quiet = as_json, quiet
        self._prefixes: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def prefix(self, source: str) -> bytes:
        if source not in self._prefixes:
            text = f"{source} "
            if self.colour:
                text = f"\x1b[{COLOURS[len(self._prefixes) % len(COLOURS)]}m{source}\x1b[0m "
            self._prefixes[source] = text.encode("utf-8")
        return self._prefixes[source]

    def line(self, source: str, stream: int, data: bytes) -> None:
        if self.as_json:  # one JSON object a line, on stdout, whichever stream it came from
            doc = {"source": source, "stream": "stderr" if stream == 2 else "stdout",
                   "line": data.decode("utf-8", "replace").rstrip("\n")}
            target, text = self.out, (json.dumps(doc) + "\n").encode("utf-8")
        else:
            target, text = (self.err if stream == 2 else self.out), self.prefix(source) + data
        with self._lock:
            target.write(text)
            if self.flush:
                target.flush()

    def notice(self, source: str, message: str, always: bool = False) -> None:
        """A line of ours about a source, on stderr (none with quiet, unless ``always``: a failure)."""
        if self.quiet and not always:
            return
        with self._lock:
            self.out.flush()
            self.err.write(f"{source}: {printable(message)}\n".encode("utf-8"))
            self.err.flush()


@click.command()
@click.argument("targets", nargs=-1, required=True, shell_complete=complete_targets())
@click.option("--follow", "-f", is_flag=True, help="Follow the logs live until Ctrl-C or every container stops.")
@click.option("--since", type=Since(), default=None, metavar="DURATION|TIMESTAMP",
              help="Only lines since then: 10m ago, or 2026-12-01T10:00:00Z (UTC unless a zone is given).")
@click.option("--tail", type=click.IntRange(min=0), default=None, metavar="N",
              help="The last N lines of each container (default: all).")
@click.option("--timestamps", "-t", is_flag=True, help="Show the engine's timestamp of each line.")
@parallel_option
@json_option("Each line as a JSON object on stdout: {\"source\", \"stream\": \"stdout\"|\"stderr\", \"line\"}.")
@quiet_option("No 'log ended' lines on stderr.")
@verbose_option()
@no_color_option
@click.pass_context
def logs(ctx, targets, follow, since, tail, timestamps, parallel, as_json, quiet, verbose):
    """The log lines of the TARGETS' containers (dc, dc/node, dc/node/service), each prefixed with dc/node/service.

    The container's stdout lines go to stdout, its stderr lines to stderr.
    With --follow, the nodes are followed at once; a container or node that
    goes away ends its source with a line on stderr, the others go on.
    A node that cannot be reached (of several) gets one line on stderr and
    the others go on; the exit code is then 1.
    """
    from contextlib import ExitStack

    from deployer.config import loader
    from deployer.ops import logs as ops_logs

    root = repo_root(ctx)
    printer = LinePrinter(sys.stdout.buffer, sys.stderr.buffer, colour_wanted() and not as_json, flush=follow,
                          as_json=as_json, quiet=quiet)
    options = ops_logs.LogOptions(follow=follow, tail=tail, since=since, timestamps=timestamps)
    failed: list[str] = []

    def ended(source: str, reason: str | None) -> None:
        if reason is not None:
            failed.append(source)
        printer.notice(source, f"log ended: {reason}" if reason else "log ended")

    def unreachable(node: str, error: Exception) -> None:
        failed.append(node)
        why = f"{error.message} ({error.url})" if isinstance(error, HostError) else str(error)
        printer.notice(node, f"log not read: {why}", always=True)

    try:
        with ExitStack() as stack:
            sources = ops_logs.open_sources(root, loader.load(root), list(targets), stack, parallel, unreachable)
            if follow:
                ops_logs.follow(sources, options, printer.line, ended)
            else:
                ops_logs.read(sources, options, printer.line, parallel)
    except KeyboardInterrupt:
        _interrupted()
    sys.stdout.flush()
    if failed:
        sys.exit(1)


def _interrupted() -> None:
    """Ctrl-C: leave with 130 and no traceback; the streams still open are closed with the process."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    sys.exit(INTERRUPTED)


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("--interactive", "-i", is_flag=True, help="Send our stdin to the command.")
@click.option("--tty", "-t", is_flag=True, help="Give the command a terminal (ours must be one): -it for a shell.")
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.argument("target", shell_complete=complete_targets("service"))
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def exec_(ctx, interactive, tty, quiet, verbose, target, command):
    """Run COMMAND in the running container of TARGET (dc/node/service); its exit code is ours.

    Write `--` before the command when it has options of its own:
    deployer exec dc/node/web -- sh -c 'ls /'
    """
    from deployer.config import loader
    from deployer.engine import containers
    from deployer.ops.service import exec_target

    if tty and not sys.stdin.isatty():
        raise click.UsageError("-t needs a terminal on stdin (leave -t out to pipe input with -i)")
    command = command[1:] if command[:1] == ("--",) else command  # click keeps a `--` after TARGET
    if not command:
        raise click.UsageError("no command: write deployer exec TARGET -- COMMAND...")
    root = repo_root(ctx)
    session, container = exec_target(root, loader.load(root), target)
    try:
        if tty:
            from deployer.cli.terminal import interactive_exec

            code = interactive_exec(session.client, container.id, list(command), interactive)
        else:
            out, err = sys.stdout.buffer, sys.stderr.buffer

            def write(stream: int, data: bytes) -> None:
                (err if stream == containers.STDERR else out).write(data)
                (err if stream == containers.STDERR else out).flush()

            # Our input as it comes, read from the fd (not sys.stdin's buffer: a thread may still wait in it
            # when we exit, and the interpreter would wait for that buffer's lock).
            fd = sys.stdin.fileno() if interactive else -1
            stdin = (lambda: os.read(fd, containers.CHUNK)) if interactive else None
            code, engine_error = containers.run_exec(session.client, container.id, list(command), write, stdin)
            if engine_error is not None:
                click.echo(f"error: {target}: {printable(' '.join(engine_error.split()))}", err=True)
    except KeyboardInterrupt:
        _interrupted()
    finally:
        session.close()
    sys.stdout.flush()
    sys.exit(code)


@click.command()
@click.argument("targets", nargs=-1, required=True, shell_complete=complete_targets())
@wait_option
@settle_option
@health_timeout_option
@json_option()
@quiet_option()
@verbose_option()
@progress_options
@click.pass_context
def restart(ctx, targets, wait, settle, health_timeout, as_json, quiet, verbose):
    """Restart the TARGETS' containers one at a time, each health-gated as deploy does; no commit.

    Takes the repository's deploy lock, so it never runs during a deploy of
    the same repository (--wait to wait for it).
    """
    from deployer.ops.service import restart as restart_op

    done = restart_op(repo_root(ctx), list(targets), wait=wait, swap=swap_settings(settle, health_timeout),
                      progress=progress(quiet or as_json))
    end_progress()
    if as_json:
        print_json([{"target": r.target, "container": r.container, "state": r.state,
                     "seconds": round(r.seconds, 3)} for r in done])
        return
    for r in done:
        click.echo(f"restarted {r.target} ({r.container}): {r.state} ({r.seconds:.1f}s)")


COMMANDS = (logs, exec_, restart)
