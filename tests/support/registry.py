"""A private TLS Docker registry for tests and demos.

Runs Debian's ``docker-registry serve config.yml`` (distribution 2.8) with an
openssl-made CA and a server certificate for the address it listens on, storage
in a temp dir. Docker daemons trust it through
``/etc/docker/certs.d/HOST:PORT/ca.crt``: that directory is machine-wide, so the
HOST:PORT is one this registry alone owns (an address on the caller's own
bridge, a free port), and ``stop()`` removes exactly that one file and its
directory. ``pause()``/``resume()`` stop and restart the process on the same
address and storage, for "registry down" tests.

    with RegistryServer("10.250.3.1") as reg:
        reg.address   # "10.250.3.1:41234", the prefix of image references
        reg.ca        # path of the CA certificate

``auth=`` adds the config's ``auth:`` section: ``htpasswd_auth(write_htpasswd(path, users))``
(bcrypt hashes), or ``token_auth(...)`` with the token server of tests/support/token_issuer.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CERTS_D = Path("/etc/docker/certs.d")


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
REGISTRY_BIN = "docker-registry"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_ca_and_server_cert(directory: Path, ip: str, name: str = "deployer test") -> tuple[Path, Path, Path]:
    """Write ca.crt, server.crt and server.key (SAN IP:ip, serverAuth) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        f"subjectAltName=IP:{ip}\n"
        "extendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "basicConstraints=critical,CA:FALSE\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2", "-subj", f"/CN={name} CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_crt, crt, key


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file of bcrypt hashes, the only kind distribution's htpasswd auth reads."""
    import bcrypt

    path.write_text("".join(f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=6)).decode()}\n"
                            for user, pw in users.items()))
    return path


def htpasswd_auth(path: Path, realm: str = "deployer-test") -> str:
    """The registry config's ``auth:`` section for an htpasswd file."""
    return f"auth:\n  htpasswd:\n    realm: {realm}\n    path: {path}\n"


def token_auth(realm: str, service: str, issuer: str, rootcertbundle: Path) -> str:
    """The registry config's ``auth:`` section for a token server (tests/support/token_issuer.py)."""
    return (f"auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n"
            f"    rootcertbundle: {rootcertbundle}\n")


class RegistryServer:
    def __init__(self, host: str, port: int | None = None, root: str | os.PathLike | None = None,
                 trust_in_certs_d: bool = True, auth: str = ""):
        self.auth = auth  # the config's "auth:" section (htpasswd_auth(), token_auth()), "" for none
        self.host = host
        self.port = port or _free_port(host)
        self.address = f"{host}:{self.port}"
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="deployer-registry-"))
        self.storage = self.root / "storage"
        self.config = self.root / "config.yml"
        self.log_path = self.root / "registry.log"
        self.trust_in_certs_d = trust_in_certs_d
        self.certs_d_dir = CERTS_D / self.address
        self.ca: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._installed_ca: Path | None = None

    def __enter__(self) -> "RegistryServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def start(self) -> "RegistryServer":
        if shutil.which(REGISTRY_BIN) is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        try:
            self.ca, crt, key = make_ca_and_server_cert(self.root / "tls", self.host)
            self.storage.mkdir(parents=True, exist_ok=True)
            self.config.write_text(
                "version: 0.1\n"
                "log:\n  level: info\n  accesslog:\n    disabled: false\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {self.storage}\n"
                "  delete:\n    enabled: true\n"
                "http:\n"
                f"  addr: {self.address}\n"
                "  tls:\n"
                f"    certificate: {crt}\n"
                f"    key: {key}\n"
                + self.auth
            )
            self._save_state()
            if self.trust_in_certs_d:
                if self.certs_d_dir.exists():
                    raise RuntimeError(f"{self.certs_d_dir} already exists: another registry uses {self.address}")
                self.certs_d_dir.mkdir(parents=True)
                self._installed_ca = self.certs_d_dir / "ca.crt"
                shutil.copyfile(self.ca, self._installed_ca)
                self._save_state()
            self.resume()
        except BaseException:
            self.stop()
            raise
        return self

    def resume(self, timeout: float = 10.0) -> None:
        """Start (or restart) the registry process and wait until it answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self._save_state()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry not listening on {self.address}: {self._log_tail()}") from e
                time.sleep(0.05)

    def pause(self) -> None:
        """Stop the process (storage and address are kept, ``resume()`` brings it back)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)

    def _save_state(self) -> None:
        state = {
            "owner": os.getpid(), "owner_start": _process_start(os.getpid()),
            "pid": self._proc.pid if self._proc is not None else None,
            "certs_d": str(self._installed_ca) if self._installed_ca else None,
        }
        (self.root / "state.json").write_text(json.dumps(state))

    @classmethod
    def sweep_stale(cls) -> list[str]:
        """Remove registries (process, certs.d file, storage) left by a process
        that died without stopping them. Only ``deployer-registry-*`` roots that
        recorded their owner are looked at; a live owner's are left alone."""
        swept = []
        for root in Path(tempfile.gettempdir()).glob("deployer-registry-*"):
            try:
                state = json.loads((root / "state.json").read_text())
            except (OSError, ValueError):
                continue
            if _process_start(state["owner"]) == state.get("owner_start"):
                continue
            pid = state.get("pid")
            if pid and str(root) in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            certs = state.get("certs_d")
            if certs and Path(certs).parent.parent == CERTS_D:
                Path(certs).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    Path(certs).parent.rmdir()
            shutil.rmtree(root, ignore_errors=True)
            swept.append(str(root))
        return swept

    def stop(self) -> None:
        self.pause()
        if self._installed_ca is not None:
            self._installed_ca.unlink(missing_ok=True)
            try:
                self.certs_d_dir.rmdir()
            except OSError:
                pass
            self._installed_ca = None
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self, n: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
