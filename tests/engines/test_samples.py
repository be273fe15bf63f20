"""`python -m deployer.build.samples`: what `deployer init` tells an operator to run when dockerd was down."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from deployer.build.samples import SAMPLES

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "deployer.build.samples", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_builds_every_sample_image_on_the_engine_named(clean_engine):
    done = _run(clean_engine.unix_url)
    assert done.returncode == 0, done.stderr
    wanted = [f"{name}:{v}" for name, versions in SAMPLES.items() for v in versions]
    assert done.stdout.split() == wanted
    with closing(clean_engine.client()) as client:
        tags = {t for image in client.images.list() for t in image.tags}
    assert set(wanted) <= tags


def test_an_engine_that_does_not_answer_is_one_line_and_exit_1(tmp_path):
    done = _run(f"unix://{tmp_path}/no.sock")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: the Docker engine at unix://{tmp_path}/no.sock did not answer: ")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
