"""The automation contract (issue 12): one exit code scheme, --json (errors too), -q/-v, DEPLOYER_ env, completion."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from deployer import errors
from deployer.cli.main import main
from deployer.cli.options import envvar_name
from tests.support.repos import cli, git, make_repo, web_compose


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, prog_name="deployer")


@pytest.fixture
def repo(tmp_path):
    """dc test: n1 runs web (a:1), n2 runs nothing."""
    root, _ = make_repo(tmp_path / "infra", "unix:///x.sock", web_compose("reg:5000/a:1"), node="n1",
                        extra_files={"datacenters/test/n2/node.yml": "docker: unix:///y.sock\n"})
    return root


def all_commands(group: click.Group = main, path: tuple[str, ...] = ()):
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


COMMANDS = dict(all_commands())


# -- exit codes ---------------------------------------------------------------------------------


def test_the_four_codes_are_distinct_and_every_error_uses_one():
    codes = (errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_CHANGES, errors.EXIT_BAD_INPUT)
    assert codes == (0, 1, 2, 3)
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.DeployerError):
            assert cls.exit_code in (errors.EXIT_FAILED, errors.EXIT_BAD_INPUT), cls
    assert errors.ValidationFailed.exit_code == errors.ConfigError.exit_code == errors.TargetError.exit_code == 3
    assert errors.HostUnreachable.exit_code == 1


def test_usage_errors_are_bad_input_not_changes_pending(repo):
    """click's own code for a usage error is 2; here that means "changes pending", so usage errors exit 3."""
    assert run("--repo", str(repo), "plan", "--bogus").exit_code == 3
    assert run("--bogus").exit_code == 3
    assert run("--repo", str(repo), "node", "rm").exit_code == 3  # missing argument in a subgroup
    assert run("--repo", str(repo), "plan", "--parallel", "0").exit_code == 3
    assert run("--repo", str(repo), "nosuchcommand").exit_code == 3
    assert run("--help").exit_code == 0 and run("--version").exit_code == 0


def test_an_invalid_repository_is_bad_input_for_plan_status_and_validate(tmp_path):
    for command in ("plan", "status", "validate", "ls"):
        result = cli(tmp_path, command)
        assert result.exit_code == 3, (command, result.output)
        shown = result.stdout if command == "validate" else result.stderr  # validate's report is its data
        assert "datacenters: no 'datacenters/' directory" in shown, command


# -- --json, errors in JSON ----------------------------------------------------------------------


