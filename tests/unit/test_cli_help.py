"""Every command keeps its options and help: compared with a capture of the CLI before it was split.

tests/unit/test_cli_help.json is ``deployer <cmd> --help`` (80 columns) and
each command's parameters as the CLI printed and declared them before
deployer/cli/ was split by subject. The only deliberate change: the duration
options' type is now the one duration type (it was float, or text for
registrator --resync), so they accept ``1m30s`` like every other duration.

Recaptured deliberately for issue 12's automation contract (the duration types
kept as they were before, so the check above still holds): the ``completion``
command; ``--json`` on init, node rm, render and templates watch; ``-q``/``-v``
on every command (help saying where they change nothing); every option's
``envvar`` (DEPLOYER_<COMMAND>_<OPTION>, ``--repo``'s DEPLOYER_REPO now through
click's envvar, its default plain "."); the exit codes in the help of status,
plan, validate and services. Recaptured for issue 14: serve and token add/ls/rm. Recaptured for issue 11: deploy's and rollback's rollout options (--batch N|N%,
--canary, --max-fail, --on-failure, --pause), rollback's TARGETS... and --commit, rollback's --parallel.
Recaptured for issue 11 part 3: --parallel's default 8 -> 64 (every target, up to 64), its metavar N and help.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deployer.cli.main import main

BEFORE = json.loads((Path(__file__).parent / "test_cli_help.json").read_text())

#: (command, parameter) -> the type name it had before; now "duration".
DURATION_OPTIONS = {
    **{(cmd, name): "float" for cmd in ("deploy", "rollback", "apply", "release", "watch-builds")
       for name in ("wait", "settle", "health_timeout")},
    ("node add", "wait"): "float",
    ("node rm", "wait"): "float",
    ("watch-builds", "interval"): "duration",
    ("deploy", "pause"): "duration",  # issue 11's rollout options, pinned as they were added
    ("rollback", "pause"): "duration",
    ("registrator", "resync"): "text",
    ("alerts watch", "drift_interval"): "duration",  # issue 14's alerts, pinned as they were added
    ("serve", "sync_interval"): "duration",  # issue 14's serve, pinned as it was added
    ("serve", "status_interval"): "duration",
    ("serve", "drift_interval"): "duration",
}


#: Commands added since the capture: not in it. Their options are the shared ones (cli/options.py), their page
#: docs/cli.md (checked by its own test); --help stays light for them too (below).
ADDED = {"logs", "exec", "restart", "prune", "config", "scale"}


def commands(group: click.Group = main, path: tuple[str, ...] = ()):
    yield " ".join(path), group
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from commands(group.commands[name], (*path, name))


NOW = dict(commands())


def param_info(p: click.Parameter) -> dict:
    """The same fields the capture recorded."""
    d = {"name": p.name, "opts": p.opts, "secondary_opts": p.secondary_opts, "kind": type(p).__name__,
         "type": p.type.name, "required": p.required, "multiple": p.multiple, "nargs": p.nargs,
         "default": repr(p.default) if not callable(p.default) else "<callable>", "envvar": p.envvar,
         "metavar": p.metavar}
    if isinstance(p, click.Option):
        d.update(help=p.help, is_flag=p.is_flag, show_default=p.show_default, show_envvar=p.show_envvar)
    return d


def test_the_same_commands():
    assert sorted(set(NOW) - ADDED) == sorted(BEFORE) and ADDED <= set(NOW)


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_help_is_unchanged(command):
    args = [*command.split(), "--help"]
    result = CliRunner().invoke(main, args, prog_name="deployer", terminal_width=80, max_content_width=80)
    assert result.exit_code == 0, result.output
    output = result.output
    if command == "":  # the group lists the commands added since: each one line
        lines = output.splitlines(keepends=True)
        output = "".join(line for line in lines if line.split()[:1] not in ([a] for a in ADDED))
        assert len(lines) - output.count("\n") == len(ADDED)
    assert output == BEFORE[command]["help"]


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_options_are_unchanged_but_for_the_duration_type(command):
    before = BEFORE[command]["params"]
    now = [param_info(p) for p in NOW[command].params]
    assert [p["name"] for p in now] == [p["name"] for p in before]
    for old, new in zip(before, now):
        key = (command, old["name"])
        if key in DURATION_OPTIONS:
            assert old["type"] == DURATION_OPTIONS[key] and new["type"] == "duration", key
            old = {**old, "type": "duration"}
        assert new == old, key


def test_every_duration_option_is_listed():
    """A new duration option must be added to DURATION_OPTIONS (and to test_cli_options.py's cases)."""
    found = {(cmd, p.name) for cmd, c in NOW.items() if cmd not in ADDED for p in c.params
             if p.type.name == "duration"}
    assert found == set(DURATION_OPTIONS)


def test_no_command_help_loads_a_heavy_library():
    """``deployer <cmd> --help`` for every command imports none of the libraries the commands use."""
    code = (
        "import sys\n"
        "from deployer.cli.main import main\n"
        f"for args in {[c.split() for c in [*sorted(BEFORE), *sorted(ADDED)]]!r}:\n"
        "    try:\n"
        "        main([*args, '--help'], prog_name='deployer')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "heavy = ('docker', 'git', 'paramiko', 'jinja2', 'consul', 'requests', 'ruamel.yaml', 'rich', 'yaml')\n"
        "print(','.join(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('deployer.')"
        " and not m.startswith('deployer.cli'))), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Usage: deployer") == len(BEFORE) + len(ADDED)
    heavy, deployer_modules = done.stderr.splitlines()
    assert heavy == ""
    assert deployer_modules == "deployer.errors,deployer.values"
