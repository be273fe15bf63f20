"""docs/cli.md is generated from the click commands; this fails when a command or option changed without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_cli_md_is_what_the_commands_say():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_docs.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr + "(regenerate: python3 scripts/cli_docs.py)"


def test_every_command_and_option_is_on_the_page():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import cli_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for path, cmd in cli_docs._commands(cli_docs.main, "deployer"):
        assert f"## `{path}`" in page, path
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in page.split(f"## `{path}`", 1)[1], f"{path} {opt}"
