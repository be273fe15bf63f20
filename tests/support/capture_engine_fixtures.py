"""Capture the engine fixtures of the fast test tier from a real Docker engine.

The unit tests of ``deployer.engine.state`` and ``deployer.engine.plan`` run
against inspect JSON that a real dockerd returned, served by the fake client in
``tests/unit/fakes.py``. This script makes that JSON: it starts a one-node
:class:`tests.support.engines.Fleet` (root, dockerd in a network namespace, as
the ``engine`` fixture does), builds the busybox test images locally (no
pulls), deploys ``tests/unit/fixtures/engine/compose.yml`` as node dc1/n1 with
the deployer's own spec builder and ``Applier``, bends each service into the
case it stands for, and writes what the engine says about it:

=======  =========================================================================
web      running, healthy; fixed host port 18080; restart, memory, cpus as written
sick     running, unhealthy (its healthcheck fails)
slow     running, health "starting" (first check an hour away)
job      exited, exit code 3, no healthcheck
flaky    the same image under ``restart: on-failure:2``: exited after 2 restarts
api      running, healthy, ephemeral host port; plus a stray ``n1-api-next``
         (same labels, created and never started), the leftover of a deploy
cache    only ``n1-cache-next`` runs, healthy (the rename to n1-cache never happened)
drift    then ``docker update --restart no --memory 16m --memory-swap 32m --cpus 1``
retag    created from deployer-test/retag:1, then that tag was rebuilt: the tag
         now names another image id than the container runs
old      managed and running; the tests drop it from the wanted compose (prune)
stranger a container the deployer did not make (no labels), running
n2-web   labelled for another node (dc1/n2), created
=======  =========================================================================

Files written to ``tests/unit/fixtures/engine/``:

* ``containers.json``: ``GET /containers/json?all=1`` (docker-py
  ``APIClient.containers(all=True)``), as the engine listed them;
* ``container.<name>.json``: ``GET /containers/<id>/json`` for each of them;
* ``images.json``: ``GET /images/<ref>/json`` for every image the containers
  were created from or their tags name now (including the image retag:1 named
  before the rebuild, which now has no tag);
* ``capture.json``: the engine version, when, and what each tag resolved to.

Nothing is scrubbed: they are test containers on a throwaway engine.

Regenerate (as root, with the tools of ``scripts/install.sh``), from the
repository root, then look at ``git diff tests/unit/fixtures`` and run the
unit tests::

    PYTHONPATH=$PWD timeout 300 python3 tests/support/capture_engine_fixtures.py

Change ``compose.yml`` and this script together: the tests rebuild the
wanted specs from ``compose.yml`` and expect its config hashes on the captured
containers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from deployer.config.loader import load  # noqa: E402
from deployer.engine.apply import Applier, SwapOptions  # noqa: E402
from deployer.spec import NEXT_SUFFIX  # noqa: E402
from deployer.labels import LABEL_DC, LABEL_NODE, LABEL_SERVICE  # noqa: E402
from tests.support.engines import DOCKER_CLI, Fleet, preflight  # noqa: E402
from tests.support.images import BASE_TAG, build_standard_images, build_web_image  # noqa: E402
from tests.unit.fakes import container_spec, node_resources  # noqa: E402 - the one import of the spec builder

FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "engine"
COMPOSE = FIXTURES / "compose.yml"
DC, NODE = "dc1", "n1"
RETAG = "deployer-test/retag:1"
DOCKER_UPDATE = ["--restart", "no", "--memory", "16m", "--memory-swap", "32m", "--cpus", "1"]


def write_repo(root: Path) -> None:
    node_dir = root / "datacenters" / DC / NODE
    node_dir.mkdir(parents=True)
    (node_dir / "node.yml").write_text("docker: unix:///var/run/docker.sock\n")
    (node_dir / "docker-compose.yml").write_text(COMPOSE.read_text())


def wait_for(what: str, probe, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def capture(client, unix_url: str) -> None:
    api = client.api
    build_standard_images(client)
    build_web_image(client, RETAG, body="retag before")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_repo(root)
        node = load(root).node(DC, NODE)
        specs = {name: container_spec(node, svc, root, environ={}) for name, svc in node.services.items()}
        applier = Applier(client, SwapOptions(settle=0.5))
        applier.ensure_resources(*node_resources(node))

    def health(cid: str) -> str | None:
        return ((api.inspect_container(cid)["State"].get("Health")) or {}).get("Status")

    def status(cid: str) -> str:
        return api.inspect_container(cid)["State"]["Status"]

    def run(service: str, name: str | None = None) -> str:
        spec = specs[service]
        cid = applier._create(spec, name or spec.name)
        api.start(cid)
        return cid

    def run_healthy(service: str, name: str | None = None) -> str:
        cid = run(service, name)
        applier.wait_healthy(cid, specs[service])
        return cid

    run_healthy("web")
    sick = run("sick")
    wait_for("sick to be unhealthy", lambda: health(sick) == "unhealthy")
    run("slow")
    job = run("job")
    wait_for("job to exit", lambda: status(job) == "exited")
    flaky = run("flaky")
    wait_for("flaky to give up", lambda: (lambda i: i["State"]["Status"] == "exited" and i["RestartCount"] == 2)(
        api.inspect_container(flaky)))
    run_healthy("api")
    applier._create(specs["api"], specs["api"].name + NEXT_SUFFIX)
    run_healthy("cache", specs["cache"].name + NEXT_SUFFIX)
    drift = run_healthy("drift")
    done = subprocess.run([DOCKER_CLI, "-H", unix_url, "update", *DOCKER_UPDATE, drift],
                          capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise SystemExit(f"docker update failed: {done.stderr.strip()}")
    retag_before = api.inspect_image(RETAG)["Id"]
    run_healthy("retag")
    build_web_image(client, RETAG, body="retag after")
    run_healthy("old")

    stranger = api.create_container("deployer-test/web:1", name="stranger", labels={"owner": "someone else"})
    api.start(stranger)
    api.create_container("deployer-test/web:1", name="n2-web",
                         labels={LABEL_DC: DC, LABEL_NODE: "n2", LABEL_SERVICE: "web"})

    # every state settled (slow stays "starting" for an hour)
    assert health(sick) == "unhealthy" and status(job) == "exited" and status(flaky) == "exited"

    listed = api.containers(all=True)
    for old in FIXTURES.glob("container.*.json"):
        old.unlink()
    write(FIXTURES / "containers.json", listed)
    image_refs: dict[str, None] = {}
    for summary in listed:
        info = api.inspect_container(summary["Id"])
        write(FIXTURES / f"container.{info['Name'].lstrip('/')}.json", info)
        image_refs[info["Image"]] = None
        image_refs[info["Config"]["Image"]] = None
    for ref in [BASE_TAG, retag_before]:
        image_refs[ref] = None
    images: dict[str, dict] = {}
    for ref in image_refs:
        info = api.inspect_image(ref)
        images[info["Id"]] = info
    write(FIXTURES / "images.json", sorted(images.values(), key=lambda i: (i.get("RepoTags") or ["~"], i["Id"])))
    version = api.version()
    write(FIXTURES / "capture.json", {
        "captured": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": {k: version.get(k) for k in ("Version", "ApiVersion", "Os", "Arch", "KernelVersion")},
        "node": f"{DC}/{NODE}",
        "docker_update": ["docker", "update", *DOCKER_UPDATE, specs["drift"].name],
        "tags": {ref: api.inspect_image(ref)["Id"] for ref in image_refs if not ref.startswith("sha256:")},
        "retag_before": retag_before,
    })
    print(f"wrote {len(listed)} containers and {len(images)} images to {FIXTURES.relative_to(ROOT)}")


def write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> int:
    problems = preflight()
    if problems:
        print("cannot start a Docker engine here:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    with Fleet() as fleet:
        node = fleet.add_node("capture")
        with closing(node.client()) as client:
            capture(client, node.unix_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
