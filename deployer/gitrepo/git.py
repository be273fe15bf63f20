"""Running git: the one place in the package that starts a git process.

Every git command of the deployer (the infrastructure repository, a source
repository being built, ``deployer init``) goes through :func:`run`, so they
all get the same treatment:

* the C locale, so messages can be matched;
* no standard input, so git never waits for a password prompt;
* a timeout (``DEFAULT_TIMEOUT`` unless the caller knows better), so a hung
  remote or filesystem ends as an error instead of a hang;
* without the variables git exports to hooks (``GIT_DIR``, ``GIT_WORK_TREE``,
  ``GIT_INDEX_FILE``...). A deployer started from a git hook (a post-receive
  hook that runs ``deployer watch-builds`` or ``release``) inherits them, and
  they would point every git command at the hook's repository instead of the
  one named by ``cwd``.

GitPython, used for history walks, is driven from ``gitrepo.history`` only.
"""

from __future__ import annotations

import os
import subprocess
from typing import Mapping, NamedTuple

#: Variables git sets for hooks; never passed on to the git processes we start.
HOOK_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH", "GIT_NAMESPACE", "GIT_PREFIX")
DEFAULT_TIMEOUT = 600.0
TIMED_OUT = 124  # the status a timed-out command reports, as timeout(1) does


class GitResult(NamedTuple):
    status: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def message(self) -> str:
        """git's complaint in one line (stderr, else stdout, else the exit status)."""
        text = self.err.strip() or self.out.strip() or f"exit status {self.status}"
        return " ".join(text.split())


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a git process gets: ours, less the hook variables, C locale, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in HOOK_ENV}
    env.update({"LC_ALL": "C", "LANGUAGE": "C"})
    env.update(extra or {})
    return env


def forget_hook_env() -> None:
    """Drop the hook variables from this process's environment (for long-running watchers)."""
    for name in HOOK_ENV:
        os.environ.pop(name, None)


def run(args: list[str] | tuple[str, ...], cwd: str | os.PathLike[str] | None = None, *,
        env: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> GitResult:
    """``git <args>`` in ``cwd``: (status, stdout, stderr), decoded losslessly. Never raises for git's own failures."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=environment(env), capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return GitResult(TIMED_OUT, "", f"git {args[0] if args else ''} timed out after {timeout:g} s")
    except FileNotFoundError:
        if cwd is not None and not os.path.isdir(cwd):
            return GitResult(128, "", f"{os.fspath(cwd)}: no such directory")
        return GitResult(127, "", "git is not installed")
    decode = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
    return GitResult(done.returncode, decode(done.stdout), decode(done.stderr))


def is_tracked(root: str | os.PathLike[str], relpath: str) -> bool:
    """Whether the repository at ``root`` tracks ``relpath`` (a path relative to root, taken literally)."""
    return run(["--literal-pathspecs", "ls-files", "--error-unmatch", "--", relpath], cwd=root, timeout=60).ok
