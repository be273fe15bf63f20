"""config.compose_check (and compose_check_service): every problem in a compose file, with file:line.

Pure and fast: no Docker engine; the secret checks run git on temporary repositories.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.config.compose_check import validate_compose
from deployer.config.compose_keys import parse_port, to_plain
from deployer.errors import ConfigError
from tests.support.compose import (
    COMPOSE, NODE_DIR, SECRET_COMPOSE, git, load, node_repo, one_problem, problems, write_secret,
)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with the node directory in it."""
    return node_repo(tmp_path)


# --------------------------------------------------------------------------
# Validation: top level and unknown keys


def test_minimal_file_is_valid():
    assert problems("""
        version: "3.8"
        name: ignored
        x-anything: {whatever: [1, 2]}
        services:
          web:
            image: nginx:1.25
            x-note: extension keys are allowed in services
    """) == []


def test_unknown_top_level_key():
    assert one_problem("""
        services:
          web:
            image: nginx
        foo: 1
    """) == f"{COMPOSE}:5: foo: unsupported key 'foo'"


def test_a_config_file_that_does_not_exist_is_named():
    assert one_problem("""
        services:
          web: {image: nginx}
        configs:
          c: {file: x}
    """) == f"{COMPOSE}:5: configs.c.file: config file {NODE_DIR}/x does not exist"


def test_missing_services_and_not_a_mapping():
    assert problems("volumes: {}\n") == [f"{COMPOSE}:1: missing required key 'services'"]
    assert problems("- a\n") == [f"{COMPOSE}:1: a compose file must be a mapping with a 'services' key, not a list"]
    assert problems("services: [web]\n") == [f"{COMPOSE}:1: services: must be a mapping, not a list"]


def test_unknown_service_key_names_it_with_a_suggestion():
    assert one_problem("""
        services:
          web:
            image: nginx
            privilegd: true
    """) == f"{COMPOSE}:5: services.web.privilegd: unsupported key 'privilegd' (did you mean 'privileged'?)"


def test_well_known_unsupported_keys_say_why():
    assert problems("""
        services:
          web:
            image: nginx
            links: [db]
    """) == [
        f"{COMPOSE}:5: services.web.links: unsupported key 'links': services on a shared network reach each other by service name (add an alias under networks)",
    ]


def test_every_problem_is_reported_in_line_order():
    found = problems("""
        services:
          web:
            image: nginx
            restart: sometimes
            ports: ["99999"]
            bogus: 1
          db:
            cpus: -1
        stuff: 2
    """)
    assert found == [
        f"{COMPOSE}:5: services.web.restart: invalid restart policy 'sometimes': use no, always, on-failure[:N] or unless-stopped",
        f"{COMPOSE}:6: services.web.ports[0]: container port 99999 is out of range 1-65535",
        f"{COMPOSE}:7: services.web.bogus: unsupported key 'bogus'",
        f"{COMPOSE}:8: services.db: missing required key 'image'",
        f"{COMPOSE}:9: services.db.cpus: must be a number greater than 0, got -1",
        f"{COMPOSE}:10: stuff: unsupported key 'stuff'",
    ]


def test_errors_are_config_errors_with_line_and_field():
    (err,) = validate_compose(load("services:\n  web:\n    image: nginx\n    init: yes\n"), COMPOSE, Path("/x"))
    assert isinstance(err, ConfigError)
    assert (err.path, err.line, err.field, err.message) == (
        COMPOSE,
        4,
        "services.web.init",
        "must be true or false, not a string",
    )


def test_image_required_and_build_only_beside_it():
    assert problems("""
        services:
          a:
            build: .
          b:
            image: "my image"
          c:
            image: app:1
            build:
              context: ./app
              dockerfile: Dockerfile
              args: {VERSION: 1}
              target: prod
              cache_from: [app:cache]
              labels: {team: a}
              network: host
              shm_size: 2g
              no_cache: yes-please
              tagz: [x]
    """) == [
        f"{COMPOSE}:3: services.a: missing required key 'image': the deployer never builds, 'build' is allowed only beside 'image'",
        f"{COMPOSE}:6: services.b.image: invalid image reference 'my image': it contains whitespace",
        f"{COMPOSE}:18: services.c.build.no_cache: must be true or false, not a string",
        f"{COMPOSE}:19: services.c.build.tagz: unsupported key 'tagz'",
    ]


