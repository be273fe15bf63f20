"""deployer deploy vs a plain docker SDK script doing the same container swap.

Both run as fresh processes against the same real engine (started here, in its
own network namespace), alternating between two images of a service with a
healthcheck; both wait until the new container is healthy. The deployer also
takes the lock, edits the YAML, plans, health-gates and commits.

Prints the medians and the ratio deployer/plain (target: <= 1.2), and the
start-up time of `deployer --help` against `python -c pass` (target: < 0.3 s).

    python3 bench/bench_deploy.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import build_busybox_base, build_web_image  # noqa: E402
from tests.support.repos import make_repo, remove_node_containers, web_compose  # noqa: E402

PLAIN = textwrap.dedent('''
    import sys, time, docker
    url, name, image = sys.argv[1:4]
    client = docker.DockerClient(base_url=url, version="1.41")
    api = client.api
    old = [c for c in api.containers(all=True, filters={"name": name}) if c["Names"][0] == "/" + name]
    for c in old:
        api.stop(c["Id"], timeout=10)
        api.remove_container(c["Id"], force=True)
    net = api.create_networking_config({"plainnet": api.create_endpoint_config(aliases=["web"])})
    hc = {"Test": ["CMD", "test", "-f", "/www/index.html"], "Interval": 200_000_000, "Timeout": 2_000_000_000,
          "Retries": 2}
    cid = api.create_container(image, name=name, healthcheck=hc, ports=[80], networking_config=net,
                               host_config=api.create_host_config(init=True))["Id"]
    api.start(cid)
    while api.inspect_container(cid)["State"].get("Health", {}).get("Status") != "healthy":
        time.sleep(0.05)
''')


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        node = fleet.add_node("bench")
        client = node.client()
        build_busybox_base(client)
        images = ["deployer-test/web:1", "deployer-test/web:2"]
        for i, tag in enumerate(images, 1):
            build_web_image(client, tag, body=f"v{i}")
        client.networks.create("plainnet", driver="bridge")
        root, name = make_repo(Path(tmp) / "infra", node.unix_url, web_compose(images[0]))
        deployer = [sys.executable, "-m", "deployer", "--repo", str(root)]
        timed([*deployer, "deploy", images[0], f"test/{name}"])  # first converge, not measured
        plain_script = Path(tmp) / "plain.py"
        plain_script.write_text(PLAIN)
        timed([sys.executable, str(plain_script), node.unix_url, "plain-web", images[0]])

        ours, plain = [], []
        for r in range(args.rounds):
            image = images[(r + 1) % 2]
            plain.append(timed([sys.executable, str(plain_script), node.unix_url, "plain-web", image]))
            ours.append(timed([*deployer, "deploy", image, f"test/{name}", "-q"]))
        remove_node_containers(client, name)

        help_ours = [timed([*deployer[:3], "--help"]) for _ in range(10)]
        help_base = [timed([sys.executable, "-c", "pass"]) for _ in range(10)]

    m_ours, m_plain = statistics.median(ours), statistics.median(plain)
    print(f"one-container image change, median of {args.rounds} (each a fresh process):")
    print(f"  plain docker SDK script  {m_plain:.3f} s")
    print(f"  deployer deploy          {m_ours:.3f} s  (lock, YAML edit, plan, health gate, git commit)")
    print(f"  ratio deployer/plain     {m_ours / m_plain:.2f}  (target <= 1.2)")
    h_ours, h_base = statistics.median(help_ours), statistics.median(help_base)
    print(f"deployer --help            {h_ours:.3f} s  (python -c pass: {h_base:.3f} s, ratio {h_ours / h_base:.2f}; "
          "target < 0.3 s)")


if __name__ == "__main__":
    main()
