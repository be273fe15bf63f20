"""The container spec: exactly what the engine is asked for when a service's container is created.

Plain data shared by the layers: ``config.compose_spec`` builds it from a
compose service, ``engine.plan`` compares it with what runs, ``engine.apply``
creates the container from it. Its hash and its JSON (recorded in labels) are
defined here, next to the fields they cover.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from deployer.labels import LABEL_CONFIG, LABEL_CONFIG_HASH, LABEL_REPLICA, RESERVED_LABELS

SECRETS_DIR = "/run/secrets"
DEFAULT_SECRET_MODE = 0o444
DEFAULT_STOP_TIMEOUT = 10
#: The name a new container has while the old one still runs under the service's name.
NEXT_SUFFIX = "-next"


@dataclass
class SecretFile:
    """A file secret: read on the deployer's machine, shipped to the node's tmpfs store, mounted read-only."""

    name: str
    source: str  # absolute path on the deployer's machine
    target: str  # absolute path in the container (/run/secrets/<name> by default)
    sha256: str  # of the file's content, so a changed secret changes the config hash
    mode: int = DEFAULT_SECRET_MODE  # file mode in the container (compose ``mode:``)
    uid: int = 0  # owner in the container (compose ``uid:``)
    gid: int = 0
    # the bytes read (once, after the secret-file policy) when the spec was built: what is copied into the
    # container; not part of the hash (sha256 is) and never shown
    content: bytes | None = field(default=None, repr=False, compare=False)


#: Where shipped content lives on the Docker host, per kind of bundle: secrets in /run (a tmpfs on
#: systemd hosts: gone at reboot, never on disk), files (configs, relative bind sources) on disk.
STORE_ROOTS = {"secrets": "/run/deployer", "files": "/var/lib/deployer"}


@dataclass
class ShippedEntry:
    """One file or folder of a bundle: its path inside the bundle, mode, owner and bytes (None: a folder)."""

    rel: str
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes | None = field(default=None, repr=False)


@dataclass
class Bundle:
    """Content shipped to the node, addressed by its digest: one directory in the node's store.

    ``digest`` covers the node (dc/node: a salt, as the label fingerprints
    have), the kind and every entry (path, mode, owner, bytes), so the same
    content gives the same directory, and any change gives a new one.
    """

    kind: str  # a key of STORE_ROOTS
    dc: str
    node: str
    entries: list[ShippedEntry] = field(default_factory=list, repr=False)
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            h = hashlib.sha256(f"{self.dc}/{self.node}\0{self.kind}\0".encode())
            for e in sorted(self.entries, key=lambda e: e.rel):
                data = e.data if e.data is not None else b""
                kind = "d" if e.data is None else "f"
                h.update(f"{e.rel}\0{kind}\0{e.mode:o}\0{e.uid}\0{e.gid}\0{len(data)}\0".encode())
                h.update(data)
            self.digest = h.hexdigest()[:32]

    @property
    def path(self) -> str:
        """The bundle's directory on the Docker host."""
        return f"{node_store(self.kind, self.dc, self.node)}/{self.digest}"

    @property
    def size(self) -> int:
        return sum(len(e.data) for e in self.entries if e.data is not None)


def node_store(kind: str, dc: str, node: str) -> str:
    """The folder of one node's bundles of one kind on the Docker host."""
    return f"{STORE_ROOTS[kind]}/{dc}/{node}/{kind}"


@dataclass
class VolumeSpec:
    """A named volume the node's engine must have."""

    name: str  # engine name
    driver: str = "local"
    driver_opts: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False


@dataclass
class NetworkSpec:
    """A user-defined network the node's engine must have."""

    name: str  # engine name
    driver: str = "bridge"
    options: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False