def test_merge_keys_from_extensions_are_validated():
    assert problems("""
        x-base: &base
          restart: always
          mem_limit: lots
        services:
          web:
            <<: *base
            image: nginx
    """) == [f"{COMPOSE}:6: services.web.mem_limit: invalid size 'lots': write bytes or a number with a unit b, k, m, g, like '512m'"]


# --------------------------------------------------------------------------
# Ports


@pytest.mark.parametrize(
    "port, expected",
    [
        ("80", [(80, "tcp", "", None)]),
        (80, [(80, "tcp", "", None)]),
        ("8080:80", [(80, "tcp", "", 8080)]),
        ("127.0.0.1:8080:80", [(80, "tcp", "127.0.0.1", 8080)]),
        ("127.0.0.1::80", [(80, "tcp", "127.0.0.1", None)]),
        ("127.0.0.1:0:80", [(80, "tcp", "127.0.0.1", None)]),
        ("8080:80/udp", [(80, "udp", "", 8080)]),
        ("[::1]:8080:80", [(80, "tcp", "::1", 8080)]),
        ("8000-8001:80-81", [(80, "tcp", "", 8000), (81, "tcp", "", 8001)]),
    ],
)
def test_port_short_syntax(port, expected):
    assert parse_port(port) == expected


def test_bad_ports():
    assert problems("""
        services:
          web:
            image: nginx
            ports:
              - "8080:80"
              - "80:80:80:80"
              - "8080:http"
              - "8000-8002:80-81"
              - "1.2.3:80:80"
              - "80/icmp"
              - 0
              - target: 70000
              - published: 8081
              - target: 80
                published: 8082
                name: 7
              - [80]
              - target: 81
                mode: ingress
    """) == [
        f"{COMPOSE}:7: services.web.ports[1]: invalid port '80:80:80:80': write '[ip:]host:container', with IPv6 addresses in brackets",
        f"{COMPOSE}:8: services.web.ports[2]: invalid container port 'http'",
        f"{COMPOSE}:9: services.web.ports[3]: invalid port '8000-8002:80-81': the host and container port ranges must have the same length",
        f"{COMPOSE}:10: services.web.ports[4]: invalid IP address '1.2.3'",
        f"{COMPOSE}:11: services.web.ports[5]: invalid protocol 'icmp': use tcp, udp, sctp",
        f"{COMPOSE}:12: services.web.ports[6]: container port 0 is out of range 1-65535",
        f"{COMPOSE}:13: services.web.ports[7]: target 70000 is out of range 1-65535",
        f"{COMPOSE}:14: services.web.ports[8]: missing required key 'target'",
        f"{COMPOSE}:15: services.web.ports[9]: name must be a string, not an integer",
        f"{COMPOSE}:18: services.web.ports[10]: must be a string like '8080:80', a port number or a mapping with 'target', not a list",
        f"{COMPOSE}:19: services.web.ports[11]: mode ingress is Swarm's routing mesh: one engine publishes the port "
        "on its own host, which is mode host (write host, or leave mode out)",
    ]


def test_host_port_published_twice_on_a_node():
    assert problems("""
        services:
          a:
            image: x
            ports: ["8080:80", "127.0.0.1:9000:90", "127.0.0.1:9001:91"]
          b:
            image: y
            ports: ["127.0.0.1:8080:80", "127.0.0.2:9000:90", "9001:91/udp"]
    """) == [
        f"{COMPOSE}:8: services.b.ports[0]: host port 8080/tcp is already published by service 'a' (services.a.ports[0])",
    ]


def test_ports_with_host_network_mode():
    assert one_problem("""
        services:
          web:
            image: nginx
            network_mode: host
            ports: ["80:80"]
    """) == f"{COMPOSE}:6: services.web.ports: ports cannot be published with network_mode 'host'"


# --------------------------------------------------------------------------
# Durations, sizes, simple values


