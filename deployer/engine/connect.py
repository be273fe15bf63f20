"""How to reach a node's Docker engine: one way per URL scheme.

* ``unix:///var/run/docker.sock`` — a local socket.
* ``tcp://host:2376`` — TLS with a client certificate (docker-machine style).
  ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the environment are ignored: the CA
  written for the node is the one that counts.
* ``ssh://user@host[:port]`` — the engine API tunnelled over SSH with paramiko.
  Host keys are verified strictly, against the node's ``known_hosts`` file in
  the repository (so every operator and CI pin the same key) and the user's
  ``~/.ssh/known_hosts``; ``~/.ssh/config`` supplies user, port, identity file
  and ProxyJump/ProxyCommand.

Nothing above this module knows which transport is in use: ``connect(node)``
returns a ``docker.DockerClient`` that has answered a ping.

Every failure to get there is one line, ``node DC/NODE (URL): cause``: the TLS
files are checked before any connection (each exists, is a file, parses as PEM;
the cert and key belong together), named relative to the repository; transport
errors are read through their wrappers (requests -> urllib3 -> ssl / socket,
paramiko) by :func:`describe`. (paramiko's, urllib3's and docker-py's own log
records are kept off stderr by the CLI: ``cli.options.setup_logging``.)
"""

from __future__ import annotations

import errno
import importlib
import os
import socket
import ssl
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.errors import HostError, HostUnreachable, TLSFileError

if TYPE_CHECKING:  # pragma: no cover
    import docker

    from deployer.model import Node

DEFAULT_TIMEOUT = 30  # seconds for one engine API call
CONNECT_TIMEOUT = 10  # seconds to establish a connection
API_VERSION = "1.41"  # Docker 20.10; newer engines still speak it


def connect(node: "Node", root: str | Path, timeout: float = DEFAULT_TIMEOUT) -> "docker.DockerClient":
    """A client for the node's engine that has answered a ping, or HostUnreachable."""
    url = node.docker
    context = {"timeout": min(CONNECT_TIMEOUT, timeout),
               "ca": shown_path(node.tls.ca, root) if node.tls is not None else None}
    try:
        if url.startswith("unix://"):
            client = _unix(url, timeout)
        elif url.startswith("tcp://"):
            client = _tls(node, Path(root), url, timeout)
        elif url.startswith("ssh://"):
            client = _ssh(node, Path(root), url, timeout)
        else:
            raise HostError(node.target, url, "unsupported URL scheme")
        _ping(client, node, url, context)
        return client
    except HostError:
        raise
    except Exception as exc:  # every transport failure, reported in one line
        raise HostUnreachable(node.target, url, describe(exc, **context)) from None


# -- one line for a transport error --------------------------------------------------------


