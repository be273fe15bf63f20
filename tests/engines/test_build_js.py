"""The JS builder (builders/js) end to end: npm ci + webpack, nginx image, release, faults.

Real everything, as in tests/engines/test_release.py: the private dockerd of
tests/support/build_engine.py builds and is the node, the TLS registry of
tests/support/registry.py is the datacenter's ``registry:``, the npm registry is
the real one (reached through this machine's CA bundle), and the sample app is
examples/apps/dashboard (webpack, its package-lock.json committed). The engine,
the registry and the base image are shared with the other build tests
(tests/support/build_fixtures.py); the JS builder image is made once per session
here (about 45 s).

The npm cache volume is this module's own (``cache_volume`` of the builds, and
``deployer-cache-js`` for the release), removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from pathlib import Path

import pytest

from deployer.build import builders as B
from deployer.errors import BuildFailed
from tests.support.repos import cli, git, make_repo, managed
from tests.support.build_fixtures import report, source_repo

pytest_plugins = ["tests.support.build_fixtures"]
# npm ci, the app image's nginx layer (apt, once per engine) and the first push of
# that image (the base's 180 MB layer) are network and disk bound: minutes, not
# seconds, on a loaded 2-core machine (about a minute each when it is idle).
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "apps" / "dashboard"
CACHE_VOLUME = "deployer-cache-js"
PORT = 18080

COMPOSE = """\
services:
  dashboard:
    image: {image}
    ports:
      - "{port}:80"
    healthcheck:
      interval: 500ms
