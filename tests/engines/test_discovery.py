"""Service discovery: the deploy hooks, the registrator, `deployer services`, `deployer render` and
`templates watch`, against a real Consul dev agent, a real Docker node in a netns and real nginx
(127.0.0.1 and the node's own address only). Registrations derived from a container's state, and
the labels, are tested without an engine in tests/unit/test_discovery_labels.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.docker_catalog import DockerCatalog
from deployer.discovery.registration import (
    META_CONTAINER,
    META_DC,
    META_NODE,
    META_OWNER,
    agent_services,
    deregister,
    owned,
)
from deployer.discovery.registrator import Registrator
from deployer.errors import ConsulError
from deployer.discovery.templates import render

from tests.support.consul import free_port
from tests.support.nginx import NginxServer
from tests.support.repos import cli, git, make_repo, managed, remove_node_containers, run, unique_node
from tests.support import waiting


def wait_until(predicate, timeout=15.0, interval=0.05, what="condition"):
    """Engine, Consul and nginx together: a longer default than the unit tests'."""
    return waiting.wait_until(predicate, timeout, interval, what)


NGINX_TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "nginx.conf.j2"
WEB1, WEB2, SICK = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:sick"
EVIL = "evil; } server { listen 81; }"


# --- against a real engine and a real Consul ---------------------------------------------------


COMPOSE = """\
services:
  web:
    image: {image}
    init: true
    ports: ["{port}"]
    healthcheck:
      test: ["CMD", "test", "{test}", "{path}"]
      interval: 200ms
      timeout: 2s
      retries: 2
    labels:
      deployer.consul.name: "{name}"
      deployer.consul.tags: {tag}
      deployer.consul.check: "{check}"
      deployer.consul.interval: 1s
      deployer.consul.wait: 4s
      deployer.drain: "{drain}"
"""


@pytest.fixture
def client(engine):
    with closing(engine.client()) as c:
        yield c


def make_site(tmp_path, engine, consul_address: str | None, *, image=WEB1, port="80", check="http:/",
              test="-f", path="/www/index.html", drain="0s", name=None):
    """A repo with one node (the fleet's engine, at its bridge address) in dc `test`, Consul optional."""
    tag = f"d{os.urandom(3).hex()}"
    node = unique_node()
    files = {f"datacenters/test/{node}/node.yml": f"docker: {engine.unix_url}\naddress: {engine.address}\n"}
    if consul_address:
        files["datacenters/test/datacenter.yml"] = f"consul: {consul_address}\n"
    compose = COMPOSE.format(image=image, port=port, name=name or f"{tag}-web", tag=tag, check=check, test=test,
                             path=path, drain=drain)
    root, _ = make_repo(tmp_path / "infra", engine.unix_url, compose, node=node, extra_files=files)
    return root, node, tag


def ours(catalog: ConsulCatalog, node: str) -> dict[str, dict]:
    return {sid: e for sid, e in agent_services(catalog).items() if owned(e, "test", node)}


@pytest.fixture
def cleanup(client, consul_agent):
    """Removes the nodes' containers and every registration a test made."""
    nodes: list[str] = []
    extra_ids: list[str] = []
    yield nodes, extra_ids
    catalog = ConsulCatalog(consul_agent.address)
    for node in nodes:
        remove_node_containers(client, node)
        for sid in ours(catalog, node):
            deregister(catalog, sid)
    for sid in extra_ids:
        deregister(catalog, sid)


def container_ids(client, node):
    return sorted(c.id for c in managed(client, node))


