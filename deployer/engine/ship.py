"""Ship content from the repository to the node: bundles written into the node's store, over the engine API.

A ``spec.Bundle`` is a directory of content (secrets, a config, the files of
a relative bind source) named by its digest. It lives on the Docker host in
the node's store (``spec.node_store``: /run/deployer/<dc>/<node>/secrets/<digest>
for secrets, a tmpfs on systemd hosts; /var/lib/deployer/<dc>/<node>/files/<digest>
for files, on disk), and the service's container bind-mounts it (or a file in
it) read-only. Nothing is written into a container's writable layer.

The deployer shares no filesystem with the node: a bundle is written by
``put_archive`` into a short-lived helper container, created (never started)
from the service's own image, which is on the node anyway, with the store
bind-mounted; the engine extracts the archive through that bind mount into the
host directory (it creates the folder when missing), keeping modes and owners.
The same works over unix, ssh:// and tcp:// (TLS) connections.

``Shipper`` does it for one engine session:

* what is present: a bundle mounted by a running managed container of the
  node is on the node (it was written before that container was created, and
  is never changed), so it is not sent again; anything else is written, whole
  (a partial write of an interrupted run is overwritten);
* what is used: every managed container's bundles, read from its recorded
  config (``deployer.config`` label: host.mounts); after containers are removed,
  ``sweep`` removes the bundles no container of the node mounts any more, by
  extracting an empty file over each one's directory (the engine removes a
  directory an archive entry replaces): what is left is one empty file per
  removed bundle, named by its digest, holding nothing.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Any, Callable, Iterable

from deployer.labels import LABEL_CONFIG
from deployer.spec import Bundle, ContainerSpec, node_store
from deployer.engine.connect import import_docker
from deployer.engine.state import ContainerState, NodeState

docker = import_docker()

#: The label on helper containers (created, never started, removed at once), so a leftover is recognisable.
HELPER_LABEL = "deployer.helper"
_MOUNT_POINT = "/deployer-store"


def _tar(entries: Iterable[tuple[str, int, int, int, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode, uid, gid, data in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 0
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bundle_archive(bundle: Bundle) -> bytes:
    """The archive that writes ``bundle`` below its node store folder (extracted at the store's parent)."""
    kind = bundle.kind
    entries: list[tuple[str, int, int, int, bytes | None]] = [
        (kind, 0o700, 0, 0, None),  # the store: root's only, on the host
        (f"{kind}/{bundle.digest}", 0o755, 0, 0, None),  # the mounted folder: readable by the container's user
    ]
    for e in sorted(bundle.entries, key=lambda e: e.rel):
        entries.append((f"{kind}/{bundle.digest}/{e.rel}", e.mode, e.uid, e.gid, e.data))
    return _tar(entries)


def bundle_dirs(container: ContainerState) -> set[str]:
    """The store folders a managed container mounts, from its recorded config (empty when it records none)."""
    try:
        recorded = json.loads(container.labels.get(LABEL_CONFIG) or "{}")
        mounts = (recorded.get("host") or {}).get("mounts") or []
    except (ValueError, AttributeError):
        return set()
    dc, node = container.dc or "", container.node or ""
    out = set()
    for mount in mounts:
        source = str((mount or {}).get("Source") or "")
        for kind in ("secrets", "files"):
            prefix = node_store(kind, dc, node) + "/"
            if source.startswith(prefix):
                out.add(prefix + source[len(prefix):].split("/")[0])
    return out


def _spec_dirs(spec: ContainerSpec) -> set[str]:
    return {b.path for b in spec.bundles}


class Shipper:
    """Ships bundles to one engine and removes the ones nobody mounts any more (see the module docstring)."""

    def __init__(self, api: Any, progress: Callable[[str], None] | None = None):
        self.api = api
        self.progress = progress or (lambda msg: None)
        self.present: set[str] = set()  # store folders known to be complete on the node
        self.users: dict[str, set[str]] = {}  # container id -> the store folders it mounts
        self.retired: set[str] = set()  # folders whose user was removed: candidates for the sweep
        self._observed: set[int] = set()
        self.bytes_sent = 0  # archive bytes sent to the engine (secrets, files and sweeps)
        self.bundles_sent = 0
        self.seconds = 0.0  # spent shipping and sweeping

    def observe(self, state: NodeState) -> None:
        """Learn what the node's managed containers mount (once per state read)."""
        if id(state) in self._observed:
            return
        self._observed.add(id(state))
        for c in state.managed:
            dirs = bundle_dirs(c)
            if dirs:
                self.users.setdefault(c.id, set()).update(dirs)
                if c.running:
                    self.present.update(dirs)

    def ship(self, spec: ContainerSpec) -> None:
        """Write the spec's bundles that are not known to be on the node (one helper container per kind)."""
        missing = [b for b in spec.bundles if b.path not in self.present]
        if not missing:
            return
        started = time.monotonic()
        sent = 0
        for kind in sorted({b.kind for b in missing}):
            archives = [bundle_archive(b) for b in missing if b.kind == kind]
            sent += self._extract(spec.image, node_store(kind, spec.dc, spec.node).rsplit("/", 1)[0], archives)
        self.present.update(b.path for b in missing)
        self.bundles_sent += len(missing)
        self.bytes_sent += sent
        took = time.monotonic() - started
        self.seconds += took
        self.progress(f"shipped {len(missing)} bundle{'s' if len(missing) != 1 else ''} of files "
                      f"({sent} bytes) in {took:.2f}s")

    def used(self, cid: str, spec: ContainerSpec) -> None:
        dirs = _spec_dirs(spec)
        if dirs:
            self.users[cid] = dirs
            self.retired -= dirs

    def forget(self, cid: str) -> None:
        """A container was removed: its bundles may be unused now."""
        self.retired |= self.users.pop(cid, set())

    def sweep(self, image: str) -> None:
        """Remove the bundles no container of the node mounts any more (``image``: for the helper container)."""
        in_use = set().union(*self.users.values()) if self.users else set()
        unused = sorted(self.retired - in_use)
        self.retired = set()
        if not unused:
            return
        started = time.monotonic()
        by_parent: dict[str, list[str]] = {}
        for path in unused:
            store, digest = path.rsplit("/", 1)
            parent, kind = store.rsplit("/", 1)
            by_parent.setdefault(parent, []).append(f"{kind}/{digest}")
        for parent, names in sorted(by_parent.items()):
            # an empty file over each folder: the engine removes the folder it replaces
            self.bytes_sent += self._extract(image, parent, [_tar((n, 0o600, 0, 0, b"") for n in names)])
        self.present -= set(unused)
        self.seconds += time.monotonic() - started
        self.progress(f"removed {len(unused)} unused bundle{'s' if len(unused) != 1 else ''} of files")

    def _extract(self, image: str, host_dir: str, archives: list[bytes]) -> int:
        """Extract ``archives`` into ``host_dir`` on the Docker host through a helper container; bytes sent."""
        host_config = self.api.create_host_config(binds=[f"{host_dir}:{_MOUNT_POINT}:rw"], network_mode="none")
        helper = self.api.create_container(image, command=["true"], entrypoint=[], host_config=host_config,
                                           network_disabled=True, labels={HELPER_LABEL: "ship"})["Id"]
        try:
            for archive in archives:
                self.api.put_archive(helper, _MOUNT_POINT, archive)
        finally:
            try:
                self.api.remove_container(helper, force=True, v=True)  # v: anonymous volumes of the image's VOLUMEs
            except docker.errors.NotFound:
                pass
        return sum(len(a) for a in archives)
