"""config.compose_spec: the container spec a service becomes, its hash, the node's volumes and networks.

Pure and fast: no Docker engine. docker-py is used only to check that the
generated keyword arguments are accepted (it builds the request bodies offline).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from deployer.config.compose_check import validate_compose
from deployer.config.compose_spec import container_name, container_spec, node_resources, start_order
from deployer.errors import ConfigError
from deployer.labels import LABEL_CONFIG, LABEL_CONFIG_HASH, LABEL_DC, LABEL_IMAGE, LABEL_NODE, LABEL_SERVICE
from deployer.spec import NetworkSpec, SecretFile, VolumeSpec
from tests.support.compose import (
    COMPOSE, NODE_DIR, SECRET_COMPOSE, api_client, load, make_node, node_repo, spec_of, write_secret,
)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with the node directory in it."""
    return node_repo(tmp_path)


def test_start_order():
    node = make_node("""
        services:
          web: {image: x, depends_on: [api, cache]}
          api: {image: x, depends_on: {db: {condition: service_healthy}}}
          db: {image: x}
          cache: {image: x}
          admin: {image: x}
          sidecar: {image: x, network_mode: "service:web"}
    """)
    assert start_order(node.services) == ["admin", "cache", "db", "api", "web", "sidecar"]


def test_start_order_survives_a_cycle():
    node = make_node("""
        services:
          b: {image: x, depends_on: [a]}
          a: {image: x, depends_on: [b]}
          c: {image: x}
    """)
    assert start_order(node.services) == ["c", "a", "b"]



def test_start_order_is_kept_by_shape_and_answers_as_a_fresh_walk():
    """The memo is keyed by names and dependencies: same shape, same answer; a change of either, a new one."""
    import random

    from deployer.config import compose_spec

    rng = random.Random(7)
    for _ in range(300):
        names = [f"s{i}" for i in range(rng.randint(1, 8))]
        rng.shuffle(names)
        lines = []
        for name in names:
            deps = rng.sample(names, rng.randint(0, min(3, len(names))))
            lines.append(f"  {name}: {{image: x, depends_on: [{', '.join(deps)}]}}" if deps else f"  {name}: {{image: x}}")
        node = make_node("services:\n" + "\n".join(lines) + "\n")
        compose_spec._ORDERS.clear()
        fresh = start_order(node.services)
        again = start_order(node.services)  # from the memo now
        assert again == fresh and sorted(fresh) == sorted(names)
        again.append("mutated")  # a caller's list is its own
        assert start_order(node.services) == fresh
        placed = {n: i for i, n in enumerate(fresh)}
        for name, svc in node.services.items():  # each after what it needs, unless caught in a cycle
            for dep in svc.config.get("depends_on") or []:
                if dep != name and placed[dep] > placed[name]:
                    assert not _acyclic(node.services), (fresh, name, dep)
    a = make_node("services:\n  web: {image: x, depends_on: [db]}\n  db: {image: x}\n")
    b = make_node("services:\n  web: {image: x}\n  db: {image: x, depends_on: [web]}\n")
    assert start_order(a.services) == ["db", "web"] and start_order(b.services) == ["web", "db"]


def _acyclic(services) -> bool:
    deps = {n: set(s.config.get("depends_on") or []) - {n} for n, s in services.items()}
    while deps:
        free = [n for n, d in deps.items() if not d & set(deps)]
        if not free:
            return False
        for n in free:
            del deps[n]
    return True

# --------------------------------------------------------------------------
# Secrets


def test_secret_spec(repo):
    path = write_secret(repo)
    (repo / ".gitignore").write_text("secrets/\n")
    spec = spec_of(SECRET_COMPOSE, "web", repo)
    digest = "82ba9d712d21dc7585dd6a1f29790679985547f009baee10ea2e3edd41ce957d"  # sha256 of "s3cret\n"
    assert spec.secrets == [
        SecretFile("db_password", str(path), "/run/secrets/db_password", digest, 0o444),
        SecretFile("db_password", str(path), "/run/secrets/pw", digest, 0o440),
    ]
    before = spec.config_hash()
    write_secret(repo, "rotated\n")
    assert spec_of(SECRET_COMPOSE, "web", repo).config_hash() != before



def test_a_secret_file_gone_after_validation_is_a_config_error(repo):
    path = write_secret(repo)
    (repo / ".gitignore").write_text("secrets/\n")
    assert validate_compose(load(SECRET_COMPOSE), COMPOSE, repo) == []
    node = make_node(SECRET_COMPOSE)
    path.unlink()
    with pytest.raises(ConfigError) as info:
        container_spec(node, node.services["web"], repo)
    assert info.value.render() == (
        f"{COMPOSE}: secrets.db_password.file: secret file {NODE_DIR}/secrets/db_password.txt does not exist"
    )


