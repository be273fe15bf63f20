"""How many git processes a deploy's repository transaction starts, and that its commit starts no maintenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import RepoError
from deployer.gitrepo import git as gitmod
from deployer.gitrepo.commit import ACTION_DEPLOY, deployer_trailers
from deployer.gitrepo.repo import InfraRepo
from deployer.gitrepo.transaction import RepoTransaction
from tests.support.repos import git

COMPOSE = "datacenters/dev/dev1/docker-compose.yml"


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "infra"
    (root / "datacenters" / "dev" / "dev1").mkdir(parents=True)
    (root / COMPOSE).write_text("services:\n  web:\n    image: web:1\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def deploy_like(root: Path) -> str:
    with RepoTransaction(root) as tx:
        tx.require_clean(COMPOSE)
        tx.stage(COMPOSE, "services:\n  web:\n    image: web:2\n")
        return tx.commit("deploy dev/dev1/web: web:1 -> web:2",
                         deployer_trailers(ACTION_DEPLOY, ["dev/dev1/web"], image="web:2",
                                           previous_images=["web:1"])).sha


@pytest.fixture
def git_calls(monkeypatch) -> list[list[str]]:
    """Every git process the deployer starts from now on, by its arguments."""
    calls: list[list[str]] = []
    real = gitmod.run

    def counting(args, cwd=None, **kwargs):
        calls.append(list(args))
        return real(args, cwd, **kwargs)

    monkeypatch.setattr(gitmod, "run", counting)
    return calls


def test_a_deploy_transaction_runs_nine_git_processes(repo, git_calls):
    calls = git_calls
    sha = deploy_like(repo)
    assert git(repo, "rev-parse", "HEAD") == sha
    assert git(repo, "show", "HEAD:" + COMPOSE) == "services:\n  web:\n    image: web:2"
    # open 1, upstream lookup 3 (branch, its config, the remotes), clean check 1, identity 1, ls-files 1,
    # commit 1, rev-parse 1
    assert len(calls) == 9, calls
    commit = next(c for c in calls if "commit" in c)
    assert commit[commit.index("maintenance.auto=false") - 1] == "-c"
    assert commit[commit.index("gc.auto=0") - 1] == "-c"


def packs(root: Path) -> int:
    counts = dict(line.split(": ") for line in git(root, "count-objects", "-v").splitlines())
    return int(counts["packs"])


def test_the_commit_starts_no_automatic_maintenance(repo):
    # two packs and a limit of one, gc in the foreground: a commit that runs auto maintenance repacks them into one
    git(repo, "repack", "-q")
    (repo / "y").write_text("y\n")
    git(repo, "add", "y")
    git(repo, "commit", "-q", "-m", "y")
    git(repo, "repack", "-q")
    git(repo, "config", "gc.autoPackLimit", "1")
    git(repo, "config", "gc.autoDetach", "false")
    git(repo, "config", "maintenance.autoDetach", "false")
    assert packs(repo) == 2
    deploy_like(repo)
    assert packs(repo) == 2  # nothing repacked them
    (repo / "x").write_text("x\n")  # a plain `git commit` here does: the check above can fail
    git(repo, "add", "x")
    git(repo, "commit", "-q", "-m", "x")
    assert packs(repo) == 1


def test_open_says_why_in_one_process_or_two(tmp_path):
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    with pytest.raises(RepoError, match="is a bare git repository"):
        InfraRepo.open(bare)
    with pytest.raises(RepoError, match="is a bare git repository"):
        InfraRepo.open(bare / "refs")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepoError, match="is not a git repository$"):
        InfraRepo.open(plain)


def test_a_team_deploy_looks_its_upstream_up_once(repo, tmp_path, git_calls):
    # a clone whose main tracks origin/main: the transaction asks for the upstream before the pull, in the
    # pull and in the push; it is looked up once (the branch, then its config: two processes)
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(remote))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(remote), str(clone))
    git(clone, "config", "branch.main.merge", "refs/heads/main")  # as git clone wrote it, set again
    git_calls.clear()
    sha = deploy_like(clone)
    assert git(remote, "rev-parse", "main") == sha  # pulled, committed, pushed
    lookups = [c for c in git_calls if c[:1] == ["symbolic-ref"] or c[:3] == ["config", "-z", "--get-regexp"]]
    assert lookups == [["symbolic-ref", "--quiet", "--short", "HEAD"],
                       ["config", "-z", "--get-regexp", r"^branch\."]], git_calls
    assert not any(c[:1] == ["remote"] for c in git_calls)  # the upstream was found: no listing of remotes


def test_the_upstream_is_the_last_value_of_the_branch_config_as_git_config_get_gives_it(repo, tmp_path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "team", str(remote))
    git(repo, "config", "branch.main.remote", "team")
    git(repo, "config", "--add", "branch.main.merge", "refs/heads/old")
    git(repo, "config", "--add", "branch.main.merge", "refs/heads/main")
    git(repo, "config", "branch.main.x.remote", "decoy")  # another branch's key, with a dot in its name
    with InfraRepo.open(repo) as infra:
        assert infra._remote_spec() == ("team", "refs/heads/main", "main")
    assert git(repo, "config", "--get", "branch.main.merge") == "refs/heads/main"
