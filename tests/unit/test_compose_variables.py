"""Variables, interpolation and shared definitions through the loader and the CLI (no engine)."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from deployer.config.compose_spec import container_name, container_spec, node_resources
from deployer.config.loader import check, load
from deployer.config.variables import parse_dotenv
from tests.support.repos import cli, git

NODE = "datacenters/dc/n1"


def repo(tmp_path, files: dict[str, str], commit: bool = True):
    files = {f"{NODE}/node.yml": "docker: unix:///nonexistent.sock\n", **files}
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    if commit:
        git(tmp_path, "init", "-q", "-b", "main")
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-q", "-m", "initial")
    return tmp_path


def rendered(tmp_path) -> list[str]:
    return [p.render() for p in check(tmp_path)[1]]


# -- .env --------------------------------------------------------------------


def test_dotenv_format():
    values, problems = parse_dotenv(textwrap.dedent("""\
        # a comment
        A=1
        export B = two words  # inline comment
        C='literal $A # not a comment'
        D="line\\nbreak $A \\"q\\" \\$A"
        E=${A}-${MISSING:-x}
        F=
        G=a#b
    """), ".env", {"OUTER": "o"})
    assert problems == []
    assert values == {"A": "1", "B": "two words", "C": "literal $A # not a comment", "D": 'line\nbreak 1 "q" $A',
                      "E": "1-x", "F": "", "G": "a#b"}


def test_dotenv_problems_have_lines():
    _, problems = parse_dotenv('A=1\nnot a line\n1X=2\nQ="open\nR=$NOPE\n', "d/.env")
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (2, "line 'not a line' is not NAME=value"), (3, "invalid variable name '1X'"),
        (4, "the quoted value of Q does not end on its line (values over several lines are not supported)"),
        (5, "variable NOPE is not set")]


# -- precedence and interpolation through the loader -------------------------------


COMPOSE = """\
    services:
      api:
        image: registry.example/api:${API_VERSION:-1.0}
        environment:
          DB_URL: postgres://${DB_HOST}/x
          PRICE: "$$5"
          WHERE: ${WHERE}
          FROM_REPO:
        command: ["--broadcast-address=${NODE_ADDRESS}"]