@dataclass(frozen=True)
class Rollout:
    """How a service's containers are run and replaced (compose ``deploy.replicas`` / ``scale`` and
    ``deploy.update_config``, and what its dependants wait for). Not part of the container's hash:
    scaling, or changing how an update goes, replaces no container."""

    replicas: int = 1
    parallelism: int = 1  # containers replaced at once (update_config.parallelism; 0 means all at once)
    delay: float = 0.0  # seconds between two batches
    order: str = ""  # "start-first" | "stop-first" as written; "": start-first unless a fixed host port forbids it
    failure_action: str = "pause"  # pause | continue | rollback
    monitor: float = 0.0  # seconds a new container must stay healthy after its health gate passed
    max_failure_ratio: float = 0.0
    one_shot: bool = False  # a dependant waits for it to complete (service_completed_successfully): exit 0 is success
    healthcheck_required: bool = False  # a dependant waits for it to be healthy (service_healthy): it needs a check
    # services of the node to restart when this one's container is replaced (their depends_on says restart: true)
    restart_dependants: tuple[str, ...] = ()


@dataclass
class ContainerSpec:
    """Everything the engine is asked for when this service's container is created.

    ``create`` holds keyword arguments of docker's ``APIClient.create_container``
    (without image, name, labels, host_config, networking_config), ``host`` those
    of ``APIClient.create_host_config``. ``networks`` lists (engine network name,
    aliases) to attach; the first is attached at create time (and is also
    ``host['network_mode']``, as docker compose does, so the container does not
    land on the default bridge too), the rest before start. Empty when the
    service has a network_mode of its own (host, none, bridge, container:...).
    ``ipv4_addresses`` maps an engine network name to the static address the
    container gets on it (pass it to ``create_endpoint_config(ipv4_address=)``).
    """

    dc: str
    node: str
    service: str
    name: str
    image: str
    create: dict[str, Any]
    host: dict[str, Any]
    networks: list[tuple[str, list[str]]]
    labels: dict[str, str]  # user labels and the deployer.* identity labels, without the hash
    secrets: list[SecretFile] = field(default_factory=list)
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    has_healthcheck: bool = False
    published_ports: bool = False  # a fixed host port: it must be free before the new container starts
    ipv4_addresses: dict[str, str] = field(default_factory=dict)
    # shipped from the repository: container path -> what it is and its digest (hashed, named by plan)
    files: dict[str, str] = field(default_factory=dict)
    # the content those mounts need on the node (not hashed: ``files`` and the mounts' paths are)
    bundles: list[Bundle] = field(default_factory=list, repr=False, compare=False)
    rollout: Rollout = field(default_factory=Rollout)  # not hashed (see Rollout)
    replica: int = 1  # which replica this spec is (its name and LABEL_REPLICA say so too)

    def for_replica(self, index: int) -> "ContainerSpec":
        """The spec of replica ``index`` (1-based): replica 1 is this spec, unchanged (a service scaled from
        one container keeps it); replica i > 1 is named ``<name>-<i>`` and labelled LABEL_REPLICA=i."""
        if index == 1:
            return self
        return replace(self, name=f"{self.name}-{index}", labels={**self.labels, LABEL_REPLICA: str(index)},
                       replica=index)
    # engine network name -> more endpoint settings (create_endpoint_config / connect_container_to_network
    # keyword arguments: ipv6_address, link_local_ips, driver_opt)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    # compose post_start / pre_stop: exec_create keyword arguments (cmd, user, privileged, environment, workdir),
    # run after the container starts / before it stops
    post_start: list[dict[str, Any]] = field(default_factory=list)
    pre_stop: list[dict[str, Any]] = field(default_factory=list)

    def _data(self, redact: bool) -> dict[str, Any]:
        """Every field, as JSON-ready data (built fresh for each call: a spec may change between calls).

        Same JSON as ``dataclasses.asdict`` gives, without its deep copy: only
        what is replaced here (secrets, and labels and environment when
        redacting) is new; the rest is the spec's own values, which json.dumps
        only reads.
        """
        data = {name: getattr(self, name) for name in _SPEC_FIELDS}
        for name in _OMITTED_WHEN_EMPTY:  # fields added later: containers created before keep their hash
            if not data[name]:
                del data[name]
        if not redact:
            # not the source path: it depends on where the deployer's checkout is
            data["secrets"] = [(s.name, s.target, s.sha256, s.mode, s.uid, s.gid) for s in self.secrets]
            return data
        salt = f"{self.dc}/{self.node}/{self.service}"
        # the identity labels repeat dc, node, service and image, which are fields of their own
        data["labels"] = {k: v for k, v in self.labels.items() if k not in RESERVED_LABELS}
        env = self.create.get("environment")
        if env:
            data["create"] = {
                **self.create,
                "environment": [f"{k}={_fingerprint(salt, k, v)}" for k, _, v in (e.partition("=") for e in env)],
            }
        for name in ("post_start", "pre_stop"):  # a hook's environment is redacted like the container's
            if name in data and any(h.get("environment") for h in data[name]):
                data[name] = [{**h, "environment": [f"{k}={_fingerprint(salt, k, v)}"
                                                    for k, _, v in (e.partition("=") for e in h["environment"])]}
                              if h.get("environment") else h for h in data[name]]
        # by target, so a plan names the secret that changed (secrets./run/secrets/db); [] when none, as before
        data["secrets"] = {s.target: [s.name, s.mode, s.uid, s.gid, _fingerprint(salt, s.name, s.sha256)]
                           for s in self.secrets} or []  # fmt: skip
        return data

    def config_hash(self) -> str:
        """A stable hash of everything that defines the container."""
        kept = self.__dict__.get("_kept_hash")  # set by config.parse_cache for a spec it kept, with its hash
        if kept is not None:
            return kept
        blob = _CANONICAL_JSON.encode(self._data(redact=False))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def config_json(self) -> str:
        """The spec as canonical JSON, recorded in the LABEL_CONFIG label so a plan can say which fields changed.

        Labels are readable by anything that lists containers (and are often
        exported by monitoring), so environment values and secret digests are
        replaced by short salted fingerprints: a change still shows, the value does not.
        """
        return _CANONICAL_JSON.encode(self._data(redact=True))

    def all_labels(self) -> dict[str, str]:
        return {**self.labels, LABEL_CONFIG_HASH: self.config_hash(), LABEL_CONFIG: self.config_json()}