def test_bad_durations():
    assert problems("""
        services:
          web:
            image: nginx
            stop_grace_period: 10
            healthcheck:
              test: curl -f http://localhost/
              interval: 1m30
              timeout: 5 s
              start_period: 10us
              retries: many
    """) == [
        f"{COMPOSE}:5: services.web.stop_grace_period: must be a duration with a unit, like '30s' or '1m30s', not an integer",
        f"{COMPOSE}:8: services.web.healthcheck.interval: invalid duration '1m30': write numbers with units (ns, us, ms, s, m, h), like '1m30s'",
        f"{COMPOSE}:9: services.web.healthcheck.timeout: invalid duration '5 s': write numbers with units (ns, us, ms, s, m, h), like '1m30s'",
        f"{COMPOSE}:10: services.web.healthcheck.start_period: must be 0 or at least 1ms",
        f"{COMPOSE}:11: services.web.healthcheck.retries: must be a whole number of 0 or more, not a string",
    ]


def test_bad_simple_values():
    assert problems("""
        services:
          web:
            image: nginx
            restart: "on-failure:x"
            mem_limit: 1z
            shm_size: [1]
            cpus: lots
            init: "true"
            container_name: -bad
            working_dir: app
            stop_signal: "SIG TERM"
            logging:
              driver: json-file
              options: {max-size: [1]}
            dns: [8.8.8.8, dns.example.com]
            extra_hosts: ["db", "cache:not-an-ip"]
            cap_add: [NET_ADMIN, "bad cap"]
            command: "echo 'unbalanced"
    """) == [
        f"{COMPOSE}:5: services.web.restart: invalid restart policy 'on-failure:x': use no, always, on-failure[:N] or unless-stopped",
        f"{COMPOSE}:6: services.web.mem_limit: invalid size '1z': write bytes or a number with a unit b, k, m, g, like '512m'",
        f"{COMPOSE}:7: services.web.shm_size: must be a size in bytes or a string like '512m' or '1g', not a list",
        f"{COMPOSE}:8: services.web.cpus: invalid number of CPUs 'lots'",
        f"{COMPOSE}:9: services.web.init: must be true or false, not a string",
        f"{COMPOSE}:10: services.web.container_name: invalid container name '-bad': use [a-zA-Z0-9][a-zA-Z0-9_.-]+",
        f"{COMPOSE}:11: services.web.working_dir: must be an absolute path, not 'app'",
        f"{COMPOSE}:12: services.web.stop_signal: invalid signal 'SIG TERM'",
        f"{COMPOSE}:15: services.web.logging.options.max-size: must be a string or number, not a list",
        f"{COMPOSE}:16: services.web.dns[1]: invalid IP address 'dns.example.com'",
        f"{COMPOSE}:17: services.web.extra_hosts[0]: invalid extra host 'db': write 'hostname=ip'",
        f"{COMPOSE}:17: services.web.extra_hosts[1]: invalid IP address 'not-an-ip'",
        f"{COMPOSE}:18: services.web.cap_add[1]: invalid capability 'bad cap'",
        f"{COMPOSE}:19: services.web.command: cannot split \"echo 'unbalanced\" into arguments: No closing quotation",
    ]


@pytest.mark.parametrize("restart", ["no", "always", "on-failure", "on-failure:3", "unless-stopped"])
def test_valid_restart_policies(restart):
    assert problems(f"services:\n  web:\n    image: nginx\n    restart: {restart}\n") == []


def test_environment_and_labels():
    assert problems("""
        services:
          web:
            image: nginx
            environment:
              A: 1
              B: [1, 2]
              C:
            labels:
              - deployer.service=fake
              - deployer.consul.check=http:/health
              - ok=1
          db:
            image: pg
            environment: ["A=1", "=x", 3]
            labels: {team: {nested: 1}}
    """) == [
        f"{COMPOSE}:7: services.web.environment.B: must be a string, number, boolean or null, not a list",
        f"{COMPOSE}:9: services.web.labels: label 'deployer.service' is set by the deployer and cannot be written",
        f"{COMPOSE}:15: services.db.environment[1]: invalid environment variable '=x': the name is empty or has surrounding spaces",
        f"{COMPOSE}:15: services.db.environment[2]: must be a string like 'KEY=value', not an integer",
        f"{COMPOSE}:16: services.db.labels.team: must be a string, number, boolean or null, not a mapping",
    ]


