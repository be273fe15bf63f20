"""The Rails assets builder, end to end: release of examples/apps/odds to a node that serves it.

Real everything, as in tests/engines/test_release.py (whose engine, registry and
base image this module shares through tests/support/build_fixtures.py): the
Rails builder image (builders/rails: Ruby, Rails, sprockets, sassc and puma
from Debian's packages) precompiles the sample's assets, the image builder
packs the app with them into an image FROM that builder, ``deployer release``
pushes it and deploys it on the node, and the test reads the page and the
fingerprinted stylesheet it links over the published port. A broken
stylesheet fails the build with sass's own message, and tags nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from deployer.build import builders as B
from tests.support.repos import cli, git, make_repo, managed
from tests.support.build_fixtures import report, source_repo

pytest_plugins = ["tests.support.build_fixtures"]
# the first test makes the Rails builder image (apt: ruby, bundler, sassc; over 4 minutes at a load near 50),
# and pytest-timeout counts a fixture's set-up in the test that asks for it first, as test_build and test_build_js do
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
ODDS = ROOT / "examples" / "apps" / "odds"
SECRET = "a-test-secret-key-base-" + "0" * 40

COMPOSE = """\
services:
  odds:
    image: {image}
    environment:
      SECRET_KEY_BASE: {secret}
    ports: ["3000"]
    healthcheck:
      interval: 500ms
