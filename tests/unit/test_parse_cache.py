"""The parse cache: found again by content (git blob id), never by time; never holds a file with problems,
secrets or values from the deployer's environment; a torn, foreign or other-code cache is not used."""

from __future__ import annotations

import marshal
import os
import subprocess
import threading
from pathlib import Path

import pytest

from deployer.config import loader, parse_cache
from deployer.config.compose_spec import container_spec
from deployer.errors import ValidationFailed
from deployer.model import Service

NODE = "datacenters/dc/n1"
COMPOSE = f"{NODE}/docker-compose.yml"
WEB = "services:\n  web:\n    image: registry.example.com/web:{v}\n    environment:\n      MODE: fast\n"


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "infra"
    (root / NODE).mkdir(parents=True)
    (root / NODE / "node.yml").write_text("docker: unix:///nonexistent.sock\n")
    (root / COMPOSE).write_text(WEB.format(v=1))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def cache_file(root: Path) -> Path:
    return root / ".git" / parse_cache.CACHE_FILE


def entries(root: Path) -> dict:
    return marshal.loads(cache_file(root).read_bytes())[2]


def counting_parser(monkeypatch) -> list[str]:
    parsed: list[str] = []
    real = loader.load_fast

    def load_fast(text):
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(loader, "load_fast", load_fast)
    return parsed


def test_the_key_is_the_git_blob_id_of_the_text(tmp_path):
    text = "services: {}\n# é\n"
    (tmp_path / "f").write_text(text, encoding="utf-8")
    done = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True, check=True)
    assert parse_cache.blob_id(text) == done.stdout.strip()


def test_a_second_load_parses_nothing_and_gives_the_same_model_and_specs(root, monkeypatch):
    first = loader.load(root)
    assert cache_file(root).is_file()
    parsed = counting_parser(monkeypatch)
    again = loader.load(root)
    assert parsed == []
    svc1, svc2 = first.node("dc", "n1").services["web"], again.node("dc", "n1").services["web"]
    assert (svc1.config, svc1.image, svc1.location) == (svc2.config, svc2.image, svc2.location)
    kept = container_spec(again.node("dc", "n1"), svc2, root)
    fresh = container_spec(again.node("dc", "n1"), Service("dc", "n1", "web", svc2.image, svc2.config,
                                                           svc2.location), root)
    assert kept == fresh and kept.config_hash() == fresh.config_hash() and kept.all_labels() == fresh.all_labels()
    assert "_kept_hash" in kept.__dict__ and "_kept_hash" not in fresh.__dict__
    # used once: a second spec of the same service is built from the config
    assert "_kept_hash" not in container_spec(again.node("dc", "n1"), svc2, root).__dict__


