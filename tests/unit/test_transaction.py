"""gitrepo.transaction: the one repository transaction, on temporary git repositories (no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.errors import DirtyFileError, LockHeld, RepoError
from deployer.gitrepo.commit import ACTION_DEPLOY, ACTION_NODE_ADD, deployer_trailers
from deployer.gitrepo.lock import DeployLock
from deployer.gitrepo.transaction import RepoTransaction, sha256_text
from tests.support.repos import git

COMPOSE = "datacenters/dev/dev1/docker-compose.yml"


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "infra"
    (root / "datacenters/dev/dev1").mkdir(parents=True)
    (root / "datacenters/dev/dev1/node.yml").write_text("docker: unix:///var/run/docker.sock\n")
    (root / COMPOSE).write_text("services:\n  web:\n    image: web:1\n")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


def trailers(image: str = "web:2"):
    return deployer_trailers(ACTION_DEPLOY, ["dev/dev1/web"], image=image, previous_images=["web:1"])


def test_commit_writes_commits_exactly_the_staged_files_and_releases(root):
    (root / "unrelated.txt").write_text("left alone\n")
    with RepoTransaction(root) as tx:
        tx.require_clean(COMPOSE)
        tx.stage(COMPOSE, "services:\n  web:\n    image: web:2\n")
        done = tx.commit("deploy dev/dev1/web: web:1 -> web:2", trailers(), reason="because", author="Ann <a@x>")
    assert done.sha == git(root, "rev-parse", "HEAD") == done.local and done.pushed is None
    assert done.files == [COMPOSE]
    assert git(root, "show", "--name-only", "--format=", "HEAD") == COMPOSE
    assert git(root, "log", "-1", "--format=%an <%ae>") == "Ann <a@x>"
    body = git(root, "log", "-1", "--format=%B")
    assert body.splitlines()[:3] == ["deploy dev/dev1/web: web:1 -> web:2", "", "because"]
    assert "Deployer-Action: deploy\nDeployer-Target: dev/dev1/web\nDeployer-Image: web:2\n" \
           "Deployer-Previous-Image: web:1" in body
    assert git(root, "status", "--porcelain") == "?? unrelated.txt"
    assert not (root / ".git/deployer.journal").exists()
    with DeployLock(root / ".git"):  # released: takes at once
        pass


def test_a_second_transaction_waits_then_fails_with_the_holder(root):
    with RepoTransaction(root, command="deployer deploy web:2 dev/dev1"):
        with pytest.raises(LockHeld, match=r"deployer deploy web:2 dev/dev1"):
            with RepoTransaction(root, wait=0.2):
                pass


def test_dirty_file_is_refused(root):
    (root / COMPOSE).write_text("services: {}\n")
    with pytest.raises(DirtyFileError, match="uncommitted changes"):
        with RepoTransaction(root) as tx:
            tx.require_clean(COMPOSE)


def test_dry_run_takes_no_lock_checks_nothing_and_cannot_commit(root):
    (root / COMPOSE).write_text("services: {}\n")
    with DeployLock(root / ".git"):
        with RepoTransaction(root, dry_run=True) as tx:
            tx.require_clean(COMPOSE)  # a dry run checks nothing
            tx.stage(COMPOSE, "x")
            with pytest.raises(RepoError, match="dry run"):
                tx.commit("s", trailers())


def test_the_project_checkout_is_refused(root):
    (root / "setup.cfg").write_text("[metadata]\nname = deployer\n")
    (root / "deployer/ops").mkdir(parents=True)
    with pytest.raises(RepoError, match="is the deployer project itself"):
        with RepoTransaction(root):
            pass


def _journal(root: Path, files: list[dict], subject: str = "deploy dev/dev1/web: web:1 -> web:2") -> None:
    lock = DeployLock(root / ".git", {"pid": 0, "command": "dead deployer"})
    lock.acquire()
    lock.journal_write({"files": files, "subject": subject, "message": "reason",
                        "trailers": [list(t) for t in trailers()], "author": None})
    lock.release()


def test_an_interrupted_commit_is_finished_by_the_next_transaction(root):
    text = "services:\n  web:\n    image: web:2\n"
    _journal(root, [{"file": COMPOSE, "sha256": sha256_text(text.encode())}])
    (root / COMPOSE).write_text(text)  # written, never committed: the deployer died here
    said = []
    with RepoTransaction(root, progress=said.append):
        pass
    assert said == [f"finishing an interrupted deploy: committing {COMPOSE}"]
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "log", "-1", "--format=%s") == "deploy dev/dev1/web: web:1 -> web:2"
    assert not (root / ".git/deployer.journal").exists()


def test_a_journal_whose_files_were_changed_since_is_dropped_not_committed(root):
    _journal(root, [{"file": COMPOSE, "sha256": sha256_text(b"what it meant to write")}])
    (root / COMPOSE).write_text("services: {}\n")  # someone else's edit
    with RepoTransaction(root):
        pass
    assert git(root, "log", "-1", "--format=%s") == "init"
    assert git(root, "diff", "--name-only") == COMPOSE  # left as it is, for its owner
    assert not (root / ".git/deployer.journal").exists()


def test_an_interrupted_delete_is_finished_too(root):
    rel = "datacenters/dev/dev1/node.yml"
    _journal(root, [{"file": rel, "sha256": None}], subject="remove node dev/dev1")
    (root / rel).unlink()
    with RepoTransaction(root):
        pass
    assert git(root, "log", "-1", "--format=%s") == "remove node dev/dev1"
    assert rel not in git(root, "ls-files")


def _refuse_commits(root: Path) -> None:
    hook = root / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
    hook.chmod(0o755)


def test_when_containers_already_changed_a_failed_commit_keeps_files_and_journal(root):
    _refuse_commits(root)
    new = "services:\n  web:\n    image: web:2\n"
    with pytest.raises(RepoError, match="refused by hook"):
        with RepoTransaction(root) as tx:
            tx.stage(COMPOSE, new)
            tx.commit("deploy dev/dev1/web: web:1 -> web:2", trailers(), world_changed=True)
    assert (root / COMPOSE).read_text() == new  # what runs
    journal = json.loads((root / ".git/deployer.journal").read_text())
    assert journal["files"] == [{"file": COMPOSE, "sha256": sha256_text(new.encode())}]
    (root / ".git/hooks/pre-commit").unlink()
    with RepoTransaction(root):  # the next command converges the repository on what runs
        pass
    assert git(root, "log", "-1", "--format=%s") == "deploy dev/dev1/web: web:1 -> web:2"
    assert git(root, "status", "--porcelain") == ""


def test_when_nothing_else_changed_a_failed_commit_puts_everything_back(root):
    _refuse_commits(root)
    before = (root / COMPOSE).read_bytes()
    with pytest.raises(RepoError, match="refused by hook"):
        with RepoTransaction(root) as tx:
            tx.write("datacenters/new/n1/node.yml", "docker: unix:///x.sock\n")
            tx.stage(COMPOSE, "services: {}\n")
            tx.commit("add node new/n1", deployer_trailers(ACTION_NODE_ADD, ["new/n1"]), world_changed=False)
    assert (root / COMPOSE).read_bytes() == before
    assert not (root / "datacenters/new").exists()
    assert not (root / ".git/deployer.journal").exists()
    assert git(root, "status", "--porcelain") == ""


def test_files_written_early_are_undone_when_the_block_fails_before_committing(root):
    with pytest.raises(RuntimeError):
        with RepoTransaction(root) as tx:
            tx.write("datacenters/new/n1/node.yml", "docker: unix:///x.sock\n")
            assert (root / "datacenters/new/n1/node.yml").exists()
            raise RuntimeError("the engine did not answer")
    assert not (root / "datacenters/new").exists()
    assert git(root, "status", "--porcelain") == ""


def test_deleting_files_removes_emptied_folders_but_not_top_level_ones(root):
    with RepoTransaction(root) as tx:
        for rel in git(root, "ls-files", "datacenters/dev/dev1").split("\n"):
            tx.stage(rel, None)
        tx.commit("remove node dev/dev1", deployer_trailers("node-remove", ["dev/dev1"]), world_changed=False)
    assert not (root / "datacenters/dev").exists()  # the datacenter had no other node
    assert (root / "datacenters").is_dir()
    assert git(root, "ls-files") == ""


def test_with_a_remote_it_pulls_first_and_pushes_after(root, tmp_path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "-u", "origin", "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other))
    (other / "datacenters/dev/dev1/node.yml").write_text("docker: unix:///other.sock\n")
    git(other, "commit", "-qam", "someone else's change")
    git(other, "push", "-q")
    said = []
    with RepoTransaction(root, progress=said.append) as tx:
        assert (root / "datacenters/dev/dev1/node.yml").read_text() == "docker: unix:///other.sock\n"  # pulled
        tx.stage(COMPOSE, "services:\n  web:\n    image: web:2\n")
        done = tx.commit("deploy dev/dev1/web: web:1 -> web:2", trailers())
    assert said == ["bringing the repository up to date", "pushing the commit"]
    assert done.pushed == git(remote, "rev-parse", "main") == git(root, "rev-parse", "HEAD")
