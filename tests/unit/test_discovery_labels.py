"""Discovery without Docker or Consul: the deployer.consul.* / deployer.drain labels, and the
registrations a container's state (from its inspect data: published ports, healthcheck) gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployer.config import label_check
from deployer.config.label_check import label_problems
from deployer.discovery import catalog, label_settings
from deployer.discovery.catalog import Instance
from deployer.discovery.hooks import ConsulHooks
from deployer.discovery.label_settings import DEFAULT_DRAIN, Settings, parse_labels
from deployer.discovery.registration import (
    META_CONTAINER,
    META_DC,
    META_NODE,
    META_OWNER,
    node_address,
    published_tcp_ports,
    registrations,
)
from deployer.discovery.template_config import load_config
from deployer.engine.state import inspect_to_state
from deployer.errors import ConfigError, HealthCheckFailed, LabelError
from deployer.labels import DISCOVERY_LABELS
from deployer.model import Datacenter, Location, Node

EVIL = "evil; } server { listen 81; }"


# --- registrations from an inspected container -------------------------------------------------


def inspect(labels=None, ports=None, healthcheck=None, cid="c0ffee" * 10 + "abcd"):
    """A running container's state, read from inspect data the way the engine layer reads it."""
    return inspect_to_state({
        "Id": cid,
        "Name": "/n1-web",
        "Config": {"Labels": {"deployer.dc": "dc1", "deployer.node": "n1", "deployer.service": "web", **(labels or {})},
                   "Healthcheck": healthcheck},
        "NetworkSettings": {"Ports": ports if ports is not None else {
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, {"HostIp": "::", "HostPort": "49153"}]}},
        "State": {"Status": "running"},
    })


def test_registration_name_address_published_port_tags_check_id_and_meta():
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect({
        "deployer.consul.name": "shop", "deployer.consul.tags": "blue, v2,blue",
        "deployer.consul.check": "http:/health", "deployer.consul.interval": "3s", "deployer.consul.timeout": "500ms",
    }))
    assert (reg.name, reg.address, reg.port, reg.tags) == ("shop", "10.0.0.5", 49153, ("blue", "v2"))
    assert reg.id == "n1:c0ffeec0ffee:80"
    assert reg.check == {"http": "http://10.0.0.5:49153/health", "interval": "3s", "timeout": "500ms",
                         "name": "deployer http:/health check"}
    assert reg.meta == {META_OWNER: "deployer", META_DC: "dc1", META_NODE: "n1", META_CONTAINER: "c0ffee" * 10 + "abcd",
                        "deployer-service": "web"}
    assert reg.drain == DEFAULT_DRAIN
    # without labels: the service name, and a TCP check
    (plain,) = registrations("dc1", "n1", "10.0.0.5", inspect())
    assert plain.name == "web" and plain.check["tcp"] == "10.0.0.5:49153" and plain.check["interval"] == "5s"


def test_check_derived_from_the_compose_healthcheck():
    ns = 1_000_000_000
    curl = {"Test": ["CMD-SHELL", "curl -fsS http://localhost/status || exit 1"], "Interval": ns // 5, "Timeout": 2 * ns}
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect(healthcheck=curl))
    assert reg.check["http"] == "http://10.0.0.5:49153/status"
    assert reg.check["interval"] == "1s" and reg.check["timeout"] == "2s"  # Consul's minimum interval is 1s
    wget_other_port = {"Test": ["CMD", "wget", "-q", "http://127.0.0.1:9000/metrics"], "Interval": 7 * ns}
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect(healthcheck=wget_other_port))
    assert "tcp" in reg.check and reg.check["interval"] == "7s"  # probes another port: TCP on ours
    file_test = {"Test": ["CMD", "test", "-f", "/www/index.html"]}
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect(healthcheck=file_test))
    assert "tcp" in reg.check
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect({"deployer.consul.check": "none"}))
    assert reg.check is None


