"""Connection errors are one line naming the node, the URL and the cause, with the real parts.

A silent ssh port is a plain TCP listener on loopback that accepts and never
sends a banner; the TLS cases reach the fleet's ``remote`` node (dockerd with
``--tlsverify`` in its network namespace) with broken or foreign client files
committed in the node's directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deployer.engine.connect import CONNECT_TIMEOUT
from tests.support import network
from tests.support.repos import git, make_repo, run, web_compose

WEB1 = "deployer-test/web:1"


def only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never sends a byte; its port number."""
    server, _accepted = network.silent_port()
    yield server.getsockname()[1]
    server.close()


def test_silent_ssh_port_is_one_line_within_the_banner_timeout(tmp_path, silent_port):
    url = f"ssh://root@127.0.0.1:{silent_port}"
    root, node = make_repo(tmp_path / "infra", url, web_compose(WEB1))
    banner = f"node test/{node} ({url}): ssh banner not received within {CONNECT_TIMEOUT} s"

    started = time.monotonic()
    done = run(root, "status", timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 1
    assert done.stderr == ""  # no paramiko traceback, no log record
    row = only_line(done.stdout.split("\n", 1)[1])  # below the table's header
    assert row.startswith(f"test/{node}/web") and "unreachable" in row and banner in row, row
    assert CONNECT_TIMEOUT - 0.5 < took < CONNECT_TIMEOUT + 5, took

    before = git(root, "rev-parse", "HEAD")
    done = run(root, "deploy", "deployer-test/web:2", f"test/{node}", timeout=60)
    assert done.returncode == 1
    line = only_line(done.stderr)
    assert line.startswith(f"error: {banner} (the port accepts connections, no SSH server answers)"), line
    assert git(root, "rev-parse", "HEAD") == before and git(root, "status", "--porcelain") == ""


def test_deployer_debug_shows_paramikos_own_log(tmp_path, silent_port):
    url = f"ssh://root@127.0.0.1:{silent_port}"
    root, node = make_repo(tmp_path / "infra", url, web_compose(WEB1))
    done = run(root, "plan", timeout=60, env=os.environ | {"DEPLOYER_DEBUG": "1"})
    assert done.returncode == 1
    assert f"{node}: ERROR node test/{node} ({url}): ssh banner not received" in done.stdout
    assert "ERROR paramiko.transport: Exception (client): Error reading SSH protocol banner" in done.stderr


# -- TLS ----------------------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    """A CA the fleet does not know, and a client certificate and key it signed."""
    d = tmp_path_factory.mktemp("foreign")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(d / "ca-key.pem"), "-out", str(d / "ca.pem"), "-days", "1", "-subj", "/CN=not the fleet CA")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(d / "key.pem"), "-out", str(d / "client.csr"), "-subj", "/CN=stranger")
    openssl("x509", "-req", "-in", str(d / "client.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca-key.pem"),
            "-CAcreateserial", "-out", str(d / "cert.pem"), "-days", "1")
    return {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}


def tls_repo(tmp_path: Path, remote_engine, change=None) -> tuple[Path, str, str]:
    """A committed repository whose node reaches ``remote`` over TLS with ca/cert/key.pem in its directory;
    ``change(node_dir)`` alters the files first. Returns (root, node, node directory relative to root)."""
    root, node = make_repo(tmp_path / "infra", remote_engine.tls_url, web_compose(WEB1))
    rel = f"datacenters/test/{node}"
    node_dir = root / rel
    (node_dir / "node.yml").write_text(f"docker: {remote_engine.tls_url}\n"
                                       "tls:\n  ca: ca.pem\n  cert: cert.pem\n  key: key.pem\n")
    for name in ("ca", "cert", "key"):
        shutil.copy(Path(remote_engine.tls_dir) / f"{name}.pem", node_dir / f"{name}.pem")
    if change is not None:
        change(node_dir)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tls files")
    return root, node, rel


def test_good_tls_files_reach_the_engine(tmp_path, remote_engine):
    root, node, _ = tls_repo(tmp_path, remote_engine)
    done = run(root, "status", timeout=60)
    assert done.stderr == "" and "missing" in done.stdout, done.stdout


@pytest.mark.parametrize("change, problem", [
    (lambda d: (d / "ca.pem").write_text("garbage, not PEM\n"), "ca file {rel}/ca.pem is not a PEM certificate"),
    (lambda d: shutil.copy(d / "key.pem", d / "cert.pem"), "cert file {rel}/cert.pem is not a PEM certificate"),
    (lambda d: (d / "key.pem").unlink(), "key file {rel}/key.pem does not exist"),
], ids=["garbage-ca", "cert-is-a-key", "missing-key"])
def test_a_bad_tls_file_is_named(tmp_path, remote_engine, change, problem):
    root, node, rel = tls_repo(tmp_path, remote_engine, change)
    expected = f"node test/{node} ({remote_engine.tls_url}): {problem.format(rel=rel)}"

    done = run(root, "status", timeout=60)
    assert done.returncode == 1 and done.stderr == ""
    assert expected in only_line(done.stdout.split("\n", 1)[1])

    done = run(root, "deploy", "deployer-test/web:2", f"test/{node}", timeout=60)
    assert done.returncode == 3  # the repository's files are wrong: bad input
    assert only_line(done.stderr) == f"error: {expected}"
    assert "HTTPSConnectionPool" not in done.stderr and "SSLError" not in done.stderr


def test_wrong_ca_says_verification_failed(tmp_path, remote_engine, foreign):
    root, node, rel = tls_repo(tmp_path, remote_engine, lambda d: shutil.copy(foreign["ca"], d / "ca.pem"))
    done = run(root, "deploy", "deployer-test/web:2", f"test/{node}", timeout=60)
    assert done.returncode == 1
    assert only_line(done.stderr) == (
        f"error: node test/{node} ({remote_engine.tls_url}): TLS certificate verification failed "
        "(CERTIFICATE_VERIFY_FAILED): unable to get local issuer certificate: the engine's certificate is not "
        f"signed by ca file {rel}/ca.pem")


def test_client_certificate_from_another_ca_is_refused(tmp_path, remote_engine, foreign):
    def foreign_client(d: Path) -> None:
        shutil.copy(foreign["cert"], d / "cert.pem")
        shutil.copy(foreign["key"], d / "key.pem")

    root, node, _ = tls_repo(tmp_path, remote_engine, foreign_client)
    done = run(root, "deploy", "deployer-test/web:2", f"test/{node}", timeout=60)
    assert done.returncode == 1
    line = only_line(done.stderr)
    assert line.startswith(f"error: node test/{node} ({remote_engine.tls_url}): TLS handshake "), line
    assert "client certificate" in line
