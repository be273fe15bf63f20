"""A private Docker engine for the build tests, in its own network namespace.

Other people run their own dockerds on this machine, so nothing here touches a
shared resource by a well-known name: the bridge, the namespace, the iptables
rules (tagged with a comment), the cgroup parent, the containerd namespaces and
every path are unique to one ``BuildEngine``; ``stop()`` removes exactly them
and signals only the dockerd it started, by PID.

Layout (``N`` is a random id)::

    host:   bridge dbldN  10.25x.y.1/24  <-- veth --> netns deployer-build-N: 10.25x.y.2
            iptables FORWARD accept for the bridge, MASQUERADE for its subnet
    netns:  dockerd -H unix:///tmp/.../docker.sock, its containers behind 172.30.y.1/24

The registry of ``tests/support/registry.py`` listens on the bridge address, so
the engine reaches it over the veth while the test process reaches it directly.

Usable outside pytest too::

    with BuildEngine() as engine:
        client = engine.client()
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def _process_start(pid: int) -> str | None:
    """The start time of a process (field 22 of /proc/PID/stat): tells a live
    owner from a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid_alive(pid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    return _process_start(pid) is not None


def _terminate(pid: int, proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM our dockerd, SIGKILL it after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif _process_start(pid) is None:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=10)


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = _run("ip", "-4", "-o", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in _run("ip", "-4", "route", "show").stdout.splitlines():
        first = line.split()[0]
        if first != "default":
            try:
                nets.append(ipaddress.ip_network(first, strict=False))
            except ValueError:
                pass
    return nets


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_ipv4_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(250, 253)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.25x.y.0/24 subnet for a test bridge")


class BuildEngine:
    """One dockerd in its own network namespace, with egress through the host."""

    def __init__(self, root: str | os.PathLike | None = None, ready_timeout: float = 30.0):
        self.id = secrets.token_hex(3)
        self.tag = f"deployer-build-{self.id}"
        self.bridge = f"dbld{self.id}"
        self.veth_host = f"dbld{self.id}h"
        self.veth_ns = f"dbld{self.id}n"
        self.netns = self.tag
        self._set_subnet(_pick_subnet())  # picked again, under the host lock, when the bridge is made
        self.cgroup_parent = self.tag
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.log_path = self.root / "dockerd.log"
        self.url = f"unix://{self.socket}"
        self.ready_timeout = ready_timeout
        self._iptables: list[tuple[str, list[str]]] = []  # (table, rule spec)
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._made: list[str] = []
        self._dockerd_pid: int | None = None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> "BuildEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "BuildEngine":
        try:
            self._network()
            self._dockerd()
        except BaseException:
            self.stop()
            raise
        return self

    def _network(self) -> None:
        # Pick the subnet and address the bridge under the host-wide lock that fleets take for the
        # same job: two engines (or an engine and a fleet) starting at once on parallel test workers
        # would otherwise both see a subnet free and take it.
        from tests.support.engines import _host_lock, _host_unlock

        lock = _host_lock()
        try:
            self._set_subnet(_pick_subnet())
            prefix = self.subnet.prefixlen
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            self._save_state()
            _run("ip", "addr", "add", f"{self.bridge_ip}/{prefix}", "dev", self.bridge)
        finally:
            _host_unlock(lock)
        _run("ip", "link", "set", self.bridge, "up")
        _run("ip", "netns", "add", self.netns)
        self._made.append("netns")
        self._save_state()
        _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        _run("ip", "link", "set", self.veth_host, "master", self.bridge, "up")
        _run("ip", "link", "set", self.veth_ns, "netns", self.netns)
        ns = ("ip", "netns", "exec", self.netns)
        _run(*ns, "ip", "addr", "add", f"{self.ns_ip}/{prefix}", "dev", self.veth_ns)
        _run(*ns, "ip", "link", "set", self.veth_ns, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "route", "add", "default", "via", self.bridge_ip)
        # Egress for builds (apt, PyPI): forward the bridge, masquerade its subnet.
        # ip_forward is machine-wide and other engines need it too: it is set, never reset.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        self._iptables_add("filter", ["FORWARD", "-i", self.bridge, "-j", "ACCEPT"])
        self._iptables_add("filter", ["FORWARD", "-o", self.bridge, "-j", "ACCEPT"])
        self._iptables_add("nat", ["POSTROUTING", "-s", str(self.subnet), "!", "-o", self.bridge, "-j", "MASQUERADE"])

    def _iptables_add(self, table: str, spec: list[str]) -> None:
        chain, rest = spec[0], spec[1:]
        full = rest + ["-m", "comment", "--comment", self.tag]
        position = ["1"] if table == "filter" else []
        _run("iptables", "-t", table, "-I", chain, *position, *full)
        self._iptables.append((table, [chain] + full))
        self._save_state()

    def _dockerd(self) -> None:
        for d in (self.data_root, self.exec_root):
            d.mkdir(parents=True, exist_ok=True)
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        bip = f"172.30.{random.randint(0, 255)}.1/24"
        cmd = [
            "nsenter", f"--net=/run/netns/{self.netns}",
            "dockerd",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.url,
            "--config-file", str(config),
            "--bip", bip,
            "--cgroup-parent", self.cgroup_parent,
            "--containerd-namespace", self.tag,
            "--containerd-plugins-namespace", f"{self.tag}-plugins",
            "--tls=false",
        ]
        self._log = open(self.log_path, "ab")
        # nsenter execs dockerd, so this PID is dockerd's own.
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._dockerd_pid = self._proc.pid
        self._save_state()
        deadline = time.monotonic() + self.ready_timeout
        import docker

        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self._proc.returncode}: {self._log_tail()}")
            if self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.url, timeout=5)
                    client.ping()
                    client.close()
                    return
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd not ready after {self.ready_timeout}s: {self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self, timeout: int = 600):
        import docker

        client = docker.DockerClient(base_url=self.url, timeout=timeout)
        client.api.trust_env = False
        return client

    def _set_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.bridge_ip, self.ns_ip = str(hosts[0]), str(hosts[1])

    # -- state on disk, so a run that was killed can be cleaned up by the next --

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {
            "owner": os.getpid(), "owner_start": _process_start(os.getpid()),
            "tag": self.tag, "bridge": self.bridge, "veth_host": self.veth_host, "netns": self.netns,
            "cgroup_parent": self.cgroup_parent, "made": self._made, "iptables": self._iptables,
            "dockerd": self._dockerd_pid, "socket": str(self.socket),
        }
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.root / "state.json")

    @classmethod
    def sweep_stale(cls) -> list[str]:
        """Tear down engines left by BuildEngines whose process died without
        stopping them (SIGKILL). Only this module's own, recorded resources
        (``deployer-build-*`` roots with a state.json) are touched."""
        swept = []
        for root in Path(tempfile.gettempdir()).glob("deployer-build-*"):
            try:
                state = json.loads((root / "state.json").read_text())
            except (OSError, ValueError):
                continue
            if _process_start(state["owner"]) == state.get("owner_start"):
                continue  # its owner is alive: someone's engine in use
            eng = cls.__new__(cls)
            eng.root, eng.tag, eng.bridge = root, state["tag"], state["bridge"]
            eng.veth_host, eng.netns, eng.cgroup_parent = state["veth_host"], state["netns"], state["cgroup_parent"]
            eng.socket = Path(state["socket"])
            eng.url = f"unix://{eng.socket}"
            eng._made, eng._iptables = list(state["made"]), [tuple(x) for x in state["iptables"]]
            eng._proc, eng._log = None, None
            pid = state.get("dockerd")
            # Signal it only if it is still that very dockerd (its command line names our root).
            eng._dockerd_pid = pid if pid and str(root) in _cmdline(pid) else None
            try:
                eng.stop()
            except RuntimeError:
                pass
            swept.append(state["tag"])
        return swept

    def stop(self) -> None:
        errors: list[str] = []
        if self._dockerd_pid is not None and _pid_alive(self._dockerd_pid, self._proc):
            try:
                client = self.client(timeout=10)
                for c in client.containers.list(all=True):
                    try:
                        c.remove(force=True)
                    except Exception:
                        pass
                client.close()
            except Exception:
                pass
            _terminate(self._dockerd_pid, self._proc)
        self._dockerd_pid = None
        if self._log is not None:
            self._log.close()
            self._log = None
        # Mounts left under our roots (overlay, netns files, shm).
        for mount_point in self._mounts_under(self.root):
            _run("umount", "-l", mount_point, check=False)
        for table, spec in reversed(self._iptables):
            r = _run("iptables", "-t", table, "-D", *spec, check=False)
            if r.returncode != 0 and "does a matching rule exist" not in r.stderr:
                errors.append(f"iptables -t {table} -D {' '.join(spec)}: {r.stderr.strip()}")
        self._iptables.clear()
        if "netns" in self._made:
            _run("ip", "netns", "del", self.netns, check=False)
        if "bridge" in self._made:
            _run("ip", "link", "del", self.veth_host, check=False)
            _run("ip", "link", "del", self.bridge, check=False)
        self._made.clear()
        for ctrl in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
            self._rmdir_tree(ctrl / self.cgroup_parent)
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))

    @staticmethod
    def _mounts_under(root: Path) -> list[str]:
        prefix = str(root).rstrip("/") + "/"
        points = []
        with open("/proc/self/mounts") as f:
            for line in f:
                point = line.split()[1].encode().decode("unicode_escape")
                if point.startswith(prefix):
                    points.append(point)
        return sorted(points, key=len, reverse=True)

    @staticmethod
    def _rmdir_tree(path: Path) -> None:
        if not path.is_dir():
            return
        for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                child.rmdir()
            except OSError:
                pass
        try:
            path.rmdir()
        except OSError:
            pass


def load_or_make_image(client, ref: str, make, cache_dir: str | os.PathLike | None = None) -> str:
    """``make(client)`` unless the image is in ``cache_dir`` as a ``docker save`` tarball.

    For slow-to-make, content-addressed images (the builders): with a cache dir
    (e.g. ``DEPLOYER_TEST_IMAGE_CACHE``) a fresh engine loads them in seconds;
    without one this is just ``make``. A new ref (changed builder files) misses
    the cache and is made and saved again.
    """
    if not cache_dir:
        return make(client)
    cache = Path(cache_dir)
    tar = cache / (ref.replace("/", "_").replace(":", "_") + ".tar")
    if tar.is_file():
        try:
            with open(tar, "rb") as f:
                client.images.load(f)
            client.images.get(ref)
            return ref
        except Exception:
            tar.unlink(missing_ok=True)
    made = make(client)
    cache.mkdir(parents=True, exist_ok=True)
    part = tar.with_suffix(f".part{os.getpid()}")
    with open(part, "wb") as f:
        for chunk in client.images.get(made).save(named=made):
            f.write(chunk)
    os.replace(part, tar)
    return made
