"""Team use of the infrastructure repository through a shared git remote.

Real git throughout: a bare repository plays the team's remote, clones play
the operators' machines. No Docker engine is needed.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from deployer.errors import RepoError
from deployer.gitrepo.remote import UNPUSHED_REF_PREFIX
from deployer.gitrepo.repo import InfraRepo

COMPOSE = "datacenters/dev/dev1/docker-compose.yml"
INITIAL = """\
services:
  web:
    image: registry.example.com/web:1
  worker:
    image: registry.example.com/worker:1
"""


def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def set_image(text: str, service: str, image: str) -> str:
    out, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("  ") and not line.startswith("    ") and line.strip().endswith(":"):
            current = line.strip()[:-1]
        if current == service and line.strip().startswith("image:"):
            line = f"    image: {image}\n"
        out.append(line)
    return "".join(out)


def deploy(repo: InfraRepo, service: str, image: str) -> str:
    """What a deploy does to the repository: edit one image line, commit that file."""
    text = set_image((repo.root / COMPOSE).read_text(), service, image)
    return repo.commit_file(COMPOSE, text, f"deploy dev/dev1/{service}: {image}",
                            [("Deployer-Action", "deploy"), ("Deployer-Target", f"dev/dev1/{service}")])


@pytest.fixture
def team(tmp_path):
    """(remote, operator A's clone, operator B's clone), all at the same first commit."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    (seed / "datacenters/dev/dev1").mkdir(parents=True)
    (seed / "datacenters/dev/dev1/node.yml").write_text("docker: unix:///var/run/docker.sock\n")
    (seed / COMPOSE).write_text(INITIAL)
    (seed / "README").write_text("infrastructure\n")
    git(seed, "init", "-q", "-b", "main")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "initial infrastructure")
    git(seed, "push", "-q", str(remote), "main")
    clones = []
    for name in ("a", "b"):
        git(tmp_path, "clone", "-q", str(remote), name)
        clones.append(tmp_path / name)
    return remote, clones[0], clones[1]


def status(root: Path) -> str:
    return git(root, "status", "--porcelain")


def rebase_in_progress(root: Path) -> bool:
    return any((root / ".git" / d).exists() for d in ("rebase-merge", "rebase-apply"))


def remote_log(remote: Path) -> list[str]:
    return git(remote, "log", "--format=%s", "main").splitlines()


# -- has_remote, and no remote at all ---------------------------------------------


def test_without_a_remote_sync_and_push_do_nothing(tmp_path):
    root = tmp_path / "solo"
    (root / "datacenters/dev/dev1").mkdir(parents=True)
    (root / COMPOSE).write_text(INITIAL)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    head = git(root, "rev-parse", "HEAD")
    with InfraRepo.open(root) as repo:
        assert repo.has_remote() is False
        assert repo.sync() is False
        deploy(repo, "web", "registry.example.com/web:2")
        assert repo.push_with_retry() is None
    assert git(root, "rev-parse", "HEAD~1") == head
    assert status(root) == ""


def test_has_remote_upstream_origin_or_neither(team, tmp_path):
    remote, a, _b = team
    with InfraRepo.open(a) as repo:
        assert repo.has_remote()  # a clone: main tracks origin/main
    # an upstream under another name than origin
    git(a, "remote", "rename", "origin", "team")
    with InfraRepo.open(a) as repo:
        assert repo.has_remote()
        assert repo._remote_spec() == ("team", "refs/heads/main", "main")
    # a remote, but neither origin nor the branch's upstream
    git(a, "branch", "--unset-upstream")
    with InfraRepo.open(a) as repo:
        assert not repo.has_remote()
    # origin without an upstream
    git(a, "remote", "rename", "team", "origin")
    with InfraRepo.open(a) as repo:
        assert repo.has_remote()
        assert repo._remote_spec() == ("origin", "refs/heads/main", "main")


