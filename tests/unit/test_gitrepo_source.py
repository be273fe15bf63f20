"""deployer.gitrepo.source and deployer.gitrepo.create on temporary git repositories.

Among them the reason these modules exist: a deployer started from a git hook
inherits GIT_DIR and friends, which would point every git command at the
hook's repository. Each test of that sets them to some other repository and
checks the right one is read (or made).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deployer.errors import DeployerError, RepoError, SourceError
from deployer.gitrepo.create import init_repository
from deployer.gitrepo.git import HOOK_ENV
from deployer.gitrepo.source import SourceRepo, read_source
from tests.support.build_repos import git, make_repo, new_commit


def bare_upstream(tmp_path: Path, src: Path) -> Path:
    """A bare repository ``worker.git`` that ``src``'s repository pushes its main to, as origin."""
    upstream = tmp_path / "git" / "worker.git"
    upstream.mkdir(parents=True)
    git(upstream, "init", "-q", "--bare", "-b", "main")
    git(src, "remote", "add", "origin", str(upstream))
    git(src, "push", "-q", "origin", "main")
    return upstream


@pytest.fixture
def hook_env(tmp_path, monkeypatch):
    """The environment of a git hook running in another repository (``other``)."""
    other = make_repo(tmp_path / "hook", app="worker", name="other").parent
    new_commit(other, "the hook's repository")

    def enter() -> Path:
        monkeypatch.setenv("GIT_DIR", str(other / ".git"))
        monkeypatch.setenv("GIT_WORK_TREE", str(other))
        monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))
        monkeypatch.setenv("GIT_PREFIX", "")
        return other

    return enter


# --------------------------------------------------------------------------- read_source


def test_read_source(tmp_path):
    src = make_repo(tmp_path)
    sha = git(src, "rev-parse", "HEAD")
    state = read_source(src)
    assert (state.top, state.revision, state.tags, state.changes, state.dirty) == (src.parent, sha, [], [], False)
    assert state.url == str(src.parent)
    git(src, "tag", "v1")
    git(src, "tag", "v2")
    git(src, "remote", "add", "origin", "ssh://git.example/sensor.git")
    (src / "main.go").write_text("package main\n")
    (src.parent / "elsewhere.txt").write_text("not the app's\n")
    state = read_source(src)
    assert state.tags == ["v2", "v1"] and state.url == "ssh://git.example/sensor.git"
    assert state.changes == [" M sensor/main.go"] and state.dirty


def test_read_source_refuses_what_is_not_a_committed_tree(tmp_path):
    with pytest.raises(SourceError, match=r"^.*/nope: not a directory$"):
        read_source(tmp_path / "nope")
    loose = tmp_path / "loose"
    loose.mkdir()
    with pytest.raises(SourceError) as e:
        read_source(loose)
    assert e.value.one_line() == f"{loose}: not inside a git repository (images are versioned by commit)"
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(SourceError) as e:
        read_source(empty)
    assert e.value.one_line() == f"{empty}: the git repository has no commit yet"


def test_read_source_ignores_the_hook_environment(tmp_path, hook_env):
    src = make_repo(tmp_path)
    sha = git(src, "rev-parse", "HEAD")
    other = hook_env()
    assert git(src, "rev-parse", "HEAD") == git(other, "rev-parse", "HEAD") != sha  # git itself follows GIT_DIR...
    state = read_source(src)  # ...read_source does not
    assert state.revision == sha and state.top == src.parent and not state.dirty
    loose = tmp_path / "loose"
    loose.mkdir()
    with pytest.raises(SourceError, match="not inside a git repository"):
        read_source(loose)  # not the hook's repository either
    assert all(name in os.environ for name in ("GIT_DIR", "GIT_WORK_TREE"))  # left as they were


# --------------------------------------------------------------------------- SourceRepo


def test_source_repo_in_a_working_tree(tmp_path):
    src = make_repo(tmp_path, app="worker")
    repo = SourceRepo(src)
    assert (repo.path, repo.git_dir, repo.bare, repo.top) == (src, src.parent / ".git", False, src.parent)
    assert (repo.name, repo.app, repo.branch, repo.remote) == ("repo-worker", "worker", "main", None)
    assert repo.url == str(src.parent)
    assert SourceRepo(src.parent, app="worker").app == "worker"
    assert SourceRepo(src.parent / ".git").app == "."  # where push hooks run: the whole tree

    head = git(src, "rev-parse", "HEAD")
    assert repo.head() == head and repo.subject(head) == "worker: initial"
    assert repo.new_commits(None, head, 10) == ([head], [])
    assert repo.new_commits(head, head, 10) == ([], [])
    shas = [new_commit(src, f"change {n}") for n in range(4)]
    assert repo.head() == shas[-1]
    assert repo.new_commits(head, shas[-1], 10) == (shas, [])
    assert repo.new_commits(head, shas[-1], 3) == (shas[1:], shas[:1])
    git(src, "reset", "-q", "--hard", head)
    rewritten = new_commit(src, "another history")
    assert repo.new_commits(shas[-1], rewritten, 10) == ([rewritten], [])


