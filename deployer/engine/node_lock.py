"""The node lock on the node's own Docker engine, for datacenters without a Consul.

The lock object is a container named ``deployer-lock.<dc>.<node>`` that is created
and never started. Container names are reserved atomically by the engine (a second
``POST /containers/create?name=deployer-lock.dc.node`` gets ``409 Conflict`` while
the first exists), which is what makes it a lock that every deployer on every
machine respects. One per node, so nodes that share an engine do not wait for each
other (two names that could only collide for dc names with dots would make two
nodes share a lock: more exclusion, never less). Volumes and networks were tried and are not locks: ``volume create`` with
an existing name returns the existing volume, and ``network create`` with a name
that exists makes a second network unless ``CheckDuplicate`` is set, which the
engine checks before creating, not atomically.

A container needs an image: ``deployer-lock:1``, imported on the engine from a
one-file tar when the create answers that it is missing (no registry, nothing
pulled, never run; not looked up before each create). The container
has no network, and no ``deployer.dc``/``deployer.node`` labels, so no plan, prune
or status takes it for a service.

What the lock says
------------------
Labels (immutable, written at create): ``deployer.lock=1``, ``deployer.lock.id``
(this acquisition's id), ``deployer.lock.holder`` (JSON: who, host, pid, command,
since, reason, id, ttl) and ``deployer.lock.ttl`` (seconds; ``0`` is a manual lock,
which never expires). The expiry is the one thing that changes: the holder renews
it by copying a file ``/deployer-lease`` (JSON ``{"expires": <engine epoch>}``)
into the created container (``PUT /containers/{id}/archive``, which works on a
container that never ran). Until the first renewal the expiry is the container's
``Created`` time plus the TTL.

Clocks: every time is the ENGINE's: the ``Date`` header of the engine's own answer
(1 s resolution) and ``Created``. Two deployers on machines with skewed clocks
therefore agree on whether a lock has expired.

The protocol
------------
* acquire: create the container. On 409, read it: expired (engine now > expiry +
  ``MARGIN``), or taken by a process of this very machine that is gone
  (``holder_dead``: same boot id and pid namespace, pid gone or reused) -> remove it
  BY ID and try again; removing by id is the compare-and-
  swap: of two deployers breaking the same expired lock, one removes it, the other
  gets 404, and whichever then creates first holds the new lock. Not expired -> wait
  (``--wait``) or fail naming the holder (NodeLockHeld).
* hold: a thread renews every TTL/3, only while engine now < expiry - ``MARGIN``; a
  holder that finds its lease that close to expiring, or its container gone or
  replaced, has LOST the lock and stops. So a renewal and a break are always
  2 x MARGIN of engine time apart. ``check()`` (before every container step) reads
  the lock object once and raises LockLost unless it is still ours and unexpired.
* release: remove the container by id (a lock broken meanwhile is not touched).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import io
import json
import os
import re
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deployer.engine.connect import import_docker
from deployer.errors import LockError, LockLost, NodeLockHeld
from deployer.labels import LABEL_LOCK, LABEL_LOCK_HOLDER, LABEL_LOCK_ID, LABEL_LOCK_TTL

docker = import_docker()

LOCK_PREFIX = "deployer-lock"
LOCK_IMAGE = "deployer-lock:1"
LEASE_FILE = "deployer-lease"
MARGIN = 2.0  # seconds of engine time between the last renewal and the earliest break (Date has 1 s resolution)
POLL = 0.25  # seconds between attempts while another holds the lock
DEFAULT_TTL = 30.0
MIN_TTL = 3 * MARGIN  # a shorter TTL leaves no time to renew
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def describe_holder(info: dict[str, Any] | None) -> str:
    """``root@ci-7 pid 123 (deployer deploy web:2 dev/dev1) since 2026-...`` (+ ``: REASON`` for a manual lock)."""
    if not info:
        return "another deployer (its details are unreadable)"
    who = f"{info.get('who', '?')}@{info.get('host', '?')}"
    if info.get("pid"):
        who += f" pid {info['pid']}"
    if info.get("manual"):
        who = f"a manual lock of {who}"
    if info.get("command"):
        who += f" ({info['command']})"
    if info.get("since"):
        who += f" since {info['since']}"
    if info.get("reason"):
        who += f": {info['reason']}"
    return who


def process_identity(pid: int | None = None) -> dict[str, Any] | None:
    """What proves, on this machine, that a process is the one that took a lock: the boot id, the pid
    namespace, the pid and its start time (``/proc``). None where there is no /proc to read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    pid = pid or os.getpid()
    start = _start_time(pid)
    return None if start is None else {"boot": boot, "pidns": pidns, "pid": pid, "start": start}


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ", comm may hold spaces and parentheses
    return int(fields[19]) if len(fields) > 19 else None