def _chain(exc: BaseException):
    """``exc`` and what it wraps, outermost first: causes, contexts, urllib3's ``reason``, exceptions in
    ``args``, and the error per address of paramiko's NoValidConnectionsError (``errors``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        per_address = getattr(e, "errors", None)
        inner = [getattr(e, "reason", None), e.__cause__, None if e.__suppress_context__ else e.__context__,
                 *e.args, *(per_address.values() if isinstance(per_address, dict) else ())]
        todo += [i for i in inner if isinstance(i, BaseException)]


def _first(chain: list[BaseException], kind) -> BaseException | None:
    return next((e for e in chain if isinstance(e, kind)), None)


#: ssl's reasons for an engine that refused our client certificate (TLS alerts it sent).
_CLIENT_CERT_REFUSED = ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                        "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR")


_SOCKET_ERRORS = {errno.EHOSTUNREACH: "no route to host", errno.ENETUNREACH: "network is unreachable",
                  errno.ECONNRESET: "connection reset by the engine"}


def describe(exc: BaseException, timeout: float = CONNECT_TIMEOUT, ca: str | None = None) -> str:
    """One line for a transport error, read through its wrappers (requests, urllib3, docker-py).

    ``timeout`` is the connect timeout that was in force (the ssh banner waits that
    long), ``ca`` the node's CA file as shown to the user (named when verification fails).
    """
    chain = list(_chain(exc))
    paramiko = sys.modules.get("paramiko")  # not loaded: not a paramiko error
    if paramiko is not None:
        why = _describe_ssh(paramiko, chain, timeout)
        if why:
            return why
    verify = _first(chain, ssl.SSLCertVerificationError)
    if verify is not None:
        what = getattr(verify, "verify_message", None) or verify.reason or "certificate verify failed"
        if getattr(verify, "verify_code", None) in (18, 19, 20, 21):  # self-signed, issuer unknown
            what += f": the engine's certificate is not signed by {f'ca file {ca}' if ca else 'the CA in tls.ca'}"
        return f"TLS certificate verification failed (CERTIFICATE_VERIFY_FAILED): {what}"
    tls = _first(chain, ssl.SSLError)
    if tls is not None:
        reason = getattr(tls, "reason", None) or ""
        if reason in _CLIENT_CERT_REFUSED:
            return f"TLS handshake refused by the engine ({reason}): it does not accept the client certificate"
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return f"TLS handshake failed ({reason}): the port does not speak TLS (plain HTTP, or another service?)"
        if isinstance(tls, ssl.SSLEOFError):
            return ("TLS handshake cut off: the engine closed the connection "
                    "(does it accept this client certificate, signed by its CA?)")
        return f"TLS error: {reason or ' '.join(str(tls).split())}"
    gai = _first(chain, socket.gaierror)
    if gai is not None:
        return f"DNS lookup failed: {(gai.strerror or str(gai)).lower()}"
    if _first(chain, ConnectionRefusedError) is not None:
        return "connection refused"
    for e in chain:
        if type(e).__name__ in ("ConnectTimeoutError", "ConnectTimeout"):
            return "connection timed out (no answer from the host)"
        if type(e).__name__ in ("ReadTimeoutError", "ReadTimeout"):
            return "timed out waiting for the engine's answer"
    if _first(chain, TimeoutError) is not None:
        return "timed out"
    for e in chain:
        if isinstance(e, OSError) and e.errno in _SOCKET_ERRORS:
            return _SOCKET_ERRORS[e.errno]
    text = str(exc)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "Connection refused", "timed out", "No route to host",
                   "Name or service not known", "No such file or directory", "Permission denied"):
        if marker in text:
            if marker == "CERTIFICATE_VERIFY_FAILED":
                return "TLS certificate verification failed (CERTIFICATE_VERIFY_FAILED): check the node's tls.ca"
            return marker.lower()
    return " ".join(text.split()) or type(exc).__name__


def _describe_ssh(paramiko, chain: list[BaseException], timeout: float) -> str | None:
    bad_key = _first(chain, paramiko.BadHostKeyException)
    if bad_key is not None:
        return (f"SSH host key for {bad_key.hostname} has CHANGED (got {bad_key.key.get_name()} "
                f"{bad_key.key.get_base64()[:16]}...); refusing to connect. If the host was rebuilt, "
                "update the node's known_hosts")
    auth = _first(chain, paramiko.AuthenticationException)
    if auth is not None:
        if str(auth).strip() == "Authentication failed.":
            return "SSH authentication failed: the server refused every key offered"
        return f"SSH authentication failed: {' '.join(str(auth).split())}"
    failure = _first(chain, paramiko.SSHException)
    if failure is None:
        return None
    text = " ".join(str(failure).split())
    if "not found in known_hosts" in text:
        return (f"{text}; the host key is not known: accept it with "
                "'deployer node add DC/NODE --docker URL --accept-host-key' or add it to the node's known_hosts")
    if text.startswith("Error reading SSH protocol banner"):
        cause = failure.__cause__ or failure.__context__
        if isinstance(cause, (EOFError, ConnectionResetError)):
            return "ssh banner not received: the port closed the connection (is an SSH server listening there?)"
        return f"ssh banner not received within {timeout:g} s (the port accepts connections, no SSH server answers)"
    if text == "No existing session":  # the handshake timer fired before the transport reported why
        return f"ssh handshake not finished within {timeout:g} s (no SSH banner or key exchange)"
    if text == "No authentication methods available":
        return ("SSH authentication failed: no key to offer (set identity_file in node.yml, "
                "IdentityFile in ~/.ssh/config, or add the key to ssh-agent)")
    return None


def _ping(client: "docker.DockerClient", node: "Node", url: str, context: dict | None = None) -> None:
    try:
        client.api.ping()
    except Exception as exc:
        raise HostUnreachable(node.target, url, describe(exc, **(context or {}))) from None


# -- TLS files, checked before connecting --------------------------------------------------


def shown_path(path: str | Path, root: str | Path) -> str:
    """A file as the user wrote it: relative to the repository when inside it, else as it is."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def tls_file_problem(ca: str, cert: str, key: str, root: str | Path) -> str | None:
    """What is wrong with a node's TLS files, naming the file (relative to ``root`` when inside it); None if nothing.

    Each file must exist, be a readable file and parse as PEM (ca and cert as
    certificates, key as an unencrypted private key), and the key must be the cert's.
    """
    names = {"ca": shown_path(ca, root), "cert": shown_path(cert, root), "key": shown_path(key, root)}
    for kind, path in (("ca", ca), ("cert", cert), ("key", key)):
        problem = _unreadable(path)
        if problem:
            return f"{kind} file {names[kind]} {problem}"
    for kind, path in (("ca", ca), ("cert", cert)):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except ssl.SSLError:
            return f"{kind} file {names[kind]} is not a PEM certificate"
    asked = []

    def password() -> bytes:  # only an encrypted key asks; without this OpenSSL would prompt on the terminal
        asked.append(True)
        return b""

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=password)
    except ssl.SSLError as exc:
        if asked:
            return f"key file {names['key']} is encrypted: the Docker TLS client needs it without a passphrase"
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"cert file {names['cert']} and key file {names['key']} do not match (the key is not the cert's)"
        return f"key file {names['key']} is not a PEM private key"
    return None