def test_healthcheck_shapes():
    assert problems("""
        services:
          a:
            image: x
            healthcheck:
              test: ["CMD-SHELL", "curl", "-f"]
          b:
            image: x
            healthcheck:
              test: ["RUN", "true"]
          c:
            image: x
            healthcheck:
              disable: true
              test: ["CMD", "true"]
          d:
            image: x
            healthcheck:
              test: ["NONE"]
              start_interval: 1s
    """) == [
        f"{COMPOSE}:6: services.a.healthcheck.test: ['CMD-SHELL', ...] takes exactly one shell command string",
        f"{COMPOSE}:10: services.b.healthcheck.test: must start with CMD, CMD-SHELL or NONE, not 'RUN'",
        f"{COMPOSE}:13: services.c.healthcheck: disable: true cannot be combined with test",
        f"{COMPOSE}:20: services.d.healthcheck.start_interval: unsupported key 'start_interval': needs Docker API 1.44; the engines here speak 1.41",
    ]


def test_container_names_must_be_unique():
    assert one_problem("""
        services:
          a: {image: x, container_name: app}
          b: {image: y, container_name: app}
    """) == f"{COMPOSE}:4: services.b.container_name: container name 'app' is also used by service 'a'"


# --------------------------------------------------------------------------
# Volumes


def test_relative_bind_mounts_are_shipped_read_only_from_the_repository(repo):
    msg = ("a bind source is an absolute path on the Docker host, or a path of the repository "
           "starting with './' or '../' (shipped to the node)")
    (repo / NODE_DIR / "conf").mkdir()
    (repo / NODE_DIR / "conf" / "a.conf").write_text("a\n")
    assert problems("""
        services:
          web:
            image: nginx
            volumes:
              - ./conf:/etc/nginx:ro
              - conf/sub:/x
              - ~/data:/y
              - type: bind
                source: ../data
                target: /data
                read_only: true
              - ./conf:/z
    """, repo) == [
        f"{COMPOSE}:7: services.web.volumes[1]: {msg}",
        f"{COMPOSE}:8: services.web.volumes[2]: '~' is not expanded in '~/data': write the absolute path on the Docker host",
        f"{COMPOSE}:9: services.web.volumes[3]: bind source datacenters/dc1/data does not exist",
        f"{COMPOSE}:13: services.web.volumes[4]: ./conf is shipped from the repository and mounted read-only: "
        "write './conf:/z:ro' (or read_only: true); the container must not write into the deployer's "
        "content-addressed copy",
    ]


def test_volume_problems():
    assert problems("""
        services:
          web:
            image: nginx
            volumes:
              - data:/data
              - logs:/logs
              - /srv:relative
              - /srv:/srv:rx
              - /anon
              - type: volume
                source: /abs
                target: /v
              - type: nfs
                target: /n
              - type: volume
                source: data
                target: /data
                volume: {nocopy: true, subpath: x}
              - type: volume
                source: data
                target: /data2
                volume: {nocopy: true}
        volumes:
          data:
    """) == [
        f"{COMPOSE}:7: services.web.volumes[1]: volume 'logs' is not declared in the top-level volumes",
        f"{COMPOSE}:8: services.web.volumes[2]: the mount target must be an absolute path in the container, not 'relative'",
        f"{COMPOSE}:9: services.web.volumes[3]: invalid volume mode 'rx': use ro or rw (optionally with z or Z)",
        f"{COMPOSE}:11: services.web.volumes[5]: source '/abs' is a path, but type is volume: write a volume name or use type bind",
        f"{COMPOSE}:14: services.web.volumes[6]: type must be volume, bind or tmpfs, not 'nfs'",
        f"{COMPOSE}:16: services.web.volumes[7]: subpath needs Docker API 1.45; the engines here speak 1.41",
    ]


