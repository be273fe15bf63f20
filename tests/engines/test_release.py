"""Release (build + image + push + deploy) and the build watcher, end to end.

Real everything: the private dockerd of tests/support/build_engine.py builds
the images and is also the node (``node.yml``: its unix socket); the TLS
registry of tests/support/registry.py is the datacenter's ``registry:``; the
infrastructure repository and the sources are real git repositories. The
engine, the registry and the slow base/builder images are shared with
tests/engines/test_build.py (tests/support/build_fixtures.py, once per session).

The sample app is examples/apps/worker (a static Go binary on scratch, with a
HEALTHCHECK); the node's compose file keeps the image's check but runs it
every 500 ms, so a deploy is healthy in about a second. Where the node must
pull, the pushed image is removed from the engine right after the push.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest

from deployer.build import image as I
from deployer.cli.options import POSITIVE_DURATION
from tests.support.repos import cli, git, make_repo, managed
from tests.support.build_fixtures import break_main, commit, fix_main, report, source_repo

pytest_plugins = ["tests.support.build_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
CACHE_VOLUME = "deployer-cache-go"

COMPOSE = """\
services:
  worker:
    image: {image}
    healthcheck:
      interval: 500ms
"""


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def go_cache_as_found(client):
    """Leave the Go cache volume as this module found it: test_build's first build must be cold."""
    existed = any(v.name == CACHE_VOLUME for v in client.volumes.list())
    yield
    if not existed:
        with contextlib.suppress(Exception):
            client.volumes.get(CACHE_VOLUME).remove(force=True)


def infra_repo(parent: Path, docker_url: str, node: str, registry: str | None, image: str) -> Path:
    extra = {"datacenters/test/datacenter.yml": "description: release tests\n"
             + (f"registry: {registry}\n" if registry else "")}
    root, _ = make_repo(parent / "infra", docker_url, COMPOSE.format(image=image), node=node, extra_files=extra)
    return root


def running(client, node: str) -> list:
    return [c for c in managed(client, node) if c.status == "running"]


def health(container) -> str:
    container.reload()
    return container.attrs["State"].get("Health", {}).get("Status", "")


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class Lines:
    """Collects a subprocess stream's lines in a thread; ``wait_for`` a matching one."""

    def __init__(self, stream, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.proc = proc
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float, other: "Lines | None" = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no line with {text!r} within {timeout}s; stdout/stderr so far:\n"
                    + "\n".join(self.lines + (other.lines if other else [])))


# --------------------------------------------------------------------------- quick


def test_durations():
    """watch-builds --interval's type: deployer.values's grammar, more than zero."""

    def _duration(text):
        return POSITIVE_DURATION.convert(text, None, None)

    assert _duration("10s") == 10 and _duration("500ms") == 0.5 and _duration("2m") == 120
    assert _duration("1.5") == 1.5 and _duration("1h") == 3600 and _duration("1m30s") == 90
    with pytest.raises(click.BadParameter, match="invalid duration 'ten'"):
        _duration("ten")
    with pytest.raises(click.BadParameter, match="must be more than zero"):
        _duration("0s")


