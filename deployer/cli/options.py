"""The options and parameter types several commands take, each defined once.

A command lists the options it takes as decorators, in the order ``--help``
shows them. Options whose help differs by command (``--json``, ``--quiet``,
``--verbose``) are made by one function each, with the usual help as its
default. Every duration option is of type :data:`DURATION` (or
:data:`POSITIVE_DURATION` where zero is refused): ``deployer.values``'s
grammar, Go-style ``1m30s``, ``250ms``, or bare seconds.

Only click and the shared modules are imported here: ``deployer --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import click

from deployer.values import BadValue, parse_batch, parse_duration


class Duration(click.ParamType):
    """A duration -> float seconds: ``1m30s``, ``250ms``, ``2h``, or bare seconds (``1.5``).

    Negative durations are refused (by the grammar); with ``positive`` zero is too.
    """

    name = "duration"

    def __init__(self, *, positive: bool = False):
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = parse_duration(value)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail("must be more than zero", param, ctx)
        return seconds

    def __repr__(self) -> str:
        return "POSITIVE_DURATION" if self.positive else "DURATION"


#: A duration of zero or more seconds.
DURATION = Duration()
#: A duration of more than zero seconds (polling intervals).
POSITIVE_DURATION = Duration(positive=True)


# -- the repository -------------------------------------------------------------------

repo_option = click.option(
    "--repo", "-C", default=".", metavar="PATH",
    help="The infrastructure repository (default: DEPLOYER_REPO or the current directory).")


def repo_root(ctx: click.Context) -> str:
    """The root of the infrastructure repository ``--repo`` names (or one it is inside)."""
    from deployer.config.loader import find_root

    return str(find_root(ctx.obj["repo"]))


# -- output ---------------------------------------------------------------------------


#: ctx.meta keys (shared by a command's context and its parents'): --json was given; JSON was printed.
JSON_META = "deployer.json"
JSON_PRINTED_META = "deployer.json-printed"


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_META] = True  # the group prints an error as JSON too
    return value


def json_option(help: str = "Print JSON instead of a table.") -> Callable:
    """``--json``: data as JSON on stdout; an error then prints ``{"error": ..., "exit_code": N}`` there too."""
    return click.option("--json", "as_json", is_flag=True, help=help, callback=_remember_json)


#: -q's help on a command that prints no progress lines: accepted by every command, it changes nothing there.
QUIET_NOTHING = "Accepted by every command; this one prints no progress lines."
#: -v's help on a command that reaches no engine, registry or Consul.
VERBOSE_NOTHING = "Accepted by every command; this one has nothing more to show."
#: -v's help where an engine, a registry or Consul is reached: their libraries' own log records.
VERBOSE_TRANSPORT = "Also show the ssh/http libraries' own warnings on stderr."


def _verbose_logging(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        setup_logging(verbose=True)
    return value


#: ctx.meta keys: the --progress mode, --no-color given, the command's progress sink (cli.progress).
PROGRESS_META = "deployer.progress"
NO_COLOR_META = "deployer.no-color"
SINK_META = "deployer.progress-sink"
PROGRESS_MODES = ("auto", "plain", "live", "json")


def _remember_progress(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        ctx.meta[PROGRESS_META] = value
    return value


def _remember_no_color(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[NO_COLOR_META] = True
    return value


#: ``--progress``: how a long command shows its steps (cli.progress); not passed to the command.
progress_option = click.option(
    "--progress", "progress_mode", type=click.Choice(PROGRESS_MODES), default="auto", show_default=True,
    expose_value=False, callback=_remember_progress, is_eager=False,
    help="How steps show on stderr: live (one line per node, updated in place), plain lines, json "
         "(one event a line), or auto: live on a terminal, plain otherwise and when CI is set.")

#: ``--no-color``: on the group and on the commands that print colour; NO_COLOR=1 does the same.
no_color_option = click.option(
    "--no-color", is_flag=True, expose_value=False, callback=_remember_no_color,
    help="No colour (also when NO_COLOR is set to anything non-empty).")


def colour_allowed(environ: dict | None = None) -> bool:
    """False when NO_COLOR is set to a non-empty value (https://no-color.org) or ``--no-color`` was given."""
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR"):
        return False
    ctx = click.get_current_context(silent=True)
    return not (ctx is not None and ctx.meta.get(NO_COLOR_META))


def progress_options(f: Callable) -> Callable:
    """``--progress`` and ``--no-color``: every long command that reports steps on nodes."""
    return progress_option(no_color_option(f))


def quiet_option(help: str = "No progress lines.") -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help=help)


