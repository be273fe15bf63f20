"""Shipping a 1 MB config directory to a node: the first time, and again with the same content.

A real Docker node (a network namespace; reached over its unix socket and over
SSH). One service with a healthcheck and a relative bind mount of a 1 MB
directory (100 files of 10 KB). Each round replaces the container with an image
change, through the engine session and the applier (the deploy path), in three
ways:

* baseline: the service mounts no shipped files;
* changed: the directory's content changed since the last round, so the bundle is new and is shipped;
* same: the content is unchanged, so nothing is shipped (a running container already mounts it).

Prints, per connection, the median seconds of a replace (each as a ratio of the baseline
measured in the same run), the archive bytes sent to the engine, and the seconds spent
shipping (and sweeping: the baseline round removes the previous round's bundle, which
is the small archive it sends).

    python3 bench/bench_ship.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.config import loader  # noqa: E402
from deployer.config.compose_spec import container_spec, node_resources  # noqa: E402
from deployer.engine.session import EngineSession  # noqa: E402
from tests.support.engines import Fleet  # noqa: E402
from tests.support.images import build_standard_images  # noqa: E402
from tests.support.repos import WEB_SERVICE, make_repo  # noqa: E402

IMAGES = ["deployer-test/web:1", "deployer-test/web:2"]
FILES, FILE_BYTES = 100, 10_000


def compose(image: str, ship: bool) -> str:
    text = "services:\n" + WEB_SERVICE.format(image=image)
    return text + ("    volumes: ['./conf:/etc/conf:ro']\n" if ship else "")


def fill(conf: Path, generation: int) -> None:
    conf.mkdir(exist_ok=True)
    for i in range(FILES):
        head = f"generation {generation} file {i}\n".encode()
        (conf / f"f{i:03}.conf").write_bytes(head + b"x" * (FILE_BYTES - len(head)))


def replace_once(root: Path, node_dir: Path, dc: str, name: str, image: str, ship: bool) -> tuple[float, int, float]:
    (node_dir / "docker-compose.yml").write_text(compose(image, ship))
    infra = loader.load(root)
    node = infra.datacenters[dc].nodes[name]
    spec = container_spec(node, node.services["web"], root)
    started = time.perf_counter()
    with EngineSession(node, root) as session:
        applier = session.applier()
        applier.ensure_resources(*node_resources(node))
        (change,) = session.plan([spec])
        applier.apply(change, session.state)
    elapsed = time.perf_counter() - started
    return elapsed, applier.shipper.bytes_sent, applier.shipper.seconds


def measure(root: Path, node_dir: Path, dc: str, name: str, rounds: int) -> dict[str, tuple[float, int, float]]:
    results: dict[str, list[tuple[float, int, float]]] = {"baseline": [], "changed": [], "same": []}
    generation = 0
    replace_once(root, node_dir, dc, name, IMAGES[1], False)  # a container to replace
    for r in range(rounds):
        image = IMAGES[r % 2]
        results["baseline"].append(replace_once(root, node_dir, dc, name, image, False))
        generation += 1
        fill(node_dir / "conf", generation)
        results["changed"].append(replace_once(root, node_dir, dc, name, IMAGES[(r + 1) % 2], True))
        results["same"].append(replace_once(root, node_dir, dc, name, image, True))
    return {k: (statistics.median(t for t, _, _ in v), int(statistics.median(b for _, b, _ in v)),
                statistics.median(s for _, _, s in v)) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        node = fleet.add_node("ship", ssh=True)
        with closing(node.client()) as client:
            build_standard_images(client)
        print(f"{FILES} files x {FILE_BYTES} bytes = {FILES * FILE_BYTES} bytes of config; "
              f"median of {args.rounds} replaces each")
        for via in ("unix", "ssh"):
            url = node.unix_url if via == "unix" else node.ssh_url
            root, name = make_repo(Path(tmp) / via, url, compose(IMAGES[0], False), dc="bench", node=f"ship{via}")
            node_dir = root / "datacenters" / "bench" / name
            if via == "ssh":
                (node_dir / "node.yml").write_text(f"docker: {url}\nidentity_file: {node.ssh_identity}\n")
                (node_dir / "known_hosts").write_text(node.ssh_host_key_line + "\n")
            fill(node_dir / "conf", 0)
            got = measure(root, node_dir, "bench", name, args.rounds)
            base = got["baseline"][0]
            for label, (seconds, sent, shipping) in got.items():
                print(f"{via:4} {label:8} replace {seconds:6.3f} s  {seconds / base:5.2f}x baseline  "
                      f"{sent:>9} bytes sent  {shipping:6.3f} s shipping/sweeping")
            with closing(node.client()) as client:
                for c in client.containers.list(all=True, filters={"label": f"deployer.node={name}"}):
                    c.remove(force=True)


if __name__ == "__main__":
    main()