def _unreadable(path: str) -> str | None:
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isfile(path):
        return "is not a file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot be read: {(exc.strerror or str(exc)).lower()}"
    return None


_IMPORT_LOCK = threading.Lock()


def import_docker(ssh: bool = False):
    """The docker module; with ``ssh`` its paramiko-based SSH adapter is loaded too.

    docker-py imports paramiko (about 0.1 s) at import time for ssh:// support.
    Commands that only reach unix:// and tcp:// engines skip that: docker-py
    leaves its SSH adapter out when paramiko cannot be imported, and the first
    ssh:// node loads and installs it.
    """
    with _IMPORT_LOCK:
        if "docker" not in sys.modules and not ssh and "paramiko" not in sys.modules:
            sys.modules["paramiko"] = None  # type: ignore[assignment]  # "cannot import" for docker.transport
            try:
                importlib.import_module("docker")
            finally:
                if sys.modules.get("paramiko", 0) is None:
                    del sys.modules["paramiko"]
        import docker

        if ssh:
            import docker.api.client as api_client
            import docker.transport as transport

            if not hasattr(api_client, "SSHHTTPAdapter"):
                from docker.transport.sshconn import SSHHTTPAdapter

                api_client.SSHHTTPAdapter = SSHHTTPAdapter
                transport.SSHHTTPAdapter = SSHHTTPAdapter
        return docker


def _unix(url: str, timeout: float) -> "docker.DockerClient":
    docker = import_docker()

    path = url[len("unix://"):]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such socket {path}: is dockerd running?")
    return docker.DockerClient(base_url=url, version=API_VERSION, timeout=timeout)


def _tls(node: "Node", root: Path, url: str, timeout: float) -> "docker.DockerClient":
    tls = None
    if node.tls is not None:
        problem = tls_file_problem(node.tls.ca, node.tls.cert, node.tls.key, root)
        if problem:
            raise TLSFileError(node.target, url, problem)
    docker = import_docker()
    from docker.tls import TLSConfig

    if node.tls is not None:
        tls = TLSConfig(client_cert=(node.tls.cert, node.tls.key), ca_cert=node.tls.ca, verify=True)
    client = docker.DockerClient(base_url=url, tls=tls or False, version=API_VERSION, timeout=timeout)
    # requests would otherwise let REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace our CA.
    client.api.trust_env = False
    return client