# --------------------------------------------------------------------------
# The container spec


RICH = """
    services:
      web:
        image: registry.example.com/web:1.2
        command: gunicorn -b 0.0.0.0:8000 "app:create()"
        entrypoint: ["/entry.sh"]
        user: "1000:1000"
        working_dir: /app
        hostname: web1
        environment:
          B: 2
          A: "x y"
          C: true
          FROM_SHELL:
        ports:
          - "127.0.0.1:8080:8000"
          - "5353:53/udp"
          - 9000
          - target: 443
            published: 8443
            host_ip: 0.0.0.0
        expose: ["7000", "7001/udp", 8000]
        volumes:
          - data:/var/lib/web
          - /etc/ssl/certs:/etc/ssl/certs:ro
          - type: volume
            source: shared
            target: /shared
            read_only: true
          - type: tmpfs
            target: /cache
            tmpfs: {size: 64m}
        tmpfs: [/run]
        healthcheck:
          test: ["CMD-SHELL", "curl -f http://localhost:8000/ || exit 1"]
          interval: 1m30s
          timeout: 500ms
          retries: 3
          start_period: 10s
        restart: on-failure:5
        mem_limit: 1.5g
        shm_size: 64m
        cpus: 0.5
        logging:
          driver: json-file
          options: {max-size: 10m, max-file: 3}
        networks:
          front:
            aliases: [www, web]
          back:
        labels: {team: web, tier: 1}
        cap_add: [NET_ADMIN, SYS_TIME]
        cap_drop: [ALL]
        extra_hosts: {db.local: 10.0.0.5}
        dns: [10.0.0.2, 10.0.0.3]
        stop_signal: SIGQUIT
        stop_grace_period: 1m
        init: true
        read_only: true
        depends_on: [db]
      db:
        image: postgres:16
    volumes:
      data:
      shared:
        external: true
    networks:
      front:
      back:
        name: shared-back
        external: true
"""


def test_rich_container_spec():
    spec = spec_of(RICH, "web", Path("/repo"), environ={"FROM_SHELL": "hello"})
    assert (spec.dc, spec.node, spec.service, spec.name, spec.image) == (
        "dc1", "n1", "web", "n1-web", "registry.example.com/web:1.2",
    )  # fmt: skip
    assert spec.create == {
        "command": ["gunicorn", "-b", "0.0.0.0:8000", "app:create()"],
        "entrypoint": ["/entry.sh"],
        "environment": ["A=x y", "B=2", "C=true", "FROM_SHELL=hello"],
        "user": "1000:1000",
        "working_dir": "/app",
        "hostname": "web1",
        "ports": [(53, "udp"), 443, 7000, (7001, "udp"), 8000, 9000],
        "healthcheck": {
            "Test": ["CMD-SHELL", "curl -f http://localhost:8000/ || exit 1"],
            "Interval": 90_000_000_000,
            "Timeout": 500_000_000,
            "Retries": 3,
            "StartPeriod": 10_000_000_000,
        },
        "stop_signal": "SIGQUIT",
        "stop_timeout": 60,
    }
    assert spec.host == {
        "port_bindings": {
            "53/udp": [("", 5353)],
            "443/tcp": [("0.0.0.0", 8443)],
            "8000/tcp": [("127.0.0.1", 8080)],
            "9000/tcp": [("", None)],
        },
        "binds": [
            "/etc/ssl/certs:/etc/ssl/certs:ro",
            "shared:/shared:ro",
            "n1_data:/var/lib/web:rw",
        ],
        # long-syntax tmpfs is a Mount, as Docker Compose v2 makes it (read_only and mode are honoured)
        "mounts": [{"Type": "tmpfs", "Target": "/cache", "ReadOnly": False, "TmpfsOptions": {"SizeBytes": 67_108_864}}],
        "tmpfs": {"/run": ""},
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 5},
        "cap_add": ["NET_ADMIN", "SYS_TIME"],
        "cap_drop": ["ALL"],
        "mem_limit": 1_610_612_736,
        "shm_size": 67_108_864,
        "nano_cpus": 500_000_000,
        "log_config": {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}},
        "init": True,
        "read_only": True,
        "extra_hosts": ["db.local:10.0.0.5"],
        "dns": ["10.0.0.2", "10.0.0.3"],
        "network_mode": "shared-back",  # the first network, as compose does: no default bridge besides
    }
    assert spec.networks == [("shared-back", ["web"]), ("n1_front", ["web", "www"])]
    assert spec.ipv4_addresses == {}
    assert spec.labels == {
        "team": "web",
        "tier": "1",
        LABEL_DC: "dc1",
        LABEL_NODE: "n1",
        LABEL_SERVICE: "web",
        LABEL_IMAGE: "registry.example.com/web:1.2",
    }
    assert spec.secrets == []
    assert spec.stop_timeout == 60
    assert spec.has_healthcheck is True
    assert spec.published_ports is True
    assert set(spec.all_labels()) == set(spec.labels) | {LABEL_CONFIG_HASH, LABEL_CONFIG}
    json.dumps(asdict(spec))  # serializable without help


