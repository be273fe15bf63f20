"""Real Docker engines for the test suite: a fleet of nodes on one machine.

A :class:`Fleet` owns a host bridge (``<tag>br``, address ``10.X.0.1/24``) and
a few iptables rules tagged ``-m comment --comment <tag>``. Each
:class:`DockerNode` is a network namespace wired into that bridge with a veth
pair, holding its own ``dockerd`` (its own data-root, exec-root, socket,
pidfile, ``--bip``, cgroup parent and daemon.json with a per-node
``deprecated-key-path``, hence its own engine ID) and optionally:

* ``ssh=True``: an ``sshd`` on ``<address>:2222`` (key auth only) whose
  sessions get ``DOCKER_HOST=<this node's socket>`` and a PATH on which
  ``docker`` is Debian's ``/usr/bin/docker``, so ``docker system dial-stdio``
  (what docker-py runs over SSH) reaches this node's daemon.
* ``tls=True``: dockerd also listens on ``tcp://<address>:2376`` with
  ``--tlsverify`` and docker-machine style client material in ``tls_dir``.

Everything is named after a random tag (``dpl`` + 4 hex digits), so several
fleets, and other people's dockerd instances, can share the machine. Teardown
stops only the processes this fleet started (by recorded PID, or processes
whose command line names this fleet's private directory), and deletes only
the netns, links, iptables rules, mounts, cgroups and directories it created.
It runs from ``close()``/``__exit__``, and from ``atexit`` as a fallback. A
fleet whose owning process died without tearing down is swept by the next
fleet that starts (see ``STATE_DIR``).

SSH and docker-py: docker-py (``use_ssh_client=False``, i.e. paramiko) reads
``~/.ssh/config`` (``IdentityFile``) and ``~/.ssh/known_hosts`` from ``$HOME``
and rejects unknown host keys. :meth:`DockerNode.trust_ssh` writes both for a
node into a home directory. The OpenSSH client (docker-py's
``use_ssh_client=True``) ignores ``$HOME``; use paramiko in tests.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from contextlib import closing
from pathlib import Path

__all__ = [
    "DockerNode",
    "Fleet",
    "FleetError",
    "SSH_PORT",
    "TLS_PORT",
    "live_ssh_nodes",
    "preflight",
    "sweep_stale_fleets",
]

SSH_PORT = 2222
TLS_PORT = 2376
#: Bookkeeping for live fleets: one JSON record per fleet, used to sweep the
#: leftovers of a fleet whose owner process died without tearing down.
STATE_DIR = Path("/run/deployer-test")
#: The bridge subnet is 10.X.0.0/24 with X picked from this range.
SUBNET_OCTETS = range(200, 251)
#: PATH for everything started here; Debian's docker CLI (/usr/bin/docker,
#: which has `system dial-stdio`) must win over any /usr/local/bin/docker.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_CLI = "/usr/bin/docker"
#: Set by the test fixtures to the isolated $HOME of the running test; when it
#: equals $HOME, ``add_node(ssh=True)`` trusts the new node in that home.
TEST_HOME_ENV = "DEPLOYER_TEST_HOME"

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_LIVE: "weakref.WeakSet[Fleet]" = weakref.WeakSet()


class FleetError(RuntimeError):
    """The fleet could not be started, or could not be cleaned up completely."""


# --------------------------------------------------------------------------
# small helpers


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}")


def _tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise FleetError(f"{name} is not installed (run scripts/install.sh)")
    return path


def preflight() -> list[str]:
    """What keeps a fleet from starting here; empty when all is well."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the Docker test fleet needs root (network namespaces, dockerd)")
    for tool in ("dockerd", "containerd", "runc", "nsenter", "unshare", "hostname",
                 "ip", "iptables", "sshd", "ssh-keygen", "openssl"):
        if _which(tool) is None:
            problems.append(f"{tool} is missing")
    if not os.access(DOCKER_CLI, os.X_OK):
        problems.append(f"{DOCKER_CLI} (Debian's docker.io CLI) is missing")
    if not os.access("/bin/busybox", os.X_OK):
        problems.append("/bin/busybox (busybox-static) is missing")
    if problems:
        problems.append("install them with: ./scripts/install.sh")
    return problems


def _run(args: list[str], *, check: bool = True, input: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, input=input, capture_output=True, text=True,
                          timeout=timeout, env=_env())
    if check and proc.returncode != 0:
        raise FleetError(f"{shlex.join(args)} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _env(**extra: str) -> dict[str, str]:
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra)
    return env


