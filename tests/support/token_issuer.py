"""A small registry token server for tests: distribution's ``auth: token`` flow, for real.

An HTTP server (a thread of the test process, plain HTTP on the address given)
that answers ``GET /token?service=...&scope=...`` with Basic credentials (or
``POST /token`` with ``grant_type=refresh_token``, for identity tokens) with a
JWT the registry trusts: ES256 (P-256, the signature as JOSE's r||s), the
signing certificate in the ``x5c`` header. Distribution (registry/auth/token)
takes the key from ``x5c`` first and verifies that certificate against its
``rootcertbundle``; the certificate here is self-signed and is that bundle.
Claims: ``iss`` the issuer, ``aud`` the service, ``sub`` the user, ``exp``/``nbf``/
``iat``, a ``jti`` and ``access`` granting every action asked for.

    with TokenIssuer("10.250.3.1", users={"alice": "pw"}) as issuer:
        issuer.realm       # "http://10.250.3.1:41235/token"
        issuer.cert_path   # the registry's rootcertbundle
        issuer.requests    # [(user, [scopes]), ...]: each token issued
        issuer.refused     # [user tried (None: anonymous), ...]: each request refused

``stop()`` closes the socket (the "token server down" case).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SERVICE = "deployer-test-registry"
ISSUER = "deployer-test-issuer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deployer test token signer")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def parse_scope(scope: str) -> dict | None:
    """``repository:team/app:pull,push`` -> distribution's access entry."""
    parts = scope.split(":")
    if len(parts) < 3:
        return None
    kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1]
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


class TokenIssuer:
    def __init__(self, host: str, users: dict[str, str], identity_tokens: dict[str, str] | None = None,
                 ttl: int = 300):
        self.host = host
        self.users = dict(users)
        self.identity_tokens = dict(identity_tokens or {})  # refresh token -> user
        self.ttl = ttl
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _self_signed(self.key)
        self.dir = Path(tempfile.mkdtemp(prefix="deployer-token-issuer-"))
        self.cert_path = self.dir / "token-signer.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str | None, list[str]]] = []
        self.refused: list[str | None] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def __enter__(self) -> "TokenIssuer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, port: int = 0) -> "TokenIssuer":
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                if url.path != "/token":
                    return self._send(404, {"errors": [{"code": "NOT_FOUND"}]})
                query = parse_qs(url.query)
                user, ok = issuer._basic_user(self.headers.get("Authorization", ""))
                if not ok:
                    return self._refuse(user)
                self._issue(user, query)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                if form.get("grant_type", [""])[0] == "refresh_token":
                    user = issuer.identity_tokens.get(form.get("refresh_token", [""])[0])
                elif form.get("grant_type", [""])[0] == "password":
                    name, pw = form.get("username", [""])[0], form.get("password", [""])[0]
                    user = name if issuer.users.get(name) == pw else None
                else:
                    user = None
                if user is None:
                    return self._refuse(form.get("username", [None])[0])
                self._issue(user, form, oauth=True)

            def _issue(self, user: str | None, query: dict, oauth: bool = False) -> None:
                if user is None:  # anonymous: this issuer gives nothing to nobody
                    return self._refuse(None)
                scopes = query.get("scope", [])
                issuer.requests.append((user, scopes))
                token = issuer.token(user, query.get("service", [SERVICE])[0], scopes)
                body = {"token": token, "access_token": token, "expires_in": issuer.ttl,
                        "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}
                if oauth:
                    body.pop("token")  # the OAuth2 answer names it access_token only
                self._send(200, body)

            def _refuse(self, user: str | None) -> None:
                issuer.refused.append(user)
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                           {"WWW-Authenticate": 'Basic realm="token"'})

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((self.host, port or self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _basic_user(self, header: str) -> tuple[str | None, bool]:
        """(user, credentials valid): (None, True) without credentials (anonymous)."""
        if not header.lower().startswith("basic "):
            return None, True
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None, False
        return user, self.users.get(user) == password

    def token(self, user: str, service: str, scopes: list[str]) -> str:
        now = int(time.time())
        access = [a for a in (parse_scope(s) for s in scopes) if a]
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": service, "exp": now + self.ttl, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