def test_minimal_container_spec_joins_the_default_network():
    spec = spec_of("services:\n  app:\n    image: app:1\n", "app", Path("/repo"))
    assert spec.name == "n1-app"
    assert spec.create == {"stop_timeout": 10}
    assert spec.host == {"network_mode": "n1_default"}
    assert spec.networks == [("n1_default", ["app"])]
    assert (spec.has_healthcheck, spec.published_ports) == (False, False)


def test_docker_py_accepts_the_host_config():
    spec = spec_of(RICH, "web", Path("/repo"), environ={"FROM_SHELL": "hello"})
    host_config = api_client().create_host_config(**spec.host)
    assert host_config["PortBindings"] == {
        "53/udp": [{"HostIp": "", "HostPort": "5353"}],
        "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8443"}],
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
        "9000/tcp": [{"HostIp": "", "HostPort": ""}],
    }
    assert host_config["Binds"] == spec.host["binds"]
    assert host_config["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert host_config["Memory"] == 1_610_612_736
    assert host_config["ShmSize"] == 67_108_864
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Tmpfs"] == {"/run": ""}
    assert host_config["Mounts"] == spec.host["mounts"]
    assert host_config["ExtraHosts"] == ["db.local:10.0.0.5"]
    assert host_config["Dns"] == ["10.0.0.2", "10.0.0.3"]
    assert host_config["CapAdd"] == ["NET_ADMIN", "SYS_TIME"]
    assert host_config["CapDrop"] == ["ALL"]
    assert (host_config["Init"], host_config["ReadonlyRootfs"]) == (True, True)
    assert host_config["NetworkMode"] == "shared-back"


def test_docker_py_accepts_the_create_arguments():
    spec = spec_of(RICH, "web", Path("/repo"), environ={"FROM_SHELL": "hello"})
    config = api_client().create_container_config(spec.image, **{"command": None, **spec.create})
    assert config["ExposedPorts"] == {
        "53/udp": {}, "443/tcp": {}, "7000/tcp": {}, "7001/udp": {}, "8000/tcp": {}, "9000/tcp": {},
    }  # fmt: skip
    assert config["Healthcheck"] == spec.create["healthcheck"]
    assert config["Cmd"] == ["gunicorn", "-b", "0.0.0.0:8000", "app:create()"]
    assert config["Env"] == ["A=x y", "B=2", "C=true", "FROM_SHELL=hello"]
    assert (config["StopTimeout"], config["StopSignal"], config["User"]) == (60, "SIGQUIT", "1000:1000")


def test_network_mode_and_static_addresses():
    text = """
        services:
          vpn:
            image: vpn
            container_name: the-vpn
          app:
            image: app
            network_mode: "service:vpn"
          host:
            image: h
            network_mode: host
          static:
            image: s
            networks:
              lan:
                ipv4_address: 192.168.1.20
        networks:
          lan:
            external: true
    """
    node = make_node(text)
    assert validate_compose(load(text), COMPOSE, Path("/repo")) == []
    app = container_spec(node, node.services["app"], Path("/repo"))
    assert (app.host["network_mode"], app.networks) == ("container:the-vpn", [])
    host = container_spec(node, node.services["host"], Path("/repo"))
    assert (host.host["network_mode"], host.networks) == ("host", [])
    static = container_spec(node, node.services["static"], Path("/repo"))
    assert static.networks == [("lan", ["static"])]
    assert static.ipv4_addresses == {"lan": "192.168.1.20"}
    assert api_client().create_host_config(**app.host)["NetworkMode"] == "container:the-vpn"


def test_healthcheck_disabled_and_inherited():
    text = """
        services:
          off:
            image: x
            healthcheck: {disable: true}
          none:
            image: x
            healthcheck: {test: [NONE]}
          tune:
            image: x
            healthcheck: {interval: 5s}
          shell:
            image: x
            healthcheck: {test: "pg_isready -U app"}
    """
    node = make_node(text)
    assert validate_compose(load(text), COMPOSE, Path("/repo")) == []
    specs = {n: container_spec(node, s, Path("/repo")) for n, s in node.services.items()}
    assert specs["off"].create["healthcheck"] == {"Test": ["NONE"]}
    assert specs["none"].create["healthcheck"] == {"Test": ["NONE"]}
    assert specs["tune"].create["healthcheck"] == {"Interval": 5_000_000_000}  # the image's test stays
    assert specs["shell"].create["healthcheck"] == {"Test": ["CMD-SHELL", "pg_isready -U app"]}
    assert [specs[n].has_healthcheck for n in ("off", "none", "tune", "shell")] == [False, False, False, True]


def test_restart_policies_in_the_spec():
    def policy(restart: str):
        return spec_of(f"services:\n  a:\n    image: x\n    restart: {restart}\n", "a", Path("/r")).host.get("restart_policy")

    assert policy("no") is None
    assert policy("always") == {"Name": "always"}
    assert policy("unless-stopped") == {"Name": "unless-stopped"}
    assert policy("on-failure") == {"Name": "on-failure", "MaximumRetryCount": 0}


def test_environment_list_form_and_port_ranges():
    spec = spec_of("""
        services:
          a:
            image: x
            environment: ["Z=1", "A=a=b", "Z=2", "EMPTY="]
            ports: ["8000-8001:80-81/udp"]
            container_name: custom
    """, "a", Path("/r"))
    assert spec.name == "custom"
    assert spec.create["environment"] == ["A=a=b", "EMPTY=", "Z=2"]
    assert spec.host["port_bindings"] == {"80/udp": [("", 8000)], "81/udp": [("", 8001)]}
    assert spec.create["ports"] == [(80, "udp"), (81, "udp")]


# --------------------------------------------------------------------------
# Hash stability


def test_config_hash_is_stable_and_sensitive():
    first = spec_of(RICH, "web", Path("/repo"), environ={"FROM_SHELL": "hello"}).config_hash()
    assert spec_of(RICH, "web", Path("/repo"), environ={"FROM_SHELL": "hello"}).config_hash() == first
    assert len(first) == 16
    changed = RICH.replace('A: "x y"', 'A: "x z"')
    assert spec_of(changed, "web", Path("/repo"), environ={"FROM_SHELL": "hello"}).config_hash() != first


def test_config_hash_ignores_order_that_does_not_matter():
    a = """
        services:
          s:
            image: x
            environment: {A: 1, B: 2}
            cap_add: [NET_ADMIN, SYS_TIME]
            ports: ["81:81", "80:80"]
            networks: [one, two]
            labels: [x=1, y=2]
        networks: {one: , two: }
    """
    b = """
        services:
          s:
            labels: [y=2, x=1]
            networks: [two, one]
            ports: ["80:80", "81:81"]
            cap_add: [SYS_TIME, NET_ADMIN]
            environment: ["B=2", "A=1"]
            image: x
        networks: {two: , one: }
    """
    assert spec_of(a, "s", Path("/r")).config_hash() == spec_of(b, "s", Path("/r")).config_hash()


def test_config_json_label_hides_values_but_shows_changes(repo):
    write_secret(repo)
    text = SECRET_COMPOSE.replace("        image: nginx\n", "        image: nginx\n        environment: {DB_PASSWORD: hunter2, MODE: prod}\n")
    spec = spec_of(text, "web", repo)
    recorded = spec.all_labels()[LABEL_CONFIG]
    assert recorded == spec.config_json()
    assert "hunter2" not in recorded and spec.secrets[0].sha256 not in recorded and str(repo) not in recorded
    data = json.loads(recorded)
    assert [e.split("=")[0] for e in data["create"]["environment"]] == ["DB_PASSWORD", "MODE"]
    assert data["image"] == "nginx" and data["name"] == "n1-web"
    changed = spec_of(text.replace("hunter2", "hunter3"), "web", repo)
    new = json.loads(changed.config_json())
    assert new["create"]["environment"][0] != data["create"]["environment"][0]
    assert new["create"]["environment"][1] == data["create"]["environment"][1]
    write_secret(repo, "rotated\n")
    assert json.loads(spec_of(text, "web", repo).config_json())["secrets"] != data["secrets"]


def test_hash_does_not_depend_on_where_the_checkout_is(tmp_path):
    hashes = []
    for where in ("one", "two"):
        root = tmp_path / where
        (root / NODE_DIR).mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        write_secret(root)
        hashes.append(spec_of(SECRET_COMPOSE, "web", root).config_hash())
    assert hashes[0] == hashes[1]


def test_container_name():
    node = make_node("""
        services:
          a: {image: x}
          b: {image: y, container_name: fixed}
    """)
    assert container_name(node, node.services["a"]) == "n1-a"
    assert container_name(node, node.services["b"]) == "fixed"


# --------------------------------------------------------------------------
# Node resources and plain data


def test_node_resources():
    node = make_node("""
        services:
          a: {image: x, volumes: ["data:/d"]}
          b: {image: y, networks: [front]}
        volumes:
          data:
          tuned:
            driver: local
            driver_opts: {type: tmpfs, device: tmpfs, o: "size=100m"}
            labels: {purpose: scratch}
          old:
            external: true
          renamed:
            name: legacy_volume
        networks:
          front:
            internal: true
            driver_opts: {com.docker.network.bridge.enable_icc: false}
          shared:
            external: true
            name: corp-net
    """)
    identity = {LABEL_DC: "dc1", LABEL_NODE: "n1"}
    volumes, networks = node_resources(node)
    assert volumes == [
        VolumeSpec("n1_data", labels=identity),
        VolumeSpec("old", labels={}, external=True),
        VolumeSpec("legacy_volume", labels=identity),
        VolumeSpec(
            "n1_tuned",
            driver_opts={"device": "tmpfs", "o": "size=100m", "type": "tmpfs"},
            labels={"purpose": "scratch", **identity},
        ),
    ]
    assert networks == [
        NetworkSpec("n1_default", labels=identity),
        NetworkSpec("n1_front", options={"com.docker.network.bridge.enable_icc": "false"}, internal=True, labels=identity),
        NetworkSpec("corp-net", labels={}, external=True),
    ]


def test_no_default_network_when_nobody_uses_it():
    node = make_node("""
        services:
          a: {image: x, networks: [front]}
          b: {image: y, network_mode: host}
        networks:
          front:
    """)
    assert [n.name for n in node_resources(node)[1]] == ["n1_front"]


# --------------------------------------------------------------------------
# Details


def test_selinux_relabel_options_are_kept_on_binds():
    spec = spec_of("""
        services:
          web:
            image: x
            volumes: ["data:/d:z", "/etc/app:/etc/app:ro,Z", "/srv:/srv"]
        volumes:
          data:
    """, "web", Path("/r"))
    assert spec.host["binds"] == ["n1_data:/d:rw,z", "/etc/app:/etc/app:ro,Z", "/srv:/srv:rw"]


@pytest.mark.parametrize("grace, timeout", [("1500ms", 2), ("1m", 60), ('"0"', 0), ("1ns", 1), ("2h", 7200)])
def test_stop_grace_period_rounds_up_to_whole_seconds(grace, timeout):
    spec = spec_of(f"services:\n  web:\n    image: x\n    stop_grace_period: {grace}\n", "web", Path("/r"))
    assert spec.stop_timeout == timeout and spec.create["stop_timeout"] == timeout


def test_healthcheck_durations_are_exact_nanoseconds():
    spec = spec_of("""
        services:
          web:
            image: x
            healthcheck: {interval: 0.1s, timeout: 1m0.5s, start_period: 1h}
    """, "web", Path("/r"))
    assert spec.create["healthcheck"] == {"Interval": 100_000_000, "Timeout": 60_500_000_000, "StartPeriod": 3600 * 10**9}


def test_environment_values_as_the_engine_gets_them():
    spec = spec_of("""
        services:
          web:
            image: x
            environment: {F: 1.5, B: false, N: 2, E: "", FROM_SHELL: }
            labels: [a=1, b]
    """, "web", Path("/r"), environ={"FROM_SHELL": "here"})
    assert spec.create["environment"] == ["B=false", "E=", "F=1.5", "FROM_SHELL=here", "N=2"]
    assert spec.labels["a"] == "1" and spec.labels["b"] == ""


def test_environment_entry_without_value_never_reads_the_shell(monkeypatch):
    """A name without a value is the repository's variable; one the repository lacks is refused, os.environ unread."""
    monkeypatch.setenv("FROM_SHELL", "operator")
    text = """
        services:
          web:
            image: x
            environment: [FROM_SHELL]
    """
    with pytest.raises(ConfigError, match="sets no variable FROM_SHELL"):
        spec_of(text, "web", Path("/r"))
    assert spec_of(text, "web", Path("/r"), environ={"FROM_SHELL": "repo"}).create["environment"] == ["FROM_SHELL=repo"]
