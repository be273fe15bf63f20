"""Zero-downtime deploys behind nginx: real Consul, a real Docker node in a netns, real nginx.

nginx listens on 127.0.0.1 and proxies to the node's address (over the fleet
bridge) at the container's ephemeral host port; ``templates watch`` (a Runner in
a thread) renders templates/nginx.conf.j2 from Consul. A client thread sends
requests through nginx the whole time; during a deploy, a rollback and a deploy
of an image that never becomes healthy, not one may fail.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from deployer.ops.deploy import Deployer
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.registration import META_CONTAINER, META_NODE, agent_services, deregister, owned
from deployer.errors import HealthCheckFailed
from deployer.discovery.template_config import ConsulSettings, TemplateSpec, WatchConfig
from deployer.discovery.template_runner import Runner
from deployer.discovery.templates import upstream_name

from tests.support.nginx import NginxServer
from tests.support.repos import WEB_PUBLISHED, git, make_repo, managed, remove_node_containers, unique_node
from tests.support import waiting


def wait_until(predicate, timeout=15.0, interval=0.05, what="condition"):
    """Engine, Consul and nginx together: a longer default than the unit tests'."""
    return waiting.wait_until(predicate, timeout, interval, what)


NGINX_TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "nginx.conf.j2"
WEB1, WEB2, SICK = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:sick"

COMPOSE = WEB_PUBLISHED + """\
    labels:
      deployer.consul.name: {name}
      deployer.consul.tags: {tag}
      deployer.consul.check: "http:/"
      deployer.consul.interval: 1s
      deployer.drain: 2s
"""
REPLICATED = COMPOSE + """\
    deploy:
      replicas: 3
      update_config: {{parallelism: 1}}
"""


class Traffic:
    """A thread sending GET requests through nginx back to back (a new connection each), recording each."""

    def __init__(self, url: str, timeout: float = 5.0, limit: float = 150.0, pause: float = 0.005):
        self.url = url
        self.timeout = timeout
        self.limit = limit  # the thread never runs longer than this
        self.pause = pause
        self.results: list[tuple[float, bool, str]] = []  # (sent at, ok, body or error)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                with opener.open(self.url, timeout=self.timeout) as resp:
                    body = resp.read().decode(errors="replace").strip()
                    self.results.append((sent, resp.status == 200, body))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.results.append((sent, False, f"{type(exc).__name__}: {exc}"))
            self.stop.wait(self.pause)

    def between(self, start: float, end: float) -> list[tuple[float, bool, str]]:
        return [r for r in list(self.results) if start <= r[0] < end]

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(self.timeout + 2)
        assert not self.thread.is_alive()