def test_release_refuses_before_building(build_engine, registry, node, tmp_path, monkeypatch):
    """Bad targets, a datacenter without registry, no matching service: exit 2, nothing built."""
    def no_build(*args, **kwargs):
        raise AssertionError("built although the release could not be deployed")

    monkeypatch.setattr(I, "build_image", no_build)
    src = source_repo(tmp_path / "src")
    infra = infra_repo(tmp_path, build_engine.url, node, None, "busybox:1")
    url = build_engine.url

    r = cli(infra, "release", str(src), f"test/{node}", "--docker", url)
    assert r.exit_code == 3, r.output
    assert errors(r.stderr) == ["error: datacenters/test/datacenter.yml: no 'registry: HOST:PORT' here, so there "
                                "is nowhere to push the image (add it, or pass --registry)"]

    r = cli(infra, "release", str(src), "test/nope", "--registry", registry, "--docker", url)
    assert r.exit_code == 3 and "unknown node test/nope" in r.stderr

    # the compose file's only service runs busybox: no service runs worker
    r = cli(infra, "release", str(src), f"test/{node}", "--registry", registry, "--docker", url)
    assert r.exit_code == 3 and f"no service on test/{node} runs {registry}/worker" in r.stderr, r.output

    (src / "main.go").write_text((src / "main.go").read_text() + "\n// uncommitted\n")
    r = cli(infra, "release", str(src), f"test/{node}", "--registry", registry, "--docker", url)
    assert r.exit_code == 3 and "uncommitted changes (main.go)" in r.stderr

    r = cli(infra, "image", str(src), "--docker", url)
    assert r.exit_code == 3 and "--registry HOST:PORT, or --dc DC" in r.output
    r = cli(infra, "build", str(tmp_path / "nope"), "--docker", url)
    assert r.exit_code == 3 and errors(r.stderr) == [f"error: {tmp_path / 'nope'}: not a directory"]
    r = cli(infra, "release", str(src), f"test/{node}", "--registry", registry, "--docker", "unix:///nonexistent.sock")
    assert r.exit_code == 1
    assert errors(r.stderr) == ["error: build engine unix:///nonexistent.sock: no such socket /nonexistent.sock: "
                                "is dockerd running? (--engine URL or DOCKER_HOST names the engine)"]
    assert git(infra, "rev-list", "--count", "HEAD") == "1"

    # a node that cannot be reached is found before building, too
    dead = infra_repo(tmp_path / "dead", "unix:///nonexistent.sock", node, registry, f"{registry}/worker:none")
    r = cli(dead, "release", str(src), f"test/{node}", "--allow-dirty", "--docker", url)
    assert r.exit_code == 1
    (line,) = errors(r.stderr)
    assert line.startswith(f"error: node test/{node} (unix:///nonexistent.sock): ")


# --------------------------------------------------------------------------- release


def test_release_node_pulls_then_missing_tag(client, go_builder, build_engine, registry, node, tmp_path, monkeypatch,
                                              capsys):
    src = source_repo(tmp_path / "src")
    git(src, "tag", "v1.0.0")
    sha = git(src, "rev-parse", "HEAD")
    ref = f"{registry}/worker:v1.0.0"
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/worker:none")
    before = git(infra, "rev-parse", "HEAD")

    # The builder is the node here: drop the image right after its push, so the node must pull it.
    real_push = I.push_image
    pushed: list[str] = []

    def push_then_forget(client_, ref_, image_id="", progress=None, **kwargs):
        digest = real_push(client_, ref_, image_id=image_id, progress=progress, **kwargs)
        client_.images.remove(ref_, force=True)
        pushed.append(ref_)
        return digest

    monkeypatch.setattr(I, "push_image", push_then_forget)
    t = time.monotonic()
    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url, "-m", "first release")
    seconds = time.monotonic() - t
    assert r.exit_code == 0, r.output
    assert pushed == [ref]
    out = r.stdout.splitlines()
    assert out[0].startswith(f"{ref}: built in ") and "pushed in" in out[0]
    assert out[1].startswith(f"deploy test/{node}/worker: {registry}/worker:none -> {ref} [")
    stderr = r.stderr
    # push progress (a layer other tests pushed says "Layer already exists" or "Mounted from")
    pushing = [line for line in stderr.splitlines() if line.startswith("  push: ")]
    assert any(line.endswith((": Pushed", ": Layer already exists")) or ": Mounted from" in line for line in pushing)
    assert "  push: v1.0.0: digest: sha256:" in stderr
    assert f"test/{node}: pulling {ref}" in stderr and f"test/{node}: pulled {ref}" in stderr
    assert stderr.index("push: v1.0.0: digest:") < stderr.index(f"pulling {ref}")

    # the node runs the pushed image, healthy by the image's own HEALTHCHECK
    (container,) = running(client, node)
    assert container.attrs["Config"]["Image"] == ref and health(container) == "healthy"
    assert container.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "/worker", "-healthcheck"]
    image = client.images.get(ref)
    assert image.labels["org.opencontainers.image.revision"] == sha
    assert any(d.startswith(f"{registry}/worker@sha256:") for d in image.attrs["RepoDigests"])

    # one deploy commit in the infrastructure repository
    assert git(infra, "rev-list", "--count", f"{before}..HEAD") == "1"
    message = git(infra, "log", "-1", "--format=%B")
    assert message.startswith(f"deploy test/{node}/worker: {registry}/worker:none -> {ref}\n\nfirst release\n\n"
                              f"Built from {src} at commit {sha}.")
    assert f"Deployer-Image: {ref}" in message and "Deployer-Action: deploy" in message
    assert cli(infra, "status").exit_code == 0
    report(capsys, f"release with the go builder ready: {seconds:.1f}s")

    # the same commit again: nothing built, nothing pushed, nothing deployed
    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["image"]["built"] is False and data["image"]["pushed"] is False and data["deploy"]["commit"] is None
    assert git(infra, "rev-list", "--count", f"{before}..HEAD") == "1"

    # a tag the registry does not have: one clear line, nothing changed
    head = git(infra, "rev-parse", "HEAD")
    missing = f"{registry}/worker:no-such-tag"
    r = cli(infra, "deploy", missing, f"test/{node}")
    assert r.exit_code == 1
    assert f"test/{node}: pulling {missing}" in r.stderr
    assert errors(r.stderr) == [f"error: image {missing} is not on the node and registry {registry} has no "
                                "worker:no-such-tag (was it pushed?)"]
    assert git(infra, "rev-parse", "HEAD") == head and git(infra, "status", "--porcelain") == ""
    (still,) = running(client, node)
    assert still.id == container.id and still.attrs["Config"]["Image"] == ref