def test_consul_down_fails_before_any_container_is_touched_and_no_consul_deploys(engine, client, tmp_path, cleanup):
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    root, node, _ = make_site(tmp_path, engine, down)
    cleanup[0].append(node)
    first = cli(root, "deploy", WEB1, f"test/{node}")
    assert first.exit_code == 1 and f"Consul at {down}" in first.output
    assert container_ids(client, node) == []  # not even created
    assert cli(root, "deploy", WEB1, f"test/{node}", "--no-consul").exit_code == 0
    before, head = container_ids(client, node), git(root, "rev-parse", "HEAD")

    done = run(root, "deploy", WEB2, f"test/{node}")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    # the node lock is the first thing that needs Consul now (ops.locks)
    assert line == (f"error: Consul at {down}: create a session to lock test/{node}: connection refused; nothing "
                    "was changed (--no-consul deploys without Consul, with the lock on the node's engine)")
    assert container_ids(client, node) == before
    assert git(root, "rev-parse", "HEAD") == head and git(root, "status", "--porcelain") == ""

    done = run(root, "deploy", WEB2, f"test/{node}", "--no-consul")
    assert done.returncode == 0, done.stderr
    (c,) = managed(client, node)
    assert c.image.tags == [WEB2] and git(root, "rev-parse", "HEAD") != head


def test_crafted_service_name_is_refused_before_consul_and_before_any_container(engine, client, consul_agent,
                                                                                 tmp_path, cleanup):
    root, node, tag = make_site(tmp_path, engine, consul_agent.address, name=EVIL)
    cleanup[0].append(node)
    done = run(root, "deploy", WEB1, f"test/{node}")
    assert done.returncode == 3
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: datacenters/test/{node}/docker-compose.yml:12: "
                           "services.web.labels.deployer.consul.name: unsafe service name")
    assert container_ids(client, node) == []
    catalog = ConsulCatalog(consul_agent.address)
    assert not any("evil" in e["Service"] for e in agent_services(catalog).values())
    # validate says the same, and so does every command that loads the repository (the registrator too)
    validated = cli(root, "validate")
    assert validated.exit_code == 3 and validated.stdout.splitlines() == [line.removeprefix("error: ")]
    refused = cli(root, "registrator", f"test/{node}", "--once", "--json")
    assert refused.exit_code == 3 and refused.stderr.strip() == line
    compose_file = root / f"datacenters/test/{node}/docker-compose.yml"
    compose_file.write_text(compose_file.read_text().replace(EVIL, f"{tag}-web"))

    # The same label on a container started by hand: the registrator refuses it too...
    hand = client.containers.run(WEB1, detach=True, name=f"{node}-hand", ports={"80/tcp": None}, labels={
        "deployer.dc": "test", "deployer.node": node, "deployer.service": "hand", "deployer.consul.name": EVIL})
    result = cli(root, "registrator", f"test/{node}", "--once", "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.output)
    assert report["registered"] == [] and "unsafe service name" in report["refused"][0]
    assert not any("evil" in e["Service"] for e in agent_services(catalog).values())
    # ...and so does the catalog built from the engines: a rendered config never sees it
    text = render(NGINX_TEMPLATE, DockerCatalog([_node(root, node)], root), {"tag": tag})
    assert "evil" not in text and "listen 81" not in text
    # and registering it directly is refused by the same rules
    with pytest.raises(ConsulError, match="unsafe service name"):
        catalog.register_instance(EVIL, "x-1", "127.0.0.1", 80)
    hand.remove(force=True)


def _node(root, name):
    from deployer.config.loader import load

    return load(root).node("test", name)


def test_a_consul_check_that_never_passes_restores_the_old_container_and_its_registration(
        engine, client, consul_agent, tmp_path, cleanup):
    # Docker's healthcheck passes for web:sick too (/www exists); Consul's GET / does not (no index.html).
    root, node, tag = make_site(tmp_path, engine, consul_agent.address, test="-d", path="/www")
    cleanup[0].append(node)
    catalog = ConsulCatalog(consul_agent.address)
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    (old,) = managed(client, node)
    before = ours(catalog, node)
    assert [e["Meta"][META_CONTAINER] for e in before.values()] == [old.id]
    head = git(root, "rev-parse", "HEAD")

    started = time.monotonic()
    done = run(root, "deploy", SICK, f"test/{node}", "--service", "web")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: test/{node}/web: new container {SICK} is healthy but its Consul http check "
                           f"http://{engine.address}:") and "did not pass within 4s" in last
    assert "restored the old container" in last and time.monotonic() - started < 30
    (now,) = managed(client, node)
    assert now.id == old.id and now.status == "running" and now.name == f"{node}-web"
    assert ours(catalog, node) == before  # the old registration is intact, the new one is gone
    assert [i.id for i in catalog.instances(f"{tag}-web")] == list(before)  # and still passing
    assert git(root, "rev-parse", "HEAD") == head and git(root, "status", "--porcelain") == ""