def test_ports_several_chosen_unpublished_and_host_ip():
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32001"}], "443/tcp": [{"HostIp": "", "HostPort": "32002"}],
             "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "32003"}], "9000/tcp": None}
    regs = registrations("dc1", "n1", "10.0.0.5", inspect(ports=ports))
    assert [(r.name, r.port, r.id) for r in regs] == [("web-80", 32001, "n1:c0ffeec0ffee:80"),
                                                      ("web-443", 32002, "n1:c0ffeec0ffee:443")]
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect({"deployer.consul.port": "443"}, ports=ports))
    assert (reg.name, reg.port) == ("web", 32002)
    assert registrations("dc1", "n1", "10.0.0.5", inspect(ports={"80/tcp": None})) == []  # expose only
    assert registrations("dc1", "n1", "10.0.0.5", inspect({"deployer.consul.register": "false"})) == []
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect(ports={"80/tcp": [{"HostIp": "10.9.9.9", "HostPort": "8080"}]}))
    assert reg.address == "10.9.9.9"  # bound to one address: that one


def test_node_address_falls_back_to_the_docker_url_host():
    def node(docker, address=None):
        return Node("dc1", "n1", docker, "datacenters/dc1/n1", Location("x"), address=address)

    assert node_address(node("ssh://ops@web1.example.com:2222")) == "web1.example.com"
    assert node_address(node("tcp://10.1.2.3:2376")) == "10.1.2.3"
    assert node_address(node("tcp://10.1.2.3:2376", address="192.168.0.7")) == "192.168.0.7"
    assert node_address(node("unix:///var/run/docker.sock")) == "127.0.0.1"


@pytest.mark.parametrize("label, value, message", [
    ("deployer.consul.name", EVIL, "unsafe service name"),
    ("deployer.consul.name", "a}b", "unsafe service name"),
    ("deployer.consul.tags", "ok,x;y", "unsafe tag"),
    ("deployer.consul.check", "http:/a b", "write http:/path"),
    ("deployer.consul.check", "grpc", "write http:/path, tcp or none"),
    ("deployer.consul.interval", "soon", "invalid deployer.consul.interval"),
    ("deployer.drain", "-1s", "invalid deployer.drain"),
    ("deployer.consul.port", "http", "not a container port"),
])
def test_unusable_labels_are_refused_with_the_label_named(label, value, message):
    with pytest.raises(LabelError) as info:
        parse_labels({label: value})
    assert info.value.one_line().startswith(f"{label}: ") and message in info.value.one_line()


def test_label_problems_lists_every_bad_label_in_one_order():
    labels = {"deployer.drain": "-1s", "deployer.consul.name": EVIL, "deployer.consul.port": "0",
              "deployer.consul.register": "maybe", "deployer.consul.nmae": "x"}
    assert [p.label for p in label_problems(labels)] == [
        "deployer.consul.register", "deployer.consul.name", "deployer.consul.port", "deployer.drain",
        "deployer.consul.nmae"]
    with pytest.raises(LabelError) as info:
        parse_labels(labels)
    assert info.value.label == "deployer.consul.register"  # the first of them


@pytest.mark.parametrize("label, problem", [
    ("deployer.consul.tag", "unknown discovery label (did you mean 'deployer.consul.tags'?)"),
    ("deployer.consul_name", "unknown discovery label (did you mean 'deployer.consul.name'?)"),
    ("deployer.Drain", "unknown discovery label (did you mean 'deployer.drain'?)"),
    ("deployer.consul.meta", "unknown discovery label (known: " + ", ".join(DISCOVERY_LABELS) + ")"),
    ("deployer.team", None), ("deployer.domain", None), ("com.example.drain", None), ("deployer.drain", None),
])
def test_unknown_discovery_labels_are_refused_in_what_is_written_and_ignored_when_read(label, problem):
    assert [p.message for p in label_problems({label: "3s"})] == ([problem] if problem else [])
    if label != "deployer.drain":
        assert parse_labels({label: "3s"}) == Settings()  # a running container is read as it is


def test_the_grammar_is_defined_once_and_discovery_reads_through_it():
    for name in ("NAME_RE", "TAG_RE", "META_KEY_RE", "META_VALUE_RE", "valid_name", "valid_tag", "meta_ok"):
        assert getattr(catalog, name) is getattr(label_check, name), name
    assert label_settings.parse_labels is label_check.parse_labels
    assert label_settings.Settings is label_check.Settings
    assert catalog.valid_name("shop") and not catalog.valid_name(EVIL) and not catalog.valid_tag("a\nb")


