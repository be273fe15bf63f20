"""config.compose_files, compose_files_check and repo_files: what a service ships from the repository.

Pure: files in temporary repositories, no engine. The engine side is
tests/engines/test_shipped_files.py; ``engine.ship``'s archives are checked here.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from deployer.config.compose_files import shipped_files
from deployer.config.repo_files import MAX_FILE_BYTES, MAX_SERVICE_BYTES
from deployer.engine.ship import bundle_archive, bundle_dirs
from deployer.engine.state import ContainerState
from deployer.labels import LABEL_CONFIG, LABEL_DC, LABEL_NODE
from deployer.spec import node_store
from tests.support.compose import COMPOSE, NODE_DIR, api_client, make_node, node_repo, problems, spec_of


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = node_repo(tmp_path)
    d = root / NODE_DIR
    (d / "nginx.conf").write_text("worker_processes 1;\n")
    (d / "conf.d" / "sub").mkdir(parents=True)
    (d / "conf.d" / "a.conf").write_text("a\n")
    (d / "conf.d" / "sub" / "b.conf").write_text("b\n")
    (d / "app.env").write_text("A=1\nB=from file\n")
    return root


COMPOSE_TEXT = """
    services:
      web:
        image: nginx
        env_file: [./app.env, {path: ./absent.env, required: false}]
        environment: {B: from environment}
        configs:
          - site
          - {source: inline, target: /etc/inline.txt, mode: 0400, uid: "101", gid: 102}
        volumes:
          - ./nginx.conf:/etc/nginx/nginx.conf:ro
          - {type: bind, source: ./conf.d, target: /etc/nginx/conf.d, read_only: true}
          - data:/data
    volumes:
      data: {}
    configs:
      site: {file: ./nginx.conf}
      inline: {content: "hello\\n"}
