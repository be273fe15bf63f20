"""`deployer plan`, repository side only, over generated repos of N nodes x 10 containers.

No hosts: every node is planned against an empty engine state, so this measures
loading and validating the repo, building every container spec with its hash, and
planning. Prints seconds per size and the growth ratios (linear growth means
time(10N)/time(N) close to 10). Target: 1,000 nodes x 10 containers under 2 s.

    python3 bench/bench_plan.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
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


def generate(root: Path, nodes: int, per_node: int = 10) -> None:
    for n in range(nodes):
        dc = f"dc{n % 4}"
        node_dir = root / "datacenters" / dc / f"node{n:05d}"
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text(f"docker: ssh://deploy@10.{n // 250 % 250}.{n % 250}.1\n")
        services = "".join(
            SERVICE.format(i=i, j=i - 1, port=8000 + i).replace("    depends_on: [svc-1]\n", "")
            for i in range(per_node))
        (node_dir / "docker-compose.yml").write_text("services:\n" + services)


def plan_repo(root: Path) -> int:
    infra = loader.load(root)
    empty = NodeState(managed=[], names={})
    changes = 0
    for node in infra.nodes():
        specs = [compose_spec.container_spec(node, node.services[name], root)
                 for name in compose_spec.start_order(node.services)]
        changes += len(plan_node(specs, empty, {}))
    return changes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    times = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), size)
            start = time.perf_counter()
            changes = plan_repo(Path(tmp))
            times[size] = time.perf_counter() - start
            assert changes == size * 10
            print(f"{size:>6} nodes x 10 containers: {times[size]:7.2f} s  ({times[size] / size * 1000:.2f} ms/node)")
    for a, b in zip(sizes, sizes[1:]):
        print(f"growth {a} -> {b} nodes: x{times[b] / times[a]:.1f} (linear would be x{b / a:.0f})")
    if 1000 in times:
        print(f"1,000 nodes x 10 containers: {times[1000]:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
