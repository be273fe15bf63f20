"""The release webhook's pure parts: its config (every problem ``file:line: field: message``) and how a
GitHub push payload chooses what is built (or why nothing is)."""

from __future__ import annotations

import subprocess

import pytest

from deployer.errors import ApiError, ServeConfigError
from deployer.serve import webhook

SECRET = "0123456789abcdef-secret"
SHA = "4f1c0e0d6b9c0b7f5b0f7e0c9b1d2a3e4f5a6b7c"


@pytest.fixture
def source(tmp_path):
    """A git repository with one commit on main (a local release source)."""
    src = tmp_path / "worker"
    src.mkdir()
    for args in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                "--allow-empty", "-m", "one"]):
        subprocess.run(["git", *args], cwd=src, check=True)
    return src


def _config(tmp_path, text):
    path = tmp_path / "serve.yml"
    path.write_text(text)
    return path


def _release(source, extra=""):
    return (f"hooks:\n  web:\n    target: prod/web1/web\n    image: reg:5000/web\n    secret: {SECRET}\n"
            f"  worker-ci:\n    action: release\n    source: {source}\n    targets: [prod/web1/worker]\n"
            f"    secret: {SECRET}\n{extra}")


def test_a_release_hook_is_read_with_its_defaults_and_every_key(tmp_path, source):
    hooks = webhook.read_config(_config(tmp_path, _release(source)))
    assert hooks["web"].action == "deploy" and hooks["web"].release is None
    hook = hooks["worker-ci"]
    assert hook.action == "release" and hook.target == "prod/web1/worker" and hook.image == ""
    assert hook.release == webhook.ReleaseSpec(str(source), "main", None, None, None, None, ("prod/web1/worker",))
    full = webhook.read_config(_config(tmp_path, (
        f"hooks:\n  w:\n    action: release\n    source: https://git.example/team/worker.git\n"
        f"    branch: release\n    app: apps/worker\n    builder: go\n    registry: 10.0.0.5:5000\n"
        f"    engine: ssh://builder@10.0.0.9\n    target: prod\n    service: worker\n    batch: 2\n"
        f"    secret: {SECRET}\n")))["w"]
    assert full.release == webhook.ReleaseSpec("https://git.example/team/worker.git", "release", "apps/worker", "go",
                                               "10.0.0.5:5000", "ssh://builder@10.0.0.9", ("prod",), "worker", 2)
    assert full.release.is_url and not hook.release.is_url
    assert webhook.ReleaseSpec("git@git.example:team/worker.git").is_url


@pytest.mark.parametrize("extra, message", [
    ("    image: reg:5000/worker\n", "serve.yml:11: hooks.worker-ci.image: unknown key for action release "
                                   "(a release hook builds its image: no image key)"),
    ("    when: push\n", "serve.yml:11: hooks.worker-ci.when: unknown key for action release"),
    ("    builder: cobol\n", "serve.yml:11: hooks.worker-ci.builder: unknown builder 'cobol' (known: "),
    ("    registry: ftp://h:5000\n", "serve.yml:11: hooks.worker-ci.registry: "),
    ("    engine: docker.example:2375\n", "serve.yml:11: hooks.worker-ci.engine: a build engine URL"),
    ("    batch: 0\n", "serve.yml:11: hooks.worker-ci.batch: a whole number, at least 1"),
    ("    batch: true\n", "serve.yml:11: hooks.worker-ci.batch: a whole number, at least 1"),
    ("    branch: 'no..dots'\n", "serve.yml:11: hooks.worker-ci.branch: 'no..dots' is not a valid branch name"),
    ("    app: ../elsewhere\n", "serve.yml:11: hooks.worker-ci.app: a directory inside the repository"),
    ("    target: prod\n", "serve.yml:6: hooks.worker-ci: give exactly one of target, targets"),
])
def test_a_wrong_release_hook_is_refused_with_its_line(tmp_path, source, extra, message):
    with pytest.raises(ServeConfigError) as caught:
        webhook.read_config(_config(tmp_path, _release(source, extra)))
    assert str(caught.value).startswith(f"{tmp_path}/{message}"), str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("hooks:\n  w:\n    action: build\n    secret: {s}\n", "serve.yml:3: hooks.w.action: unknown action 'build' "
                                                          "(deploy or release)"),
    ("hooks:\n  w:\n    action: release\n    targets: [prod]\n    secret: {s}\n",
     "serve.yml:2: hooks.w.source: required (a string)"),
    ("hooks:\n  w:\n    action: release\n    source: relative/path\n    target: prod\n    secret: {s}\n",
     "serve.yml:4: hooks.w.source: a local repository is an absolute path (or give a git URL)"),
    ("hooks:\n  w:\n    action: release\n    source: /nonexistent/src\n    target: prod\n    secret: {s}\n",
     "serve.yml:4: hooks.w.source: /nonexistent/src: not a directory"),
    ("hooks:\n  w:\n    action: release\n    source: /\n    target: prod\n    secret: {s}\n",
     "serve.yml:4: hooks.w.source: /: not a git repository"),
    ("hooks:\n  w:\n    action: release\n    source: git@h:w.git\n    targets: []\n    secret: {s}\n",
     "serve.yml:5: hooks.w.targets: a non-empty list of targets"),
    ("hooks:\n  w:\n    action: release\n    source: git@h:w.git\n    targets: prod\n    secret: {s}\n",
     "serve.yml:5: hooks.w.targets: a non-empty list of targets"),
    ("hooks:\n  w:\n    action: release\n    source: git@h:w.git\n    branch: a b\n    target: prod\n"
     "    secret: {s}\n", "serve.yml:5: hooks.w.branch: 'a b' is not a valid branch name"),
    ("hooks:\n  w:\n    action: release\n    source: git@h:w.git\n    target: prod\n    secret: short\n",
     "serve.yml:6: hooks.w: the secret must be at least 16 bytes"),
    ("hooks:\n  w:\n    image: x\n    secret: {s}\n", "serve.yml:2: hooks.w.target: required (a string)"),
    ("hooks:\n  w:\n    target: a\n    image: UPPER\n    secret: {s}\n", "serve.yml:4: hooks.w.image: "),
    ("hooks:\n  w:\n    target: a\n    image: x\n    source: /src\n    secret: {s}\n",
     "serve.yml:5: hooks.w.source: unknown key for action deploy"),
    ("hooks:\n  ok: {{}}\nalerts: {{}}\n", "serve.yml:3: alerts: unknown key"),
    ("hooks: [\n", "serve.yml:2: (top): not YAML: "),
])
def test_every_wrong_hook_names_file_line_and_field(tmp_path, text, message):
    with pytest.raises(ServeConfigError) as caught:
        webhook.read_config(_config(tmp_path, text.format(s=SECRET)))
    assert str(caught.value).startswith(f"{tmp_path}/{message}"), str(caught.value)


