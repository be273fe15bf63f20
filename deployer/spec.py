"""The container spec: exactly what the engine is asked for when a service's container is created.

Plain data shared by the layers: ``config.compose_spec`` builds it from a
compose service, ``engine.plan`` compares it with what runs, ``engine.apply``
creates the container from it. Its hash and its JSON (recorded in labels) are
defined here, next to the fields they cover.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from deployer.labels import LABEL_CONFIG, LABEL_CONFIG_HASH, RESERVED_LABELS

SECRETS_DIR = "/run/secrets"
DEFAULT_SECRET_MODE = 0o444
DEFAULT_STOP_TIMEOUT = 10
#: The name a new container has while the old one still runs under the service's name.
NEXT_SUFFIX = "-next"


@dataclass
class SecretFile:
    """A file secret: read on the deployer's machine, mounted read-only in the container."""

    name: str
    source: str  # absolute path on the deployer's machine
    target: str  # absolute path in the container (/run/secrets/<name> by default)
    sha256: str  # of the file's content, so a changed secret changes the config hash
    mode: int = DEFAULT_SECRET_MODE  # file mode in the container (compose ``mode:``)
    # the bytes read (once, after the secret-file policy) when the spec was built: what is copied into the
    # container; not part of the hash (sha256 is) and never shown
    content: bytes | None = field(default=None, repr=False, compare=False)


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

    def _data(self, redact: bool) -> dict[str, Any]:
        """Every field, as JSON-ready data (built fresh for each call: a spec may change between calls).

        Same JSON as ``dataclasses.asdict`` gives, without its deep copy: only
        what is replaced here (secrets, and labels and environment when
        redacting) is new; the rest is the spec's own values, which json.dumps
        only reads.
        """
        data = {name: getattr(self, name) for name in _SPEC_FIELDS}
        if not redact:
            # not the source path: it depends on where the deployer's checkout is
            data["secrets"] = [(s.name, s.target, s.sha256, s.mode) for s in self.secrets]
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
        data["secrets"] = [(s.name, s.target, s.mode, _fingerprint(salt, s.name, s.sha256))
                           for s in self.secrets]  # fmt: skip
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


_SPEC_FIELDS = tuple(f.name for f in fields(ContainerSpec))


def _json_default(value: Any) -> Any:
    """What JSON cannot hold: a dataclass as its fields (as asdict would), anything else as str()."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


# json.dumps(sort_keys=True, separators=(",", ":")), built once (json.dumps makes an encoder per call)
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_json_default)


def _fingerprint(salt: str, name: str, value: str) -> str:
    return "sha256:" + hashlib.sha256(f"{salt}\0{name}\0{value}".encode()).hexdigest()[:12]
