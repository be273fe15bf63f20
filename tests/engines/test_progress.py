"""--progress on a real engine: JSON events of a deploy (steps in order, the pull's layers, done), and the
live view on a pseudo-terminal (drawn, summary, exit 0; no colour with NO_COLOR)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import uuid

import pytest

from tests.support.images import build_web_image
from tests.support.registry import RegistryServer
from tests.support.repos import make_repo, remove_node_containers, run, web_compose

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7])m")


@pytest.fixture
def client(clean_engine):
    c = clean_engine.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def registry(fleet):
    server = RegistryServer(fleet.gateway)
    server.start()
    try:
        yield server.address
    finally:
        server.stop()


def program_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NO_COLOR")}
    env.update(extra)
    return env


def events_of(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines()]


def test_deploy_progress_json_steps_in_order_then_done(client, clean_engine, tmp_path):
    repo = f"deployer-test/progress-{uuid.uuid4().hex[:8]}"
    one, two = f"{repo}:1", f"{repo}:2"
    build_web_image(client, one, body="progress v1")
    build_web_image(client, two, body="progress v2")
    root, node = make_repo(tmp_path / "infra", clean_engine.unix_url, web_compose(one))
    try:
        r = run(root, "deploy", one, f"test/{node}", "--settle", "0")
        assert r.returncode == 0, r.stderr
        r = run(root, "deploy", two, f"test/{node}", "--settle", "0", "--progress", "json", "--json",
                env=program_env())
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["image"] == two  # the result alone on stdout
        events = events_of(r.stderr)
        target = f"test/{node}"
        mine = [e for e in events if e["target"] == target]
        steps = [e["step"] for e in mine if e["event"] == "step"]
        # the applier's steps, in the order they happened
        order = [next((i for i, s in enumerate(steps) if s.startswith(word)), None)
                 for word in ("created ", "started ", "removed ", "renamed ")]
        assert None not in order and order == sorted(order), steps
        assert [e["event"] for e in mine][-1] == "done"
        assert events[-1] == {**events[-1], "target": None, "event": "done", "step": "done"}
        assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    finally:
        remove_node_containers(client, node)


def test_deploy_progress_json_reports_the_pull_layers(client, clean_engine, registry, tmp_path):
    ref = f"{registry}/progress-{uuid.uuid4().hex[:8]}:1"
    build_web_image(client, ref, body="pulled")
    for _ in client.api.push(ref.rsplit(":", 1)[0], tag="1", stream=True, decode=True):
        pass
    client.api.remove_image(ref)
    root, node = make_repo(tmp_path / "infra", clean_engine.unix_url, web_compose(ref))
    try:  # the image written and not on the node: the deploy pulls it and creates the container
        r = run(root, "deploy", ref, f"test/{node}", "--settle", "0", "--progress", "json", env=program_env())
        assert r.returncode == 0, r.stderr
        mine = [e for e in events_of(r.stderr) if e["target"] == f"test/{node}"]
        kinds = [e["event"] for e in mine]
        pulling = kinds.index("step")
        assert mine[pulling]["step"] == f"pulling {ref}"
        layers = [e for e in mine if e["event"] == "layer"]
        assert layers and all(set(e) >= {"layer", "status", "current", "total"} for e in layers)
        assert any(e["status"] in ("Pull complete", "Already exists") for e in layers), layers
        assert kinds.index("layer") > pulling
        assert any(e["step"].startswith(f"pulled {ref}") for e in mine)
        assert kinds[-1] == "done"
    finally:
        remove_node_containers(client, node)


def run_on_a_terminal(args: list[str], env: dict, timeout: float = 120) -> tuple[int, str]:
    """The program with stdout and stderr on a pseudo-terminal: its exit code and all it drew."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "deployer", *args], stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, env=env, close_fds=True)
    os.close(follower)
    seen = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise AssertionError(f"nothing drawn for {timeout}s: {seen.decode(errors='replace')[-500:]}")
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the program closed the terminal (it ended)
                break
            if not data:
                break
            seen += data
        return proc.wait(timeout=timeout), seen.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)


@pytest.mark.parametrize("no_color", [False, True])
def test_deploy_progress_live_on_a_terminal(client, clean_engine, tmp_path, no_color):
    repo = f"deployer-test/progress-{uuid.uuid4().hex[:8]}"
    build_web_image(client, f"{repo}:1", body="live v1")
    build_web_image(client, f"{repo}:2", body="live v2")
    root, node = make_repo(tmp_path / "infra", clean_engine.unix_url, web_compose(f"{repo}:1"))
    try:
        r = run(root, "deploy", f"{repo}:1", f"test/{node}", "--settle", "0")
        assert r.returncode == 0, r.stderr
        env = program_env(TERM="xterm", COLUMNS="120", LINES="40", **({"NO_COLOR": "1"} if no_color else {}))
        code, drawn = run_on_a_terminal(["--repo", str(root), "deploy", f"{repo}:2", f"test/{node}", "--settle",
                                         "0", "--progress", "auto"], env)  # auto: live on a terminal
        assert code == 0, drawn
        assert "\x1b[?25l" in drawn  # rich hid the cursor to draw in place (and showed it again)
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
        assert f"deploy test/{node}/web: {repo}:1 -> {repo}:2 [" in plain  # the result, after the view
        assert re.search(rf"done test/{node} .*\(\d+\.\ds\)", plain), plain
        assert "  test/" not in plain.split("done", 1)[0]  # no plain progress lines: the live view drew them
        assert bool(COLOUR.search(drawn)) is (not no_color)
    finally:
        remove_node_containers(client, node)


def test_apply_progress_live_draws_a_line_per_node(client, clean_engine, tmp_path):
    from tests.support.repos import unique_node

    image = f"deployer-test/progress-{uuid.uuid4().hex[:8]}:1"
    build_web_image(client, image, body="two nodes")
    other = unique_node()
    root, node = make_repo(tmp_path / "infra", clean_engine.unix_url, web_compose(image), extra_files={
        f"datacenters/test/{other}/node.yml": f"docker: {clean_engine.unix_url}\n",
        f"datacenters/test/{other}/docker-compose.yml": web_compose(image)})
    try:
        env = program_env(TERM="xterm", COLUMNS="120", LINES="40")
        code, drawn = run_on_a_terminal(["--repo", str(root), "apply", "--settle", "0", "--progress", "live"], env)
        assert code == 0, drawn
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
        assert "\x1b[1A" in drawn  # the view is more than one line: it moves up to redraw them in place
        frames = [f for f in plain.split("\r") if f"test/{node}" in f or f"test/{other}" in f]
        assert any(f"test/{node} " in f and "create" in f for f in frames), plain
        assert any(f"test/{other} " in f and "create" in f for f in frames), plain
        summary = [line.split()[:2] for line in plain.splitlines() if line.startswith("  done ")]
        assert sorted(summary) == sorted([["done", f"test/{node}"], ["done", f"test/{other}"]]), plain
        assert f"test/{node}: ok, 1 changed" in plain and f"test/{other}: ok, 1 changed" in plain
    finally:
        remove_node_containers(client, node)
        remove_node_containers(client, other)
