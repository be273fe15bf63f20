"""``deployer validate`` and the commands that change containers refuse the same content with the same line.

One entry point: ``config.loader.check`` is what ``validate`` runs, and ``loader.load`` (what deploy,
rollback, apply, plan and status start with) is ``check`` raising ValidationFailed; the edited compose
text a deploy writes goes through the same compose check (``loader.with_compose_text``). The discovery
labels' grammar lives in ``config.label_check``; the deploy hooks' guard (``check_node_labels``) and the
registrator's reading of a running container (``registrations``) use it too, so each bad label below is
refused everywhere with the same message. No Docker, no Consul: every refusal happens before either is
reached.
"""

from __future__ import annotations

import pytest

from deployer.config import loader
from deployer.config.label_check import Settings, label_problems, parse_labels
from deployer.discovery.label_settings import check_node_labels, compose_labels
from deployer.discovery.registration import registrations
from deployer.engine.state import inspect_to_state
from deployer.errors import ConfigError, LabelError, ValidationFailed
from deployer.labels import DISCOVERY_LABELS
from deployer.model import Location, Node, Service
from deployer.ops.deploy import Deployer
from tests.support.repos import cli, make_repo

COMPOSE = "datacenters/dc1/n1/docker-compose.yml"
EVIL = "x; } server { listen 81; }"

# (label, the YAML value written, the message every command gives). The first four are the ones
# `validate` passed and `deploy` refused before.
BAD_LABELS = [
    ("deployer.consul.name", f'"{EVIL}"',
     f"unsafe service name {EVIL!r}: use letters, digits, '.', '_' and '-' (at most 128, starting with a letter "
     "or digit)"),
    ("deployer.consul.tags", '"a,b\\nc"', "unsafe tag 'b\\nc': no spaces, quotes, ';', '{', '}', '$', '#'"),
    ("deployer.consul.check", '"http:/$(touch f)"', "'http:/$(touch f)': write http:/path (a URL path without spaces)"),
    ("deployer.drain", "-5s", "invalid deployer.drain: must not be negative, got '-5s'"),
    ("deployer.consul.register", "maybe", "'maybe' is not true or false"),
    ("deployer.consul.check", "grpc", "'grpc': write http:/path, tcp or none"),
    ("deployer.consul.interval", "0s", "must be more than 0"),
    ("deployer.consul.timeout", "soon", "invalid deployer.consul.timeout: invalid duration 'soon': write seconds or "
                                        "a duration like 250ms, 2s, 1m30s"),
    ("deployer.consul.wait", '"-1"', "invalid deployer.consul.wait: must not be negative, got '-1'"),
    ("deployer.consul.port", "http", "'http' is not a container port"),
    ("deployer.consul.tag", "blue", "unknown discovery label (did you mean 'deployer.consul.tags'?)"),
    ("deployer.drian", "3s", "unknown discovery label (did you mean 'deployer.drain'?)"),
]
ISSUE_CASES = BAD_LABELS[:4]


def compose(labels: str = "", image: str = "nginx:1.25", name: str = "web", extra: str = "") -> str:
    return (f"services:\n  {name}:\n    image: {image}\n    ports: [\"8080:80\"]\n{extra}"
            + (f"    labels:\n{labels}" if labels else ""))


def repo(tmp_path, text: str):
    """A committed repository: dc1 names a Consul (nothing listens: every refusal must come first)."""
    root, _ = make_repo(tmp_path / "infra", "unix:///nonexistent/docker.sock", text, dc="dc1", node="n1",
                        extra_files={"datacenters/dc1/datacenter.yml": "consul: 127.0.0.1:1\n"})
    return root


def refusals(root) -> dict[str, list[str]]:
    """The lines each entry point refuses the repository with (``validate`` prints them, one a line)."""
    out = {}
    result = cli(root, "validate")
    assert result.exit_code == 3, result.output
    out["validate"] = result.stdout.splitlines()
    json_result = cli(root, "validate", "--json")
    assert json_result.exit_code == 3
    _, problems = loader.check(root)
    out["check"] = [p.render() for p in problems]
    for what, call in (("load", lambda: loader.load(root)),
                       ("deploy", lambda: Deployer(root).deploy("nginx:1.26", "dc1/n1")),
                       ("rollback", lambda: Deployer(root).rollback("dc1/n1/web")),
                       ("apply", lambda: Deployer(root).apply()),
                       ("plan", lambda: Deployer(root).plan()),
                       ("status", lambda: Deployer(root).status())):
        with pytest.raises(ValidationFailed) as info:
            call()
        out[what] = [p.render() for p in info.value.problems]
    deploy_cli = cli(root, "deploy", "nginx:1.26", "dc1/n1")
    assert deploy_cli.exit_code == 3
    out["deploy (cli)"] = [deploy_cli.stderr.strip().removeprefix("error: ").split(" (and ")[0]]
    return out