class Watching:
    """``templates watch`` in a thread."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.written: list[str] = []  # every version of the file that went live
        self.stop = threading.Event()
        self.thread = threading.Thread(target=runner.watch, args=(self.stop,), name="templates watch", daemon=True)
        runner.on_event = self._record

    def _record(self, kind: str, detail: str) -> None:
        if kind == "written":
            self.written.append(Path(detail).read_text())

    def __enter__(self) -> "Watching":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def site(engine, consul_agent, tmp_path):
    """A repo whose node (the fleet's `engine`, reachable at engine.address) runs web:1 registered in Consul,
    and an nginx on 127.0.0.1 rendered from Consul."""
    yield from _site(engine, consul_agent, tmp_path, COMPOSE)


@pytest.fixture
def replicated_site(engine, consul_agent, tmp_path):
    """The same with three replicas of web:1, each registered in Consul, each an nginx upstream server."""
    yield from _site(engine, consul_agent, tmp_path, REPLICATED)


def _site(engine, consul_agent, tmp_path, compose):
    tag = f"z{os.urandom(3).hex()}"
    name = f"{tag}-web"
    node = unique_node()
    root, _ = make_repo(tmp_path / "infra", engine.unix_url, compose.format(image=WEB1, name=name, tag=tag),
                        node=node, extra_files={
                            "datacenters/test/datacenter.yml": f"consul: {consul_agent.address}\n",
                            f"datacenters/test/{node}/node.yml": f"docker: {engine.unix_url}\naddress: {engine.address}\n",
                        })
    catalog = ConsulCatalog(consul_agent.address)
    client = engine.client()
    server = NginxServer(tmp_path / "nginx")
    template = tmp_path / "nginx.conf.j2"
    shutil.copy(NGINX_TEMPLATE, template)
    spec = TemplateSpec(template, server.conf, check=server.check_command, reload=server.reload_command,
                        vars={"listen_address": "127.0.0.1", "listen_port": server.port,
                              "listen_port_key": f"{tag}/port", "tag": tag})
    config = WatchConfig([spec], ConsulSettings(consul_agent.address, blocking_wait=5, backoff=0.05, max_backoff=0.5),
                         wait_min=0.2, wait_max=1.0, settle=2.0)
    ns = type("Site", (), {})()
    ns.root, ns.node, ns.name, ns.tag, ns.catalog, ns.client, ns.server, ns.config = (
        root, node, name, tag, catalog, client, server, config)
    ns.engine_address = engine.address
    ns.api = Deployer(root, progress=lambda msg: print(f"  {msg}"))
    try:
        ns.api.deploy(WEB1, f"test/{node}")  # creates the container (no commit: web:1 is written), registers it
        yield ns
    finally:
        server.stop()
        remove_node_containers(client, node)
        for sid, entry in agent_services(catalog).items():
            if owned(entry, "test", node):
                deregister(catalog, sid)
        client.close()


def bodies(results) -> list[str]:
    return [body for _, ok, body in results if ok]


def registrations_of(site) -> dict[str, dict]:
    return {sid: e for sid, e in agent_services(site.catalog).items() if owned(e, "test", site.node)}


def test_deploy_rollback_and_a_sick_deploy_behind_nginx_without_a_failed_request(site, capsys):
    (first,) = managed(site.client, site.node)
    regs = registrations_of(site)
    assert [e["Meta"][META_CONTAINER] for e in regs.values()] == [first.id]
    wait_until(lambda: site.catalog.instances(site.name), what="web:1 passing in Consul")

    # nginx starts on the first render; from then on templates watch keeps it current
    first_pass = WatchConfig([TemplateSpec(**{**site.config.templates[0].__dict__, "reload": None})],
                             site.config.consul)
    Runner(first_pass).run_once()
    site.server.start()
    url = f"http://127.0.0.1:{site.server.port}/{site.name}/"
    assert site.server.get(f"/{site.name}/") == (200, "v1")

    numbers = {}
    with Watching(Runner(site.config)) as watching, Traffic(url) as traffic:
        time.sleep(1.0)  # some steady traffic first
        phases = {}
        for phase, action in (
            ("deploy", lambda: site.api.deploy(WEB2, f"test/{site.node}")),
            ("rollback", lambda: site.api.rollback(f"test/{site.node}/web")),
        ):
            start = time.monotonic()
            result = action()
            done = time.monotonic()
            assert result.commit
            time.sleep(1.0)
            phases[phase] = (start, done, time.monotonic())

        # an image that never becomes healthy: the old container keeps serving, nothing is committed
        head = git(site.root, "rev-parse", "HEAD")
        (before,) = managed(site.client, site.node)
        start = time.monotonic()
        with pytest.raises(HealthCheckFailed, match="unhealthy.*restored the old container"):
            site.api.deploy(SICK, f"test/{site.node}")
        done = time.monotonic()
        time.sleep(1.0)
        phases["sick deploy"] = (start, done, time.monotonic())
        assert git(site.root, "rev-parse", "HEAD") == head and git(site.root, "status", "--porcelain") == ""
        (after,) = managed(site.client, site.node)
        assert after.id == before.id and after.status == "running"
        assert [e["Meta"][META_CONTAINER] for e in registrations_of(site).values()] == [before.id]

    for phase, (start, done, end) in phases.items():
        during = traffic.between(start, end)
        failed = [r for r in during if not r[1]]
        numbers[phase] = (len(during), len(failed))
        assert not failed, f"{phase}: {len(failed)} of {len(during)} requests failed, e.g. {failed[:3]}"
        assert len(during) >= 100, f"{phase}: only {len(during)} requests"
    deploy_start, deploy_done, _ = phases["deploy"]
    seen = bodies(traffic.between(deploy_start, deploy_done))
    assert seen[0] == "v1" and "v2" in seen
    assert set(bodies(traffic.between(deploy_done, phases["deploy"][2]))) == {"v2"}  # the old one is gone
    rollback_start, rollback_done, _ = phases["rollback"]
    seen = bodies(traffic.between(rollback_start, rollback_done))
    assert seen[0] == "v2" and "v1" in seen
    assert set(bodies(traffic.between(rollback_done, phases["sick deploy"][2]))) == {"v1"}
    total_failed = [r for r in traffic.results if not r[1]]
    assert not total_failed, total_failed[:3]
    # nginx followed every switch, and no version of its config ever lacked a server for the service
    assert site.server.reloads() >= 2 and len(watching.written) >= 2
    upstream = f"upstream {upstream_name(site.name)} {{"
    for text in watching.written:
        assert upstream in text and f"server {site.engine_address}:" in text.split(upstream)[1].split("}")[0]
    (final,) = managed(site.client, site.node)
    (reg,) = registrations_of(site).values()
    assert reg["Meta"][META_CONTAINER] == final.id and reg["Meta"][META_NODE] == site.node
    with capsys.disabled():
        print("\nzero-downtime: " + "; ".join(f"{p}: {n} requests, {f} failed" for p, (n, f) in numbers.items())
              + f"; nginx reloads: {site.server.reloads()}, configs written: {len(watching.written)}")


def upstream_servers(text: str, name: str) -> list[str]:
    upstream = f"upstream {upstream_name(name)} {{"
    block = text.split(upstream)[1].split("}")[0]
    return [line.split()[1].rstrip(";") for line in block.splitlines() if line.strip().startswith("server ")]


def test_a_3_replica_service_deploys_and_rolls_back_behind_nginx_without_a_failed_request(replicated_site, capsys):
    site = replicated_site
    containers = managed(site.client, site.node)
    assert len(containers) == 3
    wait_until(lambda: len(site.catalog.instances(site.name)) == 3, what="3 replicas passing in Consul")
    assert sorted(e["Meta"][META_CONTAINER] for e in registrations_of(site).values()) == sorted(c.id for c in containers)

    first_pass = WatchConfig([TemplateSpec(**{**site.config.templates[0].__dict__, "reload": None})],
                             site.config.consul)
    Runner(first_pass).run_once()
    assert len(upstream_servers(site.server.conf.read_text(), site.name)) == 3  # every replica is an upstream
    site.server.start()
    url = f"http://127.0.0.1:{site.server.port}/{site.name}/"
    assert site.server.get(f"/{site.name}/") == (200, "v1")

    numbers = {}
    with Watching(Runner(site.config)) as watching, Traffic(url) as traffic:
        time.sleep(1.0)
        phases = {}
        for phase, action in (
            ("deploy", lambda: site.api.deploy(WEB2, f"test/{site.node}")),
            ("rollback", lambda: site.api.rollback(f"test/{site.node}/web")),
        ):
            start = time.monotonic()
            result = action()
            done = time.monotonic()
            assert result.commit
            time.sleep(1.0)
            phases[phase] = (start, done, time.monotonic())

    for phase, (start, done, end) in phases.items():
        during = traffic.between(start, end)
        failed = [r for r in during if not r[1]]
        numbers[phase] = (len(during), len(failed))
        assert not failed, f"{phase}: {len(failed)} of {len(during)} requests failed, e.g. {failed[:3]}"
        assert len(during) >= 100, f"{phase}: only {len(during)} requests"
    deploy_start, deploy_done, _ = phases["deploy"]
    seen = bodies(traffic.between(deploy_start, deploy_done))
    assert seen[0] == "v1" and "v2" in seen
    assert set(bodies(traffic.between(deploy_done, phases["deploy"][2]))) == {"v2"}
    assert set(bodies(traffic.between(phases["rollback"][1], phases["rollback"][2]))) == {"v1"}
    assert not [r for r in traffic.results if not r[1]]
    # nginx never lost its upstream while replicas were replaced one by one
    for text in watching.written:
        assert upstream_servers(text, site.name), "a config without a server for the service went live"
    final = managed(site.client, site.node)
    assert len(final) == 3 and {c.image.tags[0] for c in final} == {WEB1}
    assert sorted(e["Meta"][META_CONTAINER] for e in registrations_of(site).values()) == sorted(c.id for c in final)
    with capsys.disabled():
        print("\nzero-downtime, 3 replicas: " + "; ".join(f"{p}: {n} requests, {f} failed"
                                                         for p, (n, f) in numbers.items())
              + f"; nginx reloads: {site.server.reloads()}, configs written: {len(watching.written)}")
