"""The Rails builder's pure parts: detection by Gemfile + config/application.rb, the sample's lockfile. No engine.

The builds themselves are in tests/engines/test_build_rails.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deployer.build import builders as B
from deployer.errors import UnknownBuilder

ROOT = Path(__file__).resolve().parents[2]
ODDS = ROOT / "examples" / "apps" / "odds"


def rails_app(d: Path) -> Path:
    (d / "config").mkdir(parents=True)
    (d / "Gemfile").write_text('gem "railties"\n')
    (d / "config" / "application.rb").write_text("")
    return d


def test_a_rails_app_needs_both_its_gemfile_and_config_application(tmp_path):
    app = rails_app(tmp_path / "app")
    assert B.detect_builder(app) == "rails"
    (app / "package.json").write_text("{}\n")  # a Rails app with JS tooling is still a Rails app
    assert B.detect_builder(app) == "rails"

    gems_only = tmp_path / "gems"
    gems_only.mkdir()
    (gems_only / "Gemfile").write_text('gem "rake"\n')  # a Ruby library, not a Rails app
    with pytest.raises(UnknownBuilder, match=r"none of .*Gemfile \+ config/application\.rb.*cannot tell") as e:
        B.detect_builder(gems_only)
    assert "\n" not in e.value.one_line()
    (gems_only / "config").mkdir()
    (gems_only / "config" / "application.rb").mkdir()  # a directory is not the file
    with pytest.raises(UnknownBuilder):
        B.detect_builder(gems_only)


def test_the_sample_is_a_rails_app_with_a_builder():
    assert B.detect_builder(ODDS) == "rails"
    assert B.load_app_config(ODDS).name == "odds"
    assert re.fullmatch(r"deployer-builder-rails:[0-9a-f]{12}", B.builder_image_ref("rails"))


def test_the_sample_lockfile_locks_every_gem_of_its_gemfile():
    """bundler runs frozen in the builder: a Gemfile edited without `bundle lock --local` fails the build."""
    gems = re.findall(r'^gem "([^"]+)"', (ODDS / "Gemfile").read_text(), re.M)
    lock = (ODDS / "Gemfile.lock").read_text()
    deps = re.findall(r"^  ([a-z0-9_-]+)", lock.split("DEPENDENCIES\n", 1)[1], re.M)
    assert gems and sorted(gems) == sorted(d for d in deps if d != "BUNDLED")
    assert "\nBUNDLED WITH\n   2.3.15\n" in lock  # Debian bookworm's bundler
    assert "remote:" not in lock  # resolved against the image's installed gems, no gem server


def test_the_builder_image_is_handed_only_to_a_dockerfile_that_declares_it(tmp_path):
    from deployer.build import image as I

    f = tmp_path / "Dockerfile"
    for text, declared in [
        ("ARG BUILDER\nFROM ${BUILDER}\n", True),
        ("  arg BUILDER=deployer-builder-rails:latest\nFROM ${BUILDER}\n", True),
        ("FROM scratch\nCOPY sensor /sensor\n", False),
        ("ARG BUILDERS\nFROM scratch\n", False),
        ("# ARG BUILDER\nFROM scratch\n", False),
    ]:
        f.write_text(text)
        assert I._declares_arg(f, "BUILDER") is declared, text
    assert I._declares_arg(ODDS / "Dockerfile", "BUILDER")
    assert not I._declares_arg(ROOT / "examples" / "apps" / "sensor" / "Dockerfile", "BUILDER")
