"""The group loads a subject module only when one of its commands is asked for (cli/main.py SUBJECTS)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from deployer.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CLI_DIR = ROOT / "deployer" / "cli"


def test_subjects_table_is_every_modules_commands():
    """Each module's COMMANDS are exactly the names SUBJECTS gives that module, and no module is missed."""
    have: dict[str, str] = {}
    for path in sorted(CLI_DIR.glob("*.py")):
        module = importlib.import_module(f"deployer.cli.{path.stem}")
        for command in getattr(module, "COMMANDS", ()):
            assert command.name not in have, f"{command.name} in {have.get(command.name)} and {path.stem}"
            have[command.name] = path.stem
    assert have == cli_main.SUBJECTS


def _fresh(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADED = '''
import json, sys
from deployer.cli.main import main
main.main({args!r}, standalone_mode=False)
print()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("deployer.cli."))))
'''


def test_a_command_loads_its_subject_only():
    loaded = _fresh(LOADED.format(args=["deploy", "--help"]))
    assert "deployer.cli.deploy" in loaded
    for other in ("deployer.cli.build", "deployer.cli.serve", "deployer.cli.alerts", "deployer.cli.discovery",
                  "deployer.cli.fleet"):
        assert other not in loaded, loaded


def test_the_groups_help_lists_every_command():
    loaded = _fresh(LOADED.format(args=["--help"]))
    assert {f"deployer.cli.{m}" for m in cli_main.SUBJECTS.values()} <= set(loaded)
    help_text = CliRunner().invoke(cli_main.main, ["--help"]).output
    for name in cli_main.SUBJECTS:
        assert f"  {name} " in help_text or f"  {name}\n" in help_text, name


ENVVAR = '''
import json
import click
from deployer.cli.main import main
ctx = click.Context(main)
deploy = main.get_command(ctx, "deploy")
print(json.dumps({p.name: p.envvar for p in deploy.params if isinstance(p, click.Option) and not p.is_eager}))
'''


def test_a_lazily_loaded_command_has_its_environment_variables():
    envvars = _fresh(ENVVAR)
    assert envvars["settle"] == "DEPLOYER_DEPLOY_SETTLE"
    assert all(isinstance(v, (str, list)) and v for v in envvars.values()), envvars


def test_an_unknown_command_is_a_usage_error_with_a_suggestion():
    result = CliRunner().invoke(cli_main.main, ["deplyo"])
    assert result.exit_code == 3
    assert "deploy" in result.output
