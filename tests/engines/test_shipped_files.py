"""Files and secrets from the repository onto real nodes (docs/compose.md, "Files and secrets on the node").

Secrets, configs, env_file and relative bind mounts are read on the deployer's
machine, shipped over the engine connection into the node's store (unix,
SSH and TLS nodes alike), and mounted read-only: nothing lands in the
container's writable layer, a changed file replaces the container (and the
plan names it), the same content is not shipped twice, and what nobody
mounts any more is removed. Bad input stops before the engine is touched.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from contextlib import closing

import pytest

from deployer.spec import node_store
from tests.support.repos import cli, git, make_repo, managed, remove_node_containers, run, web_compose

WEB1, WEB2, WEB3 = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:3"


@pytest.fixture
def client(engine):
    c = engine.client()
    yield c
    c.close()


def head(root):
    return git(root, "rev-parse", "HEAD")


def only(client, node):
    (c,) = managed(client, node)
    return c


def cat(container, path: str) -> bytes:
    done = container.exec_run(["cat", path])
    assert done.exit_code == 0, done.output
    return done.output


def exported_names_and_bytes(client, container) -> tuple[dict[str, int], bytes]:
    blob = b"".join(client.api.export(container.id))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: m.size for m in tar.getmembers()}, blob


def test_a_secret_works_with_read_only_and_stays_out_of_the_writable_layer(engine, client, tmp_path):
    extra = ("    read_only: true\n"
             "    secrets:\n      - db\n      - {source: db, target: keys/db, mode: 0440, uid: '1234', gid: 4321}\n"
             "secrets:\n  db:\n    file: secrets/db.txt\n")
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1, extra),
                           extra_files={".gitignore": "secrets/\n"})
    (root / "datacenters/test" / node / "secrets").mkdir()
    (root / "datacenters/test" / node / "secrets/db.txt").write_text("S3CRET-VALUE\n")
    try:
        result = cli(root, "deploy", WEB2, f"test/{node}")
        assert result.exit_code == 0, result.output
        assert "shipped 1 bundle of files" in result.output
        c = only(client, node)
        assert c.attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert cat(c, "/run/secrets/db") == b"S3CRET-VALUE\n"
        assert c.exec_run(["stat", "-c", "%a %u %g", "/run/secrets/keys/db"]).output == b"440 1234 4321\n"
        assert c.exec_run(["stat", "-c", "%a %u", "/run/secrets/db"]).output == b"444 0\n"
        # a read-only mount: the container cannot change it either
        assert c.exec_run(["sh", "-c", "echo x > /run/secrets/db"]).exit_code != 0
        names, blob = exported_names_and_bytes(client, c)
        assert b"S3CRET-VALUE" not in blob
        assert not any(n.startswith("run/secrets/") for n in names), names  # only the mount point itself
        (mount,) = [m for m in c.attrs["Mounts"] if m["Destination"] == "/run/secrets"]
        assert mount["Type"] == "bind" and mount["RW"] is False
        assert mount["Source"].startswith(node_store("secrets", "test", node) + "/")
    finally:
        remove_node_containers(client, node)


def test_a_config_file_is_shipped_over_ssh_and_tls(remote_engine, tmp_path):
    compose = web_compose(WEB1, "    configs:\n      - app\n      - {source: motd, target: /etc/motd, mode: 0400}\n"
                                "configs:\n  app:\n    file: ./app.conf\n  motd:\n    content: hello from content\n")
    r = remote_engine
    roots = {}
    for via, node_yml in (
        ("ssh", f"docker: {r.ssh_url}\nidentity_file: {r.ssh_identity}\n"),
        ("tls", f"docker: {r.tls_url}\ntls:\n  ca: {r.tls_dir}/ca.pem\n  cert: {r.tls_dir}/cert.pem\n"
                f"  key: {r.tls_dir}/key.pem\n"),
    ):
        node = f"via{via}"
        files = {f"datacenters/test/{node}/app.conf": f"listen 80; # over {via}\n"}
        if via == "ssh":
            files[f"datacenters/test/{node}/known_hosts"] = r.ssh_host_key_line + "\n"
        root, node = make_repo(tmp_path / via, r.unix_url, compose, node=node, extra_files=files)
        (root / f"datacenters/test/{node}/node.yml").write_text(node_yml)
        git(root, "commit", "-q", "-am", f"over {via}")
        roots[via] = (root, node)
    with closing(r.client()) as client:
        try:
            for via, (root, node) in roots.items():
                result = cli(root, "deploy", WEB2, f"test/{node}")
                assert result.exit_code == 0, result.output
                c = only(client, node)
                assert cat(c, "/app") == f"listen 80; # over {via}\n".encode()
                assert cat(c, "/etc/motd") == b"hello from content"
                assert c.exec_run(["stat", "-c", "%a", "/etc/motd"]).output == b"400\n"
        finally:
            for _, node in roots.values():
                remove_node_containers(client, node)


def test_a_directory_bind_mount_changes_replace_and_the_old_files_go(engine, client, tmp_path):
    extra = "    volumes:\n      - ./conf.d:/etc/app/conf.d:ro\n      - ./single.txt:/etc/single.txt:ro\n"
    files = {}
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1, extra), extra_files=files)
    node_dir = root / "datacenters/test" / node
    (node_dir / "conf.d/sub").mkdir(parents=True)
    (node_dir / "conf.d/a.conf").write_text("a=1\n")
    (node_dir / "conf.d/sub/b.conf").write_text("b=1\n")
    os.chmod(node_dir / "conf.d/sub/b.conf", 0o640)
    (node_dir / "single.txt").write_text("one file\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "files")
    try:
        result = cli(root, "deploy", WEB2, f"test/{node}")
        assert result.exit_code == 0, result.output
        c = only(client, node)
        assert cat(c, "/etc/app/conf.d/a.conf") == b"a=1\n"
        assert cat(c, "/etc/app/conf.d/sub/b.conf") == b"b=1\n"
        assert c.exec_run(["stat", "-c", "%a", "/etc/app/conf.d/sub/b.conf"]).output == b"640\n"
        assert cat(c, "/etc/single.txt") == b"one file\n"
        (old_dir,) = [m["Source"] for m in c.attrs["Mounts"] if m["Destination"] == "/etc/app/conf.d"]
        assert os.path.isdir(old_dir)  # this fleet's nodes share the machine's filesystem: look at the store

        # the same content again (a new image): nothing is shipped
        result = cli(root, "deploy", WEB3, f"test/{node}")
        assert result.exit_code == 0, result.output
        assert "shipped" not in result.output, result.output

        # a file changes: the plan names it, apply replaces the container, the old bundle is removed
        (node_dir / "conf.d/sub/b.conf").write_text("b=2\n")
        git(root, "commit", "-q", "-am", "b=2")
        plan = cli(root, "plan", f"test/{node}")
        assert plan.exit_code == 2, plan.output
        assert "replace" in plan.output and "files./etc/app/conf.d" in plan.output, plan.output
        assert "files./etc/single.txt" not in plan.output
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 0, result.output
        c = only(client, node)
        assert cat(c, "/etc/app/conf.d/sub/b.conf") == b"b=2\n"
        assert cat(c, "/etc/single.txt") == b"one file\n"
        assert "removed 1 unused bundle of files" in result.output, result.output
        assert not os.path.isdir(old_dir) and os.path.getsize(old_dir) == 0  # an empty file where it was
        assert cli(root, "plan", f"test/{node}").exit_code == 0
    finally:
        remove_node_containers(client, node)


def test_env_file_values_reach_the_container(engine, client, tmp_path):
    extra = ("    env_file:\n      - ./common.env\n      - {path: ./local.env, required: false}\n"
             "      - ./override.env\n    environment:\n      WINS: environment\n")
    files = {}
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1, extra), extra_files=files)
    node_dir = root / "datacenters/test" / node
    (node_dir / "common.env").write_text("# shared\nexport A=1\nB='single $quoted'\nC=\"two\\nlines\"\n"
                                         "WINS=env_file\nD=plain # a comment\n")
    (node_dir / "override.env").write_text("A=2\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "env files")
    try:
        result = cli(root, "deploy", WEB2, f"test/{node}")
        assert result.exit_code == 0, result.output
        env = dict(e.split("=", 1) for e in only(client, node).attrs["Config"]["Env"])
        assert (env["A"], env["B"], env["C"], env["WINS"], env["D"]) == ("2", "single $quoted", "two\nlines",
                                                                          "environment", "plain")
    finally:
        remove_node_containers(client, node)


BAD = {
    "env_file missing": (
        "    env_file: ./nope.env\n", {},
        "{compose}:12: services.web.env_file: env_file datacenters/test/{node}/nope.env does not exist"),
    "config file missing": (
        "    configs: [app]\nconfigs:\n  app:\n    file: ./app.conf\n", {},
        "{compose}:15: configs.app.file: config file datacenters/test/{node}/app.conf does not exist"),
    "path leaves the repository": (
        "    volumes: ['../../../../etc:/x:ro']\n", {},
        "{compose}:12: services.web.volumes[0]: bind source ../../../../etc climbs out of the repository (to "
        "{outside}); a relative path must stay inside it"),
    "symlink leaves the repository": (
        "    env_file: ./link.env\n", {"link.env": "/etc/hostname"},
        "{compose}:12: services.web.env_file: env_file datacenters/test/{node}/link.env (resolves to "
        "/etc/hostname) leaves the repository: only files of the repository are shipped"),
    "file over the size limit": (
        "    volumes: ['./big.bin:/big.bin:ro']\n", {"big.bin": 4 * 1024 * 1024 + 1},
        "{compose}:12: services.web.volumes[0]: bind source datacenters/test/{node}/big.bin holds 4194305 bytes; "
        "a bind source may hold at most 4194304 bytes (4 MiB)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_stop_the_deploy_before_the_engine(engine, client, tmp_path, case):
    extra, files, expected = BAD[case]
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1, extra))
    node_dir = root / "datacenters/test" / node
    for name, what in files.items():
        if isinstance(what, int):
            with open(node_dir / name, "wb") as f:
                f.truncate(what)
        else:
            os.symlink(what, node_dir / name)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", case)
    before = head(root)
    done = run(root, "deploy", WEB2, f"test/{node}", timeout=60)
    compose = f"datacenters/test/{node}/docker-compose.yml"
    outside = os.path.normpath(os.path.join(node_dir, "../../../../etc"))
    assert (done.returncode, done.stdout) == (3, ""), done.stderr
    assert done.stderr == "error: " + expected.format(compose=compose, node=node, outside=outside) + "\n"
    assert managed(client, node) == [] and head(root) == before
    assert subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                          text=True).stdout == ""


def test_a_store_lost_at_reboot_stops_the_container_and_the_next_apply_ships_again(engine, client, tmp_path):
    """/run is a tmpfs on systemd hosts: a reboot empties the secrets store. The container must then fail to
    start (not start with an empty /run/secrets), plan must say so, and apply must converge."""
    extra = "    restart: unless-stopped\n    secrets: [db]\nsecrets:\n  db:\n    file: db.secret\n"
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1, extra),
                           extra_files={".gitignore": "*.secret\n"})
    (root / "datacenters/test" / node / "db.secret").write_text("pw\n")
    try:
        assert cli(root, "deploy", WEB2, f"test/{node}").exit_code == 0
        c = only(client, node)
        store = node_store("secrets", "test", node)
        c.stop(timeout=1)
        shutil.rmtree(store)  # what a reboot does to /run
        with pytest.raises(Exception, match="bind source path does not exist"):
            c.start()
        plan = cli(root, "plan", f"test/{node}")
        assert plan.exit_code == 2 and f"test/{node}/web: replace" in plan.output, plan.output
        result = cli(root, "apply", f"test/{node}")
        assert result.exit_code == 0, result.output
        assert "shipped 1 bundle of files" in result.output
        assert cat(only(client, node), "/run/secrets/db") == b"pw\n"
        assert cli(root, "plan", f"test/{node}").exit_code == 0
    finally:
        remove_node_containers(client, node)