def test_top_level_volume_and_network_definitions():
    assert problems("""
        services:
          web: {image: nginx}
        volumes:
          ok:
          full:
            driver: local
            driver_opts: {type: nfs, o: "addr=10.0.0.1"}
            labels: [a=b]
            name: exact-name
          ext:
            external: true
            driver: local
          bad:
            size: 1g
        networks:
          front:
            driver: bridge
            internal: true
            ipam: {}
          ext:
            external: yes
    """) == [
        f"{COMPOSE}:13: volumes.ext.driver: an external volume is not created by the deployer, so 'driver' cannot be set",
        f"{COMPOSE}:15: volumes.bad.size: unsupported key 'size'",
        f"{COMPOSE}:20: networks.front.ipam: unsupported key 'ipam'",
        f"{COMPOSE}:22: networks.ext.external: must be true or false, not a string",
    ]


# --------------------------------------------------------------------------
# Networks and dependencies


def test_networks_must_be_declared_and_not_mixed_with_network_mode():
    assert problems("""
        services:
          a:
            image: x
            networks: [front, back, default]
          b:
            image: x
            network_mode: host
            networks: [front]
          c:
            image: x
            networks:
              front:
                aliases: [api]
                ipv4_address: 10.0.0.5
              ext:
                ipv4_address: 10.1.0.300
              outside:
                ipv4_address: 10.2.0.7
          d:
            image: x
            network_mode: "service:nope"
          e:
            image: x
            network_mode: mynet
        networks:
          front:
          outside:
            external: true
    """) == [
        f"{COMPOSE}:5: services.a.networks[1]: network 'back' is not declared in the top-level networks",
        f"{COMPOSE}:9: services.b.networks: networks cannot be combined with network_mode",
        f"{COMPOSE}:15: services.c.networks.front.ipv4_address: a static address needs a network with a configured "
        "subnet; the deployer does not manage IPAM, so declare the network as external",
        f"{COMPOSE}:16: services.c.networks.ext: network 'ext' is not declared in the top-level networks",
        f"{COMPOSE}:17: services.c.networks.ext.ipv4_address: invalid IPv4 address '10.1.0.300'",
        f"{COMPOSE}:22: services.d.network_mode: unknown service 'nope' (services in this file: a, b, c, d, e)",
        f"{COMPOSE}:25: services.e.network_mode: invalid network_mode 'mynet': use host, none, bridge, service:<name> or container:<name>",
    ]


def test_depends_on_unknown_service_and_bad_condition():
    assert problems("""
        services:
          web:
            image: x
            depends_on: [db, cache]
          worker:
            image: x
            depends_on:
              db:
                condition: service_ready
              web:
    """) == [
        f"{COMPOSE}:5: services.web.depends_on[0]: unknown service 'db' (services in this file: web, worker)",
        f"{COMPOSE}:5: services.web.depends_on[1]: unknown service 'cache' (services in this file: web, worker)",
        f"{COMPOSE}:9: services.worker.depends_on.db: unknown service 'db' (services in this file: web, worker)",
        f"{COMPOSE}:10: services.worker.depends_on.db.condition: invalid condition 'service_ready': use "
        "service_started, service_healthy, service_completed_successfully",
    ]
    assert problems("""
        services:
          db: {image: pg}
          web: {image: x, depends_on: [db]}
    """) == []


def test_depends_on_cycles():
    assert problems("""
        services:
          a:
            image: x
            depends_on: [b]
          b:
            image: x
            depends_on:
              c: {condition: service_healthy}
          c:
            image: x
            depends_on: [a]
          d:
            image: x
            depends_on: [d]
          e:
            image: x
            depends_on: [a]
    """) == [
        f"{COMPOSE}:5: services.a.depends_on[0]: depends_on cycle: a -> b -> c -> a",
        f"{COMPOSE}:15: services.d.depends_on[0]: depends_on cycle: d -> d",
    ]


# --------------------------------------------------------------------------
# Secrets


def test_untracked_secret_file_is_fine(repo):
    write_secret(repo)
    (repo / ".gitignore").write_text("secrets/\n")
    assert problems(SECRET_COMPOSE, repo) == []


def test_secret_file_tracked_by_git_is_an_error(repo):
    write_secret(repo)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "oops")
    assert problems(SECRET_COMPOSE, repo) == [
        f"{COMPOSE}:12: secrets.db_password.file: secret file {NODE_DIR}/secrets/db_password.txt is tracked by git; "
        "secrets must stay out of the repository"
    ]