# --- durations: the one grammar (deployer.values), through the labels and the config file ----


@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("1m30s", 90.0), ("2s", 2.0), ("1.5", 1.5), ("3", 3.0), ("1h", 3600.0), ("0.1s", 0.1),
])
def test_label_durations_are_go_durations_or_bare_seconds(text, seconds):
    settings = parse_labels({"deployer.consul.interval": text, "deployer.consul.timeout": text,
                             "deployer.consul.wait": text, "deployer.drain": text})
    assert (settings.interval, settings.timeout, settings.wait, settings.drain) == (seconds,) * 4


def test_label_duration_errors_name_the_label():
    for label in ("deployer.consul.interval", "deployer.consul.timeout", "deployer.consul.wait", "deployer.drain"):
        for bad in ("soon", "-1", "-1s", "1x", "", "1m30"):
            with pytest.raises(LabelError) as info:
                parse_labels({label: bad})
            assert info.value.label == label
            assert info.value.one_line().startswith(f"{label}: invalid {label}: "), info.value.one_line()
    with pytest.raises(LabelError, match="must be more than 0"):
        parse_labels({"deployer.consul.interval": "0s"})
    assert parse_labels({"deployer.drain": "0"}).drain == 0  # no drain at all is allowed


def test_no_labels_mean_the_defaults():
    assert parse_labels({}) == Settings()
    assert parse_labels({}).drain == DEFAULT_DRAIN


def test_config_file_durations_use_the_same_grammar(tmp_path):
    cfg = tmp_path / "watch.yml"
    cfg.write_text("consul: {address: 127.0.0.1:8500, blocking_wait: 1m30s, retry: {backoff: 250ms, max_backoff: 2}}\n"
                   "wait: {min: 1.5, max: 3s}\nsettle: 0.5\npoll_interval: 100ms\n"
                   "templates: [{source: a.j2, destination: a, command_timeout: 1m}]\n")
    c = load_config(cfg)
    assert (c.consul.blocking_wait, c.consul.backoff, c.consul.max_backoff) == (90.0, 0.25, 2.0)
    assert (c.wait_min, c.wait_max, c.settle, c.poll_interval) == (1.5, 3.0, 0.5, 0.1)
    assert c.templates[0].command_timeout == 60.0
    for text, fld in (("settle: soon\n", "settle"), ("wait: {min: -1s}\n", "wait.min"),
                      ("consul: {address: x, timeout: 5 s}\n", "consul.timeout")):
        cfg.write_text(text + "templates: [{source: a, destination: b}]\n")
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert info.value.field == fld and info.value.message.startswith(f"invalid {fld}: "), info.value.message
        assert info.value.line == 1


# --- published ports: from inspect data to the state the hooks get ---------------------------


def test_state_carries_the_published_ports_of_inspect():
    state = inspect(ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, {"HostIp": "::", "HostPort": "49153"}],
                           "53/udp": [{"HostIp": "", "HostPort": "5353"}], "9000/tcp": None,
                           "81/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}]})
    assert state.ports == {"80/tcp": [("0.0.0.0", 49153), ("::", 49153)], "53/udp": [("", 5353)], "9000/tcp": [],
                           "81/tcp": []}
    assert published_tcp_ports(state) == [(80, "0.0.0.0", 49153)]  # one per port, IPv4 preferred, TCP only
    assert inspect_to_state({"Id": "x"}).ports == {} and inspect_to_state({"Id": "x"}).healthcheck is None


def test_an_ipv6_only_binding_is_used_and_bracketed():
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect(ports={"80/tcp": [{"HostIp": "fd00::5", "HostPort": "8080"}]}))
    assert (reg.address, reg.port, reg.endpoint) == ("fd00::5", 8080, "[fd00::5]:8080")
    assert reg.check == {"tcp": "[fd00::5]:8080", "interval": "5s", "timeout": "2s", "name": "deployer tcp check"}


def test_check_durations_go_to_consul_as_go_durations():
    (reg,) = registrations("dc1", "n1", "10.0.0.5", inspect({"deployer.consul.interval": "1m30s",
                                                             "deployer.consul.timeout": "1.5"}))
    assert (reg.check["interval"], reg.check["timeout"]) == ("1m30s", "1500ms")
    assert reg.describe_check() == "tcp check 10.0.0.5:49153 every 1m30s"
    assert reg.wait == 3 * 90 + 1.5 + 5


