"""Builders and the image builder, against a real Docker engine and a real registry.

The tests start a private dockerd in its own network namespace
(tests/support/build_engine.py) and its own TLS registry on that namespace's
bridge (tests/support/registry.py); both are removed at the end. They, and the
base and builder images, are made once per session and shared with
tests/engines/test_release.py (tests/support/build_fixtures.py; base about 45 s, Go
builder about 45 s, Python builder about 25 s on this 2-core machine); the Go
build cache volume starts empty, so the first test's build is really cold.
``DEPLOYER_TEST_IMAGE_CACHE=DIR`` keeps ``docker save`` tarballs of those
content-addressed images between runs (about 1 GB) and loads them instead.

Needs root, docker.io, mmdebstrap, docker-registry, openssl, iproute2, iptables,
git: ``scripts/install-builders.sh`` installs them.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deployer.build import builders as B
from deployer.build import image as I
from deployer.build import registry as R
from deployer.errors import BuildFailed, DirtySource, DockerfileMissing, PushFailed, RegistryError
from tests.support.build_repos import git, make_repo, new_commit
from tests.support.build_fixtures import report

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "examples" / "apps"


# detect_builder, deployer.yml, source versions and registry URLs need no engine:
# tests/unit/test_build_config.py.


# --------------------------------------------------------------------------- fixtures: engine + registry

# build_engine, registry_server, cache_dir, client, go_builder and registry are
# shared with tests/engines/test_release.py: made once per session.
pytest_plugins = ["tests.support.build_fixtures"]
# The first test here makes the session's base image (mmdebstrap) and Go builder (apt from Debian's
# mirror): network and disk bound, about 90 s when idle, past the suite's 300 s on a loaded machine
# with the other workers running beside it (docs/testing.md).
pytestmark = pytest.mark.timeout(900)


def _image(client, ref: str, make) -> str:
    from tests.support.build_fixtures import image

    return image(client, ref, make)


# --------------------------------------------------------------------------- builds


def test_cold_then_warm_build(client, go_builder, tmp_path, capsys):
    ref, timings = go_builder
    assert client.images.get(ref).labels.get("deployer.builder") == "go"
    out = tmp_path / "artifacts"
    cold = B.build(client, APPS / "sensor", artifacts_dir=out)
    assert [p.name for p in cold.binaries] == ["sensor"]
    assert cold.builder == "go" and cold.cache_volume == "deployer-cache-go"
    binary = cold.binaries[0].read_bytes()
    assert binary[:4] == b"\x7fELF" and b"ld-linux" not in binary  # static
    assert os.access(cold.binaries[0], os.X_OK)

    volume = client.volumes.get("deployer-cache-go")
    go_cache = Path(volume.attrs["Mountpoint"]) / "go-build"
    cached = sum(1 for _ in go_cache.rglob("*-d"))
    assert cached > 100, "the compiler cache went to the volume"

    warm = B.build(client, APPS / "sensor", artifacts_dir=out)
    assert warm.binaries == cold.binaries and warm.binaries[0].read_bytes() == binary  # -trimpath: reproducible
    report(capsys, f"base image {timings['base']:.1f}s, go builder image {timings['go builder']:.1f}s, "
                   f"cold build {cold.seconds:.1f}s, warm build {warm.seconds:.2f}s "
                   f"(x{cold.seconds / warm.seconds:.0f}), cache entries {cached}")
    assert warm.seconds < cold.seconds
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".artifacts.tmp")] == []

    # all three sample apps build
    for app in ("worker", "app"):
        r = B.build(client, APPS / app, artifacts_dir=tmp_path / app)
        assert [p.name for p in r.binaries] == [app]


def test_compile_error(client, go_builder, registry, tmp_path):
    src = make_repo(tmp_path, "worker")
    main = src / "main.go"
    lines = main.read_text().splitlines()
    bad_line = next(i for i, line in enumerate(lines) if "n * n})" in line)
    lines[bad_line] = lines[bad_line].replace("n * n})", "n * n}")
    main.write_text("\n".join(lines) + "\n")
    sha = new_commit(src, "break the worker")

    out = tmp_path / "artifacts"
    out.mkdir()
    (out / "previous").write_text("kept")
    with pytest.raises(BuildFailed) as e:
        B.build(client, src, artifacts_dir=out)
    assert "\n" not in str(e.value)
    assert f"main.go:{bad_line + 1}:" in str(e.value) and "syntax error" in str(e.value)
    assert "syntax error" in e.value.output and e.value.exit_status == 1
    assert [p.name for p in out.iterdir()] == ["previous"], "a failed build leaves the artifacts alone"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []

    with pytest.raises(BuildFailed, match="syntax error"):
        I.build_image(client, src, registry)
    assert R.tags(registry, "worker") == [] or sha[:12] not in R.tags(registry, "worker")
    assert not any(sha[:12] in t for i in client.images.list() for t in i.tags)


def test_missing_dockerfile(client, registry, tmp_path):
    src = make_repo(tmp_path, "sensor", name="nodockerfile")
    (src / "Dockerfile").unlink()
    new_commit(src, "no Dockerfile")
    t = time.monotonic()
    with pytest.raises(DockerfileMissing) as e:
        I.build_image(client, src, registry)
    assert e.value.path == str(src / "Dockerfile")
    assert str(src / "Dockerfile") in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - t < 2, "checked before compiling anything"


def test_image_built_pushed_then_not_rebuilt(client, go_builder, registry, registry_server, tmp_path, capsys, monkeypatch):
    src = make_repo(tmp_path, "sensor")
    sha = git(src, "rev-parse", "HEAD")
    events: list[tuple[str, dict]] = []
    first = I.build_image(client, src, registry, progress=lambda phase, ev: events.append((phase, ev)))
    assert first.built and first.pushed
    assert first.ref == f"{registry}/sensor:{sha[:12]}"
    assert first.revision == sha and first.digest.startswith("sha256:")
    assert any(phase == "push" and ev.get("status") == "Pushed" for phase, ev in events)

    # what the registry holds, asked over its HTTP API with its CA (env CA bundles ignored)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert R.has_tag(registry, "sensor", sha[:12], ca=registry_server.ca)
    assert R.has_tag(registry, "sensor", sha[:12])  # CA found in /etc/docker/certs.d
    assert not R.has_tag(registry, "sensor", "nope")
    assert sha[:12] in R.tags(registry, "sensor")
    assert R.tags(registry, "no-such-repo") == []
    cfg = R.image_config(registry, "sensor", sha[:12])
    assert cfg["digest"] == first.image_id and cfg["manifest_digest"] == first.digest
    labels = cfg["labels"]
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.version"] == sha[:12]
    assert labels["org.opencontainers.image.source"] == str(src.parent)
    assert labels["org.opencontainers.image.created"].endswith("Z")
    with pytest.raises(RegistryError, match="TLS"):
        R.has_tag(registry, "sensor", sha[:12], ca="/etc/ssl/certs/ca-certificates.crt")

    # the same commit again: nothing built, nothing pushed
    t = time.monotonic()
    again = I.build_image(client, src, registry)
    seconds = time.monotonic() - t
    assert not again.built and not again.pushed
    assert again.image_id == first.image_id and again.digest == first.digest
    report(capsys, f"sensor image: build {first.build_seconds:.1f}s, push {first.push_seconds:.2f}s; "
                   f"same commit again {seconds:.2f}s")
    assert seconds < 3

    # the pushed image is real: drop it locally, pull it back, run it, it is healthy
    client.images.remove(first.ref, force=True)
    client.images.pull(first.ref)
    container = client.containers.run(first.ref, detach=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            container.reload()
            if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            time.sleep(0.5)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    finally:
        container.remove(force=True)


def test_dirty_source(client, go_builder, registry, tmp_path):
    src = make_repo(tmp_path, "sensor", name="dirty")
    sha = git(src, "rev-parse", "HEAD")
    (src / "main.go").write_text((src / "main.go").read_text().replace("sensor listening", "sensor (dirty) listening"))
    with pytest.raises(DirtySource, match="main.go"):
        I.build_image(client, src, registry)
    assert R.tags(registry, "dirty") == []
    result = I.build_image(client, src, registry, allow_dirty=True)
    assert result.built and result.pushed and result.version == f"{sha[:12]}-dirty"
    # dirty builds are never taken from the registry: the content may differ
    assert I.build_image(client, src, registry, allow_dirty=True).built


def test_registry_down_during_push(client, go_builder, registry, registry_server, tmp_path):
    src = make_repo(tmp_path, "sensor", name="offline")
    sha = git(src, "rev-parse", "HEAD")
    ref = f"{registry}/offline:{sha[:12]}"
    registry_server.pause()
    try:
        with pytest.raises(PushFailed) as e:
            I.build_image(client, src, registry)
    finally:
        registry_server.resume()
    assert "\n" not in str(e.value) and ref in str(e.value) and "connection refused" in str(e.value)
    # the local tag points at the complete image, labelled with its revision
    image = client.images.get(ref)
    assert image.id == e.value.image_id
    assert image.labels["org.opencontainers.image.revision"] == sha
    assert R.tags(registry, "offline") == []

    again = I.build_image(client, src, registry)
    assert again.pushed and not again.built and again.image_id == image.id
    assert R.has_tag(registry, "offline", sha[:12])


def test_concurrent_builds_of_one_commit(client, go_builder, registry, build_engine, tmp_path):
    src = make_repo(tmp_path, "worker", name="twice")
    sha = git(src, "rev-parse", "HEAD")
    results: list = []
    errors: list = []

    def run():
        c = build_engine.client()
        try:
            results.append(I.build_image(c, src, registry))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert sorted(r.built for r in results) == [False, True]
    assert len({r.image_id for r in results}) == 1
    assert R.tags(registry, "twice") == [sha[:12]]
    artifacts = Path(os.environ["DEPLOYER_CACHE_DIR"]) / "artifacts" / "twice"
    assert [p.name for p in artifacts.iterdir() if not p.name.endswith(".lock")] == [sha[:12]]
    assert [p.name for p in (artifacts / sha[:12]).iterdir()] == ["worker"]  # named by its Go module

    # plain builds into one artifacts dir at once: both complete, one intact result
    out = tmp_path / "shared-out"
    builds: list = []
    threads = [threading.Thread(target=lambda: builds.append(B.build(build_engine.client(), src, artifacts_dir=out)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(builds) == 2
    assert [p.name for p in out.iterdir()] == ["worker"] and os.access(out / "worker", os.X_OK)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".shared-out")] == [".shared-out.lock"]


def test_python_builder(client, go_builder, tmp_path, capsys):
    t = time.monotonic()
    _image(client, B.builder_image_ref("python"), lambda c: B.ensure_builder_image(c, "python"))
    image_seconds = time.monotonic() - t
    src = tmp_path / "hello"
    (src / "hello").mkdir(parents=True)
    (src / "hello" / "__init__.py").write_text("def main():\n    print('hello')\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "hello"\nversion = "0.1.0"\n'
    )
    result = B.build(client, src, artifacts_dir=tmp_path / "wheels")
    assert [p.name for p in result.binaries] == ["hello-0.1.0-py3-none-any.whl"]
    assert not (src / "build").exists(), "the source was not written to"
    report(capsys, f"python builder image {image_seconds:.1f}s, wheel build {result.seconds:.1f}s")

    (src / "hello" / "__init__.py").write_text("def main(:\n")
    (src / "pyproject.toml").write_text("[project\n")
    with pytest.raises(BuildFailed) as e:
        B.build(client, src, artifacts_dir=tmp_path / "wheels")
    assert "\n" not in str(e.value) and e.value.output
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == ["hello-0.1.0-py3-none-any.whl"]


def test_build_killed_half_way_leaves_nothing_tagged_or_pushed(client, go_builder, registry, build_engine, tmp_path):
    """SIGKILL the image builder while its builder container compiles: no tag, nothing pushed, next run works."""
    import signal
    import sys

    src = make_repo(tmp_path, "worker", name="killed")
    sha = git(src, "rev-parse", "HEAD")
    ref = f"{registry}/killed:{sha[:12]}"
    env = {**os.environ, "DEPLOYER_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "image", str(src), "--registry", registry,
                             "--docker", build_engine.url, "-q"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                c.image.tags and c.image.tags[0].startswith("deployer-builder-go")
                for c in client.containers.list(ignore_removed=True)):  # a build's containers come and go
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the orphaned builder container may still finish its compile; nothing may have been tagged or pushed
    time.sleep(1)
    assert [t for i in client.images.list() for t in i.tags if t.startswith(f"{registry}/killed")] == []
    assert R.tags(registry, "killed") == []
    for c in client.containers.list(all=True):  # let the orphan go before building again
        if c.image.tags and c.image.tags[0].startswith("deployer-builder-go"):
            c.remove(force=True)
    result = I.build_image(client, src, registry)
    assert result.built and result.pushed and result.ref == ref
    assert R.has_tag(registry, "killed", sha[:12])
