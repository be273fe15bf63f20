"""engine: one Docker engine.

``connect`` reaches it (unix socket, ssh:// with pinned host keys, tcp:// with
TLS); ``state`` reads what runs there into plain data; ``plan`` decides what must
change (pure, no I/O); ``apply`` carries the changes out, health-gated, restoring
on failure (``rollout``: a replicated service's batches, one-shot services,
depends_on restart); ``session`` ties them together for one node and one command (connect
once, read once, plan, apply over the same connection, close); ``containers``
streams a container's logs (stdout and stderr apart) and runs commands in it; ``ship``
writes the secrets and files a service ships from the repository into the node's
store (through a helper container, over the same connection) and removes the unused
ones; ``images``
lists and removes images and ``image_plan`` decides which a prune removes (pure);
``registry_credentials`` finds a registry's credentials where the Docker ecosystem keeps
them (a datacenter's file, credential helpers, Docker's config ``auths``), for node pulls
here and for the image builder's checks and pushes above; ``node_lock`` is the node lock
kept on the engine itself (a created-never-started container, for datacenters without
Consul). May import only the shared modules.
"""
