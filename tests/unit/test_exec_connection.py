"""ExecConnection, the attach connection of ``exec -i``: our input copied as it comes, its end told to the
other side while the output still comes back; over a plain socket and over TLS (a local socket pair, no engine).

The TLS case is the one that matters: ``SSLSocket.shutdown`` would drop the TLS layer for reading too (the
command's output after the end of our input would be read as raw TLS records); the end of input must be a
TCP half-close under the TLS layer, which the engine (Go's TLS) reads as end of file at a record boundary."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path

import pytest

from deployer.engine.containers import ExecConnection


class Api:
    """The one docker-py APIClient method ExecConnection calls (what it does there is docker-py's affair)."""

    def __init__(self) -> None:
        self.disabled: list = []

    def _disable_socket_timeout(self, sock) -> None:
        self.disabled.append(sock)


def chunks(*parts: bytes):
    """A stdin reader handing out ``parts`` one by one, then b"" (end of input)."""
    it = iter(parts)
    return lambda: next(it, b"")


def read_all(sock) -> bytes:
    got = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return got
        got += data


def test_a_plain_socket_gets_our_input_then_its_end_and_answers_after_it():
    ours, theirs = socket.socketpair()
    api = Api()
    conn = ExecConnection(api, ours)
    assert api.disabled == [ours] and conn.sock is ours
    feeder = threading.Thread(target=conn.feed, args=(chunks(b"one\n", b"two\n"),))
    feeder.start()
    assert read_all(theirs) == b"one\ntwo\n"  # ends: our end of input came through
    feeder.join(5)
    theirs.sendall(b"answer after the end of input")
    theirs.close()
    assert read_all(conn) == b"answer after the end of input"
    conn.close()


def test_a_feeder_stops_quietly_when_the_command_went_first():
    ours, theirs = socket.socketpair()
    conn = ExecConnection(Api(), ours)
    theirs.close()  # the command ended, the engine closed the connection
    endless = lambda: b"x" * 65536  # noqa: E731 - input that never ends
    feeder = threading.Thread(target=conn.feed, args=(endless,))
    feeder.start()
    feeder.join(5)
    assert not feeder.is_alive()
    conn.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engine")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_over_tls_the_end_of_input_is_a_half_close_under_tls_and_the_answer_still_reads(certificate,
                                                                                         tls_version):
    cert, key = certificate
    a, b = socket.socketpair()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.minimum_version = server_ctx.maximum_version = tls_version
    # As the engine's TLS (Go) reads it: a TCP end of file at a record boundary is the end of input, and
    # writing goes on (OpenSSL would otherwise take it for a truncation and fail the connection).
    server_ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    client_ctx.check_hostname = False
    heard: dict = {}

    def engine() -> None:  # reads our input to its end, then answers (as a command reading stdin first)
        with server_ctx.wrap_socket(b, server_side=True) as tls:
            heard["input"] = read_all(tls)  # b"" at the TCP half-close (a ragged EOF, suppressed)
            tls.sendall(b"answer after the end of input")

    server = threading.Thread(target=engine)
    server.start()
    ours = client_ctx.wrap_socket(a)  # the handshake, as docker-py's connection did it
    conn = ExecConnection(Api(), ours)
    conn.feed(chunks(b"one\n", b"two\n"))
    server.join(10)
    assert heard["input"] == b"one\ntwo\n"
    assert read_all(conn) == b"answer after the end of input"
    conn.close()
