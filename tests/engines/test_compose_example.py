"""scripts/compose_example.sh, the worked example of docs/compose.md, against a fleet engine.

The script runs as a user runs it, with DOCKER_SOCK pointing at the fleet's
``engine`` node (a dockerd in a netns) and NODE_ADDRESS at that node's address,
where the host's Consul and nginx reach the published ports. Real Consul 1.8.7
and real nginx: the script starts and stops them itself (by PID). Asserted: exit 0,
``status`` shows 3/3, the rendered upstream lists 3 servers of the node (then 2
after ``scale``), nginx serves the shipped file and then its change, the plan
names the file, the scale is a commit, and nothing of the datacenter is left on
the engine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "compose_example.sh"


def _upstreams(output: str) -> list[list[str]]:
    """Each rendered 'upstream svc_shop { ... }' block's server lines, in output order."""
    blocks = re.findall(r"upstream svc_shop \{\n(.*?)\n\s*keepalive", output, re.S)
    return [re.findall(r"server (\S+) ", block) for block in blocks]


@pytest.fixture(scope="module")
def example_run(engine):
    dc = "ex" + uuid.uuid4().hex[:6]
    env = dict(os.environ, DOCKER_SOCK=engine.socket, NODE_ADDRESS=engine.address, DC=dc,
               PYTHONPATH=str(ROOT))
    env.pop("KEEP", None)
    # Its own process group: on a timeout the whole group goes (the script's Consul agent and
    # registrator too), not just bash, whose EXIT trap a SIGKILL would skip.
    child = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)  # bash runs its cleanup trap
        try:
            out, err = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate()
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whatever the script left in its group
        except ProcessLookupError:
            pass
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    yield proc, dc
    with closing(engine.client()) as client:  # the script cleans up; this is the fallback
        for c in client.containers.list(all=True, filters={"label": f"deployer.dc={dc}"}):
            c.remove(force=True)


def test_script_succeeds(example_run):
    proc, _ = example_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "example finished" in proc.stdout


def test_shared_definition_resolves_per_node(example_run):
    proc, dc = example_run
    out = proc.stdout
    edge1 = out.split(f"$ deployer config {dc}/edge1\n", 1)[1].split("\n$ ", 1)[0]
    edge2 = out.split(f"$ deployer config {dc}/edge2\n", 1)[1].split("\n$ ", 1)[0]
    # image from datacenter.yml's WEB_IMAGE and each node's .env WEB_VERSION
    assert "    image: hello:1\n" in edge1 and "    image: hello:2\n" in edge2
    assert "      SITE: shop\n" in edge1 and "      SITE: blog\n" in edge2
    assert "deployer.consul.name: shop" in edge1 and "deployer.consul.name: blog" in edge2
    assert "${" not in edge1 + edge2


def test_three_replicas_behind_nginx(example_run, engine):
    proc, dc = example_run
    out = proc.stdout
    status = out.split(f"$ deployer status {dc}\n", 1)[1].split("\n$ ", 1)[0]
    assert re.search(rf"{dc}/edge1/web\s+hello:1\s+hello:1\s+healthy 3/3", status), status
    first, after_change, after_scale = _upstreams(out)
    assert len(first) == 3 and len(set(first)) == 3, first
    assert all(s.startswith(engine.address + ":") for s in first), first
    assert len(after_change) == 3 and not set(after_change) & set(first)  # every replica replaced
    assert len(after_scale) == 2 and set(after_scale) <= set(after_change)
    served = re.findall(r"/shop/site.txt\n(.*)\n", out)
    assert served == ["shop: 10% off everything", "shop: 20% off everything"], served


def test_plan_names_the_shipped_file(example_run):
    proc, dc = example_run
    assert re.search(rf"\$ deployer plan {dc}/edge1\n{dc}/edge1/web: replace \(replicas 1, 2, 3: changed: "
                     r"files\./www/site\.txt", proc.stdout), proc.stdout


def test_scale_is_a_commit_and_nothing_is_left(example_run, engine):
    proc, dc = example_run
    log = proc.stdout.split("$ git log --format=%h\\ %s -3\n", 1)[1]
    assert re.match(rf"[0-9a-f]{{7}} scale {dc}/edge1/web: 3 -> 2 replicas\n", log), log
    assert "-      replicas: 3\n+      replicas: 2\n" in log
    with closing(engine.client()) as client:
        assert client.containers.list(all=True, filters={"label": f"deployer.dc={dc}"}) == []
        assert client.networks.list(filters={"label": f"deployer.dc={dc}"}) == []
