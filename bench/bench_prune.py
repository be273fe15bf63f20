"""`deployer prune` on a node with 200 images, against the docker CLI removing the same images.

One real Docker node (a network namespace, a unix socket). Each round makes 200
images of one tiny layer each (``docker import`` of a one-file tarball, tagged
``bench/app:1..200``, labelled ``bench=prune``); the repository's one service
runs ``bench/app:200`` (a stopped container holds it). Then, on fresh images each time:

* ``deployer prune --keep 1`` as a fresh process (199 images go);
* ``docker image prune -a -f --filter label=bench=prune`` (the same 199: the 200th is in use);
* ``docker rmi`` of the 199 tags in one command;
* ``deployer prune --keep 1 --dry-run``: the fixed part (start-up, lock, history, listing), nothing removed.

Prints the median seconds of each and the ratios deployer / docker.

    python3 bench/bench_prune.py [--rounds 3] [--images 200]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.engines import Fleet  # noqa: E402
from tests.support.repos import git  # noqa: E402

REPO = "bench/app"


def tiny_layer(i: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"image {i}\n".encode()
        info = tarfile.TarInfo("version")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_images(client, count: int) -> None:
    def one(i: int) -> None:
        client.api.import_image_from_data(tiny_layer(i), repository=REPO, tag=str(i),
                                          changes=['LABEL bench=prune', 'CMD ["/version"]'])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(1, count + 1)))


def ours(client) -> list[str]:
    return [t for i in client.api.images() for t in (i.get("RepoTags") or []) if t.startswith(REPO + ":")]


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    count = args.images
    rmi = f"docker rmi ({count - 1} tags, one command)"
    results: dict[str, list[float]] = {"deployer prune --keep 1": [], "docker image prune -a (label filter)": [],
                                       rmi: [], "deployer prune --keep 1 --dry-run (removes nothing)": []}
    with Fleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        (node,) = fleet.add_nodes(dict(name="bp"))
        root = Path(tmp) / "infra"
        node_dir = root / "datacenters" / "bench" / node.name
        node_dir.mkdir(parents=True)
        (node_dir / "node.yml").write_text(f"docker: {node.unix_url}\n")
        (node_dir / "docker-compose.yml").write_text(f"services:\n  app:\n    image: {REPO}:{count}\n")
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench")
        env = {**os.environ, "DOCKER_HOST": node.unix_url, "PYTHONPATH": str(ROOT)}
        deployer = [sys.executable, "-m", "deployer", "--repo", str(root), "prune", "--keep", "1", "-q"]
        with closing(node.client()) as client:
            for _ in range(args.rounds):
                for label, cmd in (
                    ("deployer prune --keep 1", deployer),
                    ("docker image prune -a (label filter)",
                     ["docker", "image", "prune", "-a", "-f", "--filter", "label=bench=prune"]),
                    (rmi, None),
                    ("deployer prune --keep 1 --dry-run (removes nothing)", [*deployer, "--dry-run"]),
                ):
                    make_images(client, count)
                    holder = client.api.create_container(f"{REPO}:{count}")  # stopped: holds the kept one
                    if cmd is None:
                        cmd = ["docker", "rmi", *[f"{REPO}:{i}" for i in range(1, count)]]
                    results[label].append(timed(cmd, env))
                    left = ours(client)
                    if "--dry-run" in cmd:
                        if len(left) != count:
                            raise SystemExit(f"{label}: removed images")
                        client.api.remove_container(holder["Id"])
                        continue
                    if left != [f"{REPO}:{count}"]:
                        raise SystemExit(f"{label}: left {len(left)} images, expected only {REPO}:{count}")
                    client.api.remove_container(holder["Id"])
    print(f"removing {count - 1} of {count} one-layer images on one node, median of {args.rounds} "
          "(fresh process each):")
    medians = {k: statistics.median(v) for k, v in results.items()}
    for label, seconds in medians.items():
        print(f"  {label:38s} {seconds:6.2f} s   ({', '.join(f'{s:.2f}' for s in results[label])})")
    base = medians["deployer prune --keep 1"]
    best = min(results["deployer prune --keep 1"])
    for label, seconds in list(medians.items())[1:3]:
        print(f"  deployer / {label}: {base / seconds:.2f}x (medians), {best / min(results[label]):.2f}x (best runs)")
    print(f"  load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