"""


def test_precedence_node_over_dotenv_over_datacenter(tmp_path, monkeypatch):
    monkeypatch.setenv("DB_HOST", "from-the-shell")  # never read
    monkeypatch.setenv("FROM_REPO", "from-the-shell")
    repo(tmp_path, {
        "datacenters/dc/datacenter.yml": "variables: {DB_HOST: dc-db, WHERE: datacenter, FROM_REPO: dc}\n",
        f"{NODE}/node.yml": "docker: unix:///x.sock\nvariables:\n  WHERE: node\n  NODE_ADDRESS: 10.0.0.7\n",
        f"{NODE}/.env": "WHERE=dotenv\nAPI_VERSION=1.5\nFROM_REPO=dotenv\n",
        f"{NODE}/docker-compose.yml": COMPOSE,
    })
    node = load(tmp_path).node("dc", "n1")
    api = node.services["api"]
    assert api.image == "registry.example/api:1.5"
    assert node.variables["WHERE"] == "node"
    spec = container_spec(node, api, tmp_path)
    assert spec.image == "registry.example/api:1.5"
    assert spec.create["environment"] == ["DB_URL=postgres://dc-db/x", "FROM_REPO=dotenv", "PRICE=$5", "WHERE=node"]
    assert spec.create["command"] == ["--broadcast-address=10.0.0.7"]


def test_default_applies_without_any_variable(tmp_path):
    repo(tmp_path, {f"{NODE}/docker-compose.yml": "services:\n  api:\n    image: registry.example/api:${V:-1.0}\n"})
    assert load(tmp_path).node("dc", "n1").services["api"].image == "registry.example/api:1.0"


def test_dotenv_may_use_datacenter_variables(tmp_path):
    repo(tmp_path, {
        "datacenters/dc/datacenter.yml": "variables:\n  REGISTRY: reg.example:5000\n  PORT: 8080\n  DEBUG: false\n",
        f"{NODE}/.env": "IMAGE=${REGISTRY}/api:2\n",
        f"{NODE}/docker-compose.yml": "services:\n  api:\n    image: $IMAGE\n    environment: [P=$PORT, D=$DEBUG]\n",
    })
    api = load(tmp_path).node("dc", "n1").services["api"]
    assert api.image == "reg.example:5000/api:2"
    assert api.config["environment"] == ["P=8080", "D=false"]


# -- bad input ---------------------------------------------------------------------


BAD = {
    "unset": ("    environment: {A: $NOPE}\n", "services.api.environment.A: variable NOPE is not set"),
    "required": ("    environment: {A: '${NOPE:?set NOPE in .env: the database host}'}\n",
                 "services.api.environment.A: required variable NOPE is not set: set NOPE in .env: the database host"),
    "malformed": ("    command: ['${oops']\n", "services.api.command[0]: malformed interpolation"),
    "bare-env": ("    environment: [SHELL_ONLY]\n", "services.api.environment[0]: SHELL_ONLY is written without a value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_validate_says_file_line_field(tmp_path, case, monkeypatch):
    monkeypatch.setenv("NOPE", "x")
    monkeypatch.setenv("SHELL_ONLY", "x")
    extra, says = BAD[case]
    repo(tmp_path, {f"{NODE}/docker-compose.yml": "services:\n  api:\n    image: a:1\n" + extra})
    result = cli(tmp_path, "validate")
    assert result.exit_code == 3
    assert result.output.startswith(f"{NODE}/docker-compose.yml:4: {says}"), result.output
    deploy = cli(tmp_path, "deploy", "a:2", "dc/n1/api")
    assert deploy.exit_code == 3 and says.split(": ", 1)[1][:20] in deploy.output
    assert git(tmp_path, "rev-list", "--count", "HEAD") == "1"  # nothing committed


def test_unset_variable_in_node_yml_variables_is_not_a_default(tmp_path):
    repo(tmp_path, {f"{NODE}/node.yml": "docker: unix:///x.sock\nvariables: {A: ~, 1B: x}\n"})
    assert rendered(tmp_path) == [
        f"{NODE}/node.yml:2: variables.A: must be a string or a number, not null",
        f"{NODE}/node.yml:2: variables: invalid variable name '1B': letters, digits and '_', not starting with a digit",
    ]


def test_deploy_refuses_an_image_written_with_a_variable(tmp_path):
    repo(tmp_path, {f"{NODE}/docker-compose.yml": "services:\n  api:\n    image: registry.example/api:${V:-1.0}\n"})
    result = cli(tmp_path, "deploy", "registry.example/api:1.5", "dc/n1/api", "--dry-run")
    assert result.exit_code == 3
    assert (f"{NODE}/docker-compose.yml:3: services.api.image: the image is written with a variable "
            "(registry.example/api:${V:-1.0})") in result.output
    assert "change the variable where it is set" in result.output


# -- name ----------------------------------------------------------------------------


def test_top_level_name_is_the_project_name(tmp_path):
    repo(tmp_path, {f"{NODE}/docker-compose.yml": "name: shop\nservices:\n  api:\n    image: a:1\n    volumes: [data:/d]\n"
                                                   "volumes:\n  data: {}\n"})
    node = load(tmp_path).node("dc", "n1")
    assert container_name(node, node.services["api"]) == "shop-api"
    volumes, networks = node_resources(node)
    assert [v.name for v in volumes] == ["shop_data"] and [n.name for n in networks] == ["shop_default"]


def test_bad_project_name(tmp_path):
    repo(tmp_path, {f"{NODE}/docker-compose.yml": "name: Shop!\nservices:\n  api:\n    image: a:1\n"})
    assert rendered(tmp_path) == [f"{NODE}/docker-compose.yml:1: name: invalid project name 'Shop!': lowercase "
                                  "letters, digits, '-' and '_', starting with a letter or digit (as Compose requires)"]


# -- extends and include ---------------------------------------------------------------


WORKER = """\
    services:
      worker:
        image: ${REGISTRY}/worker:${WORKER_VERSION:-1.4}
        command: ["worker", "--queue", "default"]
        environment: {LOG: info, QUEUE: default}
        labels: [team=core]
        ports: ["9000:9000"]
        secrets: [token]
        healthcheck: {test: ["CMD", "true"], interval: 5s}