def test_a_changed_file_is_read_again_whatever_its_time_stamp(root, monkeypatch):
    loader.load(root)
    stat = (root / COMPOSE).stat()
    (root / COMPOSE).write_text(WEB.format(v=2))
    os.utime(root / COMPOSE, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time stamps, other content
    parsed = counting_parser(monkeypatch)
    assert loader.load(root).node("dc", "n1").services["web"].image == "registry.example.com/web:2"
    assert len(parsed) == 1
    assert not any(parse_cache.blob_id(WEB.format(v=1)) in k for k in entries(root))  # the old entry is gone


def test_a_file_with_problems_is_never_kept_and_its_errors_keep_their_lines(root):
    loader.load(root)
    (root / COMPOSE).write_text(WEB.format(v=1) + "    bogus: 1\n")
    for _ in range(2):
        with pytest.raises(ValidationFailed, match=r"docker-compose.yml:6: services.web.bogus"):
            loader.load(root)
    assert not any(k.startswith("compose:") for k in entries(root))


def test_the_variables_a_node_is_interpolated_with_are_in_the_key(root, monkeypatch):
    (root / COMPOSE).write_text("services:\n  web:\n    image: web:${TAG}\n    environment: [MODE]\n")
    (root / NODE / ".env").write_text("TAG=1\nMODE=one\n")
    loader.load(root)
    node = loader.load(root).node("dc", "n1")
    assert node.services["web"].cached_spec is not None
    assert container_spec(node, node.services["web"], root).create["environment"] == ["MODE=one"]
    (root / NODE / ".env").write_text("TAG=2\nMODE=two\n")  # the compose file's blob is the same
    monkeypatch.setenv("MODE", "from the shell")  # never read
    node = loader.load(root).node("dc", "n1")
    assert node.services["web"].image == "web:2"
    assert container_spec(node, node.services["web"], root).create["environment"] == ["MODE=two"]


def test_a_compose_file_that_extends_another_is_kept_with_that_files_content(root, monkeypatch):
    (root / "common").mkdir()
    (root / "common/base.yml").write_text("services:\n  base:\n    init: true\n")
    (root / COMPOSE).write_text("services:\n  web:\n    extends: {file: ../../../common/base.yml, service: base}\n"
                                "    image: web:1\n")
    loader.load(root)
    (entry,) = [v for k, v in entries(root).items() if k.startswith("compose:")]
    assert entry[-1] == [["common/base.yml", parse_cache.blob_id("services:\n  base:\n    init: true\n")]]
    parsed = counting_parser(monkeypatch)
    assert loader.load(root).node("dc", "n1").services["web"].config["init"] is True
    assert parsed == []
    (root / "common/base.yml").write_text("services:\n  base:\n    init: false\n")  # the node's file unchanged
    assert loader.load(root).node("dc", "n1").services["web"].config["init"] is False


def test_a_compose_file_naming_secret_files_is_not_kept(root, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("s3cret")
    (root / "datacenters/dc/datacenter.yml").write_text(f"secrets_dir: {secrets}\n")
    (root / COMPOSE).write_text("services:\n  web:\n    image: web:1\n    secrets: [token]\n"
                                f"secrets:\n  token:\n    file: {secrets}/token\n")
    loader.load(root)
    assert not any(k.startswith("compose:") for k in entries(root))
    (secrets / "token").unlink()
    with pytest.raises(ValidationFailed, match="token"):
        loader.load(root)


def test_the_node_is_in_the_key_of_a_compose_entry(root):
    (root / "datacenters/dc/n2").mkdir()
    (root / "datacenters/dc/n2/node.yml").write_text("docker: unix:///nonexistent.sock\n")
    (root / "datacenters/dc/n2/docker-compose.yml").write_text(WEB.format(v=1))  # the same text
    loader.load(root)
    infra = loader.load(root)
    names = {n.name: container_spec(n, n.services["web"], root).name for n in infra.nodes()}
    assert names == {"n1": "n1-web", "n2": "n2-web"}


@pytest.mark.parametrize("damage", [b"", b"\x00garbage", None])
def test_a_torn_foreign_or_other_code_cache_is_not_used(root, damage, monkeypatch):
    loader.load(root)
    if damage is None:
        monkeypatch.setattr(parse_cache, "_fingerprint", "another version of the deployer")
    else:
        cache_file(root).write_bytes(damage)
    parsed = counting_parser(monkeypatch)
    assert loader.load(root).node("dc", "n1").services["web"].image == "registry.example.com/web:1"
    assert len(parsed) == 2  # node.yml and the compose file, read again
    assert marshal.loads(cache_file(root).read_bytes())[1] == parse_cache.code_fingerprint()


def test_without_a_git_directory_nothing_is_written(tmp_path):
    root = tmp_path / "plain"
    (root / NODE).mkdir(parents=True)
    (root / NODE / "node.yml").write_text("docker: unix:///nonexistent.sock\n")
    loader.load(root)
    assert not (root / ".git").exists()


def test_concurrent_writers_never_leave_a_torn_file(root):
    loader.load(root)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n):
        while not stop.is_set():
            cache = parse_cache.ParseCache.for_root(root)
            cache.put(f"x:{n}", ["value"] * 2000)
            cache.save(prune=False)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            try:
                fmt, _fp, got = marshal.loads(cache_file(root).read_bytes())
                assert fmt == parse_cache.FORMAT and isinstance(got, dict)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert not [p for p in cache_file(root).parent.iterdir() if p.name.startswith(".parse-cache.")]


@pytest.mark.parametrize("doc, kept", [
    ({"services": {"web": {"image": "a", "volumes": ["/srv:/srv", "data:/data"]}}}, True),
    ({"services": {"web": {"image": "a", "volumes": ["./site:/www:ro"]}}}, False),
    ({"services": {"web": {"image": "a", "volumes": [{"type": "bind", "source": "site", "target": "/www"}]}}}, False),
    ({"services": {"web": {"image": "a", "env_file": "web.env"}}}, False),
    ({"services": {"web": {"image": "a", "configs": ["nginx"]}}, "configs": {"nginx": {"file": "n.conf"}}}, False),
    ({"services": {"web": {"image": "a", "secrets": ["t"]}}, "secrets": {"t": {"file": "/s/t"}}}, False),
])
def test_only_a_compose_file_that_reads_no_other_file_is_kept(doc, kept):
    assert loader._self_contained(doc) is kept


def test_the_profiles_of_a_node_are_in_the_key(root):
    (root / COMPOSE).write_text("services:\n  web:\n    image: web:1\n  debug:\n    image: dbg:1\n"
                                "    profiles: [debug]\n")
    assert sorted(loader.load(root).node("dc", "n1").services) == ["web"]
    (root / NODE / "node.yml").write_text("docker: unix:///nonexistent.sock\nprofiles: [debug]\n")
    assert sorted(loader.load(root).node("dc", "n1").services) == ["debug", "web"]


def test_equal_strings_are_one_object_in_the_file_and_what_was_put_is_a_copy(root):
    cache = parse_cache.ParseCache.for_root(root)
    value = [{"image": "web:1", "labels": {"team": "core"}}, ["web:1", "core", ("web:1",)]]
    other = [{"image": "web:1", "labels": {"team": "core"}}]
    cache.put("a", value)
    cache.put("b", other)
    value[0]["image"] = "changed after put"  # the entry is the value as it was put
    cache.save(prune=False)
    kept = entries(root)
    assert kept["a"] == [{"image": "web:1", "labels": {"team": "core"}}, ["web:1", "core", ("web:1",)]]
    a, b = kept["a"], kept["b"]
    # read back, each text is one object wherever it occurs (marshal wrote the others as references to it)
    assert a[0]["image"] is a[1][0] is a[1][2][0] is b[0]["image"]
    assert a[0]["labels"]["team"] is b[0]["labels"]["team"] is a[1][1]
    assert a[0] is not b[0] and a[0]["labels"] is not b[0]["labels"]  # containers stay apart (they are mutable)


def test_a_container_name_used_twice_is_reported_on_every_load_and_never_kept(root):
    (root / COMPOSE).write_text("services:\n  web:\n    image: web:1\n    container_name: one\n"
                                "  api:\n    image: api:1\n    container_name: one\n")
    for _ in range(2):
        with pytest.raises(ValidationFailed, match=r"docker-compose.yml:\d+: services.api.container_name: container "
                                                   r"name 'one' is also used by service 'web'"):
            loader.load(root)
    assert not any(k.startswith("compose:") for k in entries(root))


def test_a_kept_spec_is_made_by_the_load_and_handed_out_once(root):
    loader.load(root)
    node = loader.load(root).node("dc", "n1")
    kept = node.services["web"].cached_spec
    assert kept is not None and kept.__dict__["_kept_hash"] == kept.config_hash()
    assert container_spec(node, node.services["web"], root) is kept
    assert node.services["web"].cached_spec is None


def counting_dotenv(monkeypatch) -> list[str]:
    parsed: list[str] = []
    real = loader.parse_dotenv

    def parse_dotenv(text, rel, outer=None):
        parsed.append(text)
        return real(text, rel, outer)

    monkeypatch.setattr(loader, "parse_dotenv", parse_dotenv)
    return parsed


def test_a_dotenv_file_is_kept_by_its_content_and_the_datacenter_variables_it_reads(root, monkeypatch):
    (root / COMPOSE).write_text("services:\n  web:\n    image: registry.example.com/web:${V}\n")
    (root / NODE / ".env").write_text("V=${BASE}.1\n")
    dc_yml = root / "datacenters/dc/datacenter.yml"
    dc_yml.write_text("variables:\n  BASE: '7'\n")
    image = lambda infra: infra.node("dc", "n1").services["web"].image  # noqa: E731
    assert image(loader.load(root)) == "registry.example.com/web:7.1"
    parsed = counting_dotenv(monkeypatch)
    assert image(loader.load(root)) == "registry.example.com/web:7.1" and parsed == []  # found by its content
    dc_yml.write_text("variables:\n  BASE: '8'\n")  # the same .env, other variables to interpolate from
    assert image(loader.load(root)) == "registry.example.com/web:8.1" and parsed == ["V=${BASE}.1\n"]
    (root / NODE / ".env").write_text("V=${BASE}.2\n")  # another text
    assert image(loader.load(root)) == "registry.example.com/web:8.2" and len(parsed) == 2
    assert image(loader.load(root)) == "registry.example.com/web:8.2" and len(parsed) == 2


def test_a_dotenv_file_with_problems_is_never_kept_and_reports_its_line_on_every_load(root, monkeypatch):
    (root / NODE / ".env").write_text("OK=1\nCOMPOSE_PROJECT_NAME=x\n")
    parsed = counting_dotenv(monkeypatch)
    for attempt in (1, 2):
        with pytest.raises(ValidationFailed, match=r"datacenters/dc/n1/\.env:2: COMPOSE_PROJECT_NAME"):
            loader.load(root)
        assert len(parsed) == attempt
    assert not any(k.startswith("dotenv:") for k in entries(root))