def _ssh(node: "Node", root: Path, url: str, timeout: float) -> "docker.DockerClient":
    docker = import_docker(ssh=True)

    # use_ssh_client=True makes docker-py skip its own paramiko connection (which
    # would only know ~/.ssh/known_hosts); we mount our adapter in its place.
    client = docker.DockerClient(base_url=url, use_ssh_client=True, version=API_VERSION, timeout=timeout)
    adapter = _PinnedSSHAdapter(
        url,
        timeout=timeout,
        known_hosts=str(root / node.known_hosts) if node.known_hosts else None,
        identity_file=node.identity_file,
    )
    client.api._custom_adapter = adapter
    client.api.mount("http+docker://ssh", adapter)
    return client


def _ssh_adapter_class():
    from docker.transport.sshconn import SSHHTTPAdapter

    class PinnedSSHAdapter(SSHHTTPAdapter):
        """docker-py's paramiko adapter, verifying host keys against pinned files."""

        def __init__(self, base_url, timeout, known_hosts, identity_file):
            self._known_hosts = known_hosts
            self._identity_file = identity_file
            self._connect_timeout = min(CONNECT_TIMEOUT, timeout)
            self._hops: list = []  # ProxyJump clients, closed with the adapter
            super().__init__(base_url, timeout=timeout, shell_out=False)

        def _connect(self):
            super()._connect()
            transport = self.ssh_client.get_transport() if self.ssh_client else None
            if transport is None:
                return
            transport.set_keepalive(5)
            # docker-py opens a channel per connection without a timeout, and
            # paramiko then waits up to an hour for a host that went away.
            open_session = transport.open_session
            limit = self._connect_timeout

            def open_session_with_timeout(*args, **kwargs):
                kwargs["timeout"] = kwargs.get("timeout") or limit
                return open_session(*args, **kwargs)

            transport.open_session = open_session_with_timeout

        def close(self):
            try:
                super().close()
            finally:
                for hop in self._hops:
                    hop.close()

        def _create_paramiko_client(self, base_url):
            import paramiko

            super()._create_paramiko_client(base_url)
            if self._identity_file:
                self.ssh_params["key_filename"] = self._identity_file
            # ~/.ssh/config gives the port as a string; paramiko compares it with
            # the int 22 to pick the known_hosts name ("host" or "[host]:port").
            self.ssh_params["port"] = int(self.ssh_params.get("port") or 22)
            if self._known_hosts and os.path.isfile(self._known_hosts):
                name = known_hosts_name(self.ssh_params["hostname"], self.ssh_params["port"])
                pinned = paramiko.HostKeys(self._known_hosts)
                if pinned.lookup(name):
                    # The repository pins this host: its keys are the only ones that
                    # count. (paramiko checks ~/.ssh/known_hosts first, so a stale or
                    # planted user entry would otherwise override the pin.)
                    self.ssh_client = paramiko.SSHClient()
                    self.ssh_client.load_host_keys(self._known_hosts)
                else:
                    self.ssh_client.load_host_keys(self._known_hosts)
            # The handshake waits a second longer than the banner: a port that accepts
            # and stays silent is then reported as the banner it did not send, not as
            # paramiko's "No existing session" (whichever of the two timers fired first).
            self.ssh_params["timeout"] = self._connect_timeout + 1
            self.ssh_params["banner_timeout"] = self._connect_timeout
            self.ssh_params["auth_timeout"] = self._connect_timeout

            jump = _proxy_jump(urllib.parse.urlparse(base_url).hostname or self.ssh_params["hostname"])
            if jump and "sock" not in self.ssh_params:
                self.ssh_params["sock"] = _jump_channel(jump, self.ssh_params, self.ssh_client,
                                                        self._connect_timeout, self._hops)
            self.ssh_client.set_missing_host_key_policy(paramiko.RejectPolicy())

    return PinnedSSHAdapter


def _PinnedSSHAdapter(base_url, timeout, known_hosts, identity_file):  # noqa: N802 - reads as a class
    return _ssh_adapter_class()(base_url, timeout, known_hosts, identity_file)


def _ssh_config(alias: str) -> dict:
    """``~/.ssh/config`` options for a host as written in the URL ({} without a config file)."""
    import paramiko

    path = os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return {}
    return paramiko.SSHConfig.from_path(path).lookup(alias)


def _proxy_jump(alias: str) -> str | None:
    """The ProxyJump of a host, looked up by the name in the URL (as ssh does), not its HostName."""
    jump = _ssh_config(alias).get("proxyjump")
    return None if not jump or jump.strip().lower() == "none" else jump


