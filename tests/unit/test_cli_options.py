"""The shared options: one duration type for every duration option, parsed by deployer.values."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from deployer.cli.main import main
from deployer.cli.options import DURATION, POSITIVE_DURATION
from tests.unit.test_cli_help import DURATION_OPTIONS, NOW

#: The least each command needs on its command line to parse.
MINIMAL_ARGS = {
    "deploy": ["img:1", "dc/node"],
    "rollback": ["dc/node/web"],
    "apply": [],
    "release": ["src", "dc/node"],
    "watch-builds": ["src"],
    "node add": ["dc/node", "--docker", "unix:///x.sock"],
    "node rm": ["dc/node"],
    "registrator": ["dc"],
    "prune": [],
    "alerts watch": [],
    "serve": [],
}

#: The defaults, as seconds (unchanged).
DEFAULTS = {"wait": 0.0, "settle": None, "health_timeout": None, "interval": 10.0, "resync": 30.0, "pause": 0.0,
            "sync_interval": 30.0, "status_interval": 15.0, "drift_interval": 300.0,
            ("alerts watch", "drift_interval"): None}

#: Where zero is refused (as before: only watch-builds --interval).
POSITIVE = {("watch-builds", "interval"), ("serve", "sync_interval"), ("serve", "status_interval"),
            ("alerts watch", "drift_interval")}

ACCEPTED = [("1m30s", 90.0), ("250ms", 0.25), ("1.5", 1.5), ("2", 2.0), ("10s", 10.0), ("2m", 120.0),
            ("1h", 3600.0), ("1.5h", 5400.0), ("0.5s", 0.5), ("1h2m3s", 3723.0)]


def flag(command: str, name: str) -> str:
    (param,) = [p for p in NOW[command].params if p.name == name]
    return param.opts[0]


def parse(command: str, *args: str) -> dict:
    """The converted parameters of ``deployer COMMAND ARGS...``, without running it."""
    cmd = NOW[command]
    with cmd.make_context(command.split()[-1], [*MINIMAL_ARGS[command], *args]) as ctx:
        return ctx.params


def test_the_type():
    assert DURATION.convert("1m30s", None, None) == 90.0
    assert DURATION.convert(2, None, None) == 2.0
    assert DURATION.convert(0.25, None, None) == 0.25
    assert DURATION.convert("0", None, None) == 0.0
    assert DURATION.convert("0s", None, None) == 0.0
    assert POSITIVE_DURATION.convert("500ms", None, None) == 0.5
    for text, message in (("ten", "invalid duration 'ten'"), ("1x", "invalid duration '1x'"),
                          ("", "invalid duration ''"), ("-1s", "must not be negative"),
                          ("-1", "must not be negative"), ("1m30", "invalid duration '1m30'")):
        with pytest.raises(click.BadParameter, match=message):
            DURATION.convert(text, None, None)
    for text in ("0", "0s", "0ms"):
        with pytest.raises(click.BadParameter, match="must be more than zero"):
            POSITIVE_DURATION.convert(text, None, None)
    assert DURATION.name == POSITIVE_DURATION.name == "duration"


@pytest.mark.parametrize("command,name", sorted(DURATION_OPTIONS))
def test_every_duration_option_takes_the_one_grammar(command, name):
    option = flag(command, name)
    assert parse(command)[name] == DEFAULTS.get((command, name), DEFAULTS.get(name))
    for text, seconds in ACCEPTED:
        assert parse(command, option, text)[name] == seconds, (option, text)
    if (command, name) in POSITIVE:
        with pytest.raises(click.BadParameter, match="must be more than zero"):
            parse(command, option, "0")
    else:
        assert parse(command, option, "0")[name] == 0.0
    with pytest.raises(click.BadParameter, match="must not be negative"):
        parse(command, option, "-5s")
    with pytest.raises(click.BadParameter, match="invalid duration 'soon'"):
        parse(command, option, "soon")


@pytest.mark.parametrize("command,name", sorted(DURATION_OPTIONS))
def test_a_bad_duration_is_a_usage_error(command, name, tmp_path):
    """Exit 3 (bad input), click's usage message naming the option; nothing runs (no repository is even looked at)."""
    option = flag(command, name)
    result = CliRunner().invoke(main, ["--repo", str(tmp_path), *command.split(), *MINIMAL_ARGS[command],
                                       option, "ten"])
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert f"Error: Invalid value for '{option}': invalid duration 'ten': write seconds or a duration like 250ms, " \
           "2s, 1m30s" in result.stderr


def test_watch_builds_interval_takes_what_the_labels_take():
    """Once refused by watch-builds while the label deployer.consul.interval accepted it."""
    assert parse("watch-builds", "--interval", "1m30s")["interval"] == 90.0