def _hook(branch="main"):
    return webhook.Hook("worker-ci", "prod/web1/worker", "", SECRET.encode(), "release",
                        webhook.ReleaseSpec("/src/worker", branch, targets=("prod/web1/worker", "prod/web2")))


def test_a_push_to_the_branch_is_released_at_its_after_sha():
    params, reason = _hook().release_for({"x-github-event": "push"}, {
        "ref": "refs/heads/main", "after": SHA.upper(), "before": "0" * 40, "pusher": {"name": "ada\n<b>"}})
    assert params == {"hook": "worker-ci", "source": "/src/worker", "branch": "main", "ref": "refs/heads/main",
                      "sha": SHA, "targets": ["prod/web1/worker", "prod/web2"]}
    assert reason == f"webhook worker-ci: push to main at {SHA[:12]} by ada <b>"
    # no event header (a CI system that is not GitHub): read as a push; no pusher: no "by"
    assert _hook().release_for({}, {"ref": "refs/heads/main", "after": SHA})[1] == \
        f"webhook worker-ci: push to main at {SHA[:12]}"
    sha256 = "ab" * 32  # a SHA-256 repository's commit id
    assert _hook().release_for({}, {"ref": "refs/heads/main", "after": sha256})[0]["sha"] == sha256


def test_other_refs_events_and_deletions_are_ignored_with_a_reason():
    hook = _hook()
    assert hook.release_for({}, {"ref": "refs/heads/feature", "after": SHA}) == \
        "refs/heads/feature is not refs/heads/main, the branch this hook releases: nothing built"
    assert hook.release_for({}, {"ref": "refs/tags/v1", "after": SHA}).startswith("refs/tags/v1 is not")
    assert hook.release_for({"x-github-event": "ping"}, {"zen": "Keep it simple.", "hook_id": 1}) == \
        "a 'ping' event: a release hook builds push events only"
    assert hook.release_for({}, {"ref": "refs/heads/main", "after": "0" * 40, "deleted": True}) == \
        "the push deleted refs/heads/main: nothing to build"
    assert _hook("release").release_for({}, {"ref": "refs/heads/main", "after": SHA}).startswith(
        "refs/heads/main is not refs/heads/release")


@pytest.mark.parametrize("payload, message", [
    ({"ref": "refs/heads/main"}, "after: required (a push payload's commit sha: the commit to build)"),
    ({"ref": "refs/heads/main", "after": ""}, "after: required"),
    ({"ref": "refs/heads/main", "after": 12}, "after: required"),
    ({"after": SHA}, "ref: required (a push payload's refs/heads/BRANCH)"),
    ({"ref": ["refs/heads/main"], "after": SHA}, "ref: required"),
    ({"ref": "refs/heads/main", "after": "HEAD~1"}, "after: 'head~1' is not a full commit sha (40 or 64 hex digits)"),
    ({"ref": "refs/heads/main", "after": SHA[:12]}, "is not a full commit sha"),
    ({"image": "reg/web:1"}, "ref: required"),
])
def test_a_push_payload_without_ref_or_after_is_refused(payload, message):
    with pytest.raises(ApiError) as caught:
        _hook().release_for({}, payload)
    assert caught.value.status == 400 and message in str(caught.value)


def test_a_url_source_is_cloned_bare_in_the_own_dir_and_fetched_each_time(tmp_path, source):
    from types import SimpleNamespace

    from deployer.serve import release_hook

    url = f"file://{source}"
    hook = webhook.read_config(_config(tmp_path, f"hooks:\n  w:\n    action: release\n    source: {url}\n"
                                                 f"    target: prod\n    secret: {SECRET}\n"))["w"]
    assert hook.release.is_url
    state = SimpleNamespace(settings=SimpleNamespace(own_dir=tmp_path / "own"))
    repo = release_hook.source_repo(state, hook)
    assert repo.git_dir == tmp_path / "own" / "sources" / "w" / "worker.git" and repo.bare
    assert repo.name == "worker"  # the image is named as a clone of the source would name it
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True).stdout.strip()
    assert repo.head() == first and repo.has_commit(first)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two"],
                   cwd=source, check=True)
    second = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True).stdout.strip()
    again = release_hook.source_repo(state, hook)  # the clone is kept; the next delivery fetches the branch
    assert not again.has_commit(second)
    assert again.head() == second and again.has_commit(second)
    assert not again.has_commit("f" * 40)
