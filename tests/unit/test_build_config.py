"""The build layer's pure parts: detection, deployer.yml, image references, versions. No Docker engine.

Moved here from tests/engines/test_build.py (detect_builder, source versions,
registry URLs) and extended; the builds themselves stay in tests/engines.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployer.build import builders as B
from deployer.build import image as I
from deployer.build import registry as R
from deployer.errors import ConfigError, DirtySource, RegistryError, SourceError, UnknownBuilder
from tests.support.build_repos import git, make_repo, new_commit

ROOT = Path(__file__).resolve().parents[2]


def test_detect_builder(tmp_path):
    cases = {"go.mod": "go", "pyproject.toml": "python", "setup.cfg": "python", "package.json": "js"}
    for marker, tech in cases.items():
        d = tmp_path / marker.replace(".", "_")
        d.mkdir()
        (d / marker).write_text('{"scripts": {"build": "webpack"}}' if marker == "package.json" else "")
        assert B.detect_builder(d) == tech
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnknownBuilder, match="cannot tell which builder"):
        B.detect_builder(empty)
    (empty / "deployer.yml").write_text("builder: python\nname: svc\n")
    assert B.detect_builder(empty) == "python"
    assert B.load_app_config(empty).name == "svc"
    (empty / "deployer.yml").write_text("name: Not_Valid\n")
    with pytest.raises(ConfigError, match="name"):
        B.load_app_config(empty)
    (empty / "deployer.yml").write_text("nmae: x\n")
    with pytest.raises(ConfigError, match="nmae"):
        B.load_app_config(empty)
    with pytest.raises(SourceError, match="not a directory"):
        B.detect_builder(tmp_path / "nope")
    with pytest.raises(UnknownBuilder, match="no builder for 'cobol'"):
        B.builder_image_ref("cobol")


def test_source_version(tmp_path):
    src = make_repo(tmp_path)
    sha = git(src, "rev-parse", "HEAD")
    assert I.source_version(src) == sha[:12]
    git(src, "tag", "v1.2.0")
    assert I.source_version(src) == "v1.2.0"
    new_commit(src, "next")
    git(src, "tag", "release/7")  # not a valid docker tag as it stands
    assert I.source_version(src) == "release-7"

    (src / "main.go").write_text((src / "main.go").read_text() + "\n// edit\n")
    with pytest.raises(DirtySource, match="uncommitted changes") as e:
        I.source_version(src)
    assert "\n" not in str(e.value)
    assert I.source_version(src, allow_dirty=True).endswith("-dirty")
    git(src, "checkout", "--", "main.go")
    (src / "extra.go").write_text("package main\n")  # untracked files are compiled too
    with pytest.raises(DirtySource):
        I.source_version(src)
    (src / "extra.go").unlink()
    # a change outside the app's directory does not make the app dirty
    (src.parent / "README").write_text("other\n")
    assert not I.source_info(src).dirty

    loose = tmp_path / "loose"
    loose.mkdir()
    with pytest.raises(SourceError, match="not inside a git repository"):
        I.source_version(loose)


def test_registry_url_parsing():
    assert R.split_registry_url("10.0.0.1:5000") == ("https", "10.0.0.1:5000")
    assert R.split_registry_url("https://r.example:443/") == ("https", "r.example:443")
    with pytest.raises(RegistryError):
        R.split_registry_url("ftp://x")
    assert I.image_ref("https://10.0.0.1:5000", "sensor", "abc") == "10.0.0.1:5000/sensor:abc"


# --------------------------------------------------------------------------- deployer.yml


def test_app_config_defaults_to_the_directory(tmp_path):
    app = tmp_path / "My App.v2"
    app.mkdir()
    cfg = B.load_app_config(app)
    assert cfg.name == "my-app.v2" and cfg.builder is None
    assert cfg.dockerfile == app / "Dockerfile" and cfg.path == app / "deployer.yml"
    (app / "deployer.yml").write_text("# nothing set\n")
    assert B.load_app_config(app).name == "my-app.v2"
    (app / "deployer.yml").write_text("name: team/sensor\ndockerfile: docker/Dockerfile.prod\nbuilder: go\n")
    cfg = B.load_app_config(app)
    assert (cfg.name, cfg.builder, cfg.dockerfile) == ("team/sensor", "go", app / "docker" / "Dockerfile.prod")
    odd = tmp_path / "___"
    odd.mkdir()
    with pytest.raises(SourceError, match="cannot make an image name from the directory name; set 'name'"):
        B.load_app_config(odd)


@pytest.mark.parametrize("text, where, match", [
    ("name: x\nbuilder: [unclosed\n", True, "not valid YAML"),
    ("- a\n- b\n", None, "must be a mapping"),
    ("name: 3\n", None, "must be a string"),
    ("dockerfile: [a]\n", None, "must be a string"),
])
def test_app_config_errors_name_file_and_line(tmp_path, text, where, match):
    (tmp_path / "deployer.yml").write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        B.load_app_config(tmp_path)
    assert str(tmp_path / "deployer.yml") in e.value.one_line() and "\n" not in e.value.one_line()
    if where:
        assert e.value.line is not None and f"deployer.yml:{e.value.line}: " in e.value.one_line()


def test_detect_builder_prefers_deployer_yml_then_the_first_marker(tmp_path):
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "package.json").write_text('{"scripts": {"build": "webpack"}}\n')
    assert B.detect_builder(tmp_path) == "go"  # go.mod comes first in MARKERS
    (tmp_path / "deployer.yml").write_text("builder: js\n")
    assert B.detect_builder(tmp_path) == "js"
    loose = tmp_path / "file"
    loose.write_text("")
    with pytest.raises(SourceError, match="not a directory"):
        B.load_app_config(loose)


def test_detect_js_needs_a_build_script(tmp_path):
    """A package.json is the js builder's marker only with a "build" script (what the builder runs)."""
    (tmp_path / "package.json").write_text('{"name": "x", "scripts": {"test": "jest"}}\n')
    with pytest.raises(UnknownBuilder) as e:
        B.detect_builder(tmp_path)
    line = e.value.one_line()
    assert 'package.json has no "build" script (the js builder runs `npm run build`' in line
    assert line.endswith("cannot tell which builder to use (set 'builder' in deployer.yml)") and "\n" not in line
    (tmp_path / "setup.py").write_text("")  # a later marker still wins
    assert B.detect_builder(tmp_path) == "python"
    (tmp_path / "setup.py").unlink()
    (tmp_path / "package.json").write_text('{"scripts": {"build": "webpack --mode production"}}')
    assert B.detect_builder(tmp_path) == "js"
    assert B.detect_builder(ROOT / "examples" / "apps" / "dashboard") == "js"

    for text, match, line_no in [('{"scripts": {"build": }', "not valid JSON: Expecting value", 1),
                                 ('[1, 2]', "must be a JSON object", None),
                                 ('{\n "scripts": ["webpack"]}', "scripts: must be an object", None)]:
        (tmp_path / "package.json").write_text(text)
        with pytest.raises(ConfigError, match=match) as err:
            B.detect_builder(tmp_path)
        assert err.value.line == line_no and str(tmp_path / "package.json") in err.value.one_line()