def test_a_container_that_publishes_nothing_has_no_registration():
    assert registrations("dc1", "n1", "10.0.0.5", inspect(ports={})) == []
    assert registrations("dc1", "n1", "10.0.0.5", inspect_to_state({
        "Id": "c0ffee" * 10 + "abcd", "Config": {"Labels": {"deployer.service": "web"}}})) == []


# --- the deploy hooks: registration from the state the Applier hands them, no engine connection --


class _FakeConsul:
    """The few agent calls the hooks make, on a ConsulCatalog-shaped object (no HTTP)."""

    address = "fake:8500"

    def __init__(self, passing=True):
        self.services: dict[str, dict] = {}
        self.passing = passing
        self.calls: list[str] = []
        outer = self

        class Service:
            def register(self, name, service_id, address, port, tags, meta, check):
                outer.services[service_id] = {"Service": name, "Address": address, "Port": port, "Tags": tags,
                                              "Meta": meta, "Check": check}

            def deregister(self, service_id):
                outer.services.pop(service_id, None)

            def maintenance(self, service_id, enable, reason):
                outer.calls.append(f"maintenance {service_id}")

        class Agent:
            service = Service()

            def services(self):
                return dict(outer.services)

            def checks(self):
                return {}

        class Client:
            agent = Agent()

        self.client = Client()

    def call(self, what, fn):
        self.calls.append(what)
        return fn(self.client)

    def query(self, dep, index=None, wait=None):
        instances = [Instance(e["Service"], sid, "n1", e["Address"], e["Port"], status="passing")
                     for sid, e in self.services.items() if e["Service"] == dep.service and self.passing]
        return (index or 0) + 1, instances


def _hooks(monkeypatch, consul):
    import deployer.engine.connect as connect

    def refuse(*args, **kwargs):
        raise AssertionError("the hooks must not connect to the engine")

    monkeypatch.setattr(connect, "connect", refuse)
    dc = Datacenter("dc1", "datacenters/dc1", consul="fake:8500")
    node = Node("dc1", "n1", "ssh://ops@n1.example.com", "datacenters/dc1/n1", Location("x"), address="10.0.0.5")
    return ConsulHooks(dc, node, catalog=consul, sleep=lambda s: None)


def test_healthy_registers_the_new_containers_published_port_without_connecting(monkeypatch):
    consul = _FakeConsul()
    hooks = _hooks(monkeypatch, consul)
    spec = SimpleNamespace(dc="dc1", node="n1", service="web", image="web:2")
    new = inspect({"deployer.drain": "0s"}, ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}]})
    hooks.healthy(spec, new)
    (sid, entry), = consul.services.items()
    assert sid == "n1:c0ffeec0ffee:80" and (entry["Address"], entry["Port"]) == ("10.0.0.5", 32768)
    assert entry["Check"]["tcp"] == "10.0.0.5:32768"
    # retiring: out of the passing set, drained, deregistered; again from the state alone
    hooks.retiring(new)
    assert consul.services == {} and f"maintenance {sid}" in consul.calls


def test_healthy_fails_and_deregisters_when_the_consul_check_never_passes(monkeypatch):
    consul = _FakeConsul(passing=False)
    hooks = _hooks(monkeypatch, consul)
    spec = SimpleNamespace(dc="dc1", node="n1", service="web", image="web:2")
    with pytest.raises(HealthCheckFailed, match="did not pass within 0.2s"):
        hooks.healthy(spec, inspect({"deployer.consul.wait": "200ms"}))
    assert consul.services == {}


def test_discovery_errors_keep_their_messages_and_exit_codes():
    from deployer.errors import ConsulUnavailable, EnginesUnavailable

    err = LabelError("deployer.consul.port", "'http' is not a container port")
    assert (err.one_line(), err.exit_code) == ("deployer.consul.port: 'http' is not a container port", 3)
    down = EnginesUnavailable("node dc1/n1 (ssh://n1)", "connection refused")
    assert isinstance(down, ConsulUnavailable) and down.exit_code == 1
    assert down.one_line() == "node dc1/n1 (ssh://n1): connection refused"