"""


@pytest.fixture(scope="module")
def js_builder(client):
    """The JS builder image (FROM the session's base); the module's npm cache volumes are removed after."""
    from tests.support.build_fixtures import image

    image(client, B.base_image_ref(), B.ensure_base_image)
    t = time.monotonic()
    ref = image(client, B.builder_image_ref("js"), lambda c: B.ensure_builder_image(c, "js"))
    seconds = time.monotonic() - t
    existed = {v.name for v in client.volumes.list()}
    yield ref, seconds
    for v in client.volumes.list():
        if v.name.startswith(CACHE_VOLUME) and v.name not in existed:
            with contextlib.suppress(Exception):
                v.remove(force=True)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tagged(client, text: str) -> list[str]:
    return [t for i in client.images.list() for t in i.tags if text in t]


# --------------------------------------------------------------------------- the build


def test_js_build_cold_then_warm(client, js_builder, tmp_path, capsys):
    ref, image_seconds = js_builder
    assert client.images.get(ref).labels.get("deployer.builder") == "js"
    assert B.detect_builder(DASHBOARD) == "js"
    volume = f"{CACHE_VOLUME}-test-{tmp_path.name[-12:]}"
    out = tmp_path / "dist"
    cold = B.build(client, DASHBOARD, artifacts_dir=out, cache_volume=volume)
    names = sorted(p.name for p in cold.binaries)
    assert names[0] == "index.html" and len(names) == 2 and names[1].startswith("main.") and names[1].endswith(".js")
    bundle = (out / names[1]).read_text()
    assert "api/result" in bundle and "not reachable" in bundle  # our code, minified by webpack
    html = (out / "index.html").read_text()
    assert f"src={names[1]}" in html or f'src="{names[1]}"' in html
    assert "webpack 5." in cold.logs and "compiled successfully" in cold.logs
    assert "added 1" in cold.logs and cold.builder == "js" and cold.cache_volume == volume
    assert not (DASHBOARD / "node_modules").exists() and not (DASHBOARD / "dist").exists(), "the source is untouched"

    # npm's cache went to the volume: the tarballs of every locked package
    mount = Path(client.volumes.get(volume).attrs["Mountpoint"])
    cached = sum(1 for _ in (mount / "npm" / "_cacache" / "content-v2").rglob("*") if _.is_file())
    locked = sum(1 for k in json.loads((DASHBOARD / "package-lock.json").read_text())["packages"] if k)
    assert cached >= locked

    # warm: npm may not touch the network (npm_config_offline), so it installs from the volume or fails
    warm = B.build(client, DASHBOARD, artifacts_dir=out, cache_volume=volume, env={"npm_config_offline": "true"})
    assert sorted(p.name for p in warm.binaries) == names and (out / names[1]).read_text() == bundle  # reproducible
    report(capsys, f"js builder image {image_seconds:.1f}s, cold build {cold.seconds:.1f}s, "
                   f"warm build (offline) {warm.seconds:.1f}s (x{cold.seconds / warm.seconds:.1f}), "
                   f"{cached} cached tarballs")

    # the same offline build with an empty cache cannot install: the warm one did use the volume
    with pytest.raises(BuildFailed) as e:
        B.build(client, DASHBOARD, artifacts_dir=out, cache_volume=volume + "-empty",
                env={"npm_config_offline": "true"})
    assert "failed (exit 4): npm ci failed: " in str(e.value) and "ENOTCACHED" in e.value.output


# --------------------------------------------------------------------------- release: nginx serves the bundle


def test_release_serves_the_built_bundle(client, js_builder, build_engine, registry, node, tmp_path, capsys):
    src = source_repo(tmp_path / "src", "dashboard")
    sha = git(src, "rev-parse", "HEAD")
    ref = f"{registry}/dashboard:{sha[:12]}"
    infra, _ = make_repo(tmp_path / "infra", build_engine.url, COMPOSE.format(image=f"{registry}/dashboard:none",
                                                                               port=PORT), node=node,
                         extra_files={"datacenters/test/datacenter.yml": f"registry: {registry}\n"})
    t = time.monotonic()
    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url)
    seconds = time.monotonic() - t
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith(f"{ref}: built in ")
    assert "  build: running deployer-builder-js:" in r.stderr

    (container,) = [c for c in managed(client, node) if c.status == "running"]
    container.reload()
    assert container.attrs["Config"]["Image"] == ref
    assert container.attrs["State"]["Health"]["Status"] == "healthy"
    assert container.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "curl", "-fsS", "-o", "/dev/null",
                                                                "http://127.0.0.1/health"]
    image = client.images.get(ref)
    assert image.labels["deployer.builder"] == "js" and image.labels["org.opencontainers.image.revision"] == sha

    # over HTTP, from outside the node: the page webpack made and its bundle, byte for byte
    dist = B.cache_root() / "artifacts" / "dashboard" / sha[:12]
    built = {p.name: p.read_bytes() for p in dist.iterdir()}
    base = f"http://{build_engine.ns_ip}:{PORT}"
    status, page = get(f"{base}/")
    assert status == 200 and page == built["index.html"]
    (bundle,) = [name for name in built if name.endswith(".js")]
    assert f"src={bundle}".encode() in page
    status, body = get(f"{base}/{bundle}")
    assert status == 200 and body == built[bundle]
    assert get(f"{base}/health")[0] == 200
    assert get(f"{base}/no-such-file.js")[0] == 404
    assert get(f"{base}/api/result")[0] == 502  # no app beside it: the page shows its sample round
    report(capsys, f"release of the dashboard: {seconds:.1f}s")


# --------------------------------------------------------------------------- faults


def break_source(src: Path) -> str:
    index = src / "src" / "index.js"
    index.write_text(index.read_text().replace("const KEEP_ROWS = 10;", "const KEEP_ROWS = ;"))
    git(src, "commit", "-q", "-am", "dashboard: a syntax error")
    return git(src, "rev-parse", "HEAD")


def test_webpack_error_shows_the_compiler_and_tags_nothing(client, js_builder, build_engine, registry, node, tmp_path):
    src = source_repo(tmp_path / "src", "dashboard")
    sha = break_source(src)
    line_no = next(i for i, line in enumerate((src / "src" / "index.js").read_text().splitlines(), 1)
                   if "KEEP_ROWS = ;" in line)
    infra, _ = make_repo(tmp_path / "infra", build_engine.url, COMPOSE.format(image=f"{registry}/dashboard:none",
                                                                               port=PORT), node=node,
                         extra_files={"datacenters/test/datacenter.yml": f"registry: {registry}\n"})
    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url)
    assert r.exit_code == 1, r.output
    (line,) = errors(r.stderr)
    assert line.startswith(f"error: js build of {src} failed (exit 5): npm run build failed: "
                           f"ERROR in ./src/index.js {line_no}:18 Module parse failed: Unexpected token")
    stderr = r.stderr.splitlines()
    # webpack's own output (the code frame pointing at the token), before the one line
    frame = [s for s in stderr if s.startswith(f"> {line_no} | const KEEP_ROWS = ;")]
    assert frame and stderr.index(frame[0]) < stderr.index(line)
    assert any("compiled with 1 error" in s for s in stderr)
    assert tagged(client, sha[:12]) == [] and r.stdout == ""
    assert git(infra, "rev-list", "--count", "HEAD") == "1" and managed(client, node) == []


def test_lockfile_that_does_not_match(client, js_builder, tmp_path):
    src = source_repo(tmp_path / "src", "dashboard")
    package = json.loads((src / "package.json").read_text())
    package["dependencies"] = {"left-pad": "^1.3.0"}
    (src / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    git(src, "commit", "-q", "-am", "dashboard: a dependency without npm install")
    out = tmp_path / "out"
    with pytest.raises(BuildFailed) as e:
        B.build(client, src, artifacts_dir=out, cache_volume=f"{CACHE_VOLUME}-test-{tmp_path.name[-12:]}")
    line = e.value.one_line()
    assert line == (f"js build of {src} failed (exit 4): npm ci: package-lock.json does not match package.json: "
                    "Missing: left-pad@1.3.0 from lock file (run npm install, commit the lockfile)")
    assert "`npm ci` can only install packages when your package.json and package-lock.json" in e.value.output
    assert e.value.exit_status == 4 and not out.exists()

    # no lockfile at all: said before npm runs
    (src / "package-lock.json").unlink()
    with pytest.raises(BuildFailed, match=r"failed \(exit 2\): deployer-build: /src has no package-lock.json: "
                                          r"npm ci installs exactly what the lockfile says"):
        B.build(client, src, artifacts_dir=out)