"""


def test_the_spec_mounts_each_shipped_file_read_only_from_its_bundle(repo):
    spec = spec_of(COMPOSE_TEXT, "web", repo)
    store = node_store("files", "dc1", "n1")
    mounts = {m["Target"]: m for m in spec.host["mounts"]}
    assert sorted(mounts) == ["/etc/inline.txt", "/etc/nginx/conf.d", "/etc/nginx/nginx.conf", "/site"]
    assert all(m["Type"] == "bind" and m["ReadOnly"] is True and m["Source"].startswith(store + "/")
               for m in mounts.values())
    assert mounts["/etc/nginx/nginx.conf"]["Source"].endswith("/nginx.conf")  # a file of its bundle
    assert spec.host["binds"] == ["n1_data:/data:rw"]  # the named volume stays a bind
    by_dir = {b.path: b for b in spec.bundles}
    tree = by_dir[mounts["/etc/nginx/conf.d"]["Source"]]
    assert [(e.rel, e.data) for e in tree.entries] == [("a.conf", b"a\n"), ("sub", None), ("sub/b.conf", b"b\n")]
    inline = by_dir[mounts["/etc/inline.txt"]["Source"].rsplit("/", 1)[0]]
    assert [(e.rel, e.mode, e.uid, e.gid, e.data) for e in inline.entries] == [
        ("inline.txt", 0o400, 101, 102, b"hello\n")]
    # the same file for two targets is the same content, but two bundles (their file names differ)
    assert set(spec.files) == {"/etc/inline.txt", "/etc/nginx/conf.d", "/etc/nginx/nginx.conf", "/site"}
    assert spec.files["/site"].startswith(f"config site ({NODE_DIR}/nginx.conf) ")
    # env_file under environment, absent optional file skipped
    assert spec.create["environment"] == ["A=1", "B=from environment"]
    api_client().create_host_config(**spec.host)  # docker-py accepts the mounts


def test_a_changed_file_changes_the_hash_and_names_the_target(repo):
    before = spec_of(COMPOSE_TEXT, "web", repo)
    (repo / NODE_DIR / "conf.d" / "sub" / "b.conf").write_text("b changed\n")
    after = spec_of(COMPOSE_TEXT, "web", repo)
    assert before.config_hash() != after.config_hash()
    old, new = json.loads(before.config_json()), json.loads(after.config_json())
    changed = [k for k in new["files"] if new["files"][k] != old["files"][k]]
    assert changed == ["/etc/nginx/conf.d"]
    # the same content again: the same bundle, the same hash (content-addressed)
    (repo / NODE_DIR / "conf.d" / "sub" / "b.conf").write_text("b\n")
    assert spec_of(COMPOSE_TEXT, "web", repo).config_hash() == before.config_hash()


def test_a_changed_env_file_changes_the_hash(repo):
    before = spec_of(COMPOSE_TEXT, "web", repo).config_hash()
    (repo / NODE_DIR / "app.env").write_text("A=2\nB=from file\n")
    assert spec_of(COMPOSE_TEXT, "web", repo).config_hash() != before


def test_the_bundle_digest_is_per_node(repo):
    text = "services:\n  web:\n    image: nginx\n    volumes: ['./nginx.conf:/n.conf:ro']\n"
    a = make_node(text, name="n1")
    b = make_node(text, name="n2")
    da = shipped_files(a, "web", a.services["web"].config, repo).bundles[0]
    db = shipped_files(b, "web", b.services["web"].config, repo).bundles[0]
    assert da.digest != db.digest and da.path.startswith(node_store("files", "dc1", "n1"))


def test_secrets_under_run_secrets_form_one_bundle_mounted_there(repo):
    (repo / NODE_DIR / "db.txt").write_text("S3CRET-pw\n")
    text = """
        services:
          web:
            image: nginx
            read_only: true
            secrets: [db, {source: db, target: keys/db, mode: 0400, uid: 7, gid: "8"},
                      {source: db, target: /etc/db.pw}]
        secrets:
          db: {file: db.txt}
    """
    spec = spec_of(text, "web", repo)
    mounts = {m["Target"]: m["Source"] for m in spec.host["mounts"]}
    store = node_store("secrets", "dc1", "n1")
    assert sorted(mounts) == ["/etc/db.pw", "/run/secrets"] and all(s.startswith(store) for s in mounts.values())
    (run,) = [b for b in spec.bundles if b.path == mounts["/run/secrets"]]
    assert [(e.rel, e.mode, e.uid, e.gid) for e in run.entries] == [
        ("db", 0o444, 0, 0), ("keys", 0o755, 0, 0), ("keys/db", 0o400, 7, 8)]
    assert "S3CRET" not in spec.config_json()
    assert [(s.target, s.uid, s.gid) for s in spec.secrets] == [
        ("/etc/db.pw", 0, 0), ("/run/secrets/db", 0, 0), ("/run/secrets/keys/db", 7, 8)]


def test_bad_files_are_named_with_their_line(repo):
    d = repo / NODE_DIR
    os.symlink("/etc/hostname", d / "out.conf")
    os.symlink("../../../..", d / "conf.d" / "up")  # a directory symlink inside a shipped folder
    with open(d / "big.bin", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    assert problems("""
        services:
          web:
            image: nginx
            env_file: ./missing.env
            configs: [a, b, {source: c, target: rel}]
            volumes:
              - ./out.conf:/va:ro
              - ./conf.d:/vb:ro
              - ./big.bin:/vc:ro
              - ./nginx.conf:/vd
        configs:
          a: {file: ../../../../etc/passwd}
          b: {environment: HOME}
          c: {content: x, external: true}
    """, repo) == [
        f"{COMPOSE}:5: services.web.env_file: env_file {NODE_DIR}/missing.env does not exist",
        f"{COMPOSE}:6: services.web.configs[2].target: invalid target 'rel': write the absolute path in the container",
        f"{COMPOSE}:8: services.web.volumes[0]: bind source {NODE_DIR}/out.conf (resolves to /etc/hostname) "
        "leaves the repository: only files of the repository are shipped",
        f"{COMPOSE}:9: services.web.volumes[1]: bind source {NODE_DIR}/conf.d holds a symlink to a directory "
        f"({NODE_DIR}/conf.d/up): symlinked folders are not shipped",
        f"{COMPOSE}:10: services.web.volumes[2]: bind source {NODE_DIR}/big.bin holds {MAX_FILE_BYTES + 1} bytes; "
        f"a bind source may hold at most {MAX_FILE_BYTES} bytes (4 MiB)",
        f"{COMPOSE}:11: services.web.volumes[3]: ./nginx.conf is shipped from the repository and mounted read-only: "
        "write './nginx.conf:/vd:ro' (or read_only: true); the container must not write into the deployer's "
        "content-addressed copy",
        f"{COMPOSE}:13: configs.a.file: config file ../../../../etc/passwd climbs out of the repository (to "
        f"{os.path.normpath(str(repo / NODE_DIR / '../../../../etc/passwd'))}); a relative path must stay inside it",
        f"{COMPOSE}:14: configs.b.environment: 'environment' reads the operator's shell, so what runs would depend "
        "on who deploys; the deployer never reads it: use 'file' (or 'content' for a config)",
        f"{COMPOSE}:15: configs.c.external: external configs are Swarm objects and not supported: use 'file' or "
        "'content'",
    ]


def test_a_service_may_ship_at_most_the_service_limit(repo):
    d = repo / NODE_DIR / "many"
    d.mkdir()
    count = MAX_SERVICE_BYTES // MAX_FILE_BYTES + 1
    for i in range(count):
        with open(d / f"f{i}", "wb") as f:
            f.truncate(MAX_FILE_BYTES)
    found = problems("services:\n  web:\n    image: nginx\n    volumes: ['./many:/m:ro']\n", repo)
    assert found == [f"{COMPOSE}:4: services.web.volumes[0]: bind source {NODE_DIR}/many holds more than "
                     f"{MAX_SERVICE_BYTES} bytes (16 MiB, the most one service ships)"]


def test_the_ship_archive_keeps_modes_and_owners_and_the_store_is_root_only(repo):
    spec = spec_of(COMPOSE_TEXT, "web", repo)
    (tree,) = [b for b in spec.bundles if any(e.rel == "sub" for e in b.entries)]
    with tarfile.open(fileobj=io.BytesIO(bundle_archive(tree))) as tar:
        got = [(m.name, m.isdir(), oct(m.mode), m.uid) for m in tar.getmembers()]
    assert got == [("files", True, "0o700", 0), (f"files/{tree.digest}", True, "0o755", 0),
                   (f"files/{tree.digest}/a.conf", False, "0o644", 0), (f"files/{tree.digest}/sub", True, "0o755", 0),
                   (f"files/{tree.digest}/sub/b.conf", False, "0o644", 0)]


def test_the_bundles_a_container_mounts_are_read_from_its_recorded_config(repo):
    spec = spec_of(COMPOSE_TEXT, "web", repo)
    c = ContainerState(id="x", name="n1-web", image="nginx", image_id="sha256:1", status="running", health=None,
                       exit_code=0, restart_count=0,
                       labels={LABEL_DC: "dc1", LABEL_NODE: "n1", LABEL_CONFIG: spec.config_json()})
    assert bundle_dirs(c) == {b.path for b in spec.bundles}
    assert bundle_dirs(ContainerState(id="y", name="y", image="i", image_id="", status="running", health=None,
                                      exit_code=0, restart_count=0, labels={})) == set()


def test_a_config_or_secret_may_not_take_a_mount_target_again(repo):
    (repo / NODE_DIR / "db.txt").write_text("pw\n")
    assert problems("""
        services:
          web:
            image: nginx
            volumes: ['./nginx.conf:/etc/nginx/nginx.conf:ro', 'data:/run/secrets']
            tmpfs: [/etc/tmp.conf]
            configs:
              - {source: site, target: /etc/nginx/nginx.conf}
              - {source: site, target: /etc/tmp.conf}
              - {source: site, target: /run/secrets}
            secrets: [db]
        volumes: {data: {}}
        configs:
          site: {file: ./nginx.conf}
        secrets:
          db: {file: db.txt}
    """, repo) == [
        f"{COMPOSE}:8: services.web.configs[0]: mount target /etc/nginx/nginx.conf is used twice (also by "
        "services.web.volumes[0])",
        f"{COMPOSE}:9: services.web.configs[1]: mount target /etc/tmp.conf is used twice (also by services.web.tmpfs)",
        f"{COMPOSE}:10: services.web.configs[2]: mount target /run/secrets is used twice (also by "
        "services.web.volumes[1])",
        f"{COMPOSE}:11: services.web.secrets[0]: mount target /run/secrets is used twice (also by "
        "services.web.volumes[1])",
    ]


def test_configs_count_towards_the_service_limit(repo):
    d = repo / NODE_DIR
    count = MAX_SERVICE_BYTES // MAX_FILE_BYTES + 1
    for i in range(count):
        with open(d / f"c{i}", "wb") as f:
            f.truncate(MAX_FILE_BYTES)
    text = ("services:\n  web:\n    image: nginx\n    configs: [" + ", ".join(f"c{i}" for i in range(count)) + "]\n"
            "configs:\n" + "".join(f"  c{i}: {{file: ./c{i}}}\n" for i in range(count)))
    assert problems(text, repo) == [f"{COMPOSE}:4: services.web.configs[{count - 1}]: the files service web ships "
                                    f"hold more than {MAX_SERVICE_BYTES} bytes (16 MiB, the most one service ships)"]