def assert_refused_everywhere(root, lines: list[str]) -> None:
    seen = refusals(root)
    for what, got in seen.items():
        expected = lines[:1] if what == "deploy (cli)" else lines
        assert got == expected, f"{what}: {got}"


@pytest.mark.parametrize("label, value, message", BAD_LABELS, ids=[f"{c[0]}={c[1]}" for c in BAD_LABELS])
def test_a_bad_label_is_refused_by_validate_and_by_every_command_with_one_line(tmp_path, label, value, message):
    root = repo(tmp_path, compose(f"      {label}: {value}\n"))
    assert_refused_everywhere(root, [f"{COMPOSE}:6: services.web.labels.{label}: {message}"])


@pytest.mark.parametrize("label, value, message", BAD_LABELS, ids=[f"{c[0]}={c[1]}" for c in BAD_LABELS])
def test_discovery_refuses_each_bad_label_with_the_same_message(label, value, message):
    """The deploy hooks' guard and the registrator's reading of a running container say the same."""
    text = value.strip('"').replace("\\n", "\n")
    node = Node("dc1", "n1", "unix:///x.sock", "datacenters/dc1/n1", Location("x"), compose_path=COMPOSE)
    node.services["web"] = Service("dc1", "n1", "web", "nginx:1.25", {"image": "nginx:1.25", "labels": {label: text}},
                                   Location(COMPOSE))
    with pytest.raises(ConfigError) as info:
        check_node_labels(node)
    assert info.value.render() == f"{COMPOSE}: services.web.labels.{label}: {message}"
    assert [p.one_line() for p in label_problems({label: text})] == [" ".join(f"{label}: {message}".split())]
    state = inspect_to_state({"Id": "c" * 64, "Config": {"Labels": {"deployer.service": "web", label: text}},
                              "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}}})
    if label in DISCOVERY_LABELS:  # a running container is read as it is: unknown labels are not its problem
        with pytest.raises(LabelError) as read:
            registrations("dc1", "n1", "10.0.0.5", state)
        assert (read.value.label, read.value.message) == (label, message)


def test_every_label_discovery_reads_has_a_refused_case():
    assert set(DISCOVERY_LABELS) <= {label for label, _, _ in BAD_LABELS}
    assert [c[0] for c in ISSUE_CASES] == ["deployer.consul.name", "deployer.consul.tags", "deployer.consul.check",
                                           "deployer.drain"]


def test_every_bad_label_of_a_service_is_reported_at_its_own_line(tmp_path):
    labels = "".join(f"      {label}: {value}\n" for label, value, _ in ISSUE_CASES)
    root = repo(tmp_path, compose(labels))
    assert_refused_everywhere(root, [f"{COMPOSE}:{6 + i}: services.web.labels.{label}: {message}"
                                     for i, (label, _, message) in enumerate(ISSUE_CASES)])


def test_list_form_labels_are_refused_at_their_item(tmp_path):
    root = repo(tmp_path, compose('      - "deployer.consul.check=tcp"\n      - "deployer.drain=-5s"\n'))
    assert_refused_everywhere(root, [f"{COMPOSE}:7: services.web.labels.deployer.drain: "
                                     "invalid deployer.drain: must not be negative, got '-5s'"])
    # written twice: the later entry is what the container gets, and what is checked
    (root / COMPOSE).write_text(compose('      - "deployer.drain=-5s"\n      - "deployer.drain=1s"\n'))
    assert cli(root, "validate").exit_code == 0
    (root / COMPOSE).write_text(compose('      - "deployer.drain=1s"\n      - "deployer.drain=-5s"\n'))
    assert cli(root, "validate").stdout.splitlines() == [
        f"{COMPOSE}:7: services.web.labels.deployer.drain: invalid deployer.drain: must not be negative, got '-5s'"]


def test_an_image_the_engine_cannot_pull_by_name_is_refused_everywhere(tmp_path):
    root = repo(tmp_path, compose(image="Nginx:1.25"))
    assert_refused_everywhere(root, [f"{COMPOSE}:3: services.web.image: invalid image reference 'Nginx:1.25': "
                                     "repository name must be lowercase"])


def test_a_service_name_consul_cannot_take_needs_a_consul_name(tmp_path):
    long = "w" * 129
    root = repo(tmp_path, compose(name=long))
    with pytest.raises(ValidationFailed) as info:
        loader.load(root)
    assert [p.render() for p in info.value.problems] == [
        f"{COMPOSE}:2: services.{long}: service name {long!r} cannot be a Consul service name; "
        "set deployer.consul.name"]
    assert cli(root, "validate").stdout.splitlines() == [p.render() for p in info.value.problems]
    for labels in ("      deployer.consul.name: web\n", '      deployer.consul.register: "false"\n'):
        (root / COMPOSE).write_text(compose(labels, name=long))
        assert cli(root, "validate").exit_code == 0


def test_one_name_per_published_port_must_fit_consul_as_registration_names_it(tmp_path):
    base = "w" * 125  # w...-80 fits in 128 characters, w...-443 does not
    text = compose(f"      deployer.consul.name: {base}\n").replace('["8080:80"]', '["8080:80", "8443:443"]')
    root = repo(tmp_path, text)
    message = (f"Consul service name '{base}-443' (one per published port) is too long; set a shorter "
               "deployer.consul.name or pick one port with deployer.consul.port")
    assert_refused_everywhere(root, [f"{COMPOSE}:2: services.web: {message}"])
    state = inspect_to_state({"Id": "c" * 64, "Config": {"Labels": {"deployer.service": "web",
                                                                    "deployer.consul.name": base}},
                              "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                                                            "443/tcp": [{"HostIp": "", "HostPort": "8443"}]}}})
    with pytest.raises(LabelError, match="is too long"):
        registrations("dc1", "n1", "10.0.0.5", state)  # what the registration would have refused after the start
    (root / COMPOSE).write_text(text.replace("labels:\n", "labels:\n      deployer.consul.port: \"443\"\n"))
    assert cli(root, "validate").exit_code == 0


VALID = """\
      deployer.consul.name: shop
      deployer.consul.tags: "public,v1"
      deployer.consul.check: http:/health
      deployer.consul.interval: 2s
      deployer.consul.timeout: 1s
      deployer.consul.port: "80"
      deployer.consul.wait: 30s
      deployer.consul.register: true
      deployer.drain: 0
      deployer.team: payments
      com.example.owner: ops
"""


def test_valid_labels_still_pass_and_say_what_they_said(tmp_path):
    root = repo(tmp_path, compose(VALID))
    result = cli(root, "validate")
    assert (result.exit_code, result.stdout) == (0, "ok: 1 datacenters, 1 nodes, 1 containers\n")
    svc = loader.load(root).node("dc1", "n1").services["web"]
    check_node_labels(loader.load(root).node("dc1", "n1"))
    assert parse_labels(compose_labels(svc.config)) == Settings(
        register=True, name="shop", tags=("public", "v1"), check="http:/health", interval=2.0, timeout=1.0,
        port=80, wait=30.0, drain=0.0)
    listed = "".join(f'      - "{line.strip().replace(": ", "=", 1)}"\n' for line in VALID.splitlines())
    (root / COMPOSE).write_text(compose(listed.replace('"public,v1"', "public,v1").replace('="80"', "=80")))
    assert cli(root, "validate").exit_code == 0


def test_a_node_address_no_registration_can_carry_is_refused_everywhere(tmp_path):
    """The registration refused it only after the new container had started; now nothing starts."""
    root = repo(tmp_path, compose())
    node_yml = root / "datacenters/dc1/n1/node.yml"
    node_yml.write_text("docker: unix:///nonexistent/docker.sock\naddress: \"1.2.3.4; evil\"\n")
    assert_refused_everywhere(root, ["datacenters/dc1/n1/node.yml:2: address: invalid address '1.2.3.4; evil': "
                                     "write the IP address or host name other hosts reach the node's published "
                                     "ports at"])
    state = inspect_to_state({"Id": "c" * 64, "Config": {"Labels": {"deployer.service": "web"}},
                              "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}}})
    with pytest.raises(LabelError, match="is not an IP address or host name"):
        registrations("dc1", "n1", "1.2.3.4; evil", state)
    for good in ("10.0.0.5", "web1.example.com", "fd00::5", "localhost"):
        node_yml.write_text(f"docker: unix:///nonexistent/docker.sock\naddress: \"{good}\"\n")
        assert cli(root, "validate").exit_code == 0, good
        assert registrations("dc1", "n1", good, state)[0].address == good


def test_a_deploy_that_adds_a_service_runs_the_node_wide_checks_validate_runs(tmp_path):
    """The edited compose text goes through what ``check`` runs on a node, the container names included."""
    text = compose().replace("    image: nginx:1.25\n", "    image: nginx:1.25\n    container_name: n1-api\n")
    root = repo(tmp_path, text)
    with pytest.raises(ValidationFailed) as info:
        Deployer(root, consul=False).deploy("registry.example.com/api:1", "dc1/n1", service="api")
    assert [p.render() for p in info.value.problems] == [
        f"{COMPOSE}: services.api.container_name: container name 'n1-api' is also used by service 'web'"]
    assert (root / COMPOSE).read_text() == text  # nothing written
    (root / COMPOSE).write_text(text + "  api:\n    image: registry.example.com/api:1\n")
    assert cli(root, "validate").stdout.splitlines() == [
        f"{COMPOSE}:6: services.api.container_name: container name 'n1-api' is also used by service 'web'"]