def test_plan_json_on_an_invalid_repository_prints_the_error_as_json(tmp_path):
    result = cli(tmp_path, "plan", "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc == {"error": doc["error"], "exit_code": 3}
    assert doc["error"].startswith("datacenters: no 'datacenters/' directory in ")
    assert result.stderr == f"error: {doc['error']}\n"  # the one line for people, as without --json


def test_a_usage_error_with_json_is_json_too(repo):
    result = run("--repo", str(repo), "plan", "--json", "--parallel", "zero")
    assert result.exit_code == 3
    assert json.loads(result.stdout) == {
        "error": "Invalid value for '--parallel': 'zero' is not a valid integer range.", "exit_code": 3}
    assert "Usage: deployer plan" in result.stderr
    # an option unknown before --json is parsed: the words still say --json
    result = run("--repo", str(repo), "ls", "--bogus", "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["exit_code"] == 3
    # without --json, stdout stays empty
    result = run("--repo", str(repo), "ls", "--bogus")
    assert result.exit_code == 3 and result.stdout == ""


def test_an_error_after_the_result_prints_no_second_document(repo):
    """validate --json prints its result and exits 3: stdout is exactly that one document."""
    (repo / "datacenters" / "test" / "n1" / "docker-compose.yml").write_text("services:\n  web:\n    imag: x\n")
    result = cli(repo, "validate", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["ok"] is False


def test_a_target_error_in_json(repo):
    result = cli(repo, "ls", "zzz", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"].startswith("unknown target 'zzz'")


def test_every_command_that_prints_data_has_json_and_every_command_has_q_and_v():
    no_data = {"completion", "exec"}  # prints a shell script; the command's own output
    for path, cmd in COMMANDS.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, path
        if path not in no_data:
            assert "--json" in opts, path


def test_node_rm_json(repo):
    result = cli(repo, "node", "rm", "test/n2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["target"] == "test/n2" and doc["files"] == ["datacenters/test/n2/node.yml"] and len(doc["commit"]) == 40


def test_init_json(tmp_path):
    result = run("init", str(tmp_path / "new"), "--no-images", "--json", "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["root"] == str(tmp_path / "new") and doc["targets"] and len(doc["commit"]) == 40
    assert result.stderr == ""


def test_render_json(repo, tmp_path):
    template = tmp_path / "t.tmpl"
    template.write_text("static\n")
    out = tmp_path / "out.conf"
    # a datacenter without consul is read from its engines; no node runs anything reachable here,
    # so this is the error path: JSON with the error and its code
    result = cli(repo, "render", str(template), "--out", str(out), "--dc", "nope", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"].startswith("unknown datacenter 'nope'")


# -- the environment ---------------------------------------------------------------------------


def test_every_option_has_its_deployer_variable_and_they_are_unique():
    seen: dict[str, str] = {}
    for path, cmd in [("", main), *COMMANDS.items()]:
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.is_eager:
                continue
            names = [p.envvar] if isinstance(p.envvar, str) else list(p.envvar)
            assert names[0] == envvar_name(path, p) and names[0].startswith("DEPLOYER_"), (path, p.name)
            assert names[0] not in seen, (names[0], path, seen.get(names[0]))
            seen[names[0]] = path
    assert "DEPLOYER_REPO" in seen and "DEPLOYER_DEPLOY_WAIT" in seen and "DEPLOYER_NODE_ADD_DOCKER" in seen
    assert "DEPLOYER_WATCH_BUILDS_INTERVAL" in seen and "DEPLOYER_HISTORY_LIMIT" in seen
    assert main.commands["build"].params[3].envvar == ["DEPLOYER_BUILD_ENGINE", "DOCKER_HOST"]


def test_options_from_the_environment(repo):
    result = run("ls", env={"DEPLOYER_REPO": str(repo), "DEPLOYER_LS_JSON": "1"})
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 2
    result = run("plan", env={"DEPLOYER_REPO": str(repo), "DEPLOYER_PLAN_PARALLEL": "0"})
    assert result.exit_code == 3 and "Invalid value for '--parallel'" in result.stderr
    # the command line wins over the environment
    result = run("--repo", str(repo), "ls", env={"DEPLOYER_REPO": "/nonexistent"})
    assert result.exit_code == 0


# -- completion --------------------------------------------------------------------------------


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _deployer_completion deployer"),
                                           ("zsh", "#compdef deployer"),
                                           ("fish", "complete --no-files --command deployer")])
def test_the_completion_script_is_printed_for_each_shell(shell, marker):
    result = run("completion", shell)
    assert result.exit_code == 0
    assert marker in result.stdout and "_DEPLOYER_COMPLETE" in result.stdout


def test_an_unknown_shell_is_a_usage_error():
    assert run("completion", "tcsh").exit_code == 3


def complete(words: str, env: dict | None = None) -> list[str]:
    """What click's bash protocol answers for the command line ``words`` (the last word being completed)."""
    parts = words.split(" ")
    result = CliRunner().invoke(main, [], prog_name="deployer", env={
        "_DEPLOYER_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1), **(env or {})})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_targets_complete_from_the_repository(repo):
    got = complete(f"deployer --repo {repo} status t")
    assert got == ["test", "test/n1", "test/n1/web", "test/n2"]
    assert complete(f"deployer --repo {repo} status test/n1") == ["test/n1", "test/n1/web"]
    assert complete("deployer status test/n", env={"DEPLOYER_REPO": str(repo)}) == [
        "test/n1", "test/n1/web", "test/n2"]
    assert complete(f"deployer --repo {repo} rollback t") == ["test", "test/n1", "test/n1/web", "test/n2"]
    assert complete(f"deployer --repo {repo} node rm t") == ["test/n1", "test/n2"]
    assert complete(f"deployer --repo {repo} services ") == ["test"]
    assert complete(f"deployer --repo {repo} deploy reg:5000/a:1 test/n") == ["test/n1", "test/n1/web", "test/n2"]


def test_images_complete_from_the_compose_files_and_the_deploy_log(repo):
    assert complete(f"deployer --repo {repo} deploy r") == ["reg:5000/a:1"]
    assert complete(f"deployer --repo {repo} deploy x") == []
    # a deploy commit in the log names the image before and after
    git(repo, "commit", "-q", "--allow-empty", "-m", "deploy test/n1/web: reg:5000/a:0 -> reg:5000/a:1\n\n"
        "Deployer-Action: deploy\nDeployer-Target: test/n1/web\nDeployer-Image: reg:5000/a:1\n"
        "Deployer-Previous-Image: reg:5000/old:0\n")
    assert complete(f"deployer --repo {repo} deploy reg:5000/") == ["reg:5000/a:1", "reg:5000/old:0"]


def test_a_broken_repository_completes_nothing_without_error(repo, tmp_path):
    (repo / "datacenters" / "test" / "n1" / "docker-compose.yml").write_text("services: [[[\n")
    assert complete(f"deployer --repo {repo} status t") == []
    assert complete(f"deployer --repo {repo} deploy r") == []
    assert complete(f"deployer --repo {tmp_path / 'nowhere'} status ") == []


def test_every_target_argument_completes_targets():
    """A TARGET argument (or DC/NODE, DC) of any command completes from the repository: new commands too."""
    for path, cmd in COMMANDS.items():
        for p in cmd.params:
            if isinstance(p, click.Argument) and p.name in ("target", "targets", "dc"):
                assert p._custom_shell_complete is not None, (path, p.name)