# -- push_with_retry ------------------------------------------------------------------


def test_push_without_competition(team):
    remote, a, _b = team
    with InfraRepo.open(a) as repo:
        sha = deploy(repo, "web", "registry.example.com/web:2")
        assert repo.push_with_retry() == sha
    assert git(remote, "rev-parse", "main") == sha
    assert git(a, "rev-parse", "origin/main") == sha  # the tracking ref follows


def test_second_push_is_rebased_onto_the_first(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        b_sha = deploy(rb, "worker", "registry.example.com/worker:2")  # on the older base
        assert ra.push_with_retry() == a_sha
        pushed = rb.push_with_retry()
    assert pushed is not None and pushed != b_sha  # rebased: a new commit
    assert git(remote, "rev-parse", "main") == pushed == git(b, "rev-parse", "HEAD")
    assert remote_log(remote) == [
        "deploy dev/dev1/worker: registry.example.com/worker:2",
        "deploy dev/dev1/web: registry.example.com/web:2",
        "initial infrastructure",
    ]
    assert git(remote, "rev-list", "--merges", "main") == ""  # linear
    assert git(remote, "rev-parse", "main~1") == a_sha
    # the rebased commit keeps its message and trailers
    body = git(remote, "log", "-1", "--format=%B", "main")
    assert "Deployer-Target: dev/dev1/worker" in body
    text = git(remote, "show", f"main:{COMPOSE}")
    assert "web:2" in text and "worker:2" in text
    assert status(b) == "" and not rebase_in_progress(b)


def test_same_line_changed_twice_stops_with_a_conflict(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        b_sha = deploy(rb, "web", "registry.example.com/web:3")
        ra.push_with_retry()
        with pytest.raises(RepoError) as exc:
            rb.push_with_retry()
        message = str(exc.value)
        refs = rb.unpushed_refs()
    assert f"push rejected and rebase hit a conflict in {COMPOSE}: another operator changed it; " \
           f"your deploy commit {b_sha[:12]} is kept locally at {UNPUSHED_REF_PREFIX}" in message
    assert "\n" not in message
    # B's clone: clean, no rebase left behind, at the agreed (remote) commit
    assert status(b) == ""
    assert not rebase_in_progress(b)
    assert git(b, "rev-parse", "HEAD") == a_sha
    assert "web:2" in (b / COMPOSE).read_text()
    # B's deploy is kept, on the ref the message names
    assert len(refs) == 1
    ref, sha = refs[0]
    assert ref in message and sha == b_sha
    assert git(b, "rev-parse", ref) == b_sha
    assert "web:3" in git(b, "show", f"{ref}:{COMPOSE}")
    # the remote has A's deploy only
    assert git(remote, "rev-parse", "main") == a_sha
    # and B can carry on: a new deploy from the agreed state pushes cleanly
    with InfraRepo.open(b) as rb:
        again = deploy(rb, "web", "registry.example.com/web:3")
        assert rb.push_with_retry() == again
    assert git(remote, "rev-parse", "main~1") == a_sha


def test_conflict_keeps_other_uncommitted_edits(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        deploy(rb, "web", "registry.example.com/web:3")
        ra.push_with_retry()
        (b / "README").write_text("infrastructure, edited by B\n")  # unrelated, uncommitted
        with pytest.raises(RepoError, match="rebase hit a conflict"):
            rb.push_with_retry()
    assert git(b, "rev-parse", "HEAD") == a_sha
    assert (b / "README").read_text() == "infrastructure, edited by B\n"
    assert status(b) == "M README"
    assert git(b, "stash", "list") == ""
    assert not rebase_in_progress(b)


def test_conflict_with_edits_in_the_same_file_keeps_the_branch(team):
    """reset --keep will not overwrite uncommitted edits: the commit stays on the branch too."""
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        deploy(ra, "web", "registry.example.com/web:2")
        b_sha = deploy(rb, "web", "registry.example.com/web:3")
        ra.push_with_retry()
        edited = (b / COMPOSE).read_text() + "# a note by B\n"
        (b / COMPOSE).write_text(edited)
        with pytest.raises(RepoError, match="still holds it because uncommitted edits"):
            rb.push_with_retry()
        assert rb.unpushed_refs()[0][1] == b_sha
    assert git(b, "rev-parse", "HEAD") == b_sha
    assert (b / COMPOSE).read_text() == edited
    assert not rebase_in_progress(b)


def test_push_carries_uncommitted_edits_through_the_rebase(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
        deploy(rb, "worker", "registry.example.com/worker:2")
        (b / "README").write_text("edited\n")
        assert rb.push_with_retry() == git(remote, "rev-parse", "main")
    assert (b / "README").read_text() == "edited\n"
    assert status(b) == "M README"
    assert git(b, "stash", "list") == ""


def test_push_refused_by_the_remote_is_not_retried(team):
    remote, a, _b = team
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'deploys are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    with InfraRepo.open(a) as ra:
        sha = deploy(ra, "web", "registry.example.com/web:2")
        with pytest.raises(RepoError) as exc:
            ra.push_with_retry()
    assert "git push to origin main failed" in str(exc.value)
    assert f"your commit {sha[:12]} is kept locally" in str(exc.value)
    assert git(a, "rev-parse", "HEAD") == sha  # nothing reset
    hook.unlink()
    with InfraRepo.open(a) as ra:
        assert ra.push_with_retry() == sha  # goes out with the next push


def test_push_to_an_unreachable_remote(team, tmp_path):
    _remote, a, _b = team
    git(a, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    with InfraRepo.open(a) as ra:
        sha = deploy(ra, "web", "registry.example.com/web:2")
        with pytest.raises(RepoError, match="git push to origin main failed"):
            ra.push_with_retry()
    assert git(a, "rev-parse", "HEAD") == sha


def test_push_gives_up_after_max_attempts(team, monkeypatch):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        deploy(rb, "worker", "registry.example.com/worker:2")
        real_fetch = InfraRepo._fetch
        n = {"images": 2}

        def fetch_while_someone_else_pushes(self, *args):
            sha = real_fetch(self, *args)
            n["images"] += 1  # another operator pushes right after each of our fetches
            deploy(ra, "web", f"registry.example.com/web:{n['images']}")
            ra.push_with_retry()
            return sha

        deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
        monkeypatch.setattr(InfraRepo, "_fetch", fetch_while_someone_else_pushes)
        with pytest.raises(RepoError, match="still rejected after 3 attempts"):
            rb.push_with_retry(max_attempts=3)
    assert not rebase_in_progress(b) and status(b) == ""


def test_first_push_to_an_empty_remote_through_origin(tmp_path):
    remote = tmp_path / "empty.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    root = tmp_path / "work"
    (root / "datacenters/dev/dev1").mkdir(parents=True)
    (root / COMPOSE).write_text(INITIAL)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    git(root, "remote", "add", "origin", str(remote))
    with InfraRepo.open(root) as repo:
        assert repo.has_remote()
        assert repo.sync() is False  # the remote has no main yet
        sha = repo.push_with_retry()
    assert git(remote, "rev-parse", "main") == sha == git(root, "rev-parse", "HEAD")


def test_concurrent_pushes_from_many_clones_all_land(team, tmp_path):
    remote = team[0]
    roots = [team[1], team[2]]
    for name in ("c", "d", "e"):
        git(tmp_path, "clone", "-q", str(remote), name)
        roots.append(tmp_path / name)
    repos = [InfraRepo.open(r) for r in roots]
    for i, repo in enumerate(repos):  # each operator adds its own file
        path = repo.root / f"datacenters/dev/dev1/note-{i}.txt"
        path.write_text(f"{i}\n")
        repo.commit_paths([path], f"note {i}")
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(repos))

    def push(repo: InfraRepo) -> None:
        try:
            barrier.wait()
            repo.push_with_retry(max_attempts=len(repos) + 1)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(r,)) for r in repos]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for repo in repos:
        repo.close()
    assert errors == []
    log = remote_log(remote)
    assert sorted(log[:len(repos)]) == sorted(f"note {i}" for i in range(len(repos)))
    assert git(remote, "rev-list", "--merges", "main") == ""


# -- sync -----------------------------------------------------------------------------


def test_sync_pulls_the_other_operators_change(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
    with InfraRepo.open(b) as rb:
        assert rb.sync() is True
        assert git(b, "rev-parse", "HEAD") == a_sha
        assert "web:2" in (b / COMPOSE).read_text()
        assert rb.sync() is False  # already up to date
    assert status(b) == ""


def test_sync_keeps_uncommitted_edits(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
    (b / "README").write_text("B is editing this\n")
    (b / "untracked.txt").write_text("scratch\n")
    with InfraRepo.open(b) as rb:
        assert rb.sync() is True
    assert git(b, "rev-parse", "HEAD") == a_sha
    assert (b / "README").read_text() == "B is editing this\n"
    assert (b / "untracked.txt").read_text() == "scratch\n"
    assert git(b, "stash", "list") == ""


def test_sync_rebases_unpushed_local_commits(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
        deploy(rb, "worker", "registry.example.com/worker:2")
        assert rb.sync() is True
    assert git(b, "rev-parse", "HEAD~1") == a_sha
    assert git(b, "log", "-1", "--format=%s") == "deploy dev/dev1/worker: registry.example.com/worker:2"


def test_sync_refuses_a_divergence_rebase_cannot_resolve(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
        b_sha = deploy(rb, "web", "registry.example.com/web:3")
        with pytest.raises(RepoError) as exc:
            rb.sync()
    assert "cannot bring" in str(exc.value) and COMPOSE in str(exc.value)
    assert "nothing was changed" in str(exc.value)
    assert git(b, "rev-parse", "HEAD") == b_sha
    assert status(b) == ""
    assert not rebase_in_progress(b)


def test_sync_refuses_while_a_rebase_is_in_progress(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra, InfraRepo.open(b) as rb:
        deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
        deploy(rb, "web", "registry.example.com/web:3")
    git(b, "fetch", "-q")
    git(b, "rebase", "origin/main", check=False)  # conflicts, left in progress
    assert rebase_in_progress(b)
    with InfraRepo.open(b) as rb:
        with pytest.raises(RepoError, match="a rebase is in progress"):
            rb.sync()
        with pytest.raises(RepoError, match="a rebase is in progress"):
            rb.push_with_retry()


def test_sync_on_a_detached_head_is_refused(team):
    _remote, a, _b = team
    git(a, "checkout", "-q", "--detach")
    with InfraRepo.open(a) as ra:
        assert ra.has_remote()
        with pytest.raises(RepoError, match="HEAD is detached"):
            ra.sync()


def test_sync_when_uncommitted_edits_conflict_with_incoming_changes(team):
    remote, a, b = team
    with InfraRepo.open(a) as ra:
        a_sha = deploy(ra, "web", "registry.example.com/web:2")
        ra.push_with_retry()
    (b / COMPOSE).write_text(set_image(INITIAL, "web", "registry.example.com/web:local-edit"))
    with InfraRepo.open(b) as rb:
        with pytest.raises(RepoError) as exc:
            rb.sync()
    assert "your uncommitted changes conflict" in str(exc.value) and COMPOSE in str(exc.value)
    assert "git stash list" in str(exc.value)
    assert git(b, "rev-parse", "HEAD") == a_sha  # the pull itself happened
    assert not rebase_in_progress(b)
    assert "web:local-edit" in git(b, "stash", "show", "-p", "stash@{0}")  # the edit is safe
