"""Source repositories for the build tests: copies of examples/apps in temp git repos.

Shared by tests/engines/test_build.py and the unit tests of the build layer
(tests/unit/test_build_config.py, tests/unit/test_gitrepo_source.py). The git
identity is fixed here, so the helpers work with or without the suite's
``git_env`` fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "examples" / "apps"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def make_repo(tmp: Path, app: str = "sensor", name: str | None = None) -> Path:
    """A git repo holding a copy of examples/apps/APP at REPO/NAME, committed."""
    repo = tmp / f"repo-{name or app}"
    shutil.copytree(APPS / app, repo / (name or app))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{app}: initial")
    return repo / (name or app)


def new_commit(src: Path, note: str) -> str:
    (src / "NOTES").write_text(note + "\n")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", note)
    return git(src, "rev-parse", "HEAD")
