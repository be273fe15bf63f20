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


def test_a_deploy_transaction_runs_ten_git_processes(repo, monkeypatch):
    calls: list[list[str]] = []
    real = gitmod.run

    def counting(args, cwd=None, **kwargs):
        calls.append(list(args))
        return real(args, cwd, **kwargs)

    monkeypatch.setattr(gitmod, "run", counting)
    sha = deploy_like(repo)
    assert git(repo, "rev-parse", "HEAD") == sha
    assert git(repo, "show", "HEAD:" + COMPOSE) == "services:\n  web:\n    image: web:2"
    # open 1, upstream lookup 4, clean check 1, identity 1, ls-files 1, commit 1, rev-parse 1
    assert len(calls) == 10, calls
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