"""


@pytest.fixture(scope="module")
def rails_builder(client):
    """``(ref, timings)`` of the Rails builder image (and the base under it)."""
    from tests.support.build_fixtures import image

    timings = {}
    t = time.monotonic()
    image(client, B.base_image_ref(), B.ensure_base_image)
    timings["base"] = time.monotonic() - t
    t = time.monotonic()
    ref = image(client, B.builder_image_ref("rails"), lambda c: B.ensure_builder_image(c, "rails"))
    timings["rails builder"] = time.monotonic() - t
    return ref, timings


def infra_repo(parent: Path, docker_url: str, node: str, registry: str, image: str) -> Path:
    extra = {"datacenters/test/datacenter.yml": f"description: rails tests\nregistry: {registry}\n"}
    root, _ = make_repo(parent / "infra", docker_url, COMPOSE.format(image=image, secret=SECRET), node=node,
                        extra_files=extra)
    return root


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def get(url: str) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def test_release_serves_the_page_and_its_fingerprinted_assets(client, rails_builder, build_engine, registry, node,
                                                               tmp_path, capsys):
    ref_builder, timings = rails_builder
    assert client.images.get(ref_builder).labels.get("deployer.builder") == "rails"
    assert B.detect_builder(ODDS) == "rails"
    src = source_repo(tmp_path / "src", "odds")
    sha = git(src, "rev-parse", "HEAD")
    ref = f"{registry}/odds:{sha[:12]}"
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/odds:none")

    t = time.monotonic()
    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url)
    seconds = time.monotonic() - t
    assert r.exit_code == 0, r.output
    out = r.stdout.splitlines()
    assert out[0].startswith(f"{ref}: built in ") and "pushed in" in out[0]
    assert out[1].startswith(f"deploy test/{node}/odds: {registry}/odds:none -> {ref} [")
    (container,) = [c for c in managed(client, node) if c.status == "running"]
    container.reload()
    assert container.attrs["Config"]["Image"] == ref
    assert container.attrs["State"]["Health"]["Status"] == "healthy"
    image = client.images.get(ref)
    assert image.labels["org.opencontainers.image.revision"] == sha and image.labels["deployer.builder"] == "rails"
    # packed FROM the builder: its Ruby layer is shared, not installed again
    builder_layers = client.images.get(ref_builder).attrs["RootFS"]["Layers"]
    assert image.attrs["RootFS"]["Layers"][:len(builder_layers)] == builder_layers
    assert image.attrs["Config"]["Entrypoint"] == ["bundle", "exec", "puma", "-C", "config/puma.rb"]

    port = container.attrs["NetworkSettings"]["Ports"]["3000/tcp"][0]["HostPort"]
    base = f"http://{build_engine.ns_ip}:{port}"
    status, headers, body = get(base + "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "<h1>Tonight's odds</h1>" in page and 'data-odds="2.1"' in page
    (css,) = re.findall(r'href="(/assets/application-[0-9a-f]{64}\.css)"', page)
    (js,) = re.findall(r'src="(/assets/application-[0-9a-f]{64}\.js)"', page)
    # the names precompile wrote, as its manifest in the image says
    code, listing = container.exec_run(["sh", "-c", "cat public/assets/.sprockets-manifest-*.json"])
    assert code == 0, listing
    manifest = json.loads(listing)
    assert manifest["assets"] == {"application.css": css[len("/assets/"):], "application.js": js[len("/assets/"):]}

    status, headers, body = get(base + css)
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert "immutable" in headers["cache-control"]
    integrity = manifest["files"][css[len("/assets/"):]]["integrity"]
    assert integrity == "sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode()  # the very file
    text = body.decode()
    # compiled from SCSS: the nesting and the variables are gone, compressed to one line
    assert ".board th" in text and "#0b6e4f" in text and "$accent" not in text and "&" not in text
    status, _, body = get(base + js)
    assert status == 200 and b"Stake 10 pays" in body
    # the sources are not served: only what precompile wrote (compile = false)
    with pytest.raises(urllib.error.HTTPError) as e:
        get(base + "/assets/application.css")
    assert e.value.code == 404
    report(capsys, f"base image {timings['base']:.1f}s, rails builder image {timings['rails builder']:.1f}s, "
                   f"release (precompile, image, push, deploy healthy) {seconds:.1f}s, "
                   f"image {image.attrs['Size'] / 1e6:.0f} MB")


def test_a_stylesheet_error_shows_sass_output_and_tags_nothing(client, rails_builder, build_engine, registry, node,
                                                               tmp_path):
    src = source_repo(tmp_path / "src", "odds")
    scss = src / "app" / "assets" / "stylesheets" / "application.scss"
    scss.write_text(scss.read_text().replace("color: $accent; }", "color: $acent; }"))
    git(src, "commit", "-q", "-am", "odds: a typo in a variable")
    sha = git(src, "rev-parse", "HEAD")
    infra = infra_repo(tmp_path, build_engine.url, node, registry, f"{registry}/odds:none")

    r = cli(infra, "release", str(src), f"test/{node}", "--docker", build_engine.url)
    assert r.exit_code == 1, r.output
    (line,) = errors(r.stderr)
    assert line.startswith(f"error: rails build of {src} failed (exit 1): ")
    assert 'Undefined variable: "$acent"' in line, line
    lines = r.stderr.splitlines()
    sass = [s for s in lines if "application.scss" in s and not s.startswith("error:")]
    assert sass and lines.index(sass[0]) < lines.index(line), r.stderr  # sass's output, then the line
    assert not any(sha[:12] in t for i in client.images.list() for t in i.tags)
    assert git(infra, "rev-list", "--count", "HEAD") == "1" and managed(client, node) == []


def test_gems_outside_debian_and_a_stale_or_missing_lockfile_are_clear_errors(client, rails_builder, build_engine,
                                                                              tmp_path):
    """No gem server here: a gem Debian does not package, a Gemfile.lock that does not match, none at all."""
    src = source_repo(tmp_path / "src", "odds")
    gemfile, lock = src / "Gemfile", src / "Gemfile.lock"
    gemfile.write_text(gemfile.read_text() + 'gem "devise"\n')
    r = cli(tmp_path, "build", str(src), "--docker", build_engine.url)
    assert r.exit_code == 1, r.output
    assert errors(r.stderr) == [f"error: rails build of {src} failed (exit 4): deployer-build: Gemfile.lock does not "
                                "match the Gemfile (changed: devise): resolve it again in this image (bundle lock "
                                "--local) and commit it"]
    assert "You have added to the Gemfile:" in r.stderr  # bundler's own words follow

    # locked too, as if resolved where devise is installed: this image has no such gem
    lock.write_text(lock.read_text().replace("    builder (3.2.4)\n", "    builder (3.2.4)\n    devise (4.9.3)\n")
                    .replace("DEPENDENCIES\n", "DEPENDENCIES\n  devise\n"))
    r = cli(tmp_path, "build", str(src), "--docker", build_engine.url)
    assert r.exit_code == 1, r.output
    assert errors(r.stderr) == [f"error: rails build of {src} failed (exit 4): deployer-build: Could not find "
                                "devise-4.9.3 in any of the sources: only gems from this image's Debian packages can "
                                "be used (gem list shows them)"]

    lock.unlink()
    r = cli(tmp_path, "build", str(src), "--docker", build_engine.url)
    assert r.exit_code == 1, r.output
    assert errors(r.stderr) == [f"error: rails build of {src} failed (exit 2): deployer-build: /src has no "
                                "Gemfile.lock: commit one (resolve it in this image: bundle lock --local)"]