# --------------------------------------------------------------------------- images: refs, content addresses


def test_builder_images_are_content_addressed(tmp_path, monkeypatch):
    copy = tmp_path / "builders"
    shutil.copytree(ROOT / "builders", copy)
    monkeypatch.setenv("DEPLOYER_BUILDERS_DIR", str(copy))
    assert B.builders_dir() == copy
    found = B.available_builders()
    assert found == sorted(found) and {"go", "js", "python", "rails"} <= set(found)
    base, go, py = B.base_image_ref(), B.builder_image_ref("go"), B.builder_image_ref("python")
    assert base.startswith("deployer-base:bookworm-") and len(base.rsplit("-", 1)[1]) == 12
    assert go.startswith("deployer-builder-go:") and py.startswith("deployer-builder-python:")
    assert (B.base_image_ref(), B.builder_image_ref("go")) == (base, go)  # stable

    entry = copy / "go" / "entrypoint.sh"
    entry.write_text(entry.read_text() + "# edited\n")
    assert B.builder_image_ref("go") != go and B.builder_image_ref("python") == py and B.base_image_ref() == base
    edited = B.builder_image_ref("go")
    entry.chmod(0o644)  # the exec bit counts, as in git
    assert B.builder_image_ref("go") != edited

    script = copy / "base" / "make-base.sh"
    script.write_text(script.read_text() + "# edited\n")
    assert B.base_image_ref() != base
    assert B.builder_image_ref("python") != py  # a new base makes new builders

    with pytest.raises(UnknownBuilder, match=r"no builder for 'node': .*/node/Dockerfile does not exist "
                                             rf"\(builders: {', '.join(found)}\)"):
        B.builder_image_ref("node")
    monkeypatch.setenv("DEPLOYER_BUILDERS_DIR", str(tmp_path / "none"))
    assert B.available_builders() == []