def test_source_repo_refusals(tmp_path):
    src = make_repo(tmp_path)
    with pytest.raises(SourceError, match="not a directory"):
        SourceRepo(tmp_path / "nope")
    with pytest.raises(SourceError, match=r"^.*/plain: not a git repository$"):
        (tmp_path / "plain").mkdir()
        SourceRepo(tmp_path / "plain")
    with pytest.raises(SourceError, match="'a..b' is not a valid branch name"):
        SourceRepo(src, branch="a..b")
    with pytest.raises(SourceError, match="--app ../x: must be a directory inside the repository"):
        SourceRepo(src, app="../x")
    with pytest.raises(SourceError, match=r"no branch develop$"):
        SourceRepo(src, branch="develop").head()


def test_source_repo_bare_with_a_remote(tmp_path):
    src = make_repo(tmp_path, app="worker")
    upstream = bare_upstream(tmp_path, src.parent)
    repo = SourceRepo(upstream)
    assert (repo.bare, repo.top, repo.name, repo.app, repo.remote) == (True, None, "worker", ".", None)
    assert repo.url == str(upstream)

    # a clone that follows the bare repository: head() fetches first
    mirror = tmp_path / "mirror.git"
    git(tmp_path, "clone", "-q", "--bare", str(upstream), str(mirror))
    follower = SourceRepo(mirror, app="worker")
    assert follower.remote == "origin" and follower.url == str(upstream)
    pushed = new_commit(src, "pushed later")
    git(src.parent, "push", "-q", "origin", "main")
    assert follower.head() == pushed
    assert git(mirror, "rev-parse", "refs/remotes/origin/main") == pushed

    git(mirror, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    with pytest.raises(DeployerError, match=r"/mirror.git: git fetch origin main failed: fatal: .*gone.git"):
        follower.head()
    assert follower.new_commits(None, pushed, 5) == ([pushed], [])


def test_source_repo_checkout(tmp_path):
    src = make_repo(tmp_path, app="worker")
    upstream = bare_upstream(tmp_path, src.parent)
    first = git(src, "rev-parse", "HEAD")
    git(src, "tag", "v1.0")
    git(src.parent, "push", "-q", "origin", "v1.0")
    (src / "main.go").write_text("package main\n// later\n")
    second = new_commit(src, "later")
    git(src.parent, "push", "-q", "origin", "main")

    repo = SourceRepo(upstream, app="worker")
    parent = tmp_path / "checkouts"
    with repo.checkout(first, parent) as app_dir:
        assert app_dir.name == "worker" and app_dir.parent.name == "worker"
        assert app_dir.parent.parent.parent == parent
        assert "// later" not in (app_dir / "main.go").read_text() and not (app_dir / "NOTES").exists()
        state = read_source(app_dir)
        assert (state.revision, state.tags, state.dirty, state.url) == (first, ["v1.0"], False, str(upstream))
    assert list(parent.iterdir()) == []  # removed after
    with repo.checkout(second, parent) as app_dir:
        assert "// later" in (app_dir / "main.go").read_text()
    with pytest.raises(SourceError, match=r"worker.git: checking out 000000000000 failed: "):
        with repo.checkout("0" * 40, parent):
            pass
    assert list(parent.iterdir()) == []


def test_source_repo_ignores_the_hook_environment(tmp_path, hook_env):
    src = make_repo(tmp_path, app="worker")
    upstream = bare_upstream(tmp_path, src.parent)
    head = git(src, "rev-parse", "HEAD")
    other = hook_env()  # as in upstream's post-receive hook, but naming another repository
    repo = SourceRepo(upstream)
    assert repo.git_dir == upstream and repo.bare and repo.head() == head
    assert repo.subject(head) == "worker: initial"
    with repo.checkout(head, tmp_path / "checkouts") as app_dir:
        assert (app_dir / "worker" / "main.go").is_file()
        assert read_source(app_dir).revision == head
    assert os.environ["GIT_DIR"] == str(other / ".git")


# --------------------------------------------------------------------------- init_repository


def test_init_repository(tmp_path):
    root = tmp_path / "infra"
    root.mkdir()
    (root / "README.md").write_text("hello\n")
    sha = init_repository(root, "init infrastructure repository")
    assert git(root, "rev-parse", "HEAD") == sha and git(root, "branch", "--show-current") == "main"
    assert git(root, "log", "-1", "--format=%s") == "init infrastructure repository"
    assert git(root, "ls-files") == "README.md"
    with pytest.raises(RepoError) as e:
        init_repository(root, "again")  # nothing to commit
    assert e.value.one_line().startswith(f"git commit -q -m again failed in {root}:")


def test_init_repository_without_an_identity(tmp_path, monkeypatch):
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    root = tmp_path / "infra"
    root.mkdir()
    (root / "README.md").write_text("hello\n")
    init_repository(root, "first")
    done = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%an <%ae>"], capture_output=True, text=True)
    assert done.stdout.strip() == "deployer <deployer@localhost>"


def test_init_repository_ignores_the_hook_environment(tmp_path, hook_env, monkeypatch):
    other = hook_env()
    before = git(other, "rev-parse", "HEAD")
    root = tmp_path / "infra"
    root.mkdir()
    (root / "README.md").write_text("hello\n")
    sha = init_repository(root, "first")
    assert (root / ".git").is_dir()
    for name in HOOK_ENV:
        monkeypatch.delenv(name, raising=False)
    assert git(root, "rev-parse", "HEAD") == sha and git(other, "rev-parse", "HEAD") == before