def verbose_option(help: str = VERBOSE_TRANSPORT) -> Callable:
    return click.option("--verbose", "-v", is_flag=True, help=help, callback=_verbose_logging)


# -- the environment ------------------------------------------------------------------

#: Every option can be set from the environment: DEPLOYER_<COMMAND>_<OPTION> (see envvar_name).
ENV_PREFIX = "DEPLOYER"


def envvar_name(command_path: str, param: click.Option) -> str:
    """``DEPLOYER_`` + the command's words + the option's long name, upper case, ``-`` as ``_``.

    ``deploy --wait`` -> DEPLOYER_DEPLOY_WAIT, ``node add --docker`` -> DEPLOYER_NODE_ADD_DOCKER,
    ``history -n`` (no long name) -> DEPLOYER_HISTORY_LIMIT (its parameter), the group's ``--repo`` -> DEPLOYER_REPO.
    """
    longs = [o for o in param.opts if o.startswith("--")]
    name = longs[0][2:] if longs else (param.name or "")
    words = [ENV_PREFIX, *command_path.split(), name]
    return "_".join(w.replace("-", "_").upper() for w in words if w)


def assign_envvars(group: click.Command, path: str = "", commands: bool = True) -> None:
    """Give every option of ``group`` and its commands its DEPLOYER_ name (a name the option had stays, after it).

    Eager options (``--version``, ``--help``) have none. ``main`` runs it on its own options
    (``commands=False``) and on each top-level command as the command is loaded (``path``: its name).
    """
    for param in group.params:
        if isinstance(param, click.Option) and not param.is_eager:
            name = envvar_name(path, param)
            own = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
            if name not in own:
                param.envvar = name if not own else [name, *own]
    if commands and isinstance(group, click.Group):
        for cmd_name, cmd in group.commands.items():
            assign_envvars(cmd, f"{path} {cmd_name}".strip())


DEBUG_ENV = "DEPLOYER_DEBUG"


def debug_requested() -> bool:
    """``DEPLOYER_DEBUG=1``: debug logging on stderr for every command; ``0`` or unset: none. Other values are refused."""
    value = os.environ.get(DEBUG_ENV, "")
    if value not in ("", "0", "1"):
        raise click.UsageError(f"{DEBUG_ENV}={value!r}: write {DEBUG_ENV}=1 for debug logging on stderr, or 0")
    return value == "1"


#: The libraries that log on their own while engines are reached: paramiko (a
#: 20-line traceback for an ssh port that sends no banner), urllib3 (its retries), docker-py.
TRANSPORT_LOGGERS = ("paramiko", "urllib3", "docker")


def setup_logging(verbose: bool = False) -> None:
    """Every command, before it runs: the transport libraries' own log records stay off stderr,
    unless ``verbose`` (a command's -v) or DEPLOYER_DEBUG=1, which also logs everything at DEBUG to stderr.

    Off, each of TRANSPORT_LOGGERS gets a NullHandler (so Python's last-resort
    handler, which prints warnings to stderr when nothing is configured, stays
    silent) and does not propagate; on, their records reach the root logger's handlers.
    """
    import logging

    debug = debug_requested()
    if debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in TRANSPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.propagate = verbose or debug


# -- commands that change the repository and the nodes --------------------------------

wait_option = click.option("--wait", type=DURATION, default=0, metavar="SECONDS",
                           help="Wait up to SECONDS for another deployer's lock instead of failing at once.")
