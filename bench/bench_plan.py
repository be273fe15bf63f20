"""`deployer plan`, repository side only, over generated repos of N nodes x 10 containers.

No hosts: every node is planned against an empty engine state, so this measures
loading and validating the repo, building every container spec with its hash, and
planning. Prints seconds per size and the growth ratios (linear growth means
time(10N)/time(N) close to 10). Target: 1,000 nodes x 10 containers under 2 s.

Each size is generated twice, the same containers written two ways: ``plain``
(every value written out in every node's file) and ``shared`` (every service
``extends`` a definition in ``common/svc.yml``, its image and label come from
variables of datacenter.yml and the node's ``.env``, a default from
``${LOG_LEVEL:-info}``). The run checks that both give the same container specs
and prints the shared repository's time as a ratio of the plain one's, measured
in the same run.

Each repository is planned three times: without a git directory (no parse cache:
the path before the cache), then in a git repository with an empty cache (it is
filled), then again (files found in the cache by their blob ids). The ratio
warm / no cache is printed per size and variant. Target: 10,000 nodes x 10
containers under 2 s, warm.

    python3 bench/bench_plan.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.config import compose_spec, loader  # noqa: E402
from deployer.engine.plan import plan_node  # noqa: E402
from deployer.engine.state import NodeState  # noqa: E402

SERVICE = """\
  svc{i}:
    image: registry.example:5000/team/svc{i}:1.{i}
    init: true
    ports: ["{port}:8080"]
    environment:
      LOG_LEVEL: info
      PEERS: "svc{j}:8080"
    depends_on: [svc{j}]
    healthcheck:
      test: ["CMD", "/svc", "-health"]
      interval: 5s
      timeout: 2s
      retries: 3
    restart: unless-stopped
    labels:
      team: core
"""


# The same services through extends and variables.
COMMON = """\
services:
  base:
    init: true
    environment:
      LOG_LEVEL: ${LOG_LEVEL:-info}
    healthcheck:
      test: ["CMD", "/svc", "-health"]
      interval: 5s
      timeout: 2s
      retries: 3
    restart: unless-stopped
    labels:
      team: ${TEAM}
"""

SHARED_SERVICE = """\
  svc{i}:
    extends: {{file: ../../../common/svc.yml, service: base}}
    image: ${{REGISTRY}}/team/svc{i}:${{SVC{i}_VERSION}}
    ports: ["{port}:8080"]
    environment:
      PEERS: "svc{j}:8080"
    depends_on: [svc{j}]
"""


def generate(root: Path, nodes: int, per_node: int = 10, shared: bool = False) -> None:
    if shared:
        (root / "common").mkdir(parents=True)
        (root / "common" / "svc.yml").write_text(COMMON)
    for n in range(nodes):
        dc = f"dc{n % 4}"
        node_dir = root / "datacenters" / dc / f"node{n:05d}"
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text(f"docker: ssh://deploy@10.{n // 250 % 250}.{n % 250}.1\n")
        template = SHARED_SERVICE if shared else SERVICE
        services = "".join(
            template.format(i=i, j=i - 1, port=8000 + i).replace("    depends_on: [svc-1]\n", "")
            for i in range(per_node))
        (node_dir / "docker-compose.yml").write_text("services:\n" + services)
        if shared:
            (node_dir / ".env").write_text("".join(f"SVC{i}_VERSION=1.{i}\n" for i in range(per_node)))
            if n < 4:
                (root / "datacenters" / dc / "datacenter.yml").write_text(
                    "variables:\n  REGISTRY: registry.example:5000\n  TEAM: core\n")


def plan_repo(root: Path) -> tuple[int, dict]:
    infra = loader.load(root)
    empty = NodeState(managed=[], names={})
    changes = 0
    hashes = {}
    for node in infra.nodes():
        specs = [compose_spec.container_spec(node, node.services[name], root)
                 for name in compose_spec.start_order(node.services)]
        changes += len(plan_node(specs, empty, {}))
        hashes[node.target] = [s.config_hash() for s in specs]
    return changes, hashes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = ("none", "cold", "warm")
    times: dict[tuple[str, str], dict[int, float]] = {(v, r): {} for v in ("plain", "shared") for r in runs}
    for size in sizes:
        hashes = {}
        for variant in ("plain", "shared"):
            with tempfile.TemporaryDirectory() as tmp:
                generate(Path(tmp), size, shared=variant == "shared")
                for run in runs:
                    if run == "cold":
                        subprocess.run(["git", "init", "-q", tmp], check=True)
                    start = time.perf_counter()
                    changes, got = plan_repo(Path(tmp))
                    times[variant, run][size] = time.perf_counter() - start
                    assert changes == size * 10
                    assert hashes.setdefault(variant, got) == got, "the cache must give the same containers"
                t = {r: times[variant, r][size] for r in runs}
                print(f"{size:>6} nodes x 10 containers, {variant:>6}: no cache {t['none']:6.2f} s, "
                      f"cache filled {t['cold']:6.2f} s, warm {t['warm']:6.2f} s "
                      f"({t['warm'] / size * 1000:.2f} ms/node; warm / no cache x{t['warm'] / t['none']:.2f})")
        assert hashes["plain"] == hashes["shared"], "extends and variables must give the same containers"
        print(f"{size:>6} nodes: shared / plain, no cache x{times['shared', 'none'][size] / times['plain', 'none'][size]:.2f}"
              f", warm x{times['shared', 'warm'][size] / times['plain', 'warm'][size]:.2f} (same container specs)")
    for a, b in zip(sizes, sizes[1:]):
        for variant in ("plain", "shared"):
            print(f"growth {a} -> {b} nodes, {variant}: no cache x{times[variant, 'none'][b] / times[variant, 'none'][a]:.1f}"
                  f", warm x{times[variant, 'warm'][b] / times[variant, 'warm'][a]:.1f} (linear would be x{b / a:.0f})")
    for size in sizes:
        if size >= 1000:
            print(f"{size:,} nodes x 10 containers, warm: plain {times['plain', 'warm'][size]:.2f} s, "
                  f"shared {times['shared', 'warm'][size]:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
