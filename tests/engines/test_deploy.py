"""deploy, rollback, history, status against a real Docker engine and real git."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.repos import cli, git, make_repo, managed, remove_node_containers, run, web_compose

WEB1, WEB2, WEB3 = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:3"


@pytest.fixture
def client(engine):
    c = engine.client()
    yield c
    c.close()


@pytest.fixture
def repo(deployed_web):
    """A repo whose node runs web:1 (deployed, committed): tests/engines/conftest.py."""
    return deployed_web


def containers(client, node):
    return [(c.name, c.image.tags[0] if c.image.tags else c.image.id, c.status) for c in managed(client, node)]


def head(root):
    return git(root, "rev-parse", "HEAD")


def test_first_deploy_of_written_image_creates_container_without_commit(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1))
    before = head(root)
    try:
        result = cli(root, "deploy", WEB1, f"test/{node}")
        assert result.exit_code == 0, result.output
        assert "repaired the container (create), no commit" in result.output
        assert head(root) == before
        assert containers(client, node) == [(f"{node}-web", WEB1, "running")]
        # Again: nothing to do.
        result = cli(root, "deploy", WEB1, f"test/{node}")
        assert "nothing to do" in result.output
        assert head(root) == before
    finally:
        remove_node_containers(client, node)


def test_deploy_replaces_container_and_commits_only_that_file(repo, client):
    root, node = repo
    compose = root / "datacenters" / "test" / node / "docker-compose.yml"
    original = compose.read_text()
    # Unrelated uncommitted work stays out of the commit and stays as it was.
    (root / "notes.txt").write_text("scratch\n")
    node_yml = root / "datacenters" / "test" / node / "node.yml"
    node_yml.write_text(node_yml.read_text() + "# edited\n")
    git(root, "add", str(node_yml))
    status_before = git(root, "status", "--porcelain")

    result = cli(root, "deploy", WEB2, f"test/{node}", "-m", "faster squares")
    assert result.exit_code == 0, result.output
    assert containers(client, node) == [(f"{node}-web", WEB2, "running")]

    # Exactly the image line changed, byte for byte.
    assert compose.read_text() == original.replace(WEB1, WEB2)
    assert git(root, "show", "--name-only", "--format=", "HEAD") == f"datacenters/test/{node}/docker-compose.yml"
    assert git(root, "status", "--porcelain") == status_before
    message = git(root, "log", "-1", "--format=%B")
    assert message.splitlines()[0] == f"deploy test/{node}/web: {WEB1} -> {WEB2}"
    assert "faster squares" in message
    trailers = git(root, "log", "-1", "--format=%(trailers:unfold,only)")
    assert "Deployer-Action: deploy" in trailers
    assert f"Deployer-Target: test/{node}/web" in trailers
    assert f"Deployer-Image: {WEB2}" in trailers
    assert f"Deployer-Previous-Image: {WEB1}" in trailers
    image_id = client.images.get(WEB2).id
    assert f"Deployer-Image-Id: {image_id}" in trailers
    assert subprocess.run(["git", "-C", str(root), "fsck", "--strict"], capture_output=True).returncode == 0


def test_deploy_labels_identify_container_and_config(repo, client):
    root, node = repo
    (c,) = managed(client, node)
    assert c.labels["deployer.dc"] == "test"
    assert c.labels["deployer.node"] == node
    assert c.labels["deployer.service"] == "web"
    assert len(c.labels["deployer.config-hash"]) >= 12
    assert c.labels["deployer.image"] == WEB1


def test_author_override(repo):
    root, node = repo
    result = cli(root, "deploy", WEB2, f"test/{node}", "--author", "Ops Person <ops@example.com>")
    assert result.exit_code == 0, result.output
    assert git(root, "log", "-1", "--format=%an <%ae>") == "Ops Person <ops@example.com>"


def test_dry_run_touches_nothing(repo, client):
    root, node = repo
    before = head(root)
    ids = [c.id for c in managed(client, node)]
    result = cli(root, "deploy", WEB2, f"test/{node}", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"-    image: {WEB1}" in result.output and f"+    image: {WEB2}" in result.output
    assert f"container: replace test/{node}/web (image {WEB1} -> {WEB2})" in result.output
    assert head(root) == before
    assert git(root, "status", "--porcelain") == ""
    assert [c.id for c in managed(client, node)] == ids


def test_unhealthy_new_container_restores_old_and_commits_nothing(repo, client):
    root, node = repo
    before = head(root)
    (old,) = managed(client, node)
    result = run(root, "deploy", "deployer-test/web:sick", f"test/{node}", "--service", "web")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unhealthy" in last and "restored the old container" in last
    assert head(root) == before
    assert git(root, "status", "--porcelain") == ""
    (now,) = managed(client, node)
    assert now.id == old.id and now.status == "running" and now.name == f"{node}-web"


def test_container_that_exits_prints_its_logs(repo, client):
    root, node = repo
    result = run(root, "deploy", "deployer-test/web:exits", f"test/{node}", "--service", "web")
    assert result.returncode == 1
    assert "last log lines" in result.stderr
    assert "exited with code 3" in result.stderr.splitlines()[-1]
    (now,) = managed(client, node)
    assert now.status == "running" and now.image.tags == [WEB1]


def _events(client, node, since, until):
    return [(e["status"], e["Actor"]["Attributes"].get("name"))
            for e in client.events(since=since, until=until, decode=True,
                                   filters={"type": "container", "label": f"deployer.node={node}"})
            if e.get("status") in ("start", "stop", "die", "kill")]


def _redeploy_events(root, node, client, first_deploy=True):
    """(index of the first container start, index of the first stop) during a deploy of WEB2."""
    if first_deploy:
        assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    time.sleep(1.1)  # event times are whole seconds: keep earlier events out of the window
    since = int(time.time())
    assert cli(root, "deploy", WEB2, f"test/{node}").exit_code == 0
    events = _events(client, node, since, int(time.time()) + 1)
    first_start = next(i for i, e in enumerate(events) if e[0] == "start")
    first_stop = next(i for i, e in enumerate(events) if e[0] in ("kill", "stop", "die"))
    return first_start, first_stop


def test_without_published_ports_new_starts_before_old_stops(repo, client):
    root, node = repo
    first_start, first_stop = _redeploy_events(root, node, client, first_deploy=False)
    assert first_start < first_stop


def test_ephemeral_host_port_starts_new_beside_old(engine, client, tmp_path):
    """A published port without a fixed host port frees nothing the new container needs."""
    compose = web_compose(WEB1).replace('expose: ["80"]', 'ports: ["127.0.0.1::80"]')
    root, node = make_repo(tmp_path / "infra", engine.unix_url, compose)
    try:
        first_start, first_stop = _redeploy_events(root, node, client)
        assert first_start < first_stop
    finally:
        remove_node_containers(client, node)


def test_with_published_ports_old_stops_before_new_starts(engine, client, tmp_path):
    compose = web_compose(WEB1).replace('expose: ["80"]', 'ports: ["127.0.0.1:18080:80"]')
    root, node = make_repo(tmp_path / "infra", engine.unix_url, compose)
    try:
        first_start, first_stop = _redeploy_events(root, node, client)
        assert first_stop < first_start
        assert containers(client, node) == [(f"{node}-web", WEB2, "running")]
    finally:
        remove_node_containers(client, node)


def test_rollback_history_and_steps(repo, client):
    root, node = repo
    target = f"test/{node}/web"
    assert cli(root, "deploy", WEB2, f"test/{node}").exit_code == 0
    deploy3 = cli(root, "deploy", WEB3, f"test/{node}")
    assert deploy3.exit_code == 0
    commit_of_2 = git(root, "rev-parse", "HEAD~1")

    result = cli(root, "rollback", target)
    assert result.exit_code == 0, result.output
    assert containers(client, node) == [(f"{node}-web", WEB2, "running")]
    assert git(root, "log", "-1", "--format=%s") == f"rollback {target}: {WEB3} -> {WEB2}"
    assert f"Deployer-Rollback-To: {commit_of_2}" in git(root, "log", "-1", "--format=%(trailers:unfold,only)")

    result = cli(root, "rollback", target, "--steps", "2")
    assert result.exit_code == 0, result.output
    assert containers(client, node)[0][1] in (WEB1, WEB3)  # two distinct versions back from web:2

    result = cli(root, "rollback", target, "--steps", "50")
    assert result.exit_code == 3
    assert "cannot go back" in result.output or "only" in result.output

    result = cli(root, "history", f"test/{node}", "--json")
    entries = json.loads(result.output)
    assert [e["action"] for e in entries][:2] == ["rollback", "rollback"]
    assert entries[-1]["image"] == WEB2 and entries[-1]["previous_image"] == WEB1
    table = cli(root, "history", "-n", "1").output.splitlines()
    assert len(table) == 2 and "rollback" in table[1]


def test_rollback_to_commit_that_did_not_touch_service_is_refused(repo):
    root, node = repo
    (root / "README.md").write_text("docs\n")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "docs")
    result = cli(root, "rollback", f"test/{node}/web", "--to", "HEAD")
    assert result.exit_code == 3
    assert "did not change" in result.output


def test_rollback_past_first_version_is_refused(repo):
    root, node = repo
    result = cli(root, "rollback", f"test/{node}/web")
    assert result.exit_code == 3
    assert "error:" in result.output


def test_status_reports_match_and_drift(repo, client):
    root, node = repo
    result = cli(root, "status", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["state"] == "healthy" and row["match"] is True

    (c,) = managed(client, node)
    c.update(restart_policy={"Name": "always"})
    result = cli(root, "status", "--json")
    assert result.exit_code == 2  # drift
    (row,) = json.loads(result.output)
    assert row["state"] == "drifted" and "restart policy" in row["detail"]

    # Deploying the written image repairs it, without a commit.
    before = head(root)
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    assert head(root) == before
    assert json.loads(cli(root, "status", "--json").output)[0]["match"] is True

    (c,) = managed(client, node)
    c.stop(timeout=1)
    (row,) = json.loads(cli(root, "status", "--json").output)
    assert row["state"] == "stopped"
    c.remove(force=True)
    (row,) = json.loads(cli(root, "status", "--json").output)
    assert row["state"] == "missing"


def test_dirty_compose_file_is_refused(repo):
    root, node = repo
    compose = root / "datacenters" / "test" / node / "docker-compose.yml"
    compose.write_text(compose.read_text() + "# local edit\n")
    before = head(root)
    result = run(root, "deploy", WEB2, f"test/{node}")
    assert result.returncode != 0
    assert "uncommitted" in result.stderr.splitlines()[-1]
    assert head(root) == before
    assert compose.read_text().endswith("# local edit\n")


def test_container_name_taken_by_unmanaged_container(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1))
    squatter = client.containers.create(WEB1, name=f"{node}-web")
    try:
        result = run(root, "deploy", WEB1, f"test/{node}")
        assert result.returncode == 1
        assert "did not create" in result.stderr.splitlines()[-1]
        squatter.reload()
        assert squatter.status == "created"  # untouched
    finally:
        squatter.remove(force=True)
        remove_node_containers(client, node)


def test_image_not_present_and_not_pullable(repo, client):
    root, node = repo
    before = head(root)
    result = run(root, "deploy", "localhost:1/nothing/here:1", f"test/{node}", "--service", "web")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: image localhost:1/nothing/here:1 is not on the node")
    assert head(root) == before
    assert containers(client, node) == [(f"{node}-web", WEB1, "running")]


def test_unreachable_host(tmp_path):
    root, node = make_repo(tmp_path / "infra", "unix:///nonexistent/docker.sock", web_compose(WEB1))
    result = run(root, "deploy", WEB2, f"test/{node}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: node test/{node} (unix:///nonexistent/docker.sock):")
    assert git(root, "status", "--porcelain") == ""


@pytest.mark.parametrize("args, message", [
    (["deploy", "Not A Ref", "test/NODE"], "invalid image reference"),
    (["deploy", "deployer-test/web:2", "test/nosuchnode"], "unknown node test/nosuchnode"),
    (["deploy", "deployer-test/web:2", "nosuchdc/x"], "unknown datacenter"),
    (["deploy", "other/image:2", "test/NODE"], "no service on test/NODE runs other/image"),
    (["rollback", "test/NODE"], "no deploy or rollback commit has a target in test/NODE"),  # nothing to undo there
])
def test_bad_input_is_one_clear_line(repo, args, message):
    root, node = repo
    before = head(root)
    result = run(root, *[a.replace("NODE", node) for a in args])
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.replace("NODE", node) in lines[0], lines
    assert head(root) == before


def test_second_deploy_waits_or_fails_on_lock(repo):
    root, node = repo
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from deployer.gitrepo.lock import DeployLock;"
        "l = DeployLock(Path(sys.argv[1]), {'pid': 1, 'user': 'alice', 'host': 'h', 'command': 'deployer deploy x', 'since': 'then'});"
        # held until the test says so, then for 3 s more: a fixed 3 s from the start ran out before the
        # first deploy (a fresh process) reached the lock on a loaded machine
        "l.acquire(); print('locked', flush=True); sys.stdin.readline(); time.sleep(float(sys.argv[2]))"),
        str(root / ".git"), "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run(root, "deploy", WEB2, f"test/{node}")
        assert result.returncode == 1
        assert "lock" in result.stderr and "alice" in result.stderr
        holder.stdin.write("release\n")
        holder.stdin.flush()
        result = run(root, "deploy", WEB2, f"test/{node}", "--wait", "30")
        assert result.returncode == 0, result.stderr
        assert git(root, "log", "-1", "--format=%s").endswith(f"-> {WEB2}")
    finally:
        holder.kill()
        holder.wait()


SLOW = "deployer-test/web:slow"


@pytest.fixture(scope="module")
def slow_image(engine):
    """Healthy only after about 4 s: time enough to kill a deployer while it waits."""
    from tests.support.images import build_image

    client = engine.client()
    build_image(client, SLOW, "FROM deployer-test/busybox:base\nCOPY www /www\n"
                'CMD ["/bin/sh", "-c", "trap \'exit 0\' TERM; sleep 4; cp /www/body.html /www/index.html; '
                'httpd -f -p 80 -h /www & wait"]\n', {"www/": b"", "www/body.html": "slow"})
    client.close()
    return SLOW


def _names(client, node):
    return [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters={"label": f"deployer.node={node}"})]


@pytest.fixture
def slow_repo(engine, client, tmp_path):
    """Like ``repo``, with a start period so a slow starter is not judged while it boots."""
    compose = web_compose(WEB1).replace("retries: 2", "retries: 2\n      start_period: 15s")
    root, node = make_repo(tmp_path / "infra", engine.unix_url, compose)
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    yield root, node
    remove_node_containers(client, node)


def test_deploy_killed_half_way_converges_on_next_run(slow_repo, client, slow_image):
    root, node = slow_repo
    before = head(root)
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "deploy", slow_image,
                             f"test/{node}", "--service", "web"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline and f"{node}-web-next" not in _names(client, node):
        time.sleep(0.05)
    assert f"{node}-web-next" in _names(client, node)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed while waiting for health: the repo is exactly as it was, the old container still serves.
    assert head(root) == before and git(root, "status", "--porcelain") == ""
    assert (f"{node}-web", WEB1, "running") in containers(client, node)
    (row,) = [r for r in json.loads(cli(root, "status", "--json").output)]
    assert row["state"] == "drifted" and "leftover" in row["detail"]
    # The next run converges: exactly one container, the new image, committed once.
    result = run(root, "deploy", slow_image, f"test/{node}", "--service", "web")
    assert result.returncode == 0, result.stderr
    assert containers(client, node) == [(f"{node}-web", slow_image, "running")]
    assert git(root, "log", "-1", "--format=%s") == f"deploy test/{node}/web: {WEB1} -> {slow_image}"
    assert git(root, "rev-list", "--count", f"{before}..HEAD") == "1"
    assert subprocess.run(["git", "-C", str(root), "fsck", "--strict"], capture_output=True).returncode == 0


def test_interrupted_commit_is_finished_by_next_deployer(repo, client):
    """A deployer that died after writing the file but before committing: the journal finishes it."""
    from deployer.gitrepo.lock import DeployLock
    from deployer.gitrepo.transaction import sha256_text

    root, node = repo
    rel = f"datacenters/test/{node}/docker-compose.yml"
    text = (root / rel).read_text().replace(WEB1, WEB2)
    lock = DeployLock(root / ".git", {"pid": 0, "user": "x", "host": "h", "command": "c", "since": "s"})
    lock.acquire()
    lock.journal_write({"files": [{"file": rel, "sha256": sha256_text(text.encode())}], "subject": f"deploy test/{node}/web: {WEB1} -> {WEB2}",
                        "message": None, "trailers": [["Deployer-Action", "deploy"]], "author": None})
    (root / rel).write_text(text)
    lock.release()
    result = cli(root, "deploy", WEB2, f"test/{node}")
    assert result.exit_code == 0, result.output
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "log", "-1", "--format=%s") == f"deploy test/{node}/web: {WEB1} -> {WEB2}"


def test_new_service_added_with_service_flag(repo, client):
    root, node = repo
    result = cli(root, "deploy", WEB3, f"test/{node}", "--service", "extra")
    assert result.exit_code == 0, result.output
    names = sorted(c[0] for c in containers(client, node))
    assert names == [f"{node}-extra", f"{node}-web"]
    assert git(root, "log", "-1", "--format=%s") == f"deploy test/{node}/extra: (new service) -> {WEB3}"


def test_node_add_and_rm_through_the_cli(engine, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1))
    result = cli(root, "node", "add", "test/extra", "--docker", engine.unix_url, "--address", "10.0.0.9")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("add node test/extra: engine ")
    assert git(root, "log", "-1", "--format=%s") == "add node test/extra"
    assert (root / "datacenters/test/extra/node.yml").exists()
    refused = cli(root, "node", "rm", f"test/{node}")
    assert refused.exit_code == 3 and "still has containers written for it: web" in refused.output
    assert cli(root, "node", "rm", "test/extra").exit_code == 0
    assert not (root / "datacenters/test/extra").exists()
    assert git(root, "status", "--porcelain") == ""


def test_secrets_are_copied_from_the_checked_files_and_refused_out_of_bounds(engine, client, tmp_path):
    """The secret-file policy (docs/compose.md, Secrets) on a real engine: what lands in /run/secrets is the file
    checked; a file out of bounds stops the deploy with exit 3 before the engine is touched."""
    secrets_dir = tmp_path / "secrets-dev"
    secrets_dir.mkdir()
    (secrets_dir / "api_key").write_text("from the secrets_dir\n")
    extra = ("    secrets: [db, {source: api_key, target: keys/api, mode: 0400}]\n"
             "secrets:\n  db:\n    file: secrets/db.txt\n"
             f"  api_key:\n    file: {secrets_dir / 'api_key'}\n")
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1, extra),
                           extra_files={"datacenters/test/datacenter.yml": f"secrets_dir: {secrets_dir}\n",
                                        ".gitignore": "secrets/\n"})
    node_dir = root / "datacenters" / "test" / node
    (node_dir / "secrets").mkdir()
    (node_dir / "secrets" / "db.txt").write_text("untracked in the repo\n")
    try:
        result = cli(root, "deploy", WEB2, f"test/{node}")
        assert result.exit_code == 0, result.output
        (c,) = managed(client, node)
        assert c.exec_run(["cat", "/run/secrets/db"]).output == b"untracked in the repo\n"
        assert c.exec_run(["cat", "/run/secrets/keys/api"]).output == b"from the secrets_dir\n"
        assert c.exec_run(["stat", "-c", "%a", "/run/secrets/keys/api"]).output == b"400\n"

        # the same file outside the datacenter's secrets_dir: refused, nothing changed on the engine
        (root / "datacenters/test/datacenter.yml").write_text("description: no secrets_dir\n")
        git(root, "commit", "-q", "-am", "no secrets_dir")
        before = head(root)
        done = run(root, "deploy", WEB3, f"test/{node}", timeout=60)
        assert (done.returncode, done.stdout) == (3, "")
        assert done.stderr == (
            f"error: datacenters/test/{node}/docker-compose.yml:17: secrets.api_key.file: secret file "
            f"{secrets_dir / 'api_key'} is outside the repository and the datacenter's secrets_dir (none set in "
            "datacenter.yml); a secret file is an untracked file of the repository or lies under a secrets_dir\n")
        assert containers(client, node) == [(f"{node}-web", WEB2, "running")] and head(root) == before
    finally:
        remove_node_containers(client, node)