def _proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _procs_mentioning(needle: str) -> list[int]:
    """Live processes whose command line contains needle (a private directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            if needle in _cmdline(int(entry)) and _alive(int(entry)):
                found.append(int(entry))
    return found


def _parallel(fn, items: list) -> list:
    """fn over items in plain threads; returns results or raised exceptions.
    (Not concurrent.futures: that refuses work during interpreter shutdown,
    where the atexit teardown runs.)"""
    results: list = [None] * len(items)

    def work(i, item):
        try:
            results[i] = fn(item)
        except BaseException as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=work, args=(i, it), daemon=True) for i, it in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _procs_in_netns(ns: str) -> list[int]:
    """Live processes inside the named network namespace."""
    want = _netns_id(f"/run/netns/{ns}")
    if want is None:
        return []
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and _netns_id(f"/proc/{e}/ns/net") == want and _alive(int(e))]


def _stop_pids(pids: list[int], owned_by: str | None, popens: dict[int, subprocess.Popen] | None = None,
               timeout: float = 10, netns: str | None = None) -> None:
    """SIGTERM, then SIGKILL after timeout. A pid is only signalled when it is
    one of our Popen children, or its command line names our directory
    (owned_by), or it runs inside our network namespace (netns): this guards
    against PID reuse."""
    popens = popens or {}
    ns_id = _netns_id(f"/run/netns/{netns}") if netns else None

    def ours(pid: int) -> bool:
        if pid in popens:
            return popens[pid].poll() is None
        if not _alive(pid):
            return False
        if owned_by and owned_by in _cmdline(pid):
            return True
        return ns_id is not None and _netns_id(f"/proc/{pid}/ns/net") == ns_id

    targets = [p for p in dict.fromkeys(pids) if p and ours(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            targets = [p for p in targets if ours(p)]
            if not targets:
                break
            time.sleep(0.02)
        if not targets:
            break
    for pid in pids:
        if pid in popens:
            try:
                popens[pid].wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass


def _mounts_under(root: str) -> list[str]:
    root = root.rstrip("/")
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def _cgroup_dirs(parent: str) -> list[Path]:
    """The cgroup directories named parent: one per v1 hierarchy, or the
    single one under a v2 (unified) mount."""
    base = Path("/sys/fs/cgroup")
    rel = parent.strip("/")
    if not rel or not base.is_dir():
        return []
    candidates = [base / rel] + [c / rel for c in base.iterdir() if c.is_dir()]
    return [p for p in candidates if p.is_dir()]


def _remove_cgroup(path: Path) -> None:
    # cgroup directories can only be rmdir'ed, children first
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def _docker_ping(sock_path: str, timeout: float = 0.5) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = s.recv(256)
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]


def _ssh_banner(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _host_lock():
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _host_unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for cmd in (["ip", "-4", "route", "show", "table", "all"], ["ip", "-4", "-o", "addr", "show"]):
        out = _run(cmd, check=False).stdout
        for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", out):
            try:
                nets.append(ipaddress.ip_network(token, strict=False))
            except ValueError:
                pass
    return nets


# --------------------------------------------------------------------------
# teardown from a plain record (shared by close() and the stale sweep)


def _teardown(record: dict, popens: dict[int, subprocess.Popen] | None = None) -> list[str]:
    """Undo everything a fleet record names; returns error strings."""
    errors: list[str] = []
    tag, root = record["tag"], record["dir"]

    _stop_pids(record.get("pids", []), root, popens)
    strays = _procs_mentioning(root)      # containerd, shims started by our dockerd
    if strays:
        _stop_pids(strays, root, timeout=3)

    for ns in record.get("netns", []):   # e.g. sshd's per-connection children
        _stop_pids(_procs_in_netns(ns), None, timeout=3, netns=ns)

    for point in _mounts_under(root):
        _run(["umount", "-l", point], check=False)

    for table in ("filter", "nat"):
        rules = _run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
        for line in rules.splitlines():
            args = shlex.split(line)
            if "--comment" in args and args[args.index("--comment") + 1] == tag and args[0] == "-A":
                proc = _run(["iptables", "-w", "-t", table, "-D", *args[1:]], check=False)
                if proc.returncode:
                    errors.append(f"iptables -t {table} -D {line[3:]}: {proc.stderr.strip()}")

    for ns in record.get("netns", []):
        if Path(f"/run/netns/{ns}").exists():
            proc = _run(["ip", "netns", "del", ns], check=False)
            if proc.returncode:
                errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    for link in [*record.get("veths", []), record.get("bridge")]:
        if link and Path(f"/sys/class/net/{link}").exists():
            proc = _run(["ip", "link", "del", link], check=False)
            if proc.returncode and Path(f"/sys/class/net/{link}").exists():
                errors.append(f"ip link del {link}: {proc.stderr.strip()}")

    for parent in record.get("cgroups", []):
        for path in _cgroup_dirs(parent):
            _remove_cgroup(path)

    if root and Path(root).exists():
        if _mounts_under(root):
            errors.append(f"mounts remain under {root}; not removing it")
        else:
            shutil.rmtree(root, ignore_errors=True)
    try:
        (STATE_DIR / f"{tag}.json").unlink()
    except FileNotFoundError:
        pass
    return errors


def sweep_stale_fleets() -> list[str]:
    """Tear down fleets whose owner process is gone; returns their tags."""
    swept = []
    if not STATE_DIR.is_dir():
        return swept
    for path in STATE_DIR.glob("dpl*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        owner, started = record.get("owner_pid"), record.get("owner_start")
        if owner and _proc_start_time(owner) == started:
            continue                      # its owner is alive: not ours to touch
        _teardown(record)
        swept.append(record["tag"])
    return swept


_SIGNAL_LOCK = threading.Lock()
_SIGTERM_INSTALLED = False


def _on_sigterm(signum, frame):
    # SIGTERM (e.g. from `timeout`) would end the process without running
    # finalizers or atexit; turn it into an interrupt so teardown runs.
    raise KeyboardInterrupt(f"signal {signum}")


def _guard_sigterm(on: bool) -> None:
    """While fleets are live, SIGTERM raises KeyboardInterrupt in the main
    thread (only if nobody else handles SIGTERM)."""
    global _SIGTERM_INSTALLED
    if threading.current_thread() is not threading.main_thread():
        return
    with _SIGNAL_LOCK:
        if on and not _SIGTERM_INSTALLED and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _SIGTERM_INSTALLED = True
        elif not on and _SIGTERM_INSTALLED and not _LIVE and \
                signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _SIGTERM_INSTALLED = False


def live_ssh_nodes() -> list["DockerNode"]:
    """Running SSH-enabled nodes of every live fleet in this process."""
    return [n for f in list(_LIVE) for n in list(f.nodes.values()) if n.ssh and n.running]


# --------------------------------------------------------------------------


class Fleet:
    """A host bridge plus Docker nodes in network namespaces. Use as a context
    manager; ``close()`` is idempotent and also registered with atexit."""

    def __init__(self, base_dir: str | None = None):
        self.tag: str = ""
        self.bridge: str = ""
        self.subnet: str = ""        # '10.X.0.0/24'
        self.gateway: str = ""       # '10.X.0.1', the host's address on the bridge
        self.octet: int = 0          # X
        self.dir: Path | None = None
        self.nodes: dict[str, DockerNode] = {}
        self._base_dir = base_dir
        self._lock = threading.RLock()
        self._started = False
        self._closed = False
        self._next_index = 1
        self._record: dict = {}
        self._ca: tuple[Path, Path] | None = None
        self._client_tls: tuple[Path, Path] | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Fleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Fleet":
        with self._lock:
            if self._started:
                return self
            if self._closed:
                raise FleetError("this fleet was closed")
            problems = preflight()
            if problems:
                raise FleetError("cannot start a Docker test fleet:\n  " + "\n  ".join(problems))
            lock = _host_lock()
            try:
                sweep_stale_fleets()
                while True:
                    tag = "dpl" + secrets.token_hex(2)
                    if not (STATE_DIR / f"{tag}.json").exists() and \
                            not Path(f"/sys/class/net/{tag}br").exists():
                        break
                self.tag, self.bridge = tag, f"{tag}br"
                self.octet = self._pick_octet()
                self.subnet = f"10.{self.octet}.0.0/24"
                self.gateway = f"10.{self.octet}.0.1"
                self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=self._base_dir))
                os.chmod(self.dir, 0o755)
                self._record = {
                    "tag": tag, "owner_pid": os.getpid(),
                    "owner_start": _proc_start_time(os.getpid()),
                    "dir": str(self.dir), "bridge": self.bridge, "subnet": self.subnet,
                    "netns": [], "veths": [], "pids": [], "cgroups": [],
                }
                self._save()
                self._started = True
                atexit.register(self._atexit)
                _LIVE.add(self)
                _guard_sigterm(True)
                _run(["ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0"])
                _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
                _run(["ip", "link", "set", self.bridge, "up"])
            except BaseException:
                if self._started:
                    self._close_after_failure()
                raise
            finally:
                _host_unlock(lock)
            try:
                self._add_iptables_rules()
            except BaseException:
                self._close_after_failure()
                raise
            return self

    def _pick_octet(self) -> int:
        used = _used_networks()
        free = [x for x in SUBNET_OCTETS
                if not any(n.overlaps(ipaddress.ip_network(f"10.{x}.0.0/16")) and n.prefixlen > 0
                           for n in used)]
        if not free:
            raise FleetError("no free 10.X.0.0/16 (X in 200-250) for the test bridge")
        return random.choice(free)

    def _add_iptables_rules(self) -> None:
        c = ["-m", "comment", "--comment", self.tag]
        br = self.bridge
        for rule in (
            ["-t", "filter", "-I", "FORWARD", "1", "-i", br, "-o", br, *c, "-j", "ACCEPT"],
            ["-t", "filter", "-I", "FORWARD", "1", "-i", br, "!", "-o", br, *c, "-j", "ACCEPT"],
            ["-t", "filter", "-I", "FORWARD", "1", "-o", br, "-m", "conntrack",
             "--ctstate", "RELATED,ESTABLISHED", *c, "-j", "ACCEPT"],
            ["-t", "nat", "-A", "POSTROUTING", "-s", self.subnet, "!", "-o", br, *c,
             "-j", "MASQUERADE"],
        ):
            _run(["iptables", "-w", *rule])
        # egress (builds inside nodes) is routed by the host; dockerd would set this too
        fwd = Path("/proc/sys/net/ipv4/ip_forward")
        if fwd.read_text().strip() != "1":
            fwd.write_text("1\n")

    def close(self) -> None:
        """Tear everything down; raises FleetError listing what could not be
        removed (after trying all of it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            atexit.unregister(self._atexit)
        except Exception:
            pass
        _LIVE.discard(self)
        _guard_sigterm(False)
        if not self._started:
            return
        errors: list[str] = []
        nodes = list(self.nodes.values())
        errors += [e for e in _parallel(self._stop_quietly, nodes) if e]
        popens = {n._dockerd.pid: n._dockerd for n in nodes if n._dockerd}
        popens.update({n._sshd.pid: n._sshd for n in nodes if n._sshd})
        errors += _teardown(self._record, popens)
        leftovers = self.leftovers()
        if leftovers:
            errors += [f"leftover: {x}" for x in leftovers]
        if errors:
            raise FleetError(f"fleet {self.tag} teardown: " + "; ".join(errors))

    @staticmethod
    def _stop_quietly(node: "DockerNode") -> str | None:
        try:
            node.stop()
        except Exception as e:  # noqa: BLE001 - teardown goes on regardless
            return f"{node.name}: {e}"
        return None

    def _close_after_failure(self) -> None:
        try:
            self.close()
        except FleetError:
            pass            # the original error matters more

    def _atexit(self) -> None:
        try:
            self.close()
        except Exception as e:  # noqa: BLE001
            print(f"deployer test fleet teardown at exit: {e}")

    def leftovers(self) -> list[str]:
        """Anything of this fleet still present on the host (empty after a
        clean close())."""
        if not self.tag:
            return []
        tag, found = self.tag, []
        netns = _run(["ip", "netns", "list"], check=False).stdout.split()
        found += [f"netns {n}" for n in netns if n.startswith(tag)]
        links = _run(["ip", "-o", "link", "show"], check=False).stdout
        found += [f"link {m}" for m in re.findall(rf"^\d+: ({tag}[^:@\s]*)", links, re.M)]
        for table in ("filter", "nat"):
            rules = _run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
            found += [f"iptables -t {table} {r}" for r in rules.splitlines()
                      if re.search(rf'--comment "?{tag}"?(\s|$)', r)]
        pids = self._record.get("pids", [])
        found += [f"process {p}: {_cmdline(p)}" for p in pids
                  if _alive(p) and str(self.dir) in _cmdline(p)]
        found += [f"process {p}: {_cmdline(p)}" for p in _procs_mentioning(str(self.dir))
                  if p not in pids]
        for ns in self._record.get("netns", []):
            found += [f"process {p} in netns {ns}: {_cmdline(p)}" for p in _procs_in_netns(ns)]
        found += [f"mount {m}" for m in _mounts_under(str(self.dir))]
        for parent in self._record.get("cgroups", []):
            found += [f"cgroup {p}" for p in _cgroup_dirs(parent)]
        if self.dir and self.dir.exists():
            found.append(f"directory {self.dir}")
        if (STATE_DIR / f"{tag}.json").exists():
            found.append(f"state file {STATE_DIR / f'{tag}.json'}")
        return found

    # -- nodes -------------------------------------------------------------

    def add_node(self, name: str, ssh: bool = False, tls: bool = False,
                 hostname: str | None = None) -> "DockerNode":
        """Start a node and wait until its daemon (and sshd) answer."""
        node = self._new_node(name, ssh, tls, hostname)
        node._start_or_stop()
        return node

    def add_nodes(self, *specs: dict) -> list["DockerNode"]:
        """Start several nodes in parallel; each spec is add_node's kwargs,
        e.g. ``add_nodes(dict(name='a'), dict(name='b', ssh=True))``."""
        nodes = [self._new_node(s["name"], s.get("ssh", False), s.get("tls", False),
                                s.get("hostname")) for s in specs]
        for result in _parallel(lambda n: n._start_or_stop(), nodes):
            if isinstance(result, BaseException):
                raise result
        return nodes

    def __getitem__(self, name: str) -> "DockerNode":
        return self.nodes[name]

    def _new_node(self, name, ssh, tls, hostname) -> "DockerNode":
        self.start()
        if not _NAME_RE.match(name):
            raise ValueError(f"node name {name!r}: use [a-z][a-z0-9-]{{0,19}}")
        with self._lock:
            if self._closed:
                raise FleetError("this fleet was closed")
            if name in self.nodes:
                raise ValueError(f"node {name!r} exists already")
            index = self._next_index
            if index > 80:
                raise FleetError("too many nodes in one fleet")
            self._next_index += 1
            node = DockerNode(self, name, index, ssh=ssh, tls=tls, hostname=hostname or name)
            self.nodes[name] = node
            self._record["netns"].append(node.netns)
            self._record["veths"].append(node.veth)
            self._record["cgroups"].append(node.cgroup_parent)
            self._save()
        return node

    def _note_pid(self, pid: int) -> None:
        with self._lock:
            self._record["pids"].append(pid)
            self._save()

    def _save(self) -> None:
        path = STATE_DIR / f"{self.tag}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._record))
        tmp.replace(path)

    # -- TLS material shared by the fleet's nodes --------------------------

    def _tls_material(self) -> tuple[Path, Path, Path, Path]:
        """(ca.pem, ca-key.pem, client cert.pem, client key.pem), made once."""
        with self._lock:
            ca_dir = self.dir / "ca"
            if self._ca is None:
                ca_dir.mkdir(exist_ok=True)
                ca, ca_key = ca_dir / "ca.pem", ca_dir / "ca-key.pem"
                _openssl_cert(ca, ca_key, f"deployer-test CA {self.tag}",
                              ["basicConstraints=critical,CA:TRUE",
                               "keyUsage=critical,keyCertSign,cRLSign"])
                cert, key = ca_dir / "client-cert.pem", ca_dir / "client-key.pem"
                _openssl_cert(cert, key, "deployer-test client",
                              ["basicConstraints=critical,CA:FALSE",
                               "keyUsage=critical,digitalSignature",
                               "extendedKeyUsage=clientAuth"], ca=(ca, ca_key))
                self._ca, self._client_tls = (ca, ca_key), (cert, key)
            return (*self._ca, *self._client_tls)


def _openssl_cert(cert: Path, key: Path, cn: str, exts: list[str],
                  ca: tuple[Path, Path] | None = None) -> None:
    args = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "7", "-subj", f"/CN={cn}"]
    if ca:
        args += ["-CA", str(ca[0]), "-CAkey", str(ca[1])]
    for ext in exts:
        args += ["-addext", ext]
    _run(args)
    os.chmod(key, 0o600)