def holder_dead(holder: dict[str, Any] | None) -> bool:
    """Whether the holder provably died: same boot and pid namespace as this process, and its pid is gone
    or now belongs to a process started later. A holder elsewhere (or unknown) is never judged dead:
    its lock ends with its TTL."""
    proc = (holder or {}).get("proc")
    mine = process_identity()
    if not isinstance(proc, dict) or mine is None or proc.get("boot") != mine["boot"] \
            or proc.get("pidns") != mine["pidns"] or not isinstance(proc.get("pid"), int):
        return False
    return _start_time(proc["pid"]) != proc.get("start")


def lock_name(target: str) -> str:
    """The lock object's name on the engine for node ``dc/node``."""
    return f"{LOCK_PREFIX}." + target.replace("/", ".")


def new_lock_id() -> str:
    return uuid.uuid4().hex[:16]


def parse_engine_time(text: str | None) -> float | None:
    """An engine timestamp (RFC 3339 with nanoseconds, ``2026-12-01T12:00:00.123456789Z``) as epoch seconds."""
    match = _RFC3339.match(text or "")
    if not match or text.startswith("0001-"):
        return None
    zone = match[3] if match[3] and match[3] != "Z" else "+00:00"
    return _dt.datetime.fromisoformat(match[1] + zone).timestamp() + float(match[2] or 0)


def http_date(headers: Any) -> float | None:
    """The engine's clock from the ``Date`` header of one of its answers, epoch seconds."""
    value = headers.get("Date") if headers is not None else None
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


@dataclass
class LockObject:
    """The lock container as read from the engine."""

    id: str
    holder: dict[str, Any]
    ttl: float  # 0: manual, never expires
    expires: float | None  # engine epoch; None for a manual lock
    engine_now: float  # the engine's clock when it was read

    @property
    def manual(self) -> bool:
        return self.ttl <= 0

    def expired(self, margin: float = MARGIN) -> bool:
        """Whether another deployer may break it: a deploy lock whose expiry passed ``margin`` ago."""
        return self.expires is not None and self.engine_now > self.expires + margin

    def seconds_left(self) -> float | None:
        return None if self.expires is None else self.expires - self.engine_now


def expiry_of(created: float | None, ttl: float, lease: dict[str, Any] | None) -> float | None:
    """Created + TTL, or the last renewal's expiry when later; None for a manual lock (TTL 0)."""
    if ttl <= 0:
        return None
    expires = (created or 0.0) + ttl
    if lease and isinstance(lease.get("expires"), (int, float)):
        expires = max(expires, float(lease["expires"]))
    return expires