def test_fixed_host_port_stop_first_failure_registers_the_old_container_again(engine, client, consul_agent,
                                                                              tmp_path, cleanup):
    port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
    root, node, tag = make_site(tmp_path, engine, consul_agent.address, port=f"{port}:80")
    cleanup[0].append(node)
    catalog = ConsulCatalog(consul_agent.address)
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    (old,) = managed(client, node)
    done = run(root, "deploy", SICK, f"test/{node}", "--service", "web")
    assert done.returncode == 1 and "restored the old container" in done.stderr
    (now,) = managed(client, node)
    assert now.id == old.id and now.status == "running"
    (reg,) = ours(catalog, node).values()
    assert reg["Meta"][META_CONTAINER] == old.id and reg["Port"] == port
    wait_until(lambda: catalog.instances(f"{tag}-web"), what="the old container passing again")


def test_registrator_once_registers_deregisters_and_never_removes_what_it_does_not_own(
        engine, client, consul_agent, tmp_path, cleanup):
    nodes, extra_ids = cleanup
    root, node, tag = make_site(tmp_path, engine, consul_agent.address)
    nodes.append(node)
    catalog = ConsulCatalog(consul_agent.address)
    name = f"{tag}-web"
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    (c,) = managed(client, node)
    (sid,) = ours(catalog, node)
    # Registrations the deployer does not own, one of them with an id in the deployer's style
    foreign = [f"{node}:{'f' * 12}:80", f"{tag}-other-1"]
    extra_ids.extend(foreign)
    catalog.register_instance(name, foreign[0], "127.0.0.1", 9, ttl="60s")
    catalog.register_instance(name, foreign[1], "127.0.0.1", 9, ttl="60s",
                              meta={META_OWNER: "someone-else", META_DC: "test", META_NODE: node})

    def once():
        result = cli(root, "registrator", f"test/{node}", "--once", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)[0]

    assert once() == {"node": f"test/{node}", "registered": [], "deregistered": [], "refused": [], "kept": 1,
                      "error": None}
    c.stop(timeout=5)
    assert once()["deregistered"] == [sid]
    services = agent_services(catalog)
    assert sid not in services and all(f in services for f in foreign)

    c.start()
    wait_until(lambda: client.api.inspect_container(c.id)["State"].get("Health", {}).get("Status") == "healthy")
    assert once()["registered"] == [sid]
    host_port = int(client.api.inspect_container(c.id)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
    assert agent_services(catalog)[sid]["Port"] == host_port

    # A managed container started by hand (a service the repo does not have) is registered, and `services`
    # reports it as extra beside the passing one the repo has.
    hand = client.containers.run(WEB1, detach=True, name=f"{node}-hand", ports={"80/tcp": None}, labels={
        "deployer.dc": "test", "deployer.node": node, "deployer.service": "hand", "deployer.consul.name": f"{tag}-hand",
        "deployer.consul.tags": tag, "deployer.consul.check": "tcp", "deployer.consul.interval": "1s"})
    (hand_sid,) = once()["registered"]
    assert hand_sid == f"{node}:{hand.id[:12]}:80"
    wait_until(lambda: catalog.instances(f"{tag}-hand") and catalog.instances(name, passing_only=True),
               what="both passing")
    result = cli(root, "services", "test", "--json")
    assert result.exit_code == 2  # something extra: drift
    rows = {(r["service"], r["instance"]): r for r in json.loads(result.output)}
    assert rows[(name, sid)]["state"] == "passing" and rows[(name, sid)]["node"] == node
    assert rows[(f"{tag}-hand", hand_sid)]["state"] == "extra"
    assert rows[(name, foreign[0])]["state"] == "external"
    text = cli(root, "services", "test").output
    assert "STATE" in text.splitlines()[0] and "extra" in text

    hand.remove(force=True)
    assert once()["deregistered"] == [hand_sid]
    assert all(f in agent_services(catalog) for f in foreign)  # never removed


def test_registrator_follows_docker_events(engine, client, consul_agent, tmp_path, cleanup):
    from deployer.config.loader import load

    root, node, _ = make_site(tmp_path, engine, consul_agent.address)
    cleanup[0].append(node)
    catalog = ConsulCatalog(consul_agent.address)
    assert cli(root, "deploy", WEB1, f"test/{node}", "--no-consul").exit_code == 0  # not registered
    (c,) = managed(client, node)
    infra = load(root)
    reg = Registrator(root, [(infra.datacenters["test"], infra.node("test", node))], resync=300, event_window=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=reg.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: ours(catalog, node), what="the first resync registers it")
        time.sleep(0.5)
        syncs = reg.stats["syncs"]
        c.stop(timeout=5)  # from here on only events can notice anything (the next resync is 300s away)
        wait_until(lambda: not ours(catalog, node), timeout=10, what="deregistered on the die event")
        c.start()
        wait_until(lambda: ours(catalog, node), timeout=10, what="registered on the health_status event")
        assert reg.stats["events"] >= 2 and reg.stats["syncs"] > syncs
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_render_and_services_without_consul_read_the_engines(engine, client, tmp_path, cleanup):
    root, node, tag = make_site(tmp_path, engine, None)
    cleanup[0].append(node)
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    server = NginxServer(tmp_path / "nginx")
    result = cli(root, "render", str(NGINX_TEMPLATE), "--out", str(server.conf), "--var", "listen_address=127.0.0.1",
                 "--var", f"listen_port={server.port}", "--var", f"tag={tag}", "--check", " ".join(server.check_command))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {server.conf} (from the Docker engines of test)"
    (c,) = managed(client, node)
    host_port = client.api.inspect_container(c.id)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
    assert f"server {engine.address}:{host_port} " in server.conf.read_text()
    with server:
        assert server.get(f"/{tag}-web/") == (200, "v1")
    result = cli(root, "services", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["service"], row["node"], row["state"], row["source"]) == (f"{tag}-web", node, "passing",
                                                                         "docker engines")
    c.stop(timeout=5)
    result = cli(root, "services", "--json")
    assert result.exit_code == 2 and json.loads(result.output)[0]["state"] == "missing"


def test_render_from_consul_and_templates_watch_until_sigterm(engine, client, consul_agent, tmp_path, cleanup):
    root, node, tag = make_site(tmp_path, engine, consul_agent.address)
    cleanup[0].append(node)
    assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
    (c,) = managed(client, node)
    host_port = client.api.inspect_container(c.id)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
    out = tmp_path / "once.conf"
    result = cli(root, "render", str(NGINX_TEMPLATE), "--out", str(out), "--var", f"tag={tag}")
    assert result.exit_code == 0 and f"(from consul at {consul_agent.address})" in result.output
    assert f"server {engine.address}:{host_port} " in out.read_text()

    template = tmp_path / "list.j2"
    template.write_text("{% for i in service(vars.name) %}{{ i | endpoint }}\n{% endfor %}")
    dest = tmp_path / "list.txt"
    config = tmp_path / "watch.yml"
    config.write_text(f"consul: {consul_agent.address}\nwait: {{min: 100ms, max: 500ms}}\nsettle: 1s\n"
                      f"templates:\n  - source: list.j2\n    destination: list.txt\n    vars: {{name: {tag}-web}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "templates", "watch", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: dest.exists() and dest.read_text() == f"{engine.address}:{host_port}\n", timeout=20,
                   what="the watcher's first render")
        c.stop(timeout=5)
        assert cli(root, "registrator", f"test/{node}", "--once").exit_code == 0
        wait_until(lambda: dest.read_text() == "", timeout=20, what="the instance gone from the file")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "templates: stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