def test_release_with_registry_down_deploys_nothing(client, go_builder, build_engine, registry, registry_server, node,
                                                    tmp_path):
    src = source_repo(tmp_path / "src")
    sha = git(src, "rev-parse", "HEAD")
    ref = f"{registry}/worker:{sha[:12]}"
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/worker:none")
    registry_server.pause()
    try:
        r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url)
    finally:
        registry_server.resume()
    assert r.exit_code == 1, r.output
    (line,) = errors(r.stderr)
    assert line.startswith(f"error: push of {ref} failed: ") and "connection refused" in line
    assert r.stdout == ""
    assert git(infra, "rev-list", "--count", "HEAD") == "1" and git(infra, "status", "--porcelain") == ""
    assert managed(client, node) == []


def test_release_compile_error_deploys_nothing(client, go_builder, build_engine, registry, node, tmp_path):
    src = source_repo(tmp_path / "src")
    sha = break_main(src)
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/worker:none")
    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url)
    assert r.exit_code == 1
    stderr = r.stderr.splitlines()
    (line,) = errors(r.stderr)
    assert "syntax error" in line and line.startswith("error: go build of ")
    compiler = [s for s in stderr if "main.go:" in s and "syntax error" in s and not s.startswith("error:")]
    assert compiler and stderr.index(compiler[0]) < stderr.index(line)  # the compiler's output, then the line
    assert not any(sha[:12] in t for i in client.images.list() for t in i.tags)
    assert git(infra, "rev-list", "--count", "HEAD") == "1" and managed(client, node) == []


# --------------------------------------------------------------------------- watch-builds


def test_watch_builds_once_from_a_post_receive_hook(client, go_builder, build_engine, registry, node, tmp_path,
                                                    monkeypatch):
    upstream = tmp_path / "git" / "worker.git"
    upstream.mkdir(parents=True)
    git(upstream, "init", "-q", "--bare", "-b", "main")
    dev = source_repo(tmp_path / "dev")
    git(dev, "remote", "add", "origin", str(upstream))
    git(dev, "push", "-q", "origin", "main")
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/worker:none")
    before = git(infra, "rev-parse", "HEAD")

    log = tmp_path / "hook.log"
    hook = upstream / "hooks" / "post-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f'exec >>"{log}" 2>&1\n'
        f'"{sys.executable}" -m deployer --repo "{infra}" watch-builds "$(pwd)" --once '
        f'--deploy test/{node} --docker {build_engine.url}\n'
        'echo "exit $?"\n')
    hook.chmod(0o755)

    sha = commit(dev, "second commit")
    git(dev, "push", "-q", "origin", "main")  # runs the hook, and waits for it
    text = log.read_text()
    ref = f"{registry}/worker:{sha[:12]}"
    assert f"{sha[:12]} {ref}: built and pushed" in text, text
    assert f"{sha[:12]} deployed {ref} to test/{node} [" in text and text.rstrip().endswith("exit 0")
    (container,) = running(client, node)
    assert container.attrs["Config"]["Image"] == ref and health(container) == "healthy"
    assert git(infra, "rev-list", "--count", f"{before}..HEAD") == "1"
    message = git(infra, "log", "-1", "--format=%B")
    assert f'Built from {upstream} at commit {sha} on main ("second commit").' in message

    state = json.loads((upstream / "deployer-builds.json").read_text())
    record = state["watches"]["main:."]["commits"][sha]
    assert record["status"] == "built" and record["ref"] == ref and record["deploy"]["status"] == "deployed"
    assert list(state["watches"]["main:."]["commits"]) == [sha]  # the first run builds the head only

    # again (a restarted watcher, the next hook run): nothing is built or deployed twice
    monkeypatch.setattr(I, "build_image", lambda *a, **k: pytest.fail("built a commit twice"))
    r = cli(infra, "watch-builds", str(upstream), "--once", "--deploy", f"test/{node}", "--docker", build_engine.url)
    assert r.exit_code == 0, r.output
    assert "nothing new on main" in r.stderr and r.stdout == ""
    assert git(infra, "rev-list", "--count", f"{before}..HEAD") == "1"
    assert json.loads((upstream / "deployer-builds.json").read_text()) == state