"""

NO_SECRETS = "".join(line for line in WORKER.splitlines(keepends=True) if "secrets" not in line)


def test_extends_another_file_with_merge_rules(tmp_path):
    repo(tmp_path, {
        "common/worker.yml": WORKER,
        "datacenters/dc/datacenter.yml": "variables: {REGISTRY: reg.example}\n",
        f"{NODE}/.env": "WORKER_VERSION=1.5\n",
        f"{NODE}/docker-compose.yml": """\
            services:
              worker:
                extends: {file: ../../../common/worker.yml, service: worker}
                command: ["worker", "--queue", "fast"]
                environment: [QUEUE=fast]
                labels: {tier: back}
                ports: ["9001:9000", "9000:9000"]
                healthcheck: {interval: 1s}
            secrets:
              token: {file: ./token.txt}
        """,
        f"{NODE}/token.txt": "t\n",
    }, commit=False)
    infra, problems = check(tmp_path)
    assert problems == []
    w = infra.node("dc", "n1").services["worker"].config
    assert w["image"] == "reg.example/worker:1.5"
    assert w["command"] == ["worker", "--queue", "fast"]  # replaced
    assert w["environment"] == {"LOG": "info", "QUEUE": "fast"}  # merged by name, list and mapping forms
    assert w["labels"] == {"team": "core", "tier": "back"}
    assert w["ports"] == ["9000:9000", "9001:9000"]  # unique by published port: the same one merged
    assert w["secrets"] == ["token"]
    assert w["healthcheck"] == {"test": ["CMD", "true"], "interval": "1s"}
    assert "extends" not in w


def test_extends_in_the_same_file_and_chained(tmp_path):
    repo(tmp_path, {f"{NODE}/docker-compose.yml": """        services:
          base:
            image: a:1
            environment: {A: "1"}
            cap_add: [NET_ADMIN]
          mid:
            extends: base
            environment: {B: "2"}
          top:
            extends: {service: mid}
            image: a:2
            cap_add: [NET_ADMIN, SYS_TIME]
    """})
    services = load(tmp_path).node("dc", "n1").services
    assert services["top"].config == {"image": "a:2", "environment": {"A": "1", "B": "2"},
                                      "cap_add": ["NET_ADMIN", "SYS_TIME"]}
    assert services["mid"].config["image"] == "a:1" and services["base"].config["environment"] == {"A": "1"}


def test_extends_errors_point_at_the_extending_file(tmp_path):
    repo(tmp_path, {"common/worker.yml": NO_SECRETS.replace("${REGISTRY}", "reg"),
                    f"{NODE}/docker-compose.yml": """\
            services:
              worker:
                extends: {file: ../../../common/worker.yml, service: worker}
                restart: sometimes
        """}, commit=False)
    assert rendered(tmp_path)[0].startswith(f"{NODE}/docker-compose.yml:4: services.worker.restart:")


@pytest.mark.parametrize("compose, says", [
    ("services:\n  a:\n    extends: b\n    image: x\n  b:\n    extends: a\n",
     f"{NODE}/docker-compose.yml:3: services.a.extends: extends cycle: {NODE}/docker-compose.yml:a -> "
     f"{NODE}/docker-compose.yml:b -> {NODE}/docker-compose.yml:a"),
    ("services:\n  a:\n    image: x\n    extends: {file: ../../../../outside.yml, service: a}\n",
     f"{NODE}/docker-compose.yml:4: services.a.extends.file: '../../../../outside.yml' leaves the repository"),
    ("services:\n  a:\n    image: x\n    extends: {file: /etc/hostname, service: a}\n",
     f"{NODE}/docker-compose.yml:4: services.a.extends.file: '/etc/hostname' is an absolute path"),
    ("services:\n  a:\n    image: x\n    extends: {file: link.yml, service: a}\n",
     f"{NODE}/docker-compose.yml:4: services.a.extends.file: 'link.yml' is a symlink that leaves the repository"),
    ("services:\n  a:\n    image: x\n    extends: nope\n",
     f"{NODE}/docker-compose.yml:4: services.a.extends.service: no service 'nope' in {NODE}/docker-compose.yml"),
    ("include: [../../../../outside.yml]\nservices: {}\n",
     f"{NODE}/docker-compose.yml:1: include[0]: '../../../../outside.yml' leaves the repository"),
    ("include: [loop.yml]\nservices: {}\n",
     f"{NODE}/loop.yml:1: include[0]: include cycle: {NODE}/docker-compose.yml -> {NODE}/loop.yml -> "
     f"{NODE}/docker-compose.yml"),
    ("include: [{path: ../../../common/db.yml, project_directory: ..}]\nservices: {}\n",
     f"{NODE}/docker-compose.yml:1: include[0]: unsupported key 'project_directory'"),
])
def test_shared_definition_problems(tmp_path, compose, says):
    outside = tmp_path.parent / "outside.yml"
    outside.write_text("services: {a: {image: x}}\n")
    repo(tmp_path, {f"{NODE}/docker-compose.yml": compose, f"{NODE}/loop.yml": "include: [docker-compose.yml]\n"},
         commit=False)
    os.symlink(outside, tmp_path / NODE / "link.yml")
    got = rendered(tmp_path)
    assert got and got[0].startswith(says), got


def test_include_brings_services_with_their_own_dotenv_and_paths(tmp_path):
    repo(tmp_path, {
        "common/db.yml": """\
            services:
              db:
                image: postgres:${PG_VERSION}
                environment: {WHO: "${WHO}"}
                secrets: [dbpass]
            secrets:
              dbpass: {file: ./db.pass}
        """,
        "common/.env": "PG_VERSION=16\nWHO=included\n",
        "common/db.pass": "p\n",
        f"{NODE}/.env": "WHO=node\n",
        f"{NODE}/docker-compose.yml": "include: [../../../common/db.yml]\nservices:\n  api:\n    image: a:1\n"
                                      "    depends_on: [db]\n",
    }, commit=False)
    infra, problems = check(tmp_path)
    assert problems == []
    node = infra.node("dc", "n1")
    assert node.services["db"].image == "postgres:16"
    assert node.services["db"].config["environment"] == {"WHO": "node"}  # the including project's variables win
    assert node.secrets == {"dbpass": {"file": "../../../common/db.pass"}}  # relative to the node's file now


def test_include_conflict_is_refused(tmp_path):
    repo(tmp_path, {"common/db.yml": "services:\n  api:\n    image: b:1\n",
                    f"{NODE}/docker-compose.yml": "include: [../../../common/db.yml]\nservices:\n  api:\n    image: a:1\n"},
         commit=False)
    assert rendered(tmp_path) == [f"{NODE}/docker-compose.yml:1: include[0]: services.api is defined here and in the "
                                  "included common/db.yml: Compose refuses the conflict"]


# -- deployer config ---------------------------------------------------------------------


def test_config_prints_the_resolved_file(tmp_path):
    repo(tmp_path, {
        "common/worker.yml": NO_SECRETS,
        "datacenters/dc/datacenter.yml": "variables: {REGISTRY: reg.example}\n",
        f"{NODE}/docker-compose.yml": "services:\n  w:\n    extends: {file: ../../../common/worker.yml, service: worker}\n"
                                      "    environment: [EXTRA=1]\n",
    })
    result = cli(tmp_path, "config", "dc/n1")
    assert result.exit_code == 0, result.output
    assert result.output == textwrap.dedent("""\
        name: n1
        services:
          w:
            command:
            - worker
            - --queue
            - default
            environment:
              EXTRA: '1'
              LOG: info
              QUEUE: default
            healthcheck:
              test:
              - CMD
              - 'true'
              interval: 5s
            image: reg.example/worker:1.4
            labels:
            - team=core
            ports:
            - 9000:9000
        """)
    as_json = json.loads(cli(tmp_path, "config", "dc/n1", "--json").output)
    assert as_json["services"]["w"]["image"] == "reg.example/worker:1.4"
    bad = cli(tmp_path, "config", "dc")
    assert bad.exit_code == 3 and "name one node" in bad.output


def test_reset_and_override_tags(tmp_path):
    repo(tmp_path, {"common/worker.yml": NO_SECRETS.replace("${REGISTRY}", "reg"),
                    f"{NODE}/docker-compose.yml": """\
        services:
          worker:
            extends: {file: ../../../common/worker.yml, service: worker}
            ports: !reset []
            labels: !override {only: this}
            environment: {LOG: !reset null}
          alone:
            image: a:1
            dns: !reset [1.1.1.1]
    """}, commit=False)
    infra, problems = check(tmp_path)
    assert problems == []
    services = infra.node("dc", "n1").services
    w = services["worker"].config
    assert "ports" not in w and w["labels"] == {"only": "this"}
    assert w["environment"] == {"QUEUE": "default"}
    assert "dns" not in services["alone"].config


def test_deploy_of_an_included_service_says_where_to_change_it(tmp_path):
    repo(tmp_path, {"common/db.yml": "services:\n  db:\n    image: postgres:15\n",
                    f"{NODE}/docker-compose.yml": "include: [../../../common/db.yml]\nservices: {}\n"})
    result = cli(tmp_path, "deploy", "postgres:16", "dc/n1/db", "--dry-run")
    assert result.exit_code == 3
    assert "it comes from a file the node's compose file includes" in result.output, result.output
    assert git(tmp_path, "rev-list", "--count", "HEAD") == "1"


def test_an_included_file_is_checked_at_its_own_lines(tmp_path):
    repo(tmp_path, {"common/db.yml": "services:\n  db:\n    image: postgres:16\n    restart: sometimes\n",
                    f"{NODE}/docker-compose.yml": "include: [../../../common/db.yml]\nservices: {}\n"}, commit=False)
    got = rendered(tmp_path)
    assert got and got[0].startswith("common/db.yml:4: services.db.restart:"), got


@pytest.mark.parametrize("compose", [
    "services:\n  a:\n    extends: b\n    image: x:1\n  b:\n    extends: a\n",
    "services:\n  a:\n    image: x:1\n    extends: {file: ../../../../outside.yml, service: a}\n",
])
def test_shared_definition_bad_input_deploys_and_commits_nothing(tmp_path, compose):
    root = tmp_path / "infra"
    repo(root, {f"{NODE}/docker-compose.yml": compose})
    result = cli(root, "deploy", "x:2", "dc/n1/a")
    assert result.exit_code == 3
    assert result.output.startswith(f"error: {NODE}/docker-compose.yml:"), result.output
    assert git(root, "rev-list", "--count", "HEAD") == "1" and git(root, "status", "--porcelain") == ""


def test_compose_settings_in_dotenv_are_refused():
    _, problems = parse_dotenv("COMPOSE_PROJECT_NAME=shop\n", "n/.env")
    assert [p.render() for p in problems] == [
        "n/.env:1: COMPOSE_PROJECT_NAME: COMPOSE_* variables configure the docker compose program (project name, "
        "files, profiles), which the deployer is not; write what it means in the compose file or node.yml (e.g. 'name:')"]
