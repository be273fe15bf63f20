"""deployer exec over each transport (unix, ssh://, tcp+TLS): the exit code passed through, stdout and stderr
apart, a missing command's code, and ``exec -i`` streaming our input to the command as it is written."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.repos import cli, git, remove_node_containers, run

BUSYBOX = "deployer-test/busybox:base"

IDLE = f"""\
services:
  box:
    image: {BUSYBOX}
    init: true
    command: ["sleep", "3600"]
"""


def one_node_repo(root: Path, eng, transport: str) -> tuple[Path, str]:
    """dc ``x``, one node on ``eng`` over ``transport`` (unix, ssh, tls) running ``box``; (root, target)."""
    node = "x" + os.urandom(3).hex()
    if transport == "unix":
        node_yml = f"docker: {eng.unix_url}\n"
    elif transport == "ssh":
        node_yml = f"docker: {eng.ssh_url}\nidentity_file: {eng.ssh_identity}\n"
    else:
        d = eng.tls_dir
        node_yml = f"docker: {eng.tls_url}\ntls:\n  ca: {d}/ca.pem\n  cert: {d}/cert.pem\n  key: {d}/key.pem\n"
    files = {f"datacenters/x/{node}/node.yml": node_yml, f"datacenters/x/{node}/docker-compose.yml": IDLE}
    if transport == "ssh":  # the repository pins the host key
        files[f"datacenters/x/{node}/known_hosts"] = eng.ssh_host_key_line + "\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one node")
    result = cli(root, "apply")
    assert result.exit_code == 0, result.output
    return root, f"x/{node}/box"


@pytest.fixture(params=["unix", "ssh", "tls"])
def box(request, tmp_path, git_env):
    """(root, target, transport, fleet node): ``box`` running on a node reached over the transport (unix: the
    ``engine`` node; ssh and tls: the ``remote_engine`` node)."""
    transport = request.param
    eng = request.getfixturevalue("engine" if transport == "unix" else "remote_engine")
    (git_env / ".ssh" / "known_hosts").unlink(missing_ok=True)  # only the repository's pin counts
    root, target = one_node_repo(tmp_path / "infra", eng, transport)
    yield root, target, transport, eng
    with closing(eng.client()) as c:
        remove_node_containers(c, target.split("/")[1])


def test_exec_passes_the_exit_code_through_and_keeps_stdout_and_stderr_apart(box):
    root, target, *_ = box
    done = run(root, "exec", target, "--", "sh", "-c", "echo out-1; echo err-1 >&2; echo out-2; exit 7", timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (7, "out-1\nout-2\n", "err-1\n")
    done = run(root, "exec", target, "--", "sh", "-c", "echo fine", timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "fine\n", "")


def docker_cli_exec(eng, container: str, *cmd: str) -> subprocess.CompletedProcess:
    """`docker exec` itself, on the node's own socket (the same engine)."""
    docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    return subprocess.run([docker, "-H", eng.unix_url, "exec", container, *cmd], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("command", ["no-such-command", "/etc/passwd"])  # not found; found, not executable
def test_exec_of_a_command_that_cannot_start_gives_the_code_docker_gives(box, command):
    root, target, _, eng = box
    done = run(root, "exec", target, "--", command, timeout=60)
    docker = docker_cli_exec(eng, f"{target.split('/')[1]}-box", command)
    assert docker.returncode in (126, 127), docker
    assert done.returncode == docker.returncode, (done, docker)
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: {target}: ") and command in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def _read_until(proc: subprocess.Popen, fd: int, want: bytes, seen: bytearray, timeout: float) -> bool:
    """Read ``fd`` into ``seen`` until ``want`` is in it (True) or ``timeout`` passed or it ended (False)."""
    deadline = time.monotonic() + timeout
    while want not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        seen += chunk
    return True


def test_exec_i_streams_our_input_as_it_is_written(box):
    """The first line reaches the command, and its answer comes back, while our stdin is still open; then
    the second line; then end of input reaches the command (its `cat` ends), and its exit code is ours."""
    root, target, transport, _ = box
    script = "read a; echo got:$a; echo err:$a >&2; read b; echo got:$b; cat >/dev/null; echo eof; exit 4"
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "exec", "-i", target,
                             "--", "sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = bytearray(), bytearray()
        proc.stdin.write(b"one\n")
        proc.stdin.flush()
        # Before the second line is written: the command has read the first and answered.
        assert _read_until(proc, proc.stdout.fileno(), b"got:one\n", out, 30), (transport, bytes(out))
        assert _read_until(proc, proc.stderr.fileno(), b"err:one\n", err, 30), (transport, bytes(err))
        assert proc.poll() is None
        proc.stdin.write(b"two\n")
        proc.stdin.flush()
        assert _read_until(proc, proc.stdout.fileno(), b"got:two\n", out, 30), (transport, bytes(out))
        time.sleep(0.3)
        assert proc.poll() is None and b"eof" not in out  # the command waits in `cat` for the end of our input
        rest, rest_err = proc.communicate(timeout=30)  # closes our end of its stdin first
    finally:
        proc.kill()
    assert bytes(out) + rest == b"got:one\ngot:two\neof\n", transport
    assert bytes(err) + rest_err == b"err:one\n", transport
    assert proc.returncode == 4


def test_exec_i_with_all_input_at_once_and_the_command_ending_first(box):
    """Piped input that is there at once (as `echo x | deployer exec -i`), and a command that ends before
    our input does: its output and exit code still come back, and we do not wait for our input's end."""
    root, target, *_ = box
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), "exec", "-i", target,
                           "--", "tr", "a-z", "A-Z"], input=b"shout\n" * 2000, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"SHOUT\n" * 2000, b"")
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "exec", "-i", target,
                             "--", "sh", "-c", "read a; echo first:$a; exit 2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 2  # our stdin is still open
        assert proc.stdout.read() == b"first:hello\n"
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.stdin.close()
