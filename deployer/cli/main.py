"""The `deployer` command: the group, its error translation, and the commands of every subject.

Conventions for every command: ``--repo PATH`` (or DEPLOYER_REPO) picks the
infrastructure repository, ``--json`` prints data for machines, errors are one
line on stderr (``error: file:line: field: message``) with a non-zero exit:
1 a failure, 2 changes pending or drift (plan, status, services), 3 bad input,
click's usage errors included (deployer.errors' EXIT_* codes). With ``--json``
an error is also printed on stdout as ``{"error": "...", "exit_code": N}``
unless the command printed its result already. Every option can be set from
the environment, ``DEPLOYER_<COMMAND>_<OPTION>`` (options.assign_envvars).

The commands live by subject (repo, compose_config, deploy, fleet, nodes, build, discovery, completion, service, serve);
``SUBJECTS`` names which module holds which command, and the group imports a subject
module only when one of its commands is asked for (a deploy loads ``cli.deploy``, not
the build, serve or alerts commands and what they import); listing the commands
(``--help``, a usage error's suggestions, ``main.commands``) loads them all. Each
command gets its DEPLOYER_ variables when it is loaded (``options.assign_envvars``).
Nothing imports this module but the console script and ``python -m deployer``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from deployer.cli.options import (JSON_META, JSON_PRINTED_META, assign_envvars, no_color_option, repo_option,
                                  setup_logging)
from deployer.cli.output import end_progress, print_error_json
from deployer.errors import EXIT_BAD_INPUT, DeployerError, HealthCheckFailed, printable


def _fail(ctx: click.Context, exc: DeployerError) -> None:
    if isinstance(exc, HealthCheckFailed) and exc.logs:
        click.echo(f"--- last log lines of {exc.container or 'the new container'} ---", err=True)
        click.echo(exc.logs.rstrip("\n"), err=True)
        click.echo("---", err=True)
    if ctx.meta.get(JSON_META) and not ctx.meta.get(JSON_PRINTED_META):
        print_error_json(exc.one_line(), exc.exit_code)
    click.echo(f"error: {exc.one_line()}", err=True)
    sys.exit(exc.exit_code)


def _json_in(args: list[str]) -> bool:
    """``--json`` among the words before ``--`` (a usage error can come before the option is parsed)."""
    words = list(args)
    return "--json" in (words[:words.index("--")] if "--" in words else words)


def _bad_usage(ctx: click.Context | None, exc: click.UsageError, args: list[str]) -> None:
    """A usage error exits EXIT_BAD_INPUT (click's own code is 2, "changes pending" here); in JSON too with --json."""
    exc.exit_code = EXIT_BAD_INPUT
    meta = ctx.meta if ctx is not None else {}
    if (meta.get(JSON_META) or _json_in(args)) and not meta.get(JSON_PRINTED_META):
        print_error_json(printable(" ".join(exc.format_message().split())), exc.exit_code)


def _leave_at_once() -> None:
    """After a successful command run as the program: flush and leave without tearing the interpreter down.

    Freeing every module and object at exit costs tens of milliseconds the OS does for nothing.
    Only after success (nothing left to report), and only when the output flushed cleanly: a
    flush that fails (a closed pipe) takes the normal exit, with its messages and status.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(0)


#: Every top-level command and the subject module (deployer.cli.<module>) whose COMMANDS holds it.
#: tests/unit/test_cli_lazy.py checks this table against the modules' COMMANDS.
SUBJECTS: dict[str, str] = {
    "init": "repo", "validate": "repo", "ls": "repo",
    "config": "compose_config",
    "deploy": "deploy", "rollback": "deploy", "history": "deploy",
    "status": "fleet", "plan": "fleet", "apply": "fleet",
    "node": "nodes",
    "lock": "lock",
    "build": "build", "image": "build", "release": "build", "watch-builds": "build", "builders": "build",
    "registrator": "discovery", "services": "discovery", "render": "discovery", "templates": "discovery",
    "completion": "completion",
    "logs": "service", "exec": "service", "restart": "service",
    "prune": "prune",
    "scale": "scale",
    "serve": "serve", "token": "serve",
    "alerts": "alerts",
}


class DeployerGroup(click.Group):
    """Turns DeployerError into one line on stderr and its exit code; loads a subject's commands when asked for."""

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        """Every command, all subjects loaded (what click's own code and the docs walk)."""
        for module in dict.fromkeys(SUBJECTS.values()):
            self._load(module)
        return self._commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._commands = dict(value)
        self._loaded: set[str] = set()

    def _load(self, module: str) -> None:
        if module in self._loaded:
            return
        self._loaded.add(module)
        for command in importlib.import_module(f"deployer.cli.{module}").COMMANDS:
            self.add_command(command)
            assign_envvars(command, command.name or "")

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._commands[name] = cmd

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = SUBJECTS.get(cmd_name)
        if module is not None:
            self._load(module)
        return self._commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        # Called without args only as the program (the console script, python -m deployer);
        # callers that pass args (click's CliRunner, tests) get click's behaviour unchanged.
        if args is not None or rest or kwargs:
            return super().main(args, *rest, **kwargs)
        try:
            super().main()
        except SystemExit as exc:
            if exc.code in (0, None):
                _leave_at_once()
            raise
        _leave_at_once()  # pragma: no cover - click's standalone mode always exits

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _bad_usage(exc.ctx, exc, args)
            raise

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["deployer.args"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeployerError as exc:
            end_progress(error=exc.one_line())  # the live view stops (its summary) before the error line
            _fail(ctx, exc)
        except click.UsageError as exc:
            end_progress(error=exc.format_message())
            _bad_usage(exc.ctx or ctx, exc, ctx.meta.get("deployer.args", []))
            raise
        except BaseException as exc:  # Ctrl-C, a bug, a command's own exit: the terminal is given back
            code = exc.code if isinstance(exc, SystemExit) else None
            end_progress(error=None if isinstance(exc, SystemExit) and code in (0, None)
                         else f"exit {code}" if isinstance(exc, SystemExit) else type(exc).__name__)
            raise
        finally:
            end_progress()


@click.group(cls=DeployerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@repo_option
@no_color_option
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


assign_envvars(main, commands=False)  # the group's own options; each command's when its subject is loaded


if __name__ == "__main__":  # pragma: no cover
    main()