# what the hash and the recorded JSON cover: not how the service is rolled out, nor the replica index
# (the name and the replica label already differ between replicas), nor the shipped content itself
# (``files`` and the mounts' paths name its digests)
_SPEC_FIELDS = tuple(f.name for f in fields(ContainerSpec) if f.name not in ("rollout", "replica", "bundles"))
_OMITTED_WHEN_EMPTY = ("files", "endpoints", "post_start", "pre_stop")


def inherit_anonymous_volumes(host: dict[str, Any], old_mounts: list[dict[str, Any]],
                              image_volumes: Any) -> dict[str, Any]:
    """``host`` (create_host_config arguments) with the old container's anonymous volumes carried over.

    What Docker Compose v2 does when it recreates a container: a volume the old container had at a target
    where the service declares an anonymous volume (``- /data``), or at a VOLUME of the new image that
    nothing else is mounted on, is mounted again at the same place. ``old_mounts`` is the old container's
    inspect ``Mounts``; ``image_volumes`` the new image's ``Config.Volumes`` (a mapping, or None).
    """
    mounts = [dict(m) for m in host.get("mounts") or []]
    anonymous = {m["Target"]: m for m in mounts if m.get("Type") == "volume" and not m.get("Source")}
    taken = {b.split(":")[1] for b in host.get("binds") or []} | {m["Target"] for m in mounts} \
        | set(host.get("tmpfs") or {})
    added = False
    for old in old_mounts or []:
        if old.get("Type") != "volume" or not old.get("Name"):
            continue
        target = old.get("Destination")
        if target in anonymous:
            anonymous[target]["Source"] = old["Name"]
            added = True
        elif target in (image_volumes or {}) and target not in taken:
            mounts.append({"Type": "volume", "Source": old["Name"], "Target": target, "ReadOnly": not old.get("RW", True)})
            taken.add(target)
            added = True
    if not added:
        return host
    return {**host, "mounts": sorted(mounts, key=lambda m: m["Target"])}


def _json_default(value: Any) -> Any:
    """What JSON cannot hold: a dataclass as its fields (as asdict would), anything else as str()."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


# json.dumps(sort_keys=True, separators=(",", ":")), built once (json.dumps makes an encoder per call)
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_json_default)


def _fingerprint(salt: str, name: str, value: str) -> str:
    return "sha256:" + hashlib.sha256(f"{salt}\0{name}\0{value}".encode()).hexdigest()[:12]
