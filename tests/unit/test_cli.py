"""The CLI without engines: validate and ls on temporary repositories, the output of the deploy and fleet
commands from a stand-in Deployer, error lines and exit codes."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest

from deployer.engine.apply import SwapOptions
from deployer.ops.rollout import Rollout
from click.testing import CliRunner

from deployer.cli.main import main
from deployer.errors import HealthCheckFailed, PartialDeploy
from tests.support.repos import cli, make_repo, web_compose


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def repo(tmp_path):
    """Two nodes in dc test: n1 runs web (a:1), n2 runs nothing."""
    root, _ = make_repo(tmp_path / "infra", "unix:///x.sock", web_compose("a:1"), node="n1",
                        extra_files={"datacenters/test/n2/node.yml": "docker: unix:///y.sock\n"})
    return root


# -- validate, ls -----------------------------------------------------------------------------


def test_ls_table(repo):
    result = cli(repo, "ls")
    assert result.exit_code == 0
    assert result.stdout == (
        "DATACENTER  NODE  SERVICE  IMAGE  DOCKER\n"
        "test        n1    web      a:1    unix:///x.sock\n"
        "test        n2    -        -      unix:///y.sock\n")


def test_ls_target_and_json(repo):
    assert cli(repo, "ls", "test/n2").stdout == ("DATACENTER  NODE  SERVICE  IMAGE  DOCKER\n"
                                                 "test        n2    -        -      unix:///y.sock\n")
    assert json.loads(cli(repo, "ls", "n2", "--json").stdout) == [
        {"datacenter": "test", "node": "n2", "docker": "unix:///y.sock", "containers": []}]
    assert cli(repo, "ls", "--json").stdout.startswith('[\n  {\n    "datacenter": "test",\n')


def test_validate_ok_json_and_path(repo, tmp_path):
    result = cli(repo, "validate", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"ok": True, "problems": []}
    # PATH wins over --repo, and may be inside the repository
    result = cli(tmp_path, "validate", str(repo / "datacenters" / "test"))
    assert result.exit_code == 0 and result.stdout == "ok: 1 datacenters, 2 nodes, 1 containers\n"


def test_repo_from_the_environment(repo, tmp_path):
    result = run("ls", "--json", env={"DEPLOYER_REPO": str(repo)})
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 2


# -- error lines --------------------------------------------------------------------------------


def test_an_error_is_one_line_with_its_exit_code(repo, tmp_path):
    result = cli(repo, "ls", "zzz")
    assert result.exit_code == 3 and result.stdout == ""
    assert result.stderr.startswith("error: unknown target 'zzz'") and result.stderr.count("\n") == 1
    result = cli(tmp_path / "nowhere", "ls")
    assert result.exit_code == 3 and result.stdout == ""
    assert result.stderr == (f"error: datacenters: no 'datacenters/' directory in {tmp_path / 'nowhere'}; is this "
                             "an infrastructure repository? ('deployer init DIR' makes one)\n")


def test_usage_errors_are_clicks(repo):
    result = cli(repo, "image", "src")
    assert result.exit_code == 3
    assert "Error: where to push: --registry HOST:PORT, or --dc DC (its datacenter.yml's registry)" in result.stderr
    result = cli(repo, "image", "src", "--registry", "r:5000", "--dc", "test")
    assert result.exit_code == 3 and "Error: give --registry or --dc, not both" in result.stderr
    result = cli(repo, "deploy", "a:2")
    assert result.exit_code == 3 and "Error: Missing argument 'TARGETS...'." in result.stderr


# -- deploy and fleet output, from a stand-in Deployer --------------------------------------------


class FakeDeployer:
    """Records how it was made and called; returns what the test put in ``answers``."""

    made: list = []
    calls: list = []
    answers: dict = {}

    def __init__(self, root, **kwargs):
        FakeDeployer.made.append((root, kwargs))

    def __getattr__(self, method):
        def call(*args, **kwargs):
            FakeDeployer.calls.append((method, args, kwargs))
            answer = FakeDeployer.answers[method]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call


@pytest.fixture
def fake(monkeypatch):
    import deployer.ops.deploy

    monkeypatch.setattr(deployer.ops.deploy, "Deployer", FakeDeployer)
    FakeDeployer.made, FakeDeployer.calls, FakeDeployer.answers = [], [], {}
    return FakeDeployer


def target(name, previous="a:1", error=None, change=None, diff=""):
    return NS(target=name, previous_image=previous, error=error, change=change, diff=diff)


def deploy_result(*targets, commit="abcdef0123456789", dry_run=False):
    return NS(action="deploy", target="test", image="a:2", commit=commit, seconds=1.25, dry_run=dry_run,
              targets=list(targets), to_json=lambda: {"image": "a:2", "commit": commit})


def test_deploy_passes_the_options_and_prints_the_commit_line(repo, fake):
    fake.answers["deploy"] = deploy_result(target("test/n1/web"))
    result = cli(repo, "deploy", "a:2", "test/n1", "--wait", "1m30s", "--settle", "250ms", "--health-timeout", "5",
                 "--no-consul", "-q", "--batch", "2", "--canary", "--pause", "1m", "--on-failure", "rollback")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deploy test: a:1 -> a:2 [abcdef0] (1.2s)\n"
    ((root, made),) = fake.made
    assert root == str(repo) and made["consul"] is False
    ((method, args, kwargs),) = fake.calls
    assert (method, args) == ("deploy", ("a:2", ["test/n1"], None))
    assert kwargs == {"wait": 90.0, "dry_run": False, "author": None, "message": None,
                      "swap": SwapOptions(settle=0.25, health_timeout=5.0), "parallel": 64,
                      "rollout": Rollout(batch=(2, False), pause=60.0, canary=True, on_failure="rollback")}


def test_deploy_refuses_rollout_options_that_contradict_before_anything_runs(repo, fake):
    result = cli(repo, "deploy", "a:2", "test", "--max-fail", "1", "--on-failure", "continue")
    assert result.exit_code == 3 and "--max-fail has no effect with --on-failure continue" in result.output
    result = cli(repo, "deploy", "a:2", "test", "--batch", "0%")
    assert result.exit_code == 3 and "a batch is 1 node or more" in result.output
    assert fake.calls == []


def test_rollback_takes_a_whole_deploy(repo, fake):
    fake.answers["rollback"] = deploy_result(target("test/n1/web"))
    assert cli(repo, "rollback", "--commit", "abc1234", "-q").exit_code == 0
    ((method, args, kwargs),) = fake.calls
    assert method == "rollback" and args == ([],) and kwargs["commit"] == "abc1234"
    result = cli(repo, "rollback")
    assert result.exit_code == 3 and "or --commit SHA" in result.output


def test_a_rollout_names_the_rolled_back_failed_and_committed_targets(repo, fake):
    ok = NS(target="test/n1/web", previous_image="a:1", error=None, change=None, diff="", committed=True, image="a:2")
    back = NS(target="test/n2/web", previous_image="a:1", error=None, change=None, diff="", rolled_back=True)
    bad = NS(target="test/n3/web", previous_image="a:1", error="unhealthy", change=None, diff="")
    result = deploy_result(ok, back, bad)
    fake.answers["deploy"] = PartialDeploy(result, "1 of 3 targets failed")
    out = cli(repo, "deploy", "a:2", "test").stdout
    assert out == ("test/n2/web: rolled back to a:1\ntest/n3/web: FAILED: unhealthy\n"
                   "deploy test/n1/web: a:1 -> a:2 [abcdef0] (1.2s)\n")


def test_deploy_dry_run_and_nothing_to_do(repo, fake):
    change = NS(action="recreate", summary=lambda: "recreate web (image a:1 -> a:2)")
    fake.answers["deploy"] = deploy_result(target("test/n1/web", diff="-a:1\n+a:2\n", change=change), commit=None,
                                           dry_run=True)
    assert cli(repo, "deploy", "a:2", "test/n1", "--dry-run").stdout == (
        "dry run: deploy test/n1/web: a:1 -> a:2\n-a:1\n+a:2\ncontainer: recreate web (image a:1 -> a:2)\n")
    fake.answers["deploy"] = deploy_result(target("test/n1/web", previous="a:2"), commit=None)
    assert cli(repo, "deploy", "a:2", "test/n1").stdout == "test/n1/web: already runs a:2; nothing to do\n"
    fake.answers["deploy"] = deploy_result(target("test/n1/web"), commit="abcdef0123")
    assert json.loads(cli(repo, "deploy", "a:2", "test/n1", "--json").stdout) == {"image": "a:2",
                                                                                 "commit": "abcdef0123"}


def test_a_partial_deploy_prints_the_result_then_the_error_line(repo, fake):
    partial = deploy_result(target("test/n1/web"), target("test/n2/web", error="engine gone"))
    fake.answers["deploy"] = PartialDeploy(partial, "1 of 2 targets failed: test/n2/web")
    result = cli(repo, "deploy", "a:2", "test")
    assert result.exit_code == 1
    assert result.stdout == "test/n2/web: FAILED: engine gone\ndeploy test: a:1 -> a:2 [abcdef0] (1.2s)\n"
    assert result.stderr == "error: 1 of 2 targets failed: test/n2/web\n"


def test_a_failed_health_check_shows_the_logs_then_the_error_line(repo, fake):
    fake.answers["rollback"] = HealthCheckFailed("test/n1/web did not become healthy", container="web-next",
                                                 logs="starting\npanic: no config\n")
    result = cli(repo, "rollback", "test/n1/web", "--steps", "2")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == ("--- last log lines of web-next ---\nstarting\npanic: no config\n---\n"
                             "error: test/n1/web did not become healthy\n")
    assert fake.calls[0][2]["steps"] == 2 and fake.calls[0][2]["wait"] == 0.0


def test_status_table_and_exit_code(repo, fake):
    row = NS(target="test/n1/web", image="a:1", running_image=None, state="missing", detail="not running",
             match=False, to_json=lambda: {"target": "test/n1/web"})
    fake.answers["status"] = [row]
    result = cli(repo, "status", "--parallel", "3")
    assert result.exit_code == 2  # drift (it was 1 before the exit code scheme: 1 is now a node not read)
    assert result.stdout == ("TARGET       WRITTEN  RUNNING  STATE    DETAIL\n"
                             "test/n1/web  a:1      -        missing  not running\n")
    assert fake.calls[0] == ("status", (None,), {"parallel": 3})
    fake.answers["status"] = [NS(**{**row.__dict__, "match": True})]
    assert cli(repo, "status", "test", "--json").exit_code == 0
    assert fake.calls[-1] == ("status", (["test"],), {"parallel": 64})
    fake.answers["status"] = [row, NS(**{**row.__dict__, "target": "test/n2/x", "state": "unreachable"})]
    assert cli(repo, "status").exit_code == 1  # a node not read wins over drift


def test_plan_lines_and_exit_codes(repo, fake):
    change = NS(target="test/n1/web", action="recreate", reasons=["image a:1 -> a:2", "env changed"])
    fake.answers["plan"] = [NS(node="test/n1", error=None, changes=[change], pending=[change]),
                            NS(node="test/n2", error=None, changes=[], pending=[])]
    result = cli(repo, "plan")
    assert result.exit_code == 2
    assert result.stdout == ("test/n1/web: recreate (image a:1 -> a:2; env changed)\n"
                             "plan: 1 to change, 0 nodes unreachable or failing\n")
    fake.answers["plan"] = [NS(node="test/n1", error="unreachable", changes=[], pending=[])]
    result = cli(repo, "plan", "--prune")
    assert result.exit_code == 1
    assert result.stdout == "test/n1: ERROR unreachable\nplan: 0 to change, 1 nodes unreachable or failing\n"
    assert fake.calls[-1][2] == {"prune": True, "parallel": 64}


def test_apply_lines(repo, fake):
    items = [NS(target="test/n1/web", action="recreate", status="ok", detail=""),
             NS(target="test/n1/db", action="none", status="ok", detail="")]
    fake.answers["apply"] = [NS(node="test/n1", error=None, ok=True, items=items),
                             NS(node="test/n2", error="unreachable", ok=False, items=[])]
    result = cli(repo, "apply", "--settle", "1m", "--wait", "2")
    assert result.exit_code == 1
    assert result.stdout == "test/n1/web: recreate ok\ntest/n1: ok, 1 changed\ntest/n2: FAILED unreachable\n"
    assert fake.calls[0][2] == {"prune": False, "parallel": 64, "wait": 2.0,
                                   "swap": SwapOptions(settle=60.0, health_timeout=None)}


def test_history_table(repo, fake):
    entry = NS(time="2026-12-01 10:00", author="Ann", action="deploy", targets=["test/n1/web"],
               previous_image="a:1", image="a:2", short="abcdef0")
    fake.answers["history"] = [entry]
    result = cli(repo, "history", "test/n1/web", "-n", "5")
    assert result.exit_code == 0
    assert result.stdout == ("TIME              WHO  ACTION  TARGET       FROM  TO   COMMIT\n"
                             "2026-12-01 10:00  Ann  deploy  test/n1/web  a:1   a:2  abcdef0\n")
    assert fake.calls[0] == ("history", ("test/n1/web", 5), {})


# -- the automation contract under --json (issue 12) ----------------------------------------------


def test_a_partial_deploy_with_json_prints_one_document(repo, fake):
    """The result printed first is the document; the error line goes to stderr, no second JSON."""
    partial = deploy_result(target("test/n1/web"), target("test/n2/web", error="engine gone"))
    fake.answers["deploy"] = PartialDeploy(partial, "1 of 2 targets failed: test/n2/web")
    result = cli(repo, "deploy", "a:2", "test", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"image": "a:2", "commit": "abcdef0123456789"}
    assert result.stderr == "error: 1 of 2 targets failed: test/n2/web\n"


def test_a_failure_with_json_is_an_error_document_with_exit_1(repo, fake):
    from deployer.errors import HostUnreachable

    fake.answers["apply"] = HostUnreachable("test/n1", "unix:///x.sock", "connection refused")
    result = cli(repo, "apply", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": "node test/n1 (unix:///x.sock): connection refused",
                                         "exit_code": 1}
    assert result.stderr == "error: node test/n1 (unix:///x.sock): connection refused\n"


def test_plan_exit_codes_are_three_different_answers(repo, fake):
    """0 nothing to do, 2 changes pending, 1 a node failed, 3 bad input (an invalid repository: test_cli_contract)."""
    change = NS(target="test/n1/web", action="create", reasons=[], to_json=lambda: {})
    fake.answers["plan"] = [NS(node="test/n1", error=None, changes=[], pending=[], to_json=lambda: {})]
    assert cli(repo, "plan").exit_code == 0
    fake.answers["plan"] = [NS(node="test/n1", error=None, changes=[change], pending=[change], to_json=lambda: {})]
    assert cli(repo, "plan").exit_code == 2
    fake.answers["plan"] = [NS(node="test/n1", error="gone", changes=[], pending=[], to_json=lambda: {})]
    assert cli(repo, "plan").exit_code == 1
    assert cli(repo, "plan", "--parallel", "x").exit_code == 3
