"""The labels the deployer puts on every container it manages, and so reads back.

``deployer.dc``, ``deployer.node`` and ``deployer.service`` say what a container
is; ``deployer.image`` the reference the repository wrote; ``deployer.config-hash``
and ``deployer.config`` the container spec it was created from (hash, and JSON
with secret-looking values fingerprinted), which is how ``plan`` tells what changed.
Other ``deployer.*`` labels (``deployer.consul.*``, ``deployer.drain``) are the
user's, written in compose files and read by discovery.
"""

from __future__ import annotations

LABEL_DC = "deployer.dc"
LABEL_NODE = "deployer.node"
LABEL_SERVICE = "deployer.service"
LABEL_CONFIG_HASH = "deployer.config-hash"
LABEL_CONFIG = "deployer.config"  # the spec as JSON (values that may be secret fingerprinted), for plan's diff
LABEL_IMAGE = "deployer.image"
# Which replica of a replicated service (2, 3, ...); replica 1 has none, so a service scaled from one keeps its container.
LABEL_REPLICA = "deployer.replica"

# Labels the deployer sets itself; other deployer.* labels (deployer.consul.check, ...) are the user's.
RESERVED_LABELS = (LABEL_DC, LABEL_NODE, LABEL_SERVICE, LABEL_IMAGE, LABEL_CONFIG_HASH, LABEL_CONFIG, LABEL_REPLICA)

# The user's discovery labels, read by discovery (docs/discovery.md says what each does).
LABEL_CONSUL_NAME = "deployer.consul.name"
LABEL_CONSUL_TAGS = "deployer.consul.tags"
LABEL_CONSUL_CHECK = "deployer.consul.check"
LABEL_CONSUL_INTERVAL = "deployer.consul.interval"
LABEL_CONSUL_TIMEOUT = "deployer.consul.timeout"
LABEL_CONSUL_PORT = "deployer.consul.port"
LABEL_CONSUL_WAIT = "deployer.consul.wait"
LABEL_CONSUL_REGISTER = "deployer.consul.register"
LABEL_DRAIN = "deployer.drain"
DISCOVERY_LABELS = (LABEL_CONSUL_NAME, LABEL_CONSUL_TAGS, LABEL_CONSUL_CHECK, LABEL_CONSUL_INTERVAL,
                    LABEL_CONSUL_TIMEOUT, LABEL_CONSUL_PORT, LABEL_CONSUL_WAIT, LABEL_CONSUL_REGISTER, LABEL_DRAIN)

# Node locks (engine.node_lock): the lock object on an engine carries these, and every container a deploy
# creates while it holds a node lock carries LABEL_LOCK_ID (which deploy made it, whoever finds it later).
LABEL_LOCK = "deployer.lock"  # "1" on the lock object itself
LABEL_LOCK_ID = "deployer.lock.id"
LABEL_LOCK_HOLDER = "deployer.lock.holder"  # JSON: who, host, pid, command, since, reason, id, ttl
LABEL_LOCK_TTL = "deployer.lock.ttl"  # seconds; "0": a manual lock, which never expires
