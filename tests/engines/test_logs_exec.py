"""logs, exec, restart against real Docker engines (unix, and the remote node over ssh and tls)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.repos import cli, git, make_repo, remove_node_containers, run, web_compose

WEB1 = "deployer-test/web:1"
BUSYBOX = "deployer-test/busybox:base"

# A service that writes a numbered line to stdout and one to stderr every 200 ms ($$: a '$' for the shell, as
# Compose interpolates the file).
TALKER = """\
  talk:
    image: {image}
    init: true
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo out $$i; echo err $$i >&2; sleep 0.2; done"]
"""


@pytest.fixture
def client(engine):
    c = engine.client()
    yield c
    c.close()


@pytest.fixture
def web(deployed_web):
    """A repo whose node runs web:1 (deployed, committed): tests/engines/conftest.py."""
    return deployed_web


def test_logs_tail_of_a_deployed_service_is_prefixed(web, client):
    root, node = web
    container = client.containers.get(f"{node}-web")
    # Apart in time: the engine copies the two streams on their own, so lines written together may swap.
    exit_code, _ = container.exec_run(["sh", "-c", "echo hello-out > /proc/1/fd/1; sleep 0.5; "
                                       "echo hello-err > /proc/1/fd/2"])
    assert exit_code == 0
    done = run(root, "logs", "--tail", "5", f"test/{node}/web", timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"test/{node}/web hello-out\n" in done.stdout
    assert "hello-err" not in done.stdout
    assert f"test/{node}/web hello-err\n" in done.stderr
    assert all(line.startswith(f"test/{node}/web ") for line in done.stdout.splitlines())
    # --tail 1: the container's last line (as docker logs --tail counts: both streams); not a terminal: no colour.
    done = run(root, "logs", "--tail", "2", f"test/{node}", timeout=60)
    assert (done.stdout, done.stderr) == (f"test/{node}/web hello-out\n", f"test/{node}/web hello-err\n")
    done = run(root, "logs", "--tail", "1", f"test/{node}", timeout=60)
    assert (done.stdout, done.stderr) == ("", f"test/{node}/web hello-err\n")


def two_node_repo(tmp_path: Path, engine, remote_engine, transport: str) -> tuple[Path, str, str]:
    """dc ``two``: node ``a`` on the unix engine, node ``b`` on the remote engine over ssh or tls, both talking."""
    root = tmp_path / "infra"
    a, b = "a" + os.urandom(3).hex(), "b" + os.urandom(3).hex()
    compose = "services:\n" + TALKER.format(image=BUSYBOX)
    if transport == "ssh":
        node_b = f"docker: {remote_engine.ssh_url}\nidentity_file: {remote_engine.ssh_identity}\n"
    else:
        d = remote_engine.tls_dir
        node_b = f"docker: {remote_engine.tls_url}\ntls:\n  ca: {d}/ca.pem\n  cert: {d}/cert.pem\n  key: {d}/key.pem\n"
    files = {f"datacenters/two/{a}/node.yml": f"docker: {engine.unix_url}\n",
             f"datacenters/two/{b}/node.yml": node_b,
             f"datacenters/two/{a}/docker-compose.yml": compose,
             f"datacenters/two/{b}/docker-compose.yml": compose}
    if transport == "ssh":
        files[f"datacenters/two/{b}/known_hosts"] = remote_engine.ssh_host_key_line + "\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "two nodes")
    result = cli(root, "apply")
    assert result.exit_code == 0, result.output
    return root, a, b


@pytest.fixture(params=["ssh", "tls"])
def two_nodes(request, engine, remote_engine, tmp_path, git_env):
    (git_env / ".ssh" / "known_hosts").unlink(missing_ok=True)  # the repo's known_hosts pins the key
    root, a, b = two_node_repo(tmp_path, engine, remote_engine, request.param)
    yield root, a, b
    for node, eng in ((a, engine), (b, remote_engine)):
        c = eng.client()
        remove_node_containers(c, node)
        c.close()


def test_logs_of_a_dc_over_two_nodes_including_the_remote_one(two_nodes):
    root, a, b = two_nodes
    time.sleep(0.5)
    # The last 4 lines of each (both streams, as docker logs counts): out i, err i, out i+1, err i+1.
    done = run(root, "logs", "--tail", "4", "two", timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == 4, out
    assert [line.split(" ")[0] for line in out] == [f"two/{a}/talk"] * 2 + [f"two/{b}/talk"] * 2
    assert all(line.split(" ", 1)[1].startswith("out ") for line in out)
    err = done.stderr.splitlines()
    assert len(err) == 4 and all(line.split(" ", 1)[1].startswith("err ") for line in err), err


def test_logs_follow_sees_new_lines_then_ends_on_sigint(two_nodes):
    root, a, b = two_nodes
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "logs", "-f", "--tail", "0",
                             "two"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line.endswith("\n") and " out " in line, line  # whole lines only
            seen.add(line.split(" ")[0])
        assert seen == {f"two/{a}/talk", f"two/{b}/talk"}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_logs_follow_a_source_that_goes_away_ends_and_the_others_go_on(two_nodes, engine):
    root, a, b = two_nodes
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "logs", "-f", "--tail", "0",
                             "two"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert f"two/{a}/talk" in proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
        c = engine.client()
        remove_node_containers(c, a)  # node a's container goes away
        c.close()
        after = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([x for x in after if x.startswith(f"two/{b}/")]) < 10:
            after.append(proc.stdout.readline())
        assert len([x for x in after if x.startswith(f"two/{b}/talk out ")]) >= 10  # b goes on
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert re.search(rf"^two/{a}/talk: log ended: (the container was removed|the container stopped \(.+\))$", err,
                     re.M), err
    assert proc.returncode == 130


def test_logs_of_a_service_not_running_names_it(engine, client, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(WEB1))
    done = run(root, "logs", f"test/{node}/web", timeout=60)
    assert done.returncode == 1
    assert done.stderr == f"error: not running: test/{node}/web (no container)\n"
    assert done.stdout == ""


def test_exec_returns_the_output_and_exit_code(web):
    root, node = web
    done = run(root, "exec", f"test/{node}/web", "--", "cat", "/www/index.html", timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "v1", "")  # the file has no newline
    done = run(root, "exec", f"test/{node}/web", "--", "sh", "-c", "echo oops >&2; exit 3", timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "", "oops\n")
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), "exec", "-i", f"test/{node}/web",
                           "--", "sh", "-c", "tr a-z A-Z"], input="shout\n", capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "SHOUT\n"), done.stderr


def test_exec_of_a_missing_command(web):
    root, node = web
    done = run(root, "exec", f"test/{node}/web", "--", "no-such-command", timeout=60)
    assert done.returncode in (126, 127), done
    assert len(done.stderr.strip().splitlines()) == 1 and "no-such-command" in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: test/{node}/web: ") and done.stdout == "", done


def test_exec_it_on_a_terminal_runs_an_interactive_shell(web):
    import pty
    import select

    root, node = web
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "exec", "-it", f"test/{node}/web",
                             "--", "sh"], stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        seen, sent = b"", False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
            if not sent and b"# " in seen:  # the shell's prompt: it reads what is typed now
                time.sleep(0.3)
                os.write(master, b"tty; echo shell-$((6*7)); exit 5\r")
                sent = True
        assert proc.wait(timeout=30) == 5, proc.stderr.read()
    finally:
        proc.kill()
        os.close(master)
    assert b"shell-42" in seen and b"/dev/pts/" in seen, seen


def test_exec_needs_one_service_and_names_the_candidates(web):
    root, node = web
    done = run(root, "exec", f"test/{node}", "--", "true", timeout=60)
    assert done.returncode == 3  # bad input
    assert done.stderr == (f"error: exec needs one service on one node: write dc/node/service "
                           f"(candidates for test/{node}: test/{node}/web)\n")


def test_restart_is_health_gated_and_commits_nothing(web, client):
    root, node = web
    before = client.api.inspect_container(f"{node}-web")["State"]["StartedAt"]
    head = git(root, "rev-parse", "HEAD")
    done = run(root, "restart", f"test/{node}/web", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"restarted test/{node}/web ({node}-web): healthy")
    state = client.api.inspect_container(f"{node}-web")["State"]
    assert state["StartedAt"] != before and state["Health"]["Status"] == "healthy"
    assert git(root, "rev-parse", "HEAD") == head and git(root, "status", "--porcelain") == ""


def test_restart_of_a_container_that_does_not_become_healthy_fails(web, client):
    root, node = web
    # The file the healthcheck tests goes away: after the restart the container is unhealthy.
    client.containers.get(f"{node}-web").exec_run(["rm", "/www/index.html"])
    done = run(root, "restart", "--health-timeout", "5s", f"test/{node}/web", timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(f"error: test/{node}/web: {node}-web did not become healthy "
                                                   "after the restart"), done.stderr


def test_restart_while_the_lock_is_held(web, client):
    root, node = web
    from deployer.gitrepo.transaction import RepoTransaction

    before = client.api.inspect_container(f"{node}-web")["State"]["StartedAt"]
    with RepoTransaction(root, command="deployer deploy (the test)"):
        done = run(root, "restart", f"test/{node}/web", timeout=60)
    assert done.returncode == 1
    assert "deployer deploy (the test)" in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert client.api.inspect_container(f"{node}-web")["State"]["StartedAt"] == before

    # --wait: waits for the lock, then restarts.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from deployer.gitrepo.transaction import RepoTransaction\n"
        f"with RepoTransaction({str(root)!r}, command='holder'):\n"
        "    print('held', flush=True); time.sleep(2)\n")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline() == "held\n"
        done = run(root, "restart", "--wait", "30s", f"test/{node}/web", timeout=60)
    finally:
        holder.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert client.api.inspect_container(f"{node}-web")["State"]["StartedAt"] != before



def test_logs_follow_a_node_that_goes_away_ends_that_source_only(fleet, engine, tmp_path):
    from contextlib import closing

    from tests.support.images import copy_image

    gone = fleet.add_node("lg" + os.urandom(2).hex(), tls=True)
    try:
        with closing(engine.client()) as src, closing(gone.client()) as dst:
            copy_image(src, dst, BUSYBOX)
        root, a, b = two_node_repo(tmp_path, engine, gone, "tls")
        proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "logs", "-f", "--tail", "0",
                                 "two"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen: set[str] = set()
            while len(seen) < 2:
                seen.add(proc.stdout.readline().split(" ")[0])
            gone.stop()  # its engine goes away, with the container
            after = [proc.stdout.readline() for _ in range(20)]
            assert sum(x.startswith(f"two/{a}/talk out ") for x in after) >= 15  # a goes on
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        ended = [line for line in err.splitlines() if line.startswith(f"two/{b}/talk: log ended")]
        assert len(ended) == 1, err
        # A stopping engine stops its containers first: the reason is what the engine last said, or that it went.
        assert re.fullmatch(rf"two/{b}/talk: log ended: (node two/{b} went away \(.+\)|the container stopped \(.+\)"
                            r"|the container was removed)", ended[0]), ended
        assert f"two/{a}/talk: log ended" not in err and "Traceback" not in err
        assert proc.returncode == 130
    finally:
        gone.stop()
        with closing(engine.client()) as c:
            remove_node_containers(c, a)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_node_unreachable(engine, tmp_path):
    """dc ``two``: node ``a`` on the unix engine, talking; node ``b`` whose docker URL is a closed port."""
    root = tmp_path / "infra"
    a, b = "a" + os.urandom(3).hex(), "b" + os.urandom(3).hex()
    url = f"tcp://127.0.0.1:{_closed_port()}"
    compose = "services:\n" + TALKER.format(image=BUSYBOX)
    files = {f"datacenters/two/{a}/node.yml": f"docker: {engine.unix_url}\n",
             f"datacenters/two/{b}/node.yml": f"docker: {url}\n",
             f"datacenters/two/{a}/docker-compose.yml": compose,
             f"datacenters/two/{b}/docker-compose.yml": compose}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "two nodes, one unreachable")
    result = cli(root, "apply", f"two/{a}")
    assert result.exit_code == 0, result.output
    yield root, a, b, url
    with closing(engine.client()) as c:
        remove_node_containers(c, a)


def test_logs_with_a_node_unreachable_at_start_reports_it_once_and_reads_the_others(one_node_unreachable):
    root, a, b, url = one_node_unreachable
    time.sleep(0.5)
    done = run(root, "logs", "--tail", "2", "two", timeout=60)
    assert done.returncode == 1, done
    assert done.stdout.startswith(f"two/{a}/talk out ") and len(done.stdout.splitlines()) == 1, done.stdout
    err = done.stderr.splitlines()
    assert err[0] == f"two/{b}: log not read: connection refused ({url})", done.stderr
    assert len(err) == 2 and err[1].startswith(f"two/{a}/talk err "), done.stderr
    # -q leaves out the 'log ended' lines, not this one; the node alone is an error as before.
    done = run(root, "logs", "-q", "--tail", "0", "two", timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"two/{b}: log not read: connection refused "
                                                                  f"({url})\n")
    done = run(root, "logs", "--tail", "0", f"two/{b}", timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"error: node two/{b} ({url}): connection refused\n"


def test_logs_follow_with_a_node_unreachable_at_start_follows_the_others_then_exits_1(one_node_unreachable, engine):
    root, a, b, url = one_node_unreachable
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "logs", "-f", "--tail", "0",
                             "two"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline() == f"two/{b}: log not read: connection refused ({url})\n"
        lines = [proc.stdout.readline() for _ in range(5)]
        assert all(x.startswith(f"two/{a}/talk out ") for x in lines), lines  # a is followed
        with closing(engine.client()) as c:
            remove_node_containers(c, a)  # its only source ends: the command ends, 1 for the node not read
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert re.search(rf"^two/{a}/talk: log ended: ", err, re.M), err
    assert f"two/{b}" not in err and "Traceback" not in err, err
