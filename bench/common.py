"""What several benchmarks share: git with a fixed identity and no user configuration, a
timed call, and a code change of the worker app that makes a new build.

A benchmark is run as ``python3 bench/bench_X.py``; it puts the checkout on ``sys.path``,
so ``from bench.common import ...`` finds this file.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


def git(repo: Path, *args: str) -> str:
    """``git -C repo ARGS`` with the bench's identity; its stdout, stripped (raises if git fails)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds it took)``."""
    t = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - t


def change_code(src: Path, n: int, word: str = "commit") -> None:
    """Change the worker's start-up line (so the binary and the image change) and commit it as ``WORD N``."""
    main = src / "main.go"
    text = main.read_text()
    marker = 'log.Printf("worker'
    start = text.index(marker)
    end = text.index(" listening on", start)
    main.write_text(text[:start] + f'{marker} ({word} {n})' + text[end:])
    git(src, "commit", "-q", "-am", f"{word} {n}")
