"""Connection errors as one line (deployer.engine.connect): the TLS file checks and describe().

The TLS files are made with openssl; the transport errors are the real ones,
from connections to loopback (a TLS server signed by another CA, a closed port,
a port that never sends an SSH banner), except DNS, which is built as urllib3
builds it (a lookup would leave the machine).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import paramiko
import pytest
import requests
import urllib3

from deployer.engine.connect import describe, shown_path, tls_file_problem
from tests.support.network import silent_port

NODE_DIR = "datacenters/dc/n1"
PROJECT = Path(__file__).resolve().parents[2]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def new_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}-key.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "1", "-subj", f"/CN={name}")
    return cert, key


def signed(d: Path, name: str, ca: tuple[Path, Path], san: str | None = None) -> tuple[Path, Path]:
    cert, key, csr = d / f"{name}.pem", d / f"{name}-key.pem", d / f"{name}.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
            "-out", str(csr), "-subj", f"/CN={name}")
    extra = []
    if san:
        (d / f"{name}.ext").write_text(f"subjectAltName = {san}\n")
        extra = ["-extfile", str(d / f"{name}.ext")]
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-out", str(cert), "-days", "1", *extra)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a client cert and key it signed, a server cert for 127.0.0.1, and a second, unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = new_ca(d, "ca")
    other = new_ca(d, "other-ca")
    client = signed(d, "client", ca)
    server = signed(d, "server", ca, san="IP:127.0.0.1")
    encrypted = d / "encrypted-key.pem"
    openssl("pkey", "-in", str(client[1]), "-aes256", "-passout", "pass:secret", "-out", str(encrypted))
    traditional = d / "encrypted-trad-key.pem"
    openssl("ec", "-in", str(client[1]), "-aes256", "-passout", "pass:secret", "-out", str(traditional))
    return {"ca": ca[0], "ca-key": ca[1], "other-ca": other[0], "other-key": other[1], "cert": client[0],
            "key": client[1], "server": server[0], "server-key": server[1], "encrypted": encrypted,
            "encrypted-trad": traditional}


@pytest.fixture
def repo(tmp_path, pki) -> Path:
    """A repository root whose node directory holds a good ca.pem, cert.pem and key.pem."""
    node = tmp_path / NODE_DIR
    node.mkdir(parents=True)
    for name in ("ca", "cert", "key"):
        (node / f"{name}.pem").write_bytes(pki[name].read_bytes())
    return tmp_path


def problem(repo: Path) -> str | None:
    node = repo / NODE_DIR
    return tls_file_problem(str(node / "ca.pem"), str(node / "cert.pem"), str(node / "key.pem"), repo)


# -- the TLS files, before connecting -------------------------------------------------------


def test_good_files_have_no_problem(repo):
    assert problem(repo) is None


@pytest.mark.parametrize("which, content, message", [
    ("ca", b"garbage\n", "ca file datacenters/dc/n1/ca.pem is not a PEM certificate"),
    ("ca", b"", "ca file datacenters/dc/n1/ca.pem is not a PEM certificate"),
    ("ca", "key", "ca file datacenters/dc/n1/ca.pem is not a PEM certificate"),
    ("cert", "key", "cert file datacenters/dc/n1/cert.pem is not a PEM certificate"),
    ("cert", b"\xff\xfe\x00binary", "cert file datacenters/dc/n1/cert.pem is not a PEM certificate"),
    ("key", b"garbage\n", "key file datacenters/dc/n1/key.pem is not a PEM private key"),
    ("key", "cert", "key file datacenters/dc/n1/key.pem is not a PEM private key"),
    ("key", "other-key", "cert file datacenters/dc/n1/cert.pem and key file datacenters/dc/n1/key.pem do not match"),
    ("key", "encrypted", "key file datacenters/dc/n1/key.pem is encrypted: the Docker TLS client needs it"),
    ("key", "encrypted-trad", "key file datacenters/dc/n1/key.pem is encrypted: the Docker TLS client needs it"),
])
def test_a_bad_file_is_named_with_what_is_wrong(repo, pki, which, content, message):
    data = pki[content].read_bytes() if isinstance(content, str) else content
    (repo / NODE_DIR / f"{which}.pem").write_bytes(data)
    found = problem(repo)
    assert found is not None and found.startswith(message), found
    assert "\n" not in found


@pytest.mark.parametrize("which", ["ca", "cert", "key"])
def test_a_missing_file(repo, which):
    (repo / NODE_DIR / f"{which}.pem").unlink()
    assert problem(repo) == f"{which} file {NODE_DIR}/{which}.pem does not exist"


def test_a_directory_or_a_fifo_is_not_a_file(repo):
    node = repo / NODE_DIR
    (node / "ca.pem").unlink()
    (node / "ca.pem").mkdir()
    assert problem(repo) == f"ca file {NODE_DIR}/ca.pem is not a file"
    (node / "key.pem").unlink()
    os.mkfifo(node / "key.pem")  # opening it would wait for a writer: never opened
    (node / "ca.pem").rmdir()
    (node / "ca.pem").write_bytes((node / "cert.pem").read_bytes())
    started = time.monotonic()
    assert problem(repo) == f"key file {NODE_DIR}/key.pem is not a file"
    assert time.monotonic() - started < 2


def as_nobody(fn) -> str:
    """fn() in a forked child that runs as the user nobody when we are root (its result as text)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(write, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_an_unreadable_file(pki):
    """As a user who may not read the key (root reads whatever the mode says, so the check runs as nobody)."""
    root = Path(tempfile.mkdtemp(prefix="deployer-unreadable-", dir="/tmp"))
    try:
        node = root / NODE_DIR
        node.mkdir(parents=True)
        for name in ("ca", "cert", "key"):
            (node / f"{name}.pem").write_bytes(pki[name].read_bytes())
        for d in (root, root / "datacenters", root / "datacenters/dc", node):
            d.chmod(0o755)
        for name in ("ca", "cert"):
            (node / f"{name}.pem").chmod(0o644)
        (node / "key.pem").chmod(0o600)
        args = (str(node / "ca.pem"), str(node / "cert.pem"), str(node / "key.pem"), str(root))
        assert as_nobody(lambda: tls_file_problem(*args)) == f"key file {NODE_DIR}/key.pem cannot be read: permission denied"
    finally:
        shutil.rmtree(root)


def test_files_outside_the_repository_keep_their_path(repo, pki, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "ca.pem"
    outside.write_text("not a certificate\n")
    node = repo / NODE_DIR
    assert tls_file_problem(str(outside), str(node / "cert.pem"), str(node / "key.pem"), repo) == (
        f"ca file {outside} is not a PEM certificate")
    assert shown_path(node / "ca.pem", repo) == f"{NODE_DIR}/ca.pem"
    assert shown_path(outside, repo) == str(outside)


# -- describe: real transport errors from loopback -------------------------------------------


class TLSServer:
    """A TLS server on 127.0.0.1 that answers one HTTP request per connection (or fails the handshake)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None,
                 version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.maximum_version = version
        self.ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with closing(conn):
                conn.settimeout(5)
                try:
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(4096)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
                except (ssl.SSLError, OSError):
                    pass

    def close(self) -> None:
        self.sock.close()


def failure(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:  # the error as the library raises it, wrappers and all
        return exc
    raise AssertionError("no error")


def test_wrong_ca_says_verification_failed_and_names_the_ca(pki):
    server = TLSServer(pki["server"], pki["server-key"])
    try:
        url = f"https://127.0.0.1:{server.port}/_ping"
        assert requests.get(url, verify=str(pki["ca"]), timeout=5).text == "OK"  # the right CA works
        exc = failure(lambda: requests.get(url, verify=str(pki["other-ca"]), timeout=5))
    finally:
        server.close()
    assert "Max retries exceeded" in str(exc)  # what the user saw before
    assert describe(exc, ca="datacenters/dc/n1/ca.pem") == (
        "TLS certificate verification failed (CERTIFICATE_VERIFY_FAILED): unable to get local issuer certificate: "
        "the engine's certificate is not signed by ca file datacenters/dc/n1/ca.pem")


def test_a_hostname_mismatch_says_so(pki):
    server = TLSServer(pki["server"], pki["server-key"])
    try:
        exc = failure(lambda: requests.get(f"https://localhost:{server.port}/", verify=str(pki["ca"]), timeout=5))
    finally:
        server.close()
    why = describe(exc)
    assert why.startswith("TLS certificate verification failed (CERTIFICATE_VERIFY_FAILED): Hostname mismatch"), why


@pytest.mark.parametrize("version, message", [
    # TLS 1.2: the server's alert arrives during the handshake
    (ssl.TLSVersion.TLSv1_2, "TLS handshake refused by the engine (TLSV1_ALERT_UNKNOWN_CA): "
                             "it does not accept the client certificate"),
    # TLS 1.3: the client's handshake is over when the server checks the certificate; the client
    # then reads the server's alert or, when the server has hung up first, the end of the stream
    (ssl.TLSVersion.TLSv1_3, ("TLS handshake refused by the engine (TLSV1_ALERT_UNKNOWN_CA): "
                              "it does not accept the client certificate",
                              "TLS handshake cut off: the engine closed the connection "
                              "(does it accept this client certificate, signed by its CA?)")),
])
def test_a_refused_client_certificate(pki, version, message):
    server = TLSServer(pki["server"], pki["server-key"], client_ca=pki["ca"], version=version)
    try:
        url = f"https://127.0.0.1:{server.port}/"
        assert requests.get(url, verify=str(pki["ca"]), cert=(str(pki["cert"]), str(pki["key"])), timeout=5).ok
        exc = failure(lambda: requests.get(url, verify=str(pki["ca"]),
                                           cert=(str(pki["other-ca"]), str(pki["other-key"])), timeout=5))
    finally:
        server.close()
    assert describe(exc) in ((message,) if isinstance(message, str) else message)


def test_plain_http_port_for_tls(pki):
    plain = socket.create_server(("127.0.0.1", 0))

    def answer():
        conn, _ = plain.accept()
        with closing(conn):
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        exc = failure(lambda: requests.get(f"https://127.0.0.1:{plain.getsockname()[1]}/",
                                           verify=str(pki["ca"]), timeout=5))
    finally:
        plain.close()
    assert describe(exc).startswith("TLS handshake failed (") and "does not speak TLS" in describe(exc)


def test_connection_refused():
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    exc = failure(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=5))
    assert "Max retries exceeded" in str(exc)
    assert describe(exc) == "connection refused"


def test_ssh_to_a_closed_port():
    """paramiko wraps the error per address (NoValidConnectionsError, "[Errno None] Unable to connect...")."""
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with closing(paramiko.SSHClient()) as client:
        exc = failure(lambda: client.connect("127.0.0.1", port=port, timeout=5))
    assert isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and "[Errno None]" in str(exc)
    assert describe(exc) == "connection refused"


def test_ssh_connect_timeout():
    """A real TCP connect timeout on loopback: a listener whose accept queue is full drops further SYNs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    queued = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(server.getsockname())
        queued.append(s)
    time.sleep(0.1)
    try:
        with closing(paramiko.SSHClient()) as client:
            started = time.monotonic()
            exc = failure(lambda: client.connect("127.0.0.1", port=server.getsockname()[1], timeout=0.5))
            assert time.monotonic() - started < 3
    finally:
        for s in queued:
            s.close()
        server.close()
    assert describe(exc) == "timed out"


def test_no_route_to_host_as_paramiko_reports_it():
    unreachable = OSError(errno.EHOSTUNREACH, "No route to host")
    exc = paramiko.ssh_exception.NoValidConnectionsError({("10.0.0.9", 2222): unreachable})
    assert describe(exc) == "no route to host"


def test_dns_failure_as_urllib3_reports_it():
    def lookup():
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as e:
            raise urllib3.exceptions.NameResolutionError("engine.invalid", None, e) from e

    def request():
        try:
            lookup()
        except urllib3.exceptions.NameResolutionError as e:
            raise requests.exceptions.ConnectionError(
                urllib3.exceptions.MaxRetryError(None, "/_ping", reason=e)) from None

    assert describe(failure(request)) == "DNS lookup failed: name or service not known"


def test_timeouts():
    def connect_timeout():
        try:
            raise TimeoutError("timed out")
        except TimeoutError as e:
            raise urllib3.exceptions.ConnectTimeoutError(None, "Connection to 10.0.0.1 timed out") from e

    assert describe(failure(connect_timeout)) == "connection timed out (no answer from the host)"
    assert describe(TimeoutError("timed out")) == "timed out"


def test_ssh_banner_not_received():
    server, accepted = silent_port()
    try:
        transport = paramiko.Transport(socket.create_connection(server.getsockname(), timeout=5))
        transport.banner_timeout = 0.3
        with closing(transport):
            exc = failure(lambda: transport.start_client(timeout=5))
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert describe(exc, timeout=0.3) == (
        "ssh banner not received within 0.3 s (the port accepts connections, no SSH server answers)")


def test_ssh_port_that_closes_at_once():
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    try:
        transport = paramiko.Transport(socket.create_connection(server.getsockname(), timeout=5))
        with closing(transport):
            exc = failure(lambda: transport.start_client(timeout=5))
    finally:
        server.close()
    assert describe(exc).startswith("ssh banner not received: the port closed the connection"), describe(exc)


def test_ssh_authentication_and_host_keys():
    assert describe(paramiko.AuthenticationException("Authentication failed.")) == (
        "SSH authentication failed: the server refused every key offered")
    assert describe(paramiko.SSHException("No authentication methods available")).startswith(
        "SSH authentication failed: no key to offer")
    key = paramiko.ECDSAKey.generate()
    changed = paramiko.BadHostKeyException("10.0.0.5", key, key)
    assert describe(changed).startswith("SSH host key for 10.0.0.5 has CHANGED (got ")
    unknown = paramiko.SSHException("Server '[10.0.0.5]:2222' not found in known_hosts")
    assert describe(unknown).endswith("--accept-host-key' or add it to the node's known_hosts")


def test_engine_errors_keep_their_text():
    """describe is also used for errors the engine answered with: those are passed on as they are."""
    assert describe(RuntimeError("conflict:  container   name in use")) == "conflict: container name in use"
    assert describe(FileNotFoundError("no such socket /x.sock: is dockerd running?")) == (
        "no such socket /x.sock: is dockerd running?")


# -- the transport libraries' own logging ------------------------------------------------


def run_logging(env_value: str | None, verbose: bool = False) -> subprocess.CompletedProcess:
    """A program that sets up logging as a command does, then logs as the transport libraries and as itself."""
    code = "import logging\nfrom deployer.cli.options import setup_logging\n"
    if verbose:  # as registrator -v: the command configures logging, then asks for the libraries' records
        code += "logging.basicConfig()\n"
    code += (f"setup_logging(verbose={verbose})\n"
             "for name in ('paramiko.transport', 'urllib3.connectionpool', 'docker.api'):\n"
             "    logging.getLogger(name).error('%s says: Traceback (most recent call last)', name)\n"
             "logging.getLogger('deployer.test').warning('our own warning')\n")
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYER_DEBUG"}
    if env_value is not None:
        env["DEPLOYER_DEBUG"] = env_value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)


def test_transport_logging_stays_off_stderr_by_default():
    done = run_logging(None)
    assert done.returncode == 0
    assert done.stderr == "our own warning\n"  # Python's last resort still prints other records


def test_transport_logging_with_verbose_or_deployer_debug():
    for done in (run_logging(None, verbose=True), run_logging("1")):
        assert done.returncode == 0, done.stderr
        for name in ("paramiko.transport", "urllib3.connectionpool", "docker.api"):
            assert f"{name} says" in done.stderr
    assert run_logging("0").stderr == "our own warning\n"


def test_deployer_debug_takes_one_or_zero(tmp_path):
    env = {k: v for k, v in os.environ.items()} | {"DEPLOYER_DEBUG": "yes"}
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(tmp_path), "status"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 3
    assert "DEPLOYER_DEBUG='yes': write DEPLOYER_DEBUG=1 for debug logging on stderr, or 0" in done.stderr
    assert "Traceback" not in done.stderr