def _jump_channel(jump: str, params: dict, target_client, timeout: float, hops: list | None = None):
    """A direct-tcpip channel to params' host:port through the ProxyJump hosts, in order.

    Each hop is looked up in ``~/.ssh/config`` (HostName, User, Port, IdentityFile)
    and its host key checked against ``~/.ssh/known_hosts``. The hop clients are
    appended to ``hops`` so that the caller can close them.
    """
    import paramiko

    hops = hops if hops is not None else []
    try:
        prev = None
        for spec in [h.strip() for h in jump.split(",") if h.strip()]:
            user, _, hostport = spec.rpartition("@")
            alias, _, port = hostport.partition(":")
            conf = _ssh_config(alias)
            host = conf.get("hostname") or alias
            port_n = int(port or conf.get("port") or 22)
            sock = None
            if prev is not None:  # reach this hop through the previous one
                sock = prev.get_transport().open_channel("direct-tcpip", (host, port_n), ("127.0.0.1", 0),
                                                         timeout=timeout)
            hop = paramiko.SSHClient()
            hops.append(hop)
            hop.load_system_host_keys()
            hop.set_missing_host_key_policy(paramiko.RejectPolicy())
            hop.connect(host, port=port_n, username=user or conf.get("user") or None,
                        key_filename=conf.get("identityfile"), timeout=timeout, banner_timeout=timeout,
                        auth_timeout=timeout, sock=sock)
            prev = hop
        if prev is None:
            raise ValueError(f"empty ProxyJump {jump!r}")
        target = (params["hostname"], int(params.get("port") or 22))
        return prev.get_transport().open_channel("direct-tcpip", target, ("127.0.0.1", 0), timeout=timeout)
    except BaseException:
        for hop in hops:
            hop.close()
        raise


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts (and paramiko) name a host: ``host``, or ``[host]:port`` off port 22."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def ssh_endpoint(url: str) -> tuple[str, int]:
    """The (hostname, port) an ``ssh://`` URL connects to, after ``~/.ssh/config``
    (``HostName``, and ``Port`` when the URL has none) -- as the SSH transport does."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port
    if not host:
        raise ValueError(f"no host in {url!r}")
    conf = _ssh_config(host)
    host = conf.get("hostname") or host
    if port is None and conf.get("port"):
        port = int(conf["port"])
    return host, int(port or 22)


def fetch_host_key(host: str, port: int = 22, timeout: float = CONNECT_TIMEOUT,
                   key_types: "list[str] | None" = None, url: str | None = None) -> tuple[str, str]:
    """The (key type, base64 key) an SSH server presents, without authenticating.

    ``key_types`` (e.g. the types already in a known_hosts file) are asked for
    first, so a server with several host keys shows the one that can be compared.
    With ``url``, ``~/.ssh/config``'s ProxyCommand / ProxyJump for the URL's host
    are used to get there, as the SSH transport does.
    """
    import paramiko

    hops: list = []
    sock = None
    if url is not None:
        alias = urllib.parse.urlparse(url).hostname or host
        conf = _ssh_config(alias)
        jump = _proxy_jump(alias)
        if conf.get("proxycommand") and conf["proxycommand"].strip().lower() != "none":
            sock = paramiko.ProxyCommand(conf["proxycommand"])
        elif jump:
            sock = _jump_channel(jump, {"hostname": host, "port": port}, None, timeout, hops)
    if sock is None:
        sock = socket.create_connection((host, port), timeout=timeout)
    try:
        transport = paramiko.Transport(sock)
    except BaseException:
        sock.close()
        for hop in hops:
            hop.close()
        raise
    try:
        if key_types:
            options = transport.get_security_options()
            wanted = []
            for kt in key_types:  # a known ssh-rsa key is offered as rsa-sha2-*
                wanted += ["rsa-sha2-512", "rsa-sha2-256", kt] if kt == "ssh-rsa" else [kt]
            first = [kt for kt in dict.fromkeys(wanted) if kt in options.key_types]
            options.key_types = first + [kt for kt in options.key_types if kt not in first]
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout + 1)  # the banner's timer fires first, as in the adapter
        key = transport.get_remote_server_key()
        return key.get_name(), key.get_base64()
    finally:
        transport.close()
        for hop in hops:
            hop.close()