author_option = click.option("--author", metavar="'NAME <EMAIL>'", help="Commit author (default: git config).")
message_option = click.option("--message", "-m", metavar="TEXT", help="Why: added to the commit message.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show the YAML diff and container actions; change nothing.")
settle_option = click.option("--settle", type=DURATION, default=None, metavar="SECONDS",
                             help="How long a container without healthcheck must run without restarting (default 2).")
health_timeout_option = click.option("--health-timeout", type=DURATION, default=None, metavar="SECONDS",
                                     help="Give up waiting for health after SECONDS (default: from the healthcheck).")
no_consul_option = click.option("--no-consul", is_flag=True,
                                help="Do not use Consul: no registration, and the node lock is taken on the engine "
                                     "(deploy even when Consul is down).")
#: ``--parallel``'s default: ops.targets.DEFAULT_PARALLEL (written here so that --help imports no ops module;
#: tests/unit/test_parallel_default.py keeps the two equal).
PARALLEL_DEFAULT = 64
parallel_option = click.option("--parallel", type=click.IntRange(min=1), default=PARALLEL_DEFAULT, metavar="N",
                               show_default=True,
                               help="Work on at most N nodes at once (by default every target, up to 64).")
batch_option = click.option("--batch", type=click.IntRange(min=1), default=None, metavar="N",
                            help="Deploy to N nodes at a time; stop at the first batch that fails.")


class BatchSize(click.ParamType):
    """``--batch``: a number of nodes (``3``) or a share of them (``25%``) -> (number, is_percent)."""

    name = "batch"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, bool]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_batch(value)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)


#: What ``--on-failure`` takes (ops.rollout.ON_FAILURE; written here so that --help imports no ops module).
ON_FAILURE_CHOICES = ("stop", "rollback", "continue")


def rollout_options(f: Callable) -> Callable:
    """How a deploy or rollback goes over many nodes: batches, a canary, what a failure does (ops.rollout)."""
    for option in reversed([
        click.option("--batch", type=BatchSize(), default=None, metavar="N|N%",
                     help="Switch N nodes (or N% of the targets, rounded up) at a time; default: all at once."),
        click.option("--canary", is_flag=True, help="Switch one node first; if it fails, no other node is touched."),
        click.option("--max-fail", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Failed nodes tolerated before --on-failure acts (default 0)."),
        click.option("--on-failure", type=click.Choice(ON_FAILURE_CHOICES), default="stop", show_default=True,
                     metavar="ACTION", help="When more than --max-fail nodes failed: stop (keep what switched), rollback (switch "
                          "the nodes this command updated back), continue (every batch runs)."),
        click.option("--pause", type=DURATION, default=0, metavar="SECONDS", help="Wait SECONDS between batches."),
    ]):
        f = option(f)
    return f


def rollout_settings(batch: tuple[int, bool] | None, canary: bool, max_fail: int | None, on_failure: str,
                     pause: float):
    """The rollout options as ``ops.rollout.Rollout`` (imported here, not at --help); BadRollout when they contradict."""
    from deployer.ops.rollout import Rollout

    return Rollout(batch=batch, max_fail=max_fail, pause=pause, canary=canary, on_failure=on_failure)


service_option = click.option("--service", metavar="NAME",
                              help="The service to deploy to (a new name adds a service).")


def swap_options(f: Callable) -> Callable:
    """The options every command that swaps containers and commits takes (deploy, rollback)."""
    for option in reversed([wait_option, author_option, message_option, dry_run_option, settle_option,
                            health_timeout_option, no_consul_option, json_option(), quiet_option(),
                            verbose_option(), progress_option, no_color_option]):
        f = option(f)
    return f


def swap_settings(settle: float | None, health_timeout: float | None):
    """``--settle`` and ``--health-timeout`` as the engine layer takes them (imported here, not at --help)."""
    from deployer.engine.apply import SwapOptions

    return SwapOptions(settle=settle, health_timeout=health_timeout)
