"""Adding and removing nodes: what ``deployer node add`` and ``deployer node rm`` do.

``add_node`` writes ``datacenters/<dc>/<node>/node.yml`` (and, for ``ssh://``
engines, the node's pinned ``known_hosts``), checks that the engine answers
through exactly the configuration it wrote, and commits those files::

    add node dc/node

    Deployer-Action: node-add
    Deployer-Target: dc/node

``remove_node`` deletes a node directory whose compose file lists no services
any more, and commits that (``remove node dc/node``, action ``node-remove``).

Both run like a deploy: under the repository's deploy lock, starting with
``InfraRepo.sync()`` and ending with ``InfraRepo.push_with_retry()`` when the
repository has a remote (see ``history.py`` for why the push is where
operators on different machines agree). A failure before the commit leaves the
repository as it was: every file written is removed again.

SSH host keys are trust on first use, made explicit: the key the server shows
is compared with the ones already known (the node's ``known_hosts`` in the
repository, then ``~/.ssh/known_hosts``). A known, matching key is pinned in
the repository; a different one is refused; an unknown one is refused with its
SHA256 fingerprint until the operator passes ``accept_host_key=True``
(``--accept-host-key``), having checked it on the host
(``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deployer.config import loader
from deployer.engine import connect as hosts
from deployer.gitrepo.commit import ACTION_NODE_ADD, ACTION_NODE_REMOVE, deployer_trailers
from deployer.gitrepo.transaction import RepoTransaction, command_line, refuse_project_repo
from deployer.errors import (ConfigError, HostKeyChanged, HostKeyNotTrusted, HostUnreachable,  # noqa: F401
                             NodeNotEmpty, TargetError, ValidationFailed)

KNOWN_HOSTS_FILE = "known_hosts"
ENGINE_CHECK_TIMEOUT = 20  # seconds for the engine to answer when a node is added


@dataclass(frozen=True)
class HostKey:
    """An SSH host key as known_hosts writes it."""

    host: str  # the known_hosts name: "host" or "[host]:port"
    type: str  # ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa...
    base64: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:...``, as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(base64.b64decode(self.base64)).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def known_hosts_line(self) -> str:
        return f"{self.host} {self.type} {self.base64}\n"


@dataclass
class NodeAddResult:
    target: str  # dc/node
    docker: str
    path: str  # repo-relative node directory
    files: list[str]  # repo-relative, committed
    commit: str  # the commit made (before any rebase by the push)
    pushed: str | None = None  # the sha the remote got; None without a remote
    host_key: HostKey | None = None  # ssh:// nodes
    host_key_accepted: bool = False  # True when it was unknown and accepted now
    engine_version: str | None = None
    datacenter_created: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "docker": self.docker,
            "path": self.path,
            "files": self.files,
            "commit": self.commit,
            "pushed": self.pushed,
            "host_key": None if self.host_key is None else {
                "host": self.host_key.host, "type": self.host_key.type,
                "fingerprint": self.host_key.fingerprint, "accepted": self.host_key_accepted,
            },
            "engine_version": self.engine_version,
            "datacenter_created": self.datacenter_created,
        }


@dataclass
class NodeRemoveResult:
    target: str
    path: str
    files: list[str] = field(default_factory=list)  # repo-relative, deleted
    commit: str = ""
    pushed: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- parsing ------------------------------------------------------------------------


def parse_node_target(target: str) -> tuple[str, str]:
    """``dc/node`` -> (dc, node); TargetError for anything else."""
    text = str(target or "").strip()
    parts = text.split("/")
    if len(parts) != 2 or not all(parts):
        raise TargetError(f"invalid node {target!r}: write DATACENTER/NODE (e.g. prod/web1)")
    for kind, part in zip(("datacenter", "node"), parts):
        if not loader.NAME_RE.match(part):
            raise TargetError(
                f"invalid {kind} name {part!r} in {text!r}: use lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    return parts[0], parts[1]


def _validate_settings(target: str, url: str, identity_file: str | None, tls: Mapping[str, Any] | None,
                       address: str | None, description: str | None) -> None:
    where = f"node {target}"
    if not loader.DOCKER_URL_RE.match(url):
        raise TargetError(f"{where}: invalid Docker URL {url!r}: use unix://PATH, ssh://[user@]host[:port] "
                          "or tcp://host:port")
    if tls is not None:
        if not url.startswith("tcp://"):
            raise TargetError(f"{where}: TLS files apply only to tcp:// Docker URLs, not {url}")
        if not isinstance(tls, Mapping) or set(tls) != set(loader.TLS_KEYS):
            raise TargetError(f"{where}: tls needs exactly ca, cert and key (got {sorted(tls or {})})")
        for key in sorted(loader.TLS_KEYS):
            if not isinstance(tls[key], (str, os.PathLike)) or not str(tls[key]).strip():
                raise TargetError(f"{where}: tls.{key} must be a file path")
    if identity_file is not None:
        if not url.startswith("ssh://"):
            raise TargetError(f"{where}: an identity file applies only to ssh:// Docker URLs, not {url}")
        if not str(identity_file).strip():
            raise TargetError(f"{where}: the identity file must be a path")
    for name, value in (("address", address), ("description", description)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise TargetError(f"{where}: {name} must be a non-empty string")
    if address is not None and any(c.isspace() for c in address.strip()):
        raise TargetError(f"{where}: address {address!r} must be one host name or IP address")


# -- node.yml -------------------------------------------------------------------------


def _scalar(value: str, key: str) -> str:
    """``value`` as a YAML scalar: plain when the loader reads it back unchanged, quoted otherwise."""
    if "\n" not in value and value == value.strip() and value:
        try:
            doc = loader.parse_yaml(f"{key}: {value}\n", "node.yml")
        except ConfigError:
            doc = None
        if isinstance(doc, dict) and doc.get(key) == value and isinstance(doc.get(key), str):
            return value
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def node_yml_text(docker_url: str, identity_file: str | None = None, tls: Mapping[str, Any] | None = None,
                  address: str | None = None, description: str | None = None) -> str:
    lines = [f"docker: {_scalar(docker_url, 'docker')}"]
    if identity_file is not None:
        lines.append(f"identity_file: {_scalar(os.fspath(identity_file), 'identity_file')}")
    if tls is not None:
        lines.append("tls:")
        lines += [f"  {key}: {_scalar(os.fspath(tls[key]), key)}" for key in ("ca", "cert", "key")]
    if address is not None:
        lines.append(f"address: {_scalar(address.strip(), 'address')}")
    if description is not None:
        lines.append(f"description: {_scalar(description.strip(), 'description')}")
    return "\n".join(lines) + "\n"


# -- SSH host keys -------------------------------------------------------------------


def _known_keys(path: Path | str, name: str) -> dict[str, str]:
    """{key type: base64} known for ``name`` in one known_hosts file (hashed names too)."""
    import paramiko

    if not os.path.isfile(path):
        return {}
    try:
        entries = paramiko.HostKeys(str(path)).lookup(name)
    except (OSError, paramiko.SSHException, ValueError):
        return {}
    return {kt: key.get_base64() for kt, key in (entries or {}).items()}


def _check_host_key(target: str, url: str, repo_known_hosts: Path, accept: bool,
                    repo_label: str) -> tuple[HostKey, bool]:
    """The key the server shows, if it may be trusted: (key, accepted now). Otherwise raise."""
    try:
        host, port = hosts.ssh_endpoint(url)
    except ValueError as exc:
        raise TargetError(f"node {target}: invalid Docker URL {url!r}: {exc}") from None
    name = hosts.known_hosts_name(host, port)
    sources = [(repo_label, _known_keys(repo_known_hosts, name)),
               ("~/.ssh/known_hosts", _known_keys(os.path.expanduser("~/.ssh/known_hosts"), name))]
    known_types = list(dict.fromkeys(kt for _label, keys in sources for kt in keys))
    try:
        key_type, key_b64 = hosts.fetch_host_key(host, port, key_types=known_types or None, url=url)
    except Exception as exc:  # refused, timeout, DNS, not an SSH server...
        raise HostUnreachable(target, url, f"cannot read the SSH host key of {name}: {hosts.describe(exc)}") from None
    key = HostKey(name, key_type, key_b64)
    for label, keys in sources:
        if not keys:
            continue
        if keys.get(key_type) == key_b64:
            return key, False
        old_type, old_b64 = (key_type, keys[key_type]) if key_type in keys else next(iter(keys.items()))
        old = HostKey(name, old_type, old_b64)
        raise HostKeyChanged(
            target, url,
            f"the SSH host key of {name} is {key.type} {key.fingerprint}, but {label} has {old.type} "
            f"{old.fingerprint} for it: it CHANGED (host rebuilt, or someone in between). If the change is "
            f"expected, remove the old key (ssh-keygen -R '{name}'"
            + ("" if label.startswith("~") else f" -f {label}") + ") and add the node again",
            key,
        )
    if not accept:
        raise HostKeyNotTrusted(
            target, url,
            f"the SSH host key of {name} is not known: {key.type} {key.fingerprint}. Check it on the host "
            "(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and re-run with --accept-host-key",
            key,
        )
    return key, True


# -- adding and removing ------------------------------------------------------------


def add_node(
    root: str | os.PathLike[str],
    target: str,
    docker_url: str,
    accept_host_key: bool = False,
    identity_file: str | None = None,
    tls: Mapping[str, Any] | None = None,
    address: str | None = None,
    description: str | None = None,
    author: str | None = None,
    *,
    wait: float = 0,
) -> NodeAddResult:
    """Add the node ``dc/node`` reached at ``docker_url``; commit (and push) its files.

    ``identity_file`` (ssh://) and ``tls`` paths (tcp://, ``{"ca", "cert", "key"}``)
    are written into node.yml as given: relative paths are relative to the node's
    directory, ``~`` is the home of whoever deploys. Raises TargetError (bad target,
    node exists, bad settings), HostKeyNotTrusted / HostKeyChanged (ssh://),
    HostUnreachable (the engine did not answer: nothing is left behind),
    LockHeld, RepoError.
    """
    root_path = Path(root).resolve()
    dc, name = parse_node_target(target)
    node_target = f"{dc}/{name}"
    url = str(docker_url or "").strip()
    _validate_settings(node_target, url, identity_file, tls, address, description)
    refuse_project_repo(root_path)

    with RepoTransaction(root_path, wait=wait, command=_command(f"node add {node_target}")) as tx:
        dc_rel = f"{loader.DATACENTERS}/{dc}"
        rel = f"{dc_rel}/{name}"
        node_dir = root_path / rel
        if node_dir.exists() and not node_dir.is_dir():
            raise TargetError(f"cannot add node {node_target}: {rel} exists and is not a directory")
        existing = [f for f in (loader.NODE_FILE, *loader.COMPOSE_FILES) if (node_dir / f).exists()]
        if existing:
            raise TargetError(f"node {node_target} already exists ({rel}/{existing[0]})")
        known_hosts = node_dir / KNOWN_HOSTS_FILE
        key: HostKey | None = None
        accepted = False
        if url.startswith("ssh://"):
            key, accepted = _check_host_key(node_target, url, known_hosts, accept_host_key,
                                            f"{rel}/{KNOWN_HOSTS_FILE}")
        dc_created = not (root_path / dc_rel).is_dir()
        files = [f"{rel}/{loader.NODE_FILE}"]
        # written before the commit: connecting over ssh:// reads the node's pinned known_hosts
        if key is not None:
            if _known_keys(known_hosts, key.host).get(key.type) != key.base64:
                old = known_hosts.read_bytes() if known_hosts.is_file() else b""
                if old and not old.endswith(b"\n"):
                    old += b"\n"
                tx.write(f"{rel}/{KNOWN_HOSTS_FILE}", old + key.known_hosts_line().encode())
            files.append(f"{rel}/{KNOWN_HOSTS_FILE}")
        tx.write(files[0], node_yml_text(url, identity_file, tls, address, description))
        node = loader.load_node(root_path, dc, name)
        client = hosts.connect(node, root_path, timeout=ENGINE_CHECK_TIMEOUT)
        try:
            engine_version = _engine_version(client)
        finally:
            client.close()
        if f"{rel}/{KNOWN_HOSTS_FILE}" in files:
            tx.include(f"{rel}/{KNOWN_HOSTS_FILE}")  # the pinned key, already there or just written
        done = tx.commit(f"add node {node_target}", deployer_trailers(ACTION_NODE_ADD, [node_target]),
                         author=author, world_changed=False)
        return NodeAddResult(node_target, url, rel, sorted(files), done.local, done.pushed, key, accepted,
                             engine_version, dc_created)


def _engine_version(client) -> str | None:
    try:
        return str(client.version().get("Version") or "") or None
    except Exception:  # the ping answered; the version is only informative
        return None


def _written_services(root: Path, node_rel: str) -> list[str]:
    """The services the node's compose file(s) list, as written (no full validation)."""
    names: list[str] = []
    for fname in loader.COMPOSE_FILES:
        rel = f"{node_rel}/{fname}"
        path = root / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(rel, f"cannot read it to see which services it lists: {exc}") from None
        doc = loader.parse_yaml(text, rel)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(rel, "the file must hold a mapping with a 'services' key", line=1)
        services = doc.get("services")
        if services is None:
            continue
        if not isinstance(services, dict):
            raise ConfigError(rel, "must be a mapping of services", line=loader.value_line(doc, "services"),
                              field="services")
        names.extend(str(s) for s in services)
    return names


def remove_node(
    root: str | os.PathLike[str],
    target: str,
    author: str | None = None,
    *,
    wait: float = 0,
) -> NodeRemoveResult:
    """Delete the node ``dc/node`` from the repository; commit (and push) that.

    Refused (NodeNotEmpty) while its compose file lists services, and
    (DirtyFileError) while its directory has uncommitted or untracked files.
    Containers on the engine are not touched.
    """
    root_path = Path(root).resolve()
    dc, name = parse_node_target(target)
    node_target = f"{dc}/{name}"
    refuse_project_repo(root_path)

    with RepoTransaction(root_path, wait=wait, command=_command(f"node rm {node_target}")) as tx:
        dc_dir = root_path / loader.DATACENTERS / dc
        rel = f"{loader.DATACENTERS}/{dc}/{name}"
        node_dir = root_path / rel
        if not (node_dir / loader.NODE_FILE).is_file():
            if not dc_dir.is_dir():
                raise TargetError(f"unknown node {node_target}: there is no datacenter {dc!r}")
            nodes = sorted(p.name for p in dc_dir.iterdir() if (p / loader.NODE_FILE).is_file())
            raise TargetError(f"unknown node {node_target} (nodes in {dc}: {', '.join(nodes) or 'none'})")
        services = _written_services(root_path, rel)
        if services:
            raise NodeNotEmpty(node_target, services)
        tx.require_clean(rel)
        files = tx.repo.tracked_files(rel)
        if not files:  # pragma: no cover - require_clean saw untracked files already
            raise TargetError(f"{node_target} has no committed files to remove")
        for f in files:
            tx.stage(f, None)
        done = tx.commit(f"remove node {node_target}", deployer_trailers(ACTION_NODE_REMOVE, [node_target]),
                         author=author, world_changed=False)
        return NodeRemoveResult(node_target, rel, files, done.local, done.pushed)


def _command(what: str) -> str:
    return command_line() if sys.argv[1:] else f"deployer {what}"