def lease_tar(expires: float) -> bytes:
    data = (json.dumps({"expires": round(expires, 3)}) + "\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(LEASE_FILE)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image_tar() -> bytes:
    data = b"deployer-lock: this image only backs the never-started node lock containers 'deployer-lock.*'\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("deployer-lock.txt")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _inspect(api: Any, name: str) -> tuple[dict[str, Any] | None, float]:
    """The lock container's inspect (None: there is none) and the engine's clock at that answer."""
    response = api._get(api._url("/containers/{0}/json", name))
    now = http_date(response.headers) or time.time()
    if response.status_code == 404:
        return None, now
    api._raise_for_status(response)
    return response.json(), now


def read_lock(api: Any, name: str) -> LockObject | None:
    """The node's lock object now (``name``: ``lock_name(target)``), or None when the node is not locked."""
    data, now = _inspect(api, name)
    if data is None:
        return None
    labels = (data.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL_LOCK) != "1":
        raise LockError(f"a container named {name} that is not a deployer lock is on the engine "
                        f"({data.get('Id', '')[:12]}); rename or remove it")
    try:
        holder = json.loads(labels.get(LABEL_LOCK_HOLDER) or "{}")
    except ValueError:
        holder = {}
    try:
        ttl = float(labels.get(LABEL_LOCK_TTL) or 0)
    except ValueError:
        ttl = DEFAULT_TTL
    lease = _read_lease(api, data["Id"]) if ttl > 0 else None
    expires = expiry_of(parse_engine_time(data.get("Created")), ttl, lease)
    return LockObject(data["Id"], holder if isinstance(holder, dict) else {}, ttl, expires, now)


def _read_lease(api: Any, cid: str) -> dict[str, Any] | None:
    try:
        stream, _stat = api.get_archive(cid, "/" + LEASE_FILE)
        raw = b"".join(stream)
    except docker.errors.NotFound:
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.extractfile(LEASE_FILE)
            lease = json.loads(member.read().decode()) if member else None
    except (tarfile.TarError, ValueError, KeyError):
        return None  # being written: the Created-based expiry still holds
    return lease if isinstance(lease, dict) else None


def remove_lock(api: Any, cid: str) -> bool:
    """Remove the lock object by id; False when it was gone already (someone else removed it first)."""
    try:
        api.remove_container(cid, force=True)
        return True
    except docker.errors.NotFound:
        return False


class EngineLock:
    """The lock of one node on its engine (see the module doc). ``info`` is who holds it and why."""

    kind = "engine"
    client_owned = False  # whether release should also close the client (ops.locks opens one per lock)

    def __init__(self, client: Any, target: str, info: dict[str, Any], *, ttl: float = DEFAULT_TTL,
                 manual: bool = False, progress: Callable[[str], None] | None = None):
        self.client = client
        self.api = client.api
        self.target = target
        self.name = lock_name(target)
        self.ttl = 0.0 if manual else max(float(ttl), MIN_TTL)
        self.id = info.get("id") or new_lock_id()
        self.info = {**info, "id": self.id, "ttl": self.ttl, "manual": manual}
        self.progress = progress or (lambda msg: None)
        self.cid: str | None = None
        self.expires: float | None = None
        self.lost: str | None = None
        self._io = threading.Lock()  # one engine call at a time on this connection (renewals run on a thread)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring -------------------------------------------------------------

    def acquire(self, wait: float = 0) -> "EngineLock":
        deadline = time.monotonic() + max(0.0, float(wait or 0))
        said = False
        while True:
            created = self._try_create()
            if created:
                return self
            current = read_lock(self.api, self.name)
            if current is None:
                continue  # released between our create and the read
            if current.expired():
                if remove_lock(self.api, current.id):
                    self.progress(f"broke the expired lock of {describe_holder(current.holder)} "
                                  f"(expired {current.engine_now - (current.expires or 0):.0f}s ago)")
                continue
            if not current.manual and holder_dead(current.holder):
                if remove_lock(self.api, current.id):
                    self.progress(f"broke the lock of {describe_holder(current.holder)}: that process is gone")
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                hint = "; retry or pass --wait SECONDS" if not wait else f"; still held after waiting {wait:g}s"
                if current.manual:
                    hint += f"; 'deployer lock release {self.target}' lifts it"
                raise NodeLockHeld(self.target, describe_holder(current.holder) + hint, current.holder)
            if not said:
                said = True
                self.progress(f"waiting for the lock of {self.target}, held by {describe_holder(current.holder)}")
            time.sleep(min(POLL, remaining))

    def _ensure_image(self) -> None:
        """Import the lock image when the engine has none. Not asked before every create: a create whose image
        is missing gets 404 and calls this (one round trip fewer on every deploy's path)."""
        try:
            self.api.inspect_image(LOCK_IMAGE)
        except docker.errors.NotFound:
            repo, _, tag = LOCK_IMAGE.partition(":")
            self.api.import_image_from_data(_image_tar(), repository=repo, tag=tag)

    def _try_create(self) -> bool:
        labels = {LABEL_LOCK: "1", LABEL_LOCK_ID: self.id, LABEL_LOCK_TTL: f"{self.ttl:g}",
                  LABEL_LOCK_HOLDER: json.dumps(self.info, sort_keys=True, default=str)}
        for attempt in (1, 2):
            try:
                created = self.api.create_container(
                    LOCK_IMAGE, command=["deployer-lock"], name=self.name, labels=labels, network_disabled=True,
                    host_config=self.api.create_host_config(network_mode="none"))
                break
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    return False
                if exc.status_code == 404 and attempt == 1:  # no lock image on this engine (yet, or any more)
                    self._ensure_image()
                    continue
                raise
        self.cid = created["Id"]
        if self.ttl > 0:
            data, _now = _inspect(self.api, self.name)  # its Created time, in the engine's clock
            if data is None or data["Id"] != self.cid:  # pragma: no cover - broken within milliseconds
                self.cid = None
                return False
            self.expires = expiry_of(parse_engine_time(data.get("Created")), self.ttl, None)
            self._thread = threading.Thread(target=self._renew_loop, name=f"lock-{self.target}", daemon=True)
            self._thread.start()
        return True

    # -- holding ---------------------------------------------------------------

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LockLost as exc:
                self.lost = exc.message
                return
            except Exception as exc:  # noqa: BLE001 - the engine went away: check() says so, the next try may work
                self.progress(f"could not renew the lock of {self.target}: {' '.join(str(exc).split())[:200]}")

    def renew(self) -> None:
        """Push the expiry TTL further, unless the lock is no longer ours or about to expire (LockLost)."""
        with self._io:
            now = self._mine()
            self.api.put_archive(self.cid, "/", lease_tar(now + self.ttl))
            self.expires = now + self.ttl

    def _mine(self) -> float:
        """The engine's clock, after making sure the lock object is still ours and not about to expire
        (one inspect: the expiry is the one this holder last wrote)."""
        data, now = _inspect(self.api, self.name)
        if data is None or data.get("Id") != self.cid:
            raise LockLost(self.target, "the lock object on the engine was removed or replaced "
                           "(it had expired and another deployer broke it, or someone forced it)")
        if self.expires is not None and now >= self.expires - MARGIN:
            raise LockLost(self.target, f"its lease on the engine was not renewed in time (TTL {self.ttl:g}s)")
        return now

    def check(self) -> None:
        """LockLost unless the lock is still this deployer's and not about to expire (one engine call)."""
        if self.lost:
            raise LockLost(self.target, self.lost)
        if self.cid is None:
            raise LockLost(self.target, "it is not held")
        try:
            with self._io:
                self._mine()
        except LockLost as exc:
            self.lost = exc.message
            raise
        except (LockError, docker.errors.APIError, OSError, Exception) as exc:  # noqa: BLE001
            raise LockLost(self.target, f"the engine did not answer ({' '.join(str(exc).split())[:200]})") from None

    # -- releasing -------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        cid, self.cid = self.cid, None
        if cid is None:
            return
        with self._io:
            try:
                remove_lock(self.api, cid)
            except Exception as exc:  # noqa: BLE001 - it expires anyway
                self.progress(f"could not remove the lock of {self.target} ({' '.join(str(exc).split())[:200]}); "
                              f"it expires after {self.ttl:g}s")

    def detach(self) -> None:
        """Leave a manual lock in place (``deployer lock acquire``): no renewals, no removal."""
        self._stop.set()
        self.cid = None

    def __enter__(self) -> "EngineLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def force_release(client: Any, target: str, *, force: bool) -> LockObject | None:
    """Remove the node's lock object: a manual one always, a deploy's only with ``force`` (else LockError)."""
    current = read_lock(client.api, lock_name(target))
    if current is None:
        return None
    if not current.manual and not force and not current.expired():
        raise LockError(f"the lock of {target} is held by a running deploy ({describe_holder(current.holder)}); "
                        "pass --force to break it")
    remove_lock(client.api, current.id)
    return current