def test_staged_secret_file_is_an_error_too(repo):
    write_secret(repo)
    git(repo, "add", ".")
    assert len(problems(SECRET_COMPOSE, repo)) == 1


def test_missing_secret_file(repo):
    assert problems(SECRET_COMPOSE, repo) == [
        f"{COMPOSE}:12: secrets.db_password.file: secret file {NODE_DIR}/secrets/db_password.txt does not exist"
    ]


def test_secret_definitions_and_references(repo):
    write_secret(repo)
    assert problems("""
        services:
          web:
            image: nginx
            secrets:
              - api_key
              - nope
              - source: db_password
                target: /run/secrets/db_password
              - source: db_password
                mode: 0o440
                uid: "0"
        secrets:
          api_key:
            environment: API_KEY
          db_password:
            file: secrets/db_password.txt
          ext:
            external: true
          empty: {}
    """, repo) == [
        f"{COMPOSE}:7: services.web.secrets[1]: secret 'nope' is not declared in the top-level secrets",
        f"{COMPOSE}:10: services.web.secrets[3]: secret target /run/secrets/db_password is used twice (also by services.web.secrets[2])",
        f"{COMPOSE}:11: services.web.secrets[3].mode: write the mode as octal digits with a leading 0, like 0440, not 0o440",
        f"{COMPOSE}:15: secrets.api_key.environment: secrets from 'environment' are not supported: it reads the "
        "operator's shell, so what runs would depend on who deploys: use 'file'",
        f"{COMPOSE}:19: secrets.ext.external: external secrets are for swarm and not supported: use 'file'",
        f"{COMPOSE}:20: secrets.empty: missing required key 'file'",
    ]


def test_to_plain():
    doc = load("""
        a: 0440
        b: [1, 2.5, true, null, "s"]
        c: {d: &anchor yes}
        e: *anchor
        f: |
          text
    """)
    plain = to_plain(doc)
    assert plain == {"a": 440, "b": [1, 2.5, True, None, "s"], "c": {"d": "yes"}, "e": "yes", "f": "text\n"}
    assert type(plain) is dict and type(plain["b"]) is list and type(plain["c"]) is dict
    assert [type(v) for v in plain["b"]] == [int, float, bool, type(None), str]
    assert type(plain["a"]) is int and type(plain["f"]) is str


def test_names_targets_and_secret_files_that_cannot_be_used(repo):
    (repo / "datacenters/dc1/n1/secrets/dir").mkdir(parents=True)
    outside = repo.parent / "outside-secret.txt"
    outside.write_text("x\n")
    assert problems(f"""
        name: 5
        services:
          web:
            image: x
            secrets: [{{source: s, target: ../x}}, {{target: y}}]
            networks: {{5: {{}}}}
            hostname: a b
            user: 1000
            depends_on: {{5: {{}}}}
        volumes:
          bad name:
          v: {{name: bad name}}
        secrets:
          bad name: {{file: x}}
          s: {{file: secrets/dir}}
          out: {{file: {outside}}}
    """, repo) == [
        f"{COMPOSE}:2: name: must be a string, not an integer",
        f"{COMPOSE}:6: services.web.secrets[0].target: invalid target '../x': '..' is not allowed",
        f"{COMPOSE}:6: services.web.secrets[1]: missing required key 'source'",
        f"{COMPOSE}:7: services.web.networks: network names must be strings, not an integer",
        f"{COMPOSE}:8: services.web.hostname: invalid hostname 'a b'",
        f"{COMPOSE}:10: services.web.depends_on: service names must be strings, not an integer",
        f"{COMPOSE}:12: volumes.bad name: invalid volume name 'bad name': use letters, digits, '_', '.', '-'",
        f"{COMPOSE}:13: volumes.v.name: invalid volume name 'bad name'",
        f"{COMPOSE}:15: secrets.bad name: invalid secret name 'bad name'",
        f"{COMPOSE}:16: secrets.s.file: secret file {NODE_DIR}/secrets/dir is not a regular file",
        f"{COMPOSE}:17: secrets.out.file: secret file {outside} is outside the repository and the datacenter's "
        "secrets_dir (none set in datacenter.yml); a secret file is an untracked file of the repository or lies "
        "under a secrets_dir",
    ]
