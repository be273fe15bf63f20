"""deployer.gitrepo.history against real git repositories in temp directories."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.errors import DirtyFileError, RepoError, RollbackError
from deployer.gitrepo import commit as history
from deployer.gitrepo.commit import (
    TRAILER_ACTION,
    TRAILER_IMAGE,
    TRAILER_IMAGE_ID,
    TRAILER_PREVIOUS_IMAGE,
    TRAILER_ROLLBACK_TO,
    TRAILER_TARGET,
)
from deployer.gitrepo.history import HistoryEntry, Version
from deployer.gitrepo.repo import InfraRepo

COMPOSE = "datacenters/dev/dev1/docker-compose.yml"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def git_env(tmp_path, monkeypatch):
    """Isolate git from the machine: temp HOME, no system config, known identity."""
    home = tmp_path / "home"
    home.mkdir()
    for var in list(os.environ):
        if var.startswith("GIT_") or var in ("EMAIL",):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test Operator\n\temail = operator@example.com\n[init]\n\tdefaultBranch = main\n"
    )
    return home


def git(cwd: Path, *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args], input=input, capture_output=True, text=True, env=os.environ.copy()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def compose(**images: str) -> str:
    lines = ["services:"]
    for name, image in images.items():
        lines += [f"  {name}:", f"    image: {image}", "    restart: always"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "infra"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "datacenters/dev/dev1").mkdir(parents=True)
    (root / COMPOSE).write_text(compose(worker="reg/worker:1", web="reg/web:1"))
    (root / "README.md").write_text("infra\n")
    (root / "notes.txt").write_text("notes\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture
def repo(root) -> InfraRepo:
    r = InfraRepo.open(root)
    yield r
    r.close()


def deploy(repo: InfraRepo, service: str, image: str, previous: str | None = None, reason: str = "", **images) -> str:
    """Commit a deploy of one service on dev/dev1 (other services given in images)."""
    target = f"dev/dev1/{service}"
    msg = f"deploy {target}: {image}" + (f"\n\n{reason}" if reason else "")
    return repo.commit_file(
        COMPOSE,
        compose(**{service: image, **images}) if images else compose(**{service: image}),
        msg,
        {TRAILER_ACTION: "deploy", TRAILER_TARGET: target, TRAILER_IMAGE: image, TRAILER_PREVIOUS_IMAGE: previous},
    )


def status_of(root: Path, path: str) -> str:
    return git(root, "status", "--porcelain=v1", "--untracked-files=all", "--", path)


def assert_fsck_clean(root: Path) -> None:
    proc = subprocess.run(["git", "-C", str(root), "fsck", "--strict", "--full"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower() and "missing" not in proc.stderr.lower(), proc.stderr


# -- opening ---------------------------------------------------------------------


def test_open_root(root):
    with InfraRepo.open(root) as r:
        assert r.root == root.resolve()
        assert r.git_dir == (root / ".git").resolve()


def test_open_not_a_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepoError) as exc:
        InfraRepo.open(plain)
    assert str(exc.value) == f"{plain} is not a git repository"


def test_open_missing_path(tmp_path):
    with pytest.raises(RepoError, match="is not a git repository"):
        InfraRepo.open(tmp_path / "nope")


def test_open_subdirectory_is_refused(root):
    with pytest.raises(RepoError, match="is not the root of a git repository"):
        InfraRepo.open(root / "datacenters")


def test_relpath_outside_repo_refused(repo):
    with pytest.raises(RepoError):
        repo.is_dirty("../elsewhere.yml")
    with pytest.raises(RepoError):
        repo.is_dirty(".git/config")


def test_module_import_does_not_import_git_or_yaml():
    code = (
        "import sys, deployer.gitrepo.repo, deployer.gitrepo.lock\n"
        "bad = [m for m in ('git', 'ruamel.yaml') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)


# -- dirty detection ---------------------------------------------------------------


def test_clean_file(repo):
    assert repo.is_dirty(COMPOSE) is False
    repo.require_clean(COMPOSE)


def test_unstaged_change_is_dirty(repo, root):
    (root / COMPOSE).write_text(compose(worker="reg/worker:9"))
    assert repo.is_dirty(COMPOSE)
    with pytest.raises(DirtyFileError) as exc:
        repo.require_clean(COMPOSE)
    assert str(exc.value) == (
        "datacenters/dev/dev1/docker-compose.yml has uncommitted changes; commit or stash them first"
    )


def test_staged_change_is_dirty(repo, root):
    (root / COMPOSE).write_text(compose(worker="reg/worker:9"))
    git(root, "add", COMPOSE)
    assert repo.is_dirty(COMPOSE)


def test_staged_then_reverted_in_worktree_is_still_dirty(repo, root):
    original = (root / COMPOSE).read_text()
    (root / COMPOSE).write_text(compose(worker="reg/worker:9"))
    git(root, "add", COMPOSE)
    (root / COMPOSE).write_text(original)
    assert repo.is_dirty(COMPOSE)


def test_untracked_file_is_dirty(repo, root):
    (root / "datacenters/dev/dev2").mkdir(parents=True)
    (root / "datacenters/dev/dev2/docker-compose.yml").write_text(compose(web="reg/web:1"))
    assert repo.is_dirty("datacenters/dev/dev2/docker-compose.yml")
    assert not repo.is_dirty(COMPOSE)  # other files' state does not matter


def test_absolute_path_accepted(repo, root):
    assert repo.is_dirty(root / COMPOSE) is False


# -- committing ----------------------------------------------------------------------


def test_commit_file_commits_only_that_file(repo, root):
    # another file staged, another modified (unstaged), another untracked
    (root / "README.md").write_text("staged change\n")
    git(root, "add", "README.md")
    (root / "notes.txt").write_text("unstaged change\n")
    (root / "scratch.txt").write_text("untracked\n")
    (root / "added.txt").write_text("new and staged\n")
    git(root, "add", "added.txt")
    before = {p: status_of(root, p) for p in ("README.md", "notes.txt", "scratch.txt", "added.txt")}
    staged_diff = git(root, "diff", "--cached", "--", "README.md")
    unstaged_diff = git(root, "diff", "--", "notes.txt")
    assert before == {
        "README.md": "M  README.md\n",
        "notes.txt": " M notes.txt\n",
        "scratch.txt": "?? scratch.txt\n",
        "added.txt": "A  added.txt\n",
    }

    sha = deploy(repo, "worker", "reg/worker:2", "reg/worker:1", web="reg/web:1")

    assert sha == git(root, "rev-parse", "HEAD").strip()
    assert git(root, "show", "--stat", "--format=", "HEAD").strip().splitlines()[0].split("|")[0].strip() == COMPOSE
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == [COMPOSE]
    assert {p: status_of(root, p) for p in before} == before
    assert git(root, "diff", "--cached", "--", "README.md") == staged_diff
    assert git(root, "diff", "--", "notes.txt") == unstaged_diff
    assert status_of(root, COMPOSE) == ""
    assert git(root, "show", f"HEAD:{COMPOSE}") == compose(worker="reg/worker:2", web="reg/web:1")
    assert not repo.is_dirty(COMPOSE)
    # no temp file left behind by the atomic write
    assert sorted(p.name for p in (root / "datacenters/dev/dev1").iterdir()) == ["docker-compose.yml"]
    assert_fsck_clean(root)


def test_commit_message_and_trailers_parse_back(repo, root):
    trailers = [
        (TRAILER_ACTION, "deploy"),
        (TRAILER_TARGET, "dev/dev1/worker"),
        (TRAILER_TARGET, "dev/dev2/worker"),
        (TRAILER_IMAGE, "reg/worker:2"),
        (TRAILER_PREVIOUS_IMAGE, "reg/worker:1"),
        (TRAILER_IMAGE_ID, "sha256:" + "ab" * 32),
    ]
    reason = "Fix the queue leak.\n# ticket 42 stays\n---\nNote: not a trailer"
    repo.commit_file(COMPOSE, compose(worker="reg/worker:2"), f"deploy worker: reg/worker:2\n\n{reason}", trailers)
    raw = git(root, "log", "-1", "--format=%B")
    lines = raw.rstrip("\n").split("\n")
    assert lines[0] == "deploy worker: reg/worker:2"
    assert lines[1] == ""
    assert "# ticket 42 stays" in lines  # not eaten by comment cleanup
    parsed = git(root, "interpret-trailers", "--parse", input=raw)
    assert parsed.splitlines() == [f"{k}: {v}" for k, v in trailers]
    # %(trailers) agrees, and the reason reads back without the trailer block
    entry = repo.deploy_log()[0]
    assert entry.reason == "Fix the queue leak.\n# ticket 42 stays\n ---\nNote: not a trailer"
    assert entry.targets == ["dev/dev1/worker", "dev/dev2/worker"]
    assert entry.image_id == "sha256:" + "ab" * 32
    assert_fsck_clean(root)


def test_trailers_as_dict_skip_empty_values(repo, root):
    repo.commit_file(
        COMPOSE,
        compose(worker="reg/worker:2"),
        "deploy",
        {TRAILER_ACTION: "deploy", TRAILER_TARGET: ["dev/dev1/worker"], TRAILER_PREVIOUS_IMAGE: None, TRAILER_IMAGE_ID: ""},
    )
    raw = git(root, "cat-file", "commit", "HEAD").split("\n\n", 1)[1]  # the exact message
    assert raw == "deploy\n\nDeployer-Action: deploy\nDeployer-Target: dev/dev1/worker\n"


def test_bad_trailers_rejected_before_writing(repo, root):
    before = (root / COMPOSE).read_bytes()
    with pytest.raises(ValueError):
        repo.commit_file(COMPOSE, "x: 1\n", "deploy", {"Bad Key": "v"})
    with pytest.raises(ValueError):
        repo.commit_file(COMPOSE, "x: 1\n", "deploy", {TRAILER_IMAGE: "a\nb"})
    with pytest.raises(ValueError):
        repo.commit_file(COMPOSE, "x: 1\n", "   ", {})
    assert (root / COMPOSE).read_bytes() == before


def test_author_override(repo, root):
    repo.commit_file(COMPOSE, compose(worker="reg/worker:2"), "deploy", {TRAILER_ACTION: "deploy"}, author="Alice Ops <alice@example.org>")
    assert git(root, "log", "-1", "--format=%an|%ae|%cn|%ce").strip() == (
        "Alice Ops|alice@example.org|Test Operator|operator@example.com"
    )
    with pytest.raises(RepoError, match="Name <email>"):
        repo.commit_file(COMPOSE, compose(worker="reg/worker:3"), "deploy", {}, author="alice")
    assert git(root, "show", f"HEAD:{COMPOSE}") == compose(worker="reg/worker:2")


def test_missing_git_identity_falls_back(root, git_env):
    (git_env / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    with InfraRepo.open(root) as repo:
        sha = repo.commit_file(COMPOSE, compose(worker="reg/worker:2"), "deploy", {TRAILER_ACTION: "deploy"})
    an, ae, cn, ce = git(root, "log", "-1", "--format=%an|%ae|%cn|%ce", sha).strip().split("|")
    assert an == cn == history.FALLBACK_NAME
    assert ae.startswith("deployer@") and ce == ae
    # an --author still works without identity (the committer falls back)
    with InfraRepo.open(root) as repo:
        repo.commit_file(COMPOSE, compose(worker="reg/worker:3"), "deploy", {}, author="Bob <bob@example.org>")
    assert git(root, "log", "-1", "--format=%an|%cn").strip() == f"Bob|{history.FALLBACK_NAME}"


def test_identity_from_environment_is_respected(root, git_env, monkeypatch):
    (git_env / ".gitconfig").write_text("")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Env Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "env@example.org")
    with InfraRepo.open(root) as repo:
        repo.commit_file(COMPOSE, compose(worker="reg/worker:2"), "deploy", {})
    assert git(root, "log", "-1", "--format=%an|%ae|%cn").strip() == f"Env Author|env@example.org|{history.FALLBACK_NAME}"


def test_commit_file_creates_new_file_in_new_directory(repo, root):
    (root / "README.md").write_text("staged\n")
    git(root, "add", "README.md")
    path = "datacenters/prod/p1/docker-compose.yml"
    repo.commit_file(path, compose(web="reg/web:7"), "add node prod/p1", {})
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == [path]
    assert status_of(root, "README.md") == "M  README.md\n"
    assert (root / path).stat().st_mode & 0o777 == 0o644
    assert_fsck_clean(root)


def test_commit_file_keeps_file_mode(repo, root):
    os.chmod(root / COMPOSE, 0o640)
    repo.commit_file(COMPOSE, compose(worker="reg/worker:2"), "deploy", {})
    assert (root / COMPOSE).stat().st_mode & 0o777 == 0o640


def test_commit_file_with_nothing_changed(repo, root):
    before = (root / COMPOSE).read_text()
    head = git(root, "rev-parse", "HEAD")
    with pytest.raises(RepoError, match="nothing to commit"):
        repo.commit_file(COMPOSE, before, "deploy", {})
    assert git(root, "rev-parse", "HEAD") == head


def test_failed_commit_restores_file(repo, root):
    hook = root / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\necho 'refused by hook' >&2\nexit 1\n")
    hook.chmod(0o755)
    (root / "README.md").write_text("staged\n")
    git(root, "add", "README.md")
    before_bytes = (root / COMPOSE).read_bytes()
    head = git(root, "rev-parse", "HEAD")
    with pytest.raises(RepoError, match="refused by hook"):
        repo.commit_file(COMPOSE, compose(worker="reg/worker:2"), "deploy", {})
    assert (root / COMPOSE).read_bytes() == before_bytes
    assert git(root, "rev-parse", "HEAD") == head
    assert status_of(root, COMPOSE) == ""
    assert status_of(root, "README.md") == "M  README.md\n"
    # a new file is removed again, and not left in the index
    new = "datacenters/dev/dev9/docker-compose.yml"
    with pytest.raises(RepoError):
        repo.commit_file(new, compose(web="reg/web:1"), "add", {})
    assert not (root / new).exists()
    assert status_of(root, new) == ""


def test_commit_refuses_symlink(repo, root):
    link = root / "datacenters/dev/dev1/link.yml"
    link.symlink_to("docker-compose.yml")
    git(root, "add", str(link))
    git(root, "commit", "-q", "-m", "link")
    with pytest.raises(RepoError, match="symbolic link"):
        repo.commit_file("datacenters/dev/dev1/link.yml", "x: 1\n", "deploy", {})


def test_commit_paths_commits_exactly_those_paths(repo, root):
    (root / "README.md").write_text("staged\n")
    git(root, "add", "README.md")
    (root / "notes.txt").write_text("unstaged\n")
    node = root / "datacenters/dev/dev2"
    node.mkdir(parents=True)
    (node / "node.yml").write_text("docker: unix:///var/run/docker.sock\n")
    (node / "docker-compose.yml").write_text(compose(web="reg/web:1"))
    (node / "unrelated.txt").write_text("leave me\n")
    (root / COMPOSE).write_text(compose(worker="reg/worker:5"))
    paths = ["datacenters/dev/dev2/node.yml", "datacenters/dev/dev2/docker-compose.yml", COMPOSE]
    sha = repo.commit_paths(paths, "add node dev/dev2\n\nnew capacity", {TRAILER_TARGET: "dev/dev2"}, author="A <a@b.c>")
    assert sorted(git(root, "show", "--name-only", "--format=", sha).split()) == sorted(paths)
    assert status_of(root, "README.md") == "M  README.md\n"
    assert status_of(root, "notes.txt") == " M notes.txt\n"
    assert status_of(root, "datacenters/dev/dev2/unrelated.txt") == "?? datacenters/dev/dev2/unrelated.txt\n"
    assert git(root, "log", "-1", "--format=%B").startswith("add node dev/dev2\n\nnew capacity\n\nDeployer-Target: dev/dev2")
    # a deleted file is committed as a deletion
    (node / "node.yml").unlink()
    sha2 = repo.commit_paths(["datacenters/dev/dev2/node.yml"], "remove", {})
    assert git(root, "show", "--name-status", "--format=", sha2).split() == ["D", "datacenters/dev/dev2/node.yml"]
    assert_fsck_clean(root)


def test_commit_paths_refuses_unknown_and_ignored_paths(repo, root):
    with pytest.raises(RepoError) as exc:
        repo.commit_paths(["datacenters/dev/nope.yml"], "x", {})
    assert str(exc.value) == "datacenters/dev/nope.yml does not exist and is not tracked by git; nothing to commit"
    (root / ".gitignore").write_text("*.secret\n")
    (root / "db.secret").write_text("hunter2\n")
    with pytest.raises(RepoError, match="db.secret is ignored by git"):
        repo.commit_paths(["db.secret"], "x", {})
    with pytest.raises(RepoError, match="ignored by git"):
        repo.commit_file("db.secret", "other\n", "x", {})
    assert (root / "db.secret").read_text() == "hunter2\n"
    assert git(root, "rev-list", "--count", "HEAD").strip() == "1"


def test_first_commit_in_empty_repository(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    with InfraRepo.open(root) as repo:
        assert repo.deploy_log() == []
        assert repo.service_versions(COMPOSE, "web") == []
        sha = repo.commit_file(COMPOSE, compose(web="reg/web:1"), "initial", {TRAILER_ACTION: "deploy"})
        assert repo.service_versions(COMPOSE, "web") == [
            Version(sha, "reg/web:1", repo.service_versions(COMPOSE, "web")[0].time, "initial")
        ]
    assert_fsck_clean(root)


# -- deploy log -----------------------------------------------------------------------


@pytest.fixture
def logged(repo, root):
    """A history of deploys and rollbacks with a non-deployer commit in between."""
    shas = {}
    shas["d1"] = deploy(repo, "worker", "reg/worker:2", "reg/worker:1", reason="first try", web="reg/web:1")
    (root / "README.md").write_text("docs\n")
    git(root, "commit", "-q", "-am", "docs: explain things\n\nDeployer-Actionable: no")
    shas["d2"] = deploy(repo, "worker", "reg/worker:3", "reg/worker:2", web="reg/web:1")
    shas["rb"] = repo.commit_file(
        COMPOSE,
        compose(worker="reg/worker:2", web="reg/web:1"),
        "rollback dev/dev1/worker to reg/worker:2\n\nworker 3 crashes on start",
        [
            (TRAILER_ACTION, "rollback"),
            (TRAILER_TARGET, "dev/dev1/worker"),
            (TRAILER_IMAGE, "reg/worker:2"),
            (TRAILER_PREVIOUS_IMAGE, "reg/worker:3"),
            (TRAILER_ROLLBACK_TO, shas["d1"]),
        ],
        author="Carol <carol@example.org>",
    )
    devx = "datacenters/devx/n1/docker-compose.yml"
    shas["multi"] = repo.commit_file(
        devx,
        compose(web="reg/web:2"),
        "deploy web: reg/web:2",
        [(TRAILER_ACTION, "deploy"), (TRAILER_TARGET, "devx/n1/web"), (TRAILER_TARGET, "prod/p1/web"), (TRAILER_IMAGE, "reg/web:2")],
    )
    return shas


def test_deploy_log_entries(repo, root, logged):
    log = repo.deploy_log()
    assert [e.commit for e in log] == [logged["multi"], logged["rb"], logged["d2"], logged["d1"]]
    multi, rb, d2, d1 = log
    assert isinstance(rb, HistoryEntry)
    assert rb.action == "rollback"
    assert rb.targets == ["dev/dev1/worker"]
    assert rb.image == "reg/worker:2" and rb.previous_image == "reg/worker:3"
    assert rb.rollback_to == logged["d1"]
    assert rb.author == "Carol" and rb.email == "carol@example.org"
    assert rb.subject == "rollback dev/dev1/worker to reg/worker:2"
    assert rb.reason == "worker 3 crashes on start"
    assert rb.short == git(root, "rev-parse", "--short", logged["rb"]).strip()
    assert rb.image_id is None
    assert d1.reason == "first try" and d1.action == "deploy" and d1.author == "Test Operator"
    assert d2.reason == "" and d2.previous_image == "reg/worker:2"
    assert multi.targets == ["devx/n1/web", "prod/p1/web"]
    for e in log:
        t = dt.datetime.fromisoformat(e.time)
        assert t.tzinfo is not None
        assert abs((dt.datetime.now(dt.timezone.utc) - t).total_seconds()) < 600


def test_deploy_log_prefix_filter_and_limit(repo, logged):
    assert [e.commit for e in repo.deploy_log("dev")] == [logged["rb"], logged["d2"], logged["d1"]]
    assert [e.commit for e in repo.deploy_log("dev/")] == [logged["rb"], logged["d2"], logged["d1"]]
    assert [e.commit for e in repo.deploy_log("devx")] == [logged["multi"]]
    assert [e.commit for e in repo.deploy_log("prod/p1/web")] == [logged["multi"]]
    assert repo.deploy_log("dev/dev1/work") == []
    assert repo.deploy_log("de") == []
    assert [e.commit for e in repo.deploy_log("dev/dev1/worker", limit=2)] == [logged["rb"], logged["d2"]]
    assert [e.commit for e in repo.deploy_log(limit=1)] == [logged["multi"]]
    assert repo.deploy_log(limit=0) == []


def test_deploy_log_skips_non_deployer_commits(repo, root, logged):
    subjects = git(root, "log", "--format=%s").splitlines()
    assert "docs: explain things" in subjects and "initial" in subjects
    assert all(e.subject not in ("docs: explain things", "initial") for e in repo.deploy_log())
    # a body mentioning the trailer name, without it being a trailer, is skipped too
    (root / "README.md").write_text("more docs\n")
    git(root, "commit", "-q", "-am", "docs\n\nWe set Deployer-Action: deploy in every commit.\n\nSigned-off-by: X <x@y.z>")
    assert len(repo.deploy_log()) == 4


def test_deploy_log_reads_thousands_of_commits_in_one_git_process(tmp_path):
    """3000 deploy commits (plus noise) made with fast-import; one git log call reads them."""
    root = tmp_path / "big"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    stream = []
    n = 3000
    for i in range(1, n + 1):
        deploys = i % 10 != 0
        if deploys:
            msg = (
                f"deploy dev/dev1/worker: reg/worker:{i}\n\nreason {i}\n\n"
                f"Deployer-Action: deploy\nDeployer-Target: dev/dev1/worker\nDeployer-Image: reg/worker:{i}\n"
            )
        else:
            msg = f"housekeeping {i}\n"
        content = compose(worker=f"reg/worker:{i if deploys else i - 1}", web="reg/web:1", junk=f"x:{i}")
        m, c = msg.encode(), content.encode()
        stream.append(f"commit refs/heads/main\nmark :{i}\ncommitter Op <op@x> {1700000000 + i} +0100\n".encode())
        stream.append(b"data %d\n" % len(m) + m + b"\n")
        if i > 1:
            stream.append(f"from :{i - 1}\n".encode())
        stream.append(f"M 100644 inline {COMPOSE}\n".encode() + b"data %d\n" % len(c) + c + b"\n")
    subprocess.run(["git", "-C", str(root), "fast-import", "--quiet"], input=b"".join(stream), check=True)
    # Not timed (speed is measured in bench/): what keeps it fast is a constant number of git processes
    # whatever the history's length, and that is what is counted here.
    started = []
    real_popen = subprocess.Popen

    class CountingPopen(real_popen):
        def __init__(self, args, *a, **kw):
            started.append(args)
            super().__init__(args, *a, **kw)

    with InfraRepo.open(root) as repo, pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", CountingPopen)
        log = repo.deploy_log()
        assert [a[a.index("log")] for a in started if "log" in a] == ["log"], started  # one walk
        assert len(started) <= 2, started  # plus the rev-parse of the branch
        assert len(log) == n - n // 10
        assert log[0].image == f"reg/worker:{n - 1}" and log[0].reason == f"reason {n - 1}"
        assert log[0].time == dt.datetime.fromtimestamp(1700000000 + n - 1, dt.timezone(dt.timedelta(hours=1))).isoformat()
        started.clear()
        image, commit = repo.resolve_rollback(COMPOSE, "worker", f"reg/worker:{n - 1}", steps=1)
        assert image == f"reg/worker:{n - 2}"
        assert len(started) <= 3, started


# -- service versions --------------------------------------------------------------------


@pytest.fixture
def versions_history(repo, root):
    """worker: 1 (initial) -> 2 -> 2 (restart changed) -> 3; web changes in between."""
    c = {"initial": git(root, "rev-parse", "HEAD").strip()}
    c["web2"] = repo.commit_file(COMPOSE, compose(worker="reg/worker:1", web="reg/web:2"), "deploy web 2", {})
    c["w2"] = repo.commit_file(COMPOSE, compose(worker="reg/worker:2", web="reg/web:2"), "deploy worker 2", {})
    text = compose(worker="reg/worker:2", web="reg/web:2").replace("restart: always", "restart: unless-stopped", 1)
    c["w2b"] = repo.commit_file(COMPOSE, text, "worker: restart policy", {})
    (root / "README.md").write_text("unrelated\n")
    git(root, "commit", "-q", "-am", "unrelated")
    c["web3"] = repo.commit_file(COMPOSE, compose(worker="reg/worker:2", web="reg/web:3"), "deploy web 3", {})
    c["w3"] = repo.commit_file(COMPOSE, compose(worker="reg/worker:3", web="reg/web:3"), "deploy worker 3", {})
    return c


def test_service_versions_collapse_and_ignore_other_services(repo, versions_history):
    c = versions_history
    vs = repo.service_versions(COMPOSE, "worker")
    assert [(v.commit, v.image, v.subject) for v in vs] == [
        (c["w3"], "reg/worker:3", "deploy worker 3"),
        (c["w2"], "reg/worker:2", "deploy worker 2"),
        (c["initial"], "reg/worker:1", "initial"),
    ]
    assert all(dt.datetime.fromisoformat(v.time).tzinfo for v in vs)
    assert vs[0].short == c["w3"][:7]
    assert [v.image for v in repo.service_versions(COMPOSE, "web")] == ["reg/web:3", "reg/web:2", "reg/web:1"]
    assert [v.image for v in repo.service_versions(COMPOSE, "worker", rev=c["w2b"])] == ["reg/worker:2", "reg/worker:1"]
    assert repo.service_versions(COMPOSE, "nosuch") == []
    with pytest.raises(RepoError, match="unknown revision nope"):
        repo.service_versions(COMPOSE, "worker", rev="nope")


def test_service_versions_stop_at_unparseable_or_absent(repo, root):
    repo.commit_file(COMPOSE, "services: [unclosed\n", "broken", {})
    a = repo.commit_file(COMPOSE, compose(worker="reg/worker:5"), "fixed", {})
    b = repo.commit_file(COMPOSE, compose(worker="reg/worker:5", cache="redis:7"), "add cache", {})
    c = repo.commit_file(COMPOSE, compose(worker="reg/worker:6", cache="redis:7.2"), "bump both", {})
    assert [(v.commit, v.image) for v in repo.service_versions(COMPOSE, "worker")] == [
        (c, "reg/worker:6"),
        (a, "reg/worker:5"),
    ]
    assert [(v.commit, v.image) for v in repo.service_versions(COMPOSE, "cache")] == [
        (c, "redis:7.2"),
        (b, "redis:7"),
    ]


def test_service_versions_non_consecutive_repeat_kept(repo):
    a = deploy(repo, "worker", "reg/worker:2")
    b = deploy(repo, "worker", "reg/worker:1")
    vs = repo.service_versions(COMPOSE, "worker")
    assert [(v.commit, v.image) for v in vs][:3] == [(b, "reg/worker:1"), (a, "reg/worker:2"), (vs[2].commit, "reg/worker:1")]


def test_image_at(repo, root, versions_history):
    c = versions_history
    assert repo.image_at("HEAD", COMPOSE, "worker") == "reg/worker:3"
    assert repo.image_at(c["w2"], COMPOSE, "web") == "reg/web:2"
    assert repo.image_at("HEAD~1", COMPOSE, "worker") == "reg/worker:2"
    assert repo.image_at("HEAD", COMPOSE, "nosuch") is None
    assert repo.image_at("HEAD", "datacenters/x/y/docker-compose.yml", "web") is None
    with pytest.raises(RepoError, match="unknown revision nope"):
        repo.image_at("nope", COMPOSE, "web")


# -- rollback resolution ------------------------------------------------------------------


def test_resolve_rollback_steps(repo, versions_history):
    c = versions_history
    assert repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", target="dev/dev1/worker") == ("reg/worker:2", c["w2"])
    assert repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", steps=2, target="dev/dev1/worker") == (
        "reg/worker:1",
        c["initial"],
    )
    with pytest.raises(RollbackError) as exc:
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", steps=3, target="dev/dev1/worker")
    assert str(exc.value) == "dev/dev1/worker has only 2 earlier versions; cannot go back 3"
    with pytest.raises(RollbackError) as exc:
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", steps=0, target="dev/dev1/worker")


def test_resolve_rollback_only_one_earlier(repo):
    deploy(repo, "worker", "reg/worker:2")
    with pytest.raises(RollbackError) as exc:
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:2", steps=2, target="dev/dev1/worker")
    assert str(exc.value) == "dev/dev1/worker has only 1 earlier version; cannot go back 2"
    # the target is derived from the path when not given
    with pytest.raises(RollbackError, match="^dev/dev1/worker has only 1 earlier version"):
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:2", steps=2)


def test_resolve_rollback_no_earlier(repo):
    with pytest.raises(RollbackError, match="dev/dev1/web has no earlier version; cannot go back 1"):
        repo.resolve_rollback(COMPOSE, "web", "reg/web:1", target="dev/dev1/web")


def test_resolve_rollback_counts_distinct_images(repo):
    a = deploy(repo, "worker", "reg/worker:2")  # history: 1, 2, 1 (rollback), 3
    deploy(repo, "worker", "reg/worker:1")
    deploy(repo, "worker", "reg/worker:3")
    rb1 = repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3")
    assert rb1[0] == "reg/worker:1" and rb1[1] == repo.service_versions(COMPOSE, "worker")[1].commit
    assert repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", steps=2) == ("reg/worker:2", a)
    with pytest.raises(RollbackError, match="has only 2 earlier versions; cannot go back 3"):
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", steps=3)


def test_resolve_rollback_to_rev(repo, root, versions_history):
    c = versions_history
    t = "dev/dev1/worker"
    assert repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev=c["w2"][:8], target=t) == ("reg/worker:2", c["w2"])
    assert repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev=c["initial"], target=t) == (
        "reg/worker:1",
        c["initial"],
    )
    # a commit that touched the file but not this service's image
    with pytest.raises(RollbackError) as exc:
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev=c["web3"], target=t)
    assert str(exc.value) == (
        f"commit {c['web3'][:7]} did not change {t} (its versions: "
        f"{c['w3'][:7]} reg/worker:3, {c['w2'][:7]} reg/worker:2, {c['initial'][:7]} reg/worker:1)"
    )
    # same image as an earlier commit, but not the commit that introduced it
    with pytest.raises(RollbackError, match=f"commit {c['w2b'][:7]} did not change"):
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev=c["w2b"], target=t)
    # a commit that did not touch the file at all
    unrelated = git(root, "log", "-1", "--format=%H", "--grep=^unrelated").strip()
    with pytest.raises(RollbackError, match="did not change dev/dev1/worker"):
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev=unrelated, target=t)
    with pytest.raises(RollbackError) as exc:
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev="nope", target=t)
    assert str(exc.value) == "unknown revision nope"
    with pytest.raises(RollbackError, match="unknown revision --all"):
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev="--all", target=t)
    # rolling back to the current image
    with pytest.raises(RollbackError, match="which is its current image"):
        repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev=c["w3"], target=t)
    # a rev name (not a sha) works
    git(root, "tag", "good", c["w2"])
    assert repo.resolve_rollback(COMPOSE, "worker", "reg/worker:3", to_rev="good", target=t) == ("reg/worker:2", c["w2"])
