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
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.errors import HostError, HostUnreachable

if TYPE_CHECKING:  # pragma: no cover
    import docker

    from deployer.model import Node

DEFAULT_TIMEOUT = 30  # seconds for one engine API call
CONNECT_TIMEOUT = 10  # seconds to establish a connection
API_VERSION = "1.41"  # Docker 20.10; newer engines still speak it


def connect(node: "Node", root: str | Path, timeout: float = DEFAULT_TIMEOUT) -> "docker.DockerClient":
    """A client for the node's engine that has answered a ping, or HostUnreachable."""
    url = node.docker
    try:
        if url.startswith("unix://"):
            client = _unix(url, timeout)
        elif url.startswith("tcp://"):
            client = _tls(node, url, timeout)
        elif url.startswith("ssh://"):
            client = _ssh(node, Path(root), url, timeout)
        else:
            raise HostError(node.target, url, "unsupported URL scheme")
        _ping(client, node, url)
        return client
    except HostError:
        raise
    except Exception as exc:  # every transport failure, reported in one line
        raise HostUnreachable(node.target, url, describe(exc)) from None


def describe(exc: BaseException) -> str:
    """One line for a transport error, without the nested urllib3 noise."""
    import paramiko

    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"SSH host key for {exc.hostname} has CHANGED (got {exc.key.get_name()} "
                f"{exc.key.get_base64()[:16]}...); refusing to connect. If the host was rebuilt, "
                "update the node's known_hosts")
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return (f"{exc}; the host key is not known: accept it with "
                "'deployer node add DC/NODE --docker URL --accept-host-key' or add it to the node's known_hosts")
    if isinstance(exc, paramiko.AuthenticationException):
        return f"SSH authentication failed: {exc}"
    text = str(exc)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "Connection refused", "timed out", "No route to host",
                   "Name or service not known", "No such file or directory", "Permission denied"):
        if marker in text:
            if marker == "CERTIFICATE_VERIFY_FAILED":
                return "TLS certificate verification failed (CERTIFICATE_VERIFY_FAILED): check the node's tls.ca"
            return marker.lower() if marker != "CERTIFICATE_VERIFY_FAILED" else marker
    return " ".join(text.split()) or type(exc).__name__


def _ping(client: "docker.DockerClient", node: "Node", url: str) -> None:
    try:
        client.api.ping()
    except Exception as exc:
        raise HostUnreachable(node.target, url, describe(exc)) from None


def _unix(url: str, timeout: float) -> "docker.DockerClient":
    import docker

    path = url[len("unix://"):]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such socket {path}: is dockerd running?")
    return docker.DockerClient(base_url=url, version=API_VERSION, timeout=timeout)


def _tls(node: "Node", url: str, timeout: float) -> "docker.DockerClient":
    import docker
    from docker.tls import TLSConfig

    tls = None
    if node.tls is not None:
        for path in (node.tls.ca, node.tls.cert, node.tls.key):
            if not os.path.isfile(path):
                raise HostError(node.target, url, f"TLS file {path} does not exist")
        tls = TLSConfig(client_cert=(node.tls.cert, node.tls.key), ca_cert=node.tls.ca, verify=True)
    client = docker.DockerClient(base_url=url, tls=tls or False, version=API_VERSION, timeout=timeout)
    # requests would otherwise let REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace our CA.
    client.api.trust_env = False
    return client


def _ssh(node: "Node", root: Path, url: str, timeout: float) -> "docker.DockerClient":
    import docker

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
            super().__init__(base_url, timeout=timeout, shell_out=False)

        def _create_paramiko_client(self, base_url):
            import paramiko

            super()._create_paramiko_client(base_url)
            if self._known_hosts:
                self.ssh_client.load_host_keys(self._known_hosts)
            if self._identity_file:
                self.ssh_params["key_filename"] = self._identity_file
            self.ssh_params.setdefault("port", 22)
            if self.ssh_params.get("port") is None:
                self.ssh_params["port"] = 22
            self.ssh_params["timeout"] = self._connect_timeout
            self.ssh_params["banner_timeout"] = self._connect_timeout
            self.ssh_params["auth_timeout"] = self._connect_timeout
            jump = _proxy_jump(self.ssh_params["hostname"])
            if jump and "sock" not in self.ssh_params:
                self.ssh_params["sock"] = _jump_channel(jump, self.ssh_params, self.ssh_client, self._connect_timeout)
            self.ssh_client.set_missing_host_key_policy(paramiko.RejectPolicy())

    return PinnedSSHAdapter


def _PinnedSSHAdapter(base_url, timeout, known_hosts, identity_file):  # noqa: N802 - reads as a class
    return _ssh_adapter_class()(base_url, timeout, known_hosts, identity_file)


def _proxy_jump(hostname: str) -> str | None:
    import paramiko

    path = os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return None
    conf = paramiko.SSHConfig.from_path(path)
    return conf.lookup(hostname).get("proxyjump")


def _jump_channel(jump: str, params: dict, target_client, timeout: float):
    """A direct-tcpip channel through the ProxyJump host (first hop only)."""
    import paramiko

    first = jump.split(",")[0]
    user, _, hostport = first.rpartition("@")
    host, _, port = hostport.partition(":")
    hop = paramiko.SSHClient()
    hop.load_system_host_keys()
    hop.set_missing_host_key_policy(paramiko.RejectPolicy())
    hop.connect(host, port=int(port or 22), username=user or None, timeout=timeout)
    return hop.get_transport().open_channel(
        "direct-tcpip", (params["hostname"], int(params.get("port") or 22)), ("127.0.0.1", 0)
    )


def fetch_host_key(host: str, port: int = 22, timeout: float = CONNECT_TIMEOUT) -> tuple[str, str]:
    """The (key type, base64 key) an SSH server presents, without authenticating."""
    import paramiko

    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return key.get_name(), key.get_base64()
    finally:
        transport.close()