def test_watch_builds_reports_a_compile_error_and_goes_on(client, go_builder, build_engine, registry, node,
                                                          tmp_path, capsys):
    upstream = tmp_path / "git" / "worker.git"
    upstream.mkdir(parents=True)
    git(upstream, "init", "-q", "--bare", "-b", "main")
    dev = source_repo(tmp_path / "dev")
    git(dev, "remote", "add", "origin", str(upstream))
    git(dev, "push", "-q", "origin", "main")
    first = git(dev, "rev-parse", "HEAD")
    (tmp_path / "ci").mkdir()
    git(tmp_path / "ci", "clone", "-q", str(upstream), "worker")  # the watcher's clone: it fetches origin
    ci = tmp_path / "ci" / "worker"
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/worker:none")
    before = git(infra, "rev-parse", "HEAD")

    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer", "--repo", str(infra), "watch-builds", str(ci), "--interval", "300ms",
         "--deploy", f"test/{node}", "--docker", build_engine.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = Lines(proc.stdout, proc), Lines(proc.stderr, proc)
        t = time.monotonic()
        # the first poll builds and deploys the head
        out.wait_for(f"{first[:12]} deployed {registry}/worker:{first[:12]}", 120, err)
        first_seconds = time.monotonic() - t

        broken = break_main(dev)
        git(dev, "push", "-q", "origin", "main")
        line = err.wait_for(f"error: {broken[:12]} (worker: a compile error): go build of {ci} at {broken[:12]} "
                            "failed (exit 1): ./main.go:", 120, out)
        assert "syntax error" in line
        compiler = [s for s in err.lines if "main.go:" in s and "syntax error" in s and not s.startswith("error:")]
        assert compiler and err.lines.index(compiler[0]) < err.lines.index(line)

        t = time.monotonic()
        fixed = fix_main(dev)
        git(dev, "push", "-q", "origin", "main")
        out.wait_for(f"{fixed[:12]} deployed {registry}/worker:{fixed[:12]}", 120, err)
        fixed_seconds = time.monotonic() - t
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report(capsys, f"watch-builds: first commit built+deployed {first_seconds:.1f}s after start, "
                   f"a pushed fix deployed {fixed_seconds:.1f}s after the push")

    (container,) = running(client, node)
    assert container.attrs["Config"]["Image"] == f"{registry}/worker:{fixed[:12]}" and health(container) == "healthy"
    subjects = git(infra, "log", "--format=%s", f"{before}..HEAD").splitlines()
    assert [s.rsplit(" -> ", 1)[1] for s in subjects] == [f"{registry}/worker:{fixed[:12]}",
                                                         f"{registry}/worker:{first[:12]}"]
    commits = json.loads((ci / ".git" / "deployer-builds.json").read_text())["watches"]["main:."]["commits"]
    assert list(commits) == [first, broken, fixed]
    assert commits[broken]["status"] == "failed" and "syntax error" in commits[broken]["output"]
    assert "deploy" not in commits[broken]
    assert [commits[c]["deploy"]["status"] for c in (first, fixed)] == ["deployed", "deployed"]
    assert not any(broken[:12] in t for i in client.images.list() for t in i.tags)
