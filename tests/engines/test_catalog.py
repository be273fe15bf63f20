"""deployer.discovery.catalog: validation, StaticCatalog, and ConsulCatalog against a real Consul dev agent."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from deployer.discovery.catalog import (
    Catalog,
    HealthQuery,
    Instance,
    KeyQuery,
    ServicesQuery,
    StaticCatalog,
    valid_address,
    valid_name,
    valid_tag,
    validate_instance,
)
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.watcher import Watcher
from deployer.errors import ConsulError, ConsulUnavailable, DeployerError

from tests.support.consul import Backend, ConsulAgent, free_port
from tests.support.waiting import wait_until


# --- validation -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "api-v2", "api.v2", "db_1", "A", "x" * 128])
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "x; } server { listen 81; }", "web app", "-web", ".web", "web\n", "web;", "we{b", "x" * 129, "$web", None, 5],
)
def test_unsafe_names(name):
    assert not valid_name(name)


@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "::1", "fd00::5", "db.example.com", "node-1", "host."])
def test_valid_addresses(address):
    assert valid_address(address)


@pytest.mark.parametrize(
    "address",
    ["", "1.2.3.4; evil", "1.2.3.4 5.6.7.8", "1.2.3", "300.1.1.1", "fe80::1%eth0", "-bad.example", "a..b",
     "x" * 64 + ".com", "host:80", "[::1]", "ho$t"],
)
def test_invalid_addresses(address):
    assert not valid_address(address)


def test_tags_allow_common_forms_only():
    assert valid_tag("urlprefix-/web") and valid_tag("version=1.2") and valid_tag("traefik.enable=true")
    assert not valid_tag("a b") and not valid_tag("x;y") and not valid_tag("}") and not valid_tag("")


def test_validate_instance_reasons():
    good = Instance("web", "web-1", "node1", "10.0.0.1", 80, ("http",))
    assert validate_instance(good) is None
    assert "port" in validate_instance(Instance("web", "w", "n", "10.0.0.1", 0))
    assert "port" in validate_instance(Instance("web", "w", "n", "10.0.0.1", 70000))
    assert "port" in validate_instance(Instance("web", "w", "n", "10.0.0.1", True))
    assert "address" in validate_instance(Instance("web", "w", "n", "1.2.3.4; evil", 80))
    assert "node" in validate_instance(Instance("web", "w", "n ode", "10.0.0.1", 80))
    assert "tag" in validate_instance(Instance("web", "w", "n", "10.0.0.1", 80, ("ok", "x; y")))
    assert "status" in validate_instance(Instance("web", "w", "n", "10.0.0.1", 80, status="dead"))


# --- StaticCatalog ------------------------------------------------------------------


def test_static_catalog_filters_and_drops_unsafe(caplog):
    caplog.set_level(logging.WARNING, "deployer.catalog")
    cat = StaticCatalog(
        [
            Instance("web", "w2", "n2", "10.0.0.2", 80, ("blue",)),
            Instance("web", "w1", "n1", "10.0.0.1", 80, ("green",)),
            Instance("web", "w3", "n1", "10.0.0.3", 80, ("green",), status="critical"),
            Instance("x; } server { listen 81; }", "e1", "n1", "10.0.0.9", 80),
            Instance("api", "e2", "n1", "1.2.3.4; evil", 80),
        ],
        kv={"a/b": "1"},
    )
    assert isinstance(cat, Catalog)
    assert cat.services() == {"web": ("blue", "green")}
    assert [i.id for i in cat.instances("web")] == ["w1", "w2"]  # sorted, passing only
    assert [i.id for i in cat.instances("web", passing_only=False)] == ["w1", "w3", "w2"]
    assert [i.id for i in cat.instances("web", tag="green")] == ["w1"]
    assert cat.kv("a/b") == "1" and cat.kv("nope", "d") == "d"
    assert "unsafe service name" in caplog.text and "invalid address" in caplog.text
    cat.replace([Instance("db", "d1", "n1", "::1", 5432)])
    assert cat.services() == {"db": ()} and cat.instances("db")[0].endpoint == "[::1]:5432"


def test_consul_address_parsing():
    assert (ConsulCatalog("10.0.0.5").port, ConsulCatalog("10.0.0.5").scheme) == (8500, "http")
    c = ConsulCatalog("https://consul.example:8501")
    assert (c.scheme, c.host, c.port) == ("https", "consul.example", 8501)
    assert ConsulCatalog("[::1]:8500").host == "::1"
    for bad in ("", "ftp://x:1", "host:notaport", "http://h:1/path"):
        with pytest.raises(ConsulError):
            ConsulCatalog(bad)


# --- ConsulCatalog against a real agent ------------------------------------------------


def test_unreachable_consul_is_one_typed_line():
    port = free_port()
    cat = ConsulCatalog(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ConsulUnavailable) as info:
        cat.services()
    err = info.value
    assert isinstance(err, DeployerError)
    assert f"127.0.0.1:{port}" in err.one_line() and "\n" not in err.one_line()
    assert "connection refused" in err.one_line()


def test_instances_status_tags_meta_and_kv(consul_agent):
    c = consul_agent.client()
    cat = ConsulCatalog(consul_agent.address)
    cat.register_instance("cat-web", "cat-web-1", "127.0.0.1", 9001, tags=["http", "v1"], meta={"version": "1.2"},
                          ttl="30s")
    cat.register_instance("cat-web", "cat-web-2", "127.0.0.1", 9002, tags=["http"], ttl="30s")
    c.agent.check.ttl_pass("service:cat-web-1")
    c.agent.check.ttl_warn("service:cat-web-2")
    try:
        assert cat.services()["cat-web"] == ("http", "v1")
        passing = cat.instances("cat-web")
        assert [(i.id, i.port, i.status) for i in passing] == [("cat-web-1", 9001, "passing")]
        assert passing[0].tags == ("http", "v1") and passing[0].meta == {"version": "1.2"}
        assert passing[0].node == "deployer-test" and passing[0].address == "127.0.0.1"
        every = cat.instances("cat-web", passing_only=False)
        assert [(i.id, i.status) for i in every] == [("cat-web-1", "passing"), ("cat-web-2", "warning")]
        assert [i.id for i in cat.instances("cat-web", tag="v1", passing_only=False)] == ["cat-web-1"]
        assert cat.instances("no-such-service") == []
        c.kv.put("cat/port", "8181")
        assert cat.kv("cat/port") == "8181" and cat.kv("cat/none", "dflt") == "dflt"
        assert cat.leader()
    finally:
        cat.deregister("cat-web-1")
        cat.deregister("cat-web-2")
    assert "cat-web" not in cat.services()


def test_injection_attempts_never_come_back(consul_agent, caplog):
    caplog.set_level(logging.WARNING, "deployer.catalog")
    c = consul_agent.client()
    evil_name = "x; } server { listen 81; }"
    c.agent.service.register(evil_name, service_id="evil-1", address="127.0.0.1", port=80)
    c.agent.service.register("cat-evil", service_id="evil-2", address="1.2.3.4; evil", port=80)
    c.agent.service.register("cat-evil", service_id="evil-3", address="127.0.0.1", port=80, tags=["ok", "a b;"])
    c.agent.service.register("cat-evil", service_id="evil-4", address="127.0.0.1", port=80, meta={"v": "x; y"})
    cat = ConsulCatalog(consul_agent.address)
    try:
        services = cat.services()
        assert evil_name not in services
        assert services["cat-evil"] == ("ok",)  # the unsafe tag is left out of the list
        found = cat.instances("cat-evil")
        assert [i.id for i in found] == ["evil-4"] and found[0].meta == {}  # unsafe meta entry dropped
        assert "unsafe name" in caplog.text and "invalid address" in caplog.text and "unsafe tag" in caplog.text
        with pytest.raises(ValueError):
            cat.instances(evil_name)
        with pytest.raises(ConsulError, match="refusing to register"):
            cat.register_instance("cat-evil", "evil-5", "1.2.3.4; evil", 80)
    finally:
        for sid in ("evil-1", "evil-2", "evil-3", "evil-4"):
            c.agent.service.deregister(sid)


def test_blocking_query_returns_on_change_and_on_timeout(consul_agent):
    cat = ConsulCatalog(consul_agent.address)
    dep = HealthQuery("cat-block")
    index, value = cat.query(dep)
    assert value == []
    started = time.monotonic()
    same_index, same = cat.query(dep, index=index, wait=0.3)
    assert time.monotonic() - started >= 0.25 and same == [] and same_index == index

    def register():
        time.sleep(0.3)
        cat.register_instance("cat-block", "cat-block-1", "127.0.0.1", 9100)

    threading.Thread(target=register).start()
    started = time.monotonic()
    new_index, value = cat.query(dep, index=index, wait=10)
    try:
        assert time.monotonic() - started < 5 and new_index > index
        assert [i.id for i in value] == ["cat-block-1"]
    finally:
        cat.deregister("cat-block-1")


def test_http_check_against_a_local_backend(consul_agent):
    backend = Backend("b1")
    cat = ConsulCatalog(consul_agent.address)
    cat.register_instance("cat-http", "cat-http-1", "127.0.0.1", backend.port, http_check=backend.health_url,
                          interval="1s")
    try:
        wait_until(lambda: cat.instances("cat-http"))
        backend.healthy = False
        wait_until(lambda: not cat.instances("cat-http"))
        assert cat.instances("cat-http", passing_only=False)[0].status == "critical"
    finally:
        cat.deregister("cat-http-1")
        backend.close()


def test_watcher_follows_changes_and_polls_static_catalogs(consul_agent):
    cat = ConsulCatalog(consul_agent.address)
    changed = threading.Event()
    watcher = Watcher(cat, blocking_wait=5, on_change=changed.set)
    try:
        assert watcher.get(HealthQuery("cat-watch")) == []
        assert watcher.get(KeyQuery("cat/watch")) is None
        assert watcher.connected_at is not None and not watcher.failing()
        cat.register_instance("cat-watch", "cat-watch-1", "127.0.0.1", 9200)
        cat.put_kv("cat/watch", "v1")
        wait_until(lambda: watcher.get(HealthQuery("cat-watch")) and watcher.get(KeyQuery("cat/watch")) == "v1")
        assert changed.is_set() and watcher.generation >= 2
        watcher.retain([KeyQuery("cat/watch")])
        assert watcher.dependencies() == [KeyQuery("cat/watch")]
    finally:
        watcher.close()
        cat.deregister("cat-watch-1")

    static = StaticCatalog([])
    watcher = Watcher(static, poll_interval=0.05)
    try:
        assert watcher.get(ServicesQuery()) == {}
        static.replace([Instance("s", "s1", "n", "10.0.0.1", 1)])
        wait_until(lambda: watcher.get(ServicesQuery()) == {"s": ()})
    finally:
        watcher.close()


def test_watcher_reports_failure_and_reconnects_after_restart():
    with ConsulAgent(node="watch-restart") as agent:
        cat = ConsulCatalog(agent.address, timeout=2)
        cat.register_instance("cat-r", "cat-r-1", "127.0.0.1", 9300)
        watcher = Watcher(cat, blocking_wait=5, backoff=0.05, max_backoff=0.2)
        try:
            dep = HealthQuery("cat-r")
            assert len(watcher.get(dep)) == 1
            assert watcher.reconnected_at is None
            agent.kill()
            wait_until(lambda: watcher.failing())
            why = watcher.failing()[dep]
            assert agent.address in why and ("connection refused" in why or "connection lost" in why)
            assert len(watcher.get(dep)) == 1  # the last good value is kept
            agent.start()
            wait_until(lambda: not watcher.failing())
            assert watcher.reconnected_at > watcher.connected_at
            assert watcher.get(dep) == []  # a dev agent comes back empty
        finally:
            watcher.close()