# --------------------------------------------------------------------------


class DockerNode:
    """One Docker host: a netns on the fleet bridge with its own dockerd."""

    def __init__(self, fleet: Fleet, name: str, index: int, *, ssh: bool, tls: bool,
                 hostname: str):
        tag, x = fleet.tag, fleet.octet
        self.fleet = fleet
        self.name = name
        self.index = index
        self.hostname = hostname
        self.netns = f"{tag}-{name}"
        self.veth = f"{tag}h{index}"           # host end, enslaved to the bridge
        self.address = f"10.{x}.0.{10 + index}"
        self.bip = f"10.{x}.{100 + index}.1/24"
        self.cgroup_parent = f"/{tag}-{name}"
        self.dir = fleet.dir / name
        self.socket = str(self.dir / "docker.sock")
        self.unix_url = f"unix://{self.socket}"
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.config_file = self.dir / "daemon.json"
        self.log_path = self.dir / "dockerd.log"
        self.pid: int | None = None             # dockerd
        self.containerd_pid: int | None = None
        self.ssh = ssh
        self.ssh_port = SSH_PORT
        self.ssh_url = f"ssh://root@{self.address}:{SSH_PORT}" if ssh else None
        self.ssh_identity: str | None = None
        self.ssh_host_key_line: str | None = None
        self.sshd_pid: int | None = None
        self.tls = tls
        self.tls_port = TLS_PORT
        self.tls_url = f"tcp://{self.address}:{TLS_PORT}" if tls else None
        self.tls_dir: str | None = None
        self._dockerd: subprocess.Popen | None = None
        self._sshd: subprocess.Popen | None = None
        self._stopped = False
        self._link_up = True
        self._api_version: str | None = None

    def __repr__(self) -> str:
        return f"<DockerNode {self.name} {self.address} pid={self.pid}>"

    # -- start -------------------------------------------------------------

    def _start_or_stop(self) -> None:
        try:
            self._start()
        except BaseException:
            try:
                self.stop()       # its netns and directory go with the fleet
            except Exception:  # noqa: BLE001 - the start error is the one to report
                pass
            raise

    def _start(self) -> None:
        self.dir.mkdir(mode=0o755)
        self._make_netns()
        tls_args = self._make_tls() if self.tls else ["--tls=false"]
        self.config_file.write_text(json.dumps(
            {"deprecated-key-path": str(self.dir / "key.json")}, indent=2) + "\n")
        sub = f"{self.fleet.tag}-{self.name}"
        args = [
            _tool("dockerd"),
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.dir / "docker.pid"),
            "-H", self.unix_url,
            "--bip", self.bip,
            "--cgroup-parent", self.cgroup_parent,
            "--containerd-namespace", sub,
            "--containerd-plugins-namespace", f"{sub}-plugins",
            "--shutdown-timeout", "2",
            *tls_args,
        ]
        nsenter, unshare = _tool("nsenter"), _tool("unshare")
        log = open(self.log_path, "ab")
        try:
            self._dockerd = subprocess.Popen(
                [nsenter, f"--net=/run/netns/{self.netns}", unshare, "--uts", "--",
                 "/bin/sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_env(), start_new_session=True)
        finally:
            log.close()
        self.pid = self._dockerd.pid      # nsenter, unshare and sh all exec
        self.fleet._note_pid(self.pid)
        if self.ssh:
            self._start_sshd()
        self._wait_dockerd()
        if self.ssh:
            self._wait_sshd()
            if os.environ.get(TEST_HOME_ENV) and \
                    os.environ.get(TEST_HOME_ENV) == os.environ.get("HOME"):
                self.trust_ssh()

    def _make_netns(self) -> None:
        fleet, tmp_peer = self.fleet, f"{self.fleet.tag}n{self.index}"
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", tmp_peer,
              "netns", self.netns])
        _run(["ip", "link", "set", self.veth, "master", fleet.bridge, "up"])
        _run(["ip", "-n", self.netns, "-batch", "-"], input="\n".join([
            f"link set {tmp_peer} name eth0",
            f"addr add {self.address}/24 dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add default via {fleet.gateway}",
        ]) + "\n")

    def _make_tls(self) -> list[str]:
        ca, ca_key, client_cert, client_key = self.fleet._tls_material()
        server = self.dir / "tls-server"
        server.mkdir()
        cert, key = server / "cert.pem", server / "key.pem"
        _openssl_cert(cert, key, self.address,
                      ["basicConstraints=critical,CA:FALSE",
                       "keyUsage=critical,digitalSignature",
                       "extendedKeyUsage=serverAuth",
                       f"subjectAltName=IP:{self.address},DNS:{self.hostname}"],
                      ca=(ca, ca_key))
        client = self.dir / "tls"
        client.mkdir()
        shutil.copy(ca, client / "ca.pem")
        shutil.copy(client_cert, client / "cert.pem")
        shutil.copy(client_key, client / "key.pem")
        self.tls_dir = str(client)
        return ["--tlsverify", "--tlscacert", str(ca), "--tlscert", str(cert),
                "--tlskey", str(key), "-H", f"tcp://{self.address}:{TLS_PORT}"]

    def _start_sshd(self) -> None:
        d = self.dir / "ssh"
        d.mkdir(mode=0o700)
        host_key, client_key = d / "ssh_host_ed25519_key", d / "id_ed25519"
        for path, comment in ((host_key, f"{self.name} host"), (client_key, "deployer-test")):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
        shutil.copy(client_key.with_suffix(".pub"), d / "authorized_keys")
        pub = (host_key.with_suffix(".pub")).read_text().split()
        self.ssh_host_key_line = f"[{self.address}]:{SSH_PORT} {pub[0]} {pub[1]}"
        self.ssh_identity = str(client_key)
        config = d / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.address}:{SSH_PORT}",
            f"HostKey {host_key}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxSessions 64",
            "MaxStartups 64",
            "ClientAliveInterval 5",
            "ClientAliveCountMax 3",
            "LogLevel INFO",
            # namespaces share the filesystem: point the CLI at this node's
            # daemon, and make /usr/bin/docker (has `system dial-stdio`) the one
            f"SetEnv DOCKER_HOST={self.unix_url} PATH={SYSTEM_PATH}",
            "Subsystem sftp internal-sftp",
        ]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._sshd = subprocess.Popen(
            [_tool("nsenter"), f"--net=/run/netns/{self.netns}", _tool("sshd"), "-D",
             "-f", str(config), "-E", str(d / "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=_env(), start_new_session=True)
        self.sshd_pid = self._sshd.pid
        self.fleet._note_pid(self.sshd_pid)

    def _wait_dockerd(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if _docker_ping(self.socket):
                break
            if self._dockerd.poll() is not None:
                raise FleetError(f"dockerd of node {self.name} exited "
                                 f"({self._dockerd.returncode}):\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise FleetError(f"dockerd of node {self.name} not ready after {timeout}s:\n"
                                 f"{_tail(self.log_path)}")
            time.sleep(0.02)
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            self.containerd_pid = int(pidfile.read_text().strip())
            self.fleet._note_pid(self.containerd_pid)
        except (OSError, ValueError):
            pass

    def _wait_sshd(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not _ssh_banner(self.address, SSH_PORT):
            if self._sshd.poll() is not None:
                raise FleetError(f"sshd of node {self.name} exited ({self._sshd.returncode}):\n"
                                 f"{_tail(self.dir / 'ssh' / 'sshd.log')}")
            if time.monotonic() > deadline:
                raise FleetError(f"sshd of node {self.name} not answering after {timeout}s:\n"
                                 f"{_tail(self.dir / 'ssh' / 'sshd.log')}")
            time.sleep(0.02)

    # -- clients -----------------------------------------------------------

    def client(self, timeout: float = 60):
        """docker.DockerClient over this node's unix socket."""
        import docker
        return docker.DockerClient(base_url=self.unix_url, timeout=timeout)

    def ssh_client(self, timeout: float = 60):
        """docker.DockerClient over SSH (paramiko). Needs trust_ssh() into $HOME
        first (the test fixtures do that)."""
        import docker
        if not self.ssh:
            raise FleetError(f"node {self.name} has no sshd (add_node(ssh=True))")
        return docker.DockerClient(base_url=self.ssh_url, use_ssh_client=False, timeout=timeout)

    def tls_config(self):
        """docker.tls.TLSConfig with this node's client material."""
        import docker
        if not self.tls:
            raise FleetError(f"node {self.name} has no TLS listener (add_node(tls=True))")
        d = Path(self.tls_dir)
        return docker.tls.TLSConfig(client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
                                    ca_cert=str(d / "ca.pem"), verify=True)

    def tls_client(self, timeout: float = 60, version: str | None = None):
        """docker.DockerClient over TCP+TLS, ignoring REQUESTS_CA_BUNDLE & co.

        docker-py asks the server for its API version inside the constructor,
        before ``trust_env`` can be switched off, so with the default
        ``version=None`` that first request would use the environment's CA
        bundle and fail. Hence: probe the version with a pinned-version
        client that has ``trust_env = False``, then build the real client
        with that version."""
        import docker
        if version is None:
            version = self._api_version
        if version is None:
            probe = docker.APIClient(base_url=self.tls_url, tls=self.tls_config(),
                                     timeout=timeout, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
            probe.trust_env = False
            try:
                version = probe.version(api_version=False)["ApiVersion"]
            finally:
                probe.close()
            self._api_version = version
        client = docker.DockerClient(base_url=self.tls_url, tls=self.tls_config(),
                                     timeout=timeout, version=version)
        client.api.trust_env = False
        return client

    def trust_ssh(self, home: str | os.PathLike | None = None) -> None:
        """Write this node's known_hosts line and a ``Host`` block with its
        IdentityFile into ``<home>/.ssh`` (default: $HOME), which is where
        paramiko, hence docker-py, looks."""
        if not self.ssh:
            return
        ssh_dir = Path(home or os.environ["HOME"]) / ".ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        known = ssh_dir / "known_hosts"
        lines = known.read_text().splitlines() if known.exists() else []
        prefix = f"[{self.address}]:{SSH_PORT} "
        lines = [ln for ln in lines if not ln.startswith(prefix)] + [self.ssh_host_key_line]
        known.write_text("\n".join(lines) + "\n")
        config = ssh_dir / "config"
        text = config.read_text() if config.exists() else ""
        block = (f"Host {self.address}\n    User root\n    Port {SSH_PORT}\n"
                 f"    IdentityFile {self.ssh_identity}\n    IdentitiesOnly yes\n")
        blocks = [b for b in re.split(r"(?m)^(?=Host )", text)
                  if b.strip() and not b.startswith(f"Host {self.address}\n")]
        config.write_text("".join(blocks + [block]))
        os.chmod(config, 0o600)

    # -- faults and lifecycle ---------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._dockerd) and self._dockerd.poll() is None

    @property
    def is_link_up(self) -> bool:
        return self._link_up

    def link_down(self) -> None:
        """Make the node unreachable over the network (the unix socket still
        works): the host end of its veth goes down, and the neighbour entries
        for its address are flushed so new connections fail fast (no route
        to host after ARP gives up, ~3 s) instead of hanging."""
        _run(["ip", "link", "set", self.veth, "down"])
        self._link_up = False
        _run(["ip", "neigh", "flush", "to", self.address], check=False)
        for other in list(self.fleet.nodes.values()):
            if other is not self and Path(f"/run/netns/{other.netns}").exists():
                _run(["ip", "-n", other.netns, "neigh", "flush", "to", self.address], check=False)

    def link_up(self) -> None:
        """Bring the link back, and return once the node answers on its network ports again.

        Until the host has resolved the node's address anew, a connection fails with
        "no route to host" (the neighbour entry that link_down left as failed): a test
        that says "back: the next command converges" must not race that."""
        _run(["ip", "link", "set", self.veth, "up"])
        self._link_up = True
        ports = [p for p, on in ((self.ssh_port, self.ssh), (self.tls_port, self.tls)) if on]
        deadline = time.monotonic() + 20
        while ports and time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, ports[0]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)

    def reset(self) -> None:
        """Remove all containers, user networks and volumes (images stay)."""
        with closing(self.client(timeout=30)) as client:
            _remove_containers(client)
            for net in client.api.networks():
                if net["Name"] not in ("bridge", "host", "none"):
                    client.api.remove_network(net["Id"])
            client.api.prune_volumes()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """Remove its containers, stop sshd and dockerd (SIGTERM, SIGKILL after
        10 s), unmount leftovers, remove its cgroups. Idempotent. The netns and
        directories go with the fleet."""
        if self._stopped:
            return
        self._stopped = True
        if self.running:
            try:
                import docker
                with closing(docker.DockerClient(base_url=self.unix_url, timeout=15)) as client:
                    _remove_containers(client)
            except Exception:  # noqa: BLE001 - the daemon may be wedged; kill it anyway
                pass
        popens = {p.pid: p for p in (self._dockerd, self._sshd) if p}
        _stop_pids([p for p in (self.sshd_pid, self.pid) if p], str(self.dir), popens)
        if self.containerd_pid:
            _stop_pids([self.containerd_pid], str(self.dir), timeout=5)
        strays = _procs_mentioning(str(self.dir))
        if strays:
            _stop_pids(strays, str(self.dir), timeout=3)
        # sshd's per-connection children outlive the listener; anything left
        # in the node's namespace was started by this node
        in_ns = _procs_in_netns(self.netns)
        if in_ns:
            _stop_pids(in_ns, None, timeout=3, netns=self.netns)
        for point in _mounts_under(str(self.dir)):
            _run(["umount", "-l", point], check=False)
        for path in _cgroup_dirs(self.cgroup_parent):
            _remove_cgroup(path)


def _remove_containers(client) -> None:
    ids = [c["Id"] for c in client.api.containers(all=True)]
    if not ids:
        return

    def rm(cid):
        try:
            client.api.remove_container(cid, force=True, v=True)
        except Exception as e:  # noqa: BLE001
            if "No such container" not in str(e) and "already in progress" not in str(e):
                raise

    for result in _parallel(rm, ids):
        if isinstance(result, BaseException):
            raise result