def test_image_ref_uses_the_registry_host():
    assert I.image_ref("10.0.0.1:5000", "sensor", "v1") == "10.0.0.1:5000/sensor:v1"
    assert I.image_ref("http://r.local:5000/", "team/app", "abc") == "r.local:5000/team/app:abc"
    with pytest.raises(RegistryError):
        I.image_ref("ftp://x", "a", "b")


def test_cache_root_and_host_ca(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_CACHE_DIR", str(tmp_path / "c"))
    assert B.cache_root() == tmp_path / "c"
    monkeypatch.delenv("DEPLOYER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert B.cache_root() == tmp_path / "xdg" / "deployer"
    assert B.lock_path("image", "a", "b") == B.lock_path("image", "a", "b") != B.lock_path("image", "a", "c")
    assert B.lock_path("image", "a").parent == tmp_path / "xdg" / "deployer" / "locks"

    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("DEPLOYER_BUILDER_CA", str(bundle))
    assert B.host_ca_bundle() == str(bundle)
    monkeypatch.setenv("DEPLOYER_BUILDER_CA", "none")
    assert B.host_ca_bundle() is None


def test_first_error_skips_headers_and_blank_lines():
    assert B.first_error("# example.com/x\n\n./main.go:3:1:   syntax error\nmore\n") == "./main.go:3:1: syntax error"
    assert B.first_error("") == "no error output"
    assert B.first_error("x" * 300).endswith("...") and len(B.first_error("x" * 300)) == 200


# --------------------------------------------------------------------------- versions


def test_source_info_names_the_revision_tag_and_origin(tmp_path):
    src = make_repo(tmp_path)
    sha = git(src, "rev-parse", "HEAD")
    info = I.source_info(src)
    assert (info.revision, info.version, info.tag, info.dirty, info.changes) == (sha, sha[:12], None, False, [])
    assert info.path == src.resolve() and info.url == str(src.parent)
    git(src, "remote", "add", "origin", "https://git.example/sensor.git")
    git(src, "tag", "v1.0.0")
    git(src, "tag", "v1.10.0")
    git(src, "tag", "v1.9.0")
    info = I.source_info(src)
    assert info.url == "https://git.example/sensor.git"
    assert info.tag == "v1.10.0" and info.version == "v1.10.0"  # the highest version
    git(src, "tag", "-d", "v1.0.0", "v1.9.0", "v1.10.0")
    git(src, "tag", "v2+build.1")
    assert I.source_version(src) == "v2-build.1"  # what a docker tag can hold
    (src / "new.txt").write_text("x\n")
    (src / "other.txt").write_text("y\n")
    with pytest.raises(DirtySource, match=r"uncommitted changes \(sensor/new.txt and 1 more\); commit them"):
        I.source_version(src)
    assert I.source_info(src).version == "v2-build.1-dirty"


def test_global_build_args_are_the_args_before_the_first_from():
    """The image builder passes BASE (the local Debian base) to a Dockerfile that declares it before FROM."""
    assert I.global_build_args("FROM scratch\nCOPY sensor /sensor\n") == []
    text = ("# syntax comment\n\narg BASE=deployer-base:bookworm\nARG A \\\n  B=2\n"
            "FROM ${BASE}\nARG LATER\nRUN true\n")
    assert I.global_build_args(text) == ["BASE", "A", "B"]
    assert I.global_build_args("FROM x\nARG BASE\n") == []  # a stage's ARG is not FROM's
    dashboard = (ROOT / "examples" / "apps" / "dashboard" / "Dockerfile").read_text()
    assert I.global_build_args(dashboard) == ["BASE"]
