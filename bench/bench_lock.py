"""What the node locks cost a deploy: the Consul session lock and the engine lock against the plain flock.

One real dockerd in its own network namespace (tests/support/engines.py), one
private Consul dev agent (tests/support/consul.py), locally built images (no
pulls). Three nodes on that engine, one per mode, each in its own repository:

* ``flock``: the repository's flock only: the node-lock step replaced by nothing
  (what a deploy did before node locks), no Consul in the datacenter;
* ``engine``: the lock on the node's engine (no Consul in the datacenter);
* ``flock-consul``: flock only, in a datacenter with a Consul (the registration
  hooks check its leader; the service publishes no port, so nothing registers);
* ``consul``: the same with the Consul session lock.

``engine`` is compared with ``flock``, ``consul`` with ``flock-consul``.

Each round deploys the other of two images to each node (a one-container change
with a healthcheck of interval 200 ms, ``--settle 0``), modes in rotating order,
in this process (no interpreter start-up in the figures), and times the whole
``Deployer.deploy``. It also times taking and releasing the lock alone. Prints the
medians and the ratio of each to the flock (goal: under 1.1x of the whole deploy).
No assertions: this prints numbers.

    python3 bench/bench_lock.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.consul import ConsulAgent  # noqa: E402
from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import build_standard_images  # noqa: E402

IMAGES = ("deployer-test/web:1", "deployer-test/web:2")
COMPOSE = """\
services:
  web:
    image: {image}
    init: true
    expose: ["80"]
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 200ms
      timeout: 2s
      retries: 2
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def make_repo(base: Path, mode: str, docker_url: str, consul: str | None) -> Path:
    root = base / mode
    node_dir = root / "datacenters" / "bench" / f"lock-{mode}"
    node_dir.mkdir(parents=True)
    (node_dir / "node.yml").write_text(f"docker: {docker_url}\n")
    (node_dir / "docker-compose.yml").write_text(COMPOSE.format(image=IMAGES[0]))
    if consul:
        (root / "datacenters" / "bench" / "datacenter.yml").write_text(f"consul: {consul}\n")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")
    return root


class _NoNodeLocks:
    """The node-lock step as it was before node locks: nothing (the flock is still taken)."""

    id = None

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def problem(self, node):
        return None

    def guard(self, node):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("GIT_AUTHOR_NAME", "bench")
    os.environ.setdefault("GIT_AUTHOR_EMAIL", "bench@localhost")
    os.environ.setdefault("GIT_COMMITTER_NAME", "bench")
    os.environ.setdefault("GIT_COMMITTER_EMAIL", "bench@localhost")

    from deployer.config import loader
    from deployer.engine.apply import SwapOptions
    from deployer.ops import deploy as ops_deploy
    from deployer.ops.deploy import Deployer
    from deployer.ops.locks import NodeLocks

    with Fleet() as fleet, tempfile.TemporaryDirectory(prefix="bench-lock-") as tmp, \
            ConsulAgent() as agent:
        node = fleet.add_node("locks")
        with closing(node.client()) as client:
            build_standard_images(client)
        base = Path(tmp)
        repos = {mode: make_repo(base, mode, node.unix_url, agent.address if "consul" in mode else None)
                 for mode in ("flock", "engine", "flock-consul", "consul")}
        swap = SwapOptions(settle=0)

        def deploy(mode: str, image: str) -> float:
            root = repos[mode]
            patch = contextlib.nullcontext()
            if mode.startswith("flock"):
                patch = _patched(ops_deploy, "NodeLocks", _NoNodeLocks)
            with patch:
                started = time.perf_counter()
                result = Deployer(root, consul=True).deploy(
                    image, f"bench/lock-{mode}", swap=swap)
                seconds = time.perf_counter() - started
            assert result.commit, result
            return seconds

        def lock_only(mode: str) -> float:
            root = repos[mode]
            infra = loader.load(root)
            nodes = list(infra.nodes())
            started = time.perf_counter()
            with NodeLocks(root, infra, nodes, consul=True):
                pass
            return time.perf_counter() - started

        for mode in repos:  # first deploy, not measured (the image import of the engine lock among it)
            deploy(mode, IMAGES[1])
        times: dict[str, list[float]] = {m: [] for m in repos}
        locks: dict[str, list[float]] = {m: [] for m in ("engine", "consul")}
        order = list(repos)
        for i in range(args.rounds):
            image = IMAGES[i % 2]
            order = order[1:] + order[:1]
            for mode in order:
                times[mode].append(deploy(mode, image))
            for mode in locks:
                locks[mode].append(lock_only(mode))
    print(f"deployer deploy, one-container change (healthcheck 200 ms, --settle 0), median of {args.rounds}, "
          "in-process:")
    for mode, label, against in (("flock", "flock only (before)", "flock"), ("engine", "engine lock", "flock"),
                                 ("flock-consul", "flock only, Consul dc", "flock-consul"),
                                 ("consul", "Consul lock", "flock-consul")):
        med = statistics.median(times[mode])
        base_median = statistics.median(times[against])
        extra = ""
        if mode in locks:
            extra = f"   lock+release alone {statistics.median(locks[mode]) * 1000:.1f} ms"
        print(f"  {label:22s} {med:.3f} s   ratio {med / base_median:.3f}{extra}")
    print("  goal: ratio < 1.1")


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


if __name__ == "__main__":
    main()
