"""prune against a real engine and real git: old versions go, what a rollback or a container needs stays.

Each test builds its own busybox-based images under a repository of its own
(``deployer-test/prune-<hex>``), so the session's shared test images are never candidates.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from deployer.gitrepo.lock import DeployLock
from tests.support.images import BASE_TAG, build_web_image
from tests.support.registry import RegistryServer
from tests.support.repos import cli, git, make_repo, remove_node_containers, run, web_compose


@pytest.fixture
def client(clean_engine):
    c = clean_engine.client()
    yield c
    c.close()


def image_id(client, ref):
    try:
        return client.api.inspect_image(ref)["Id"]
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
        return None


def deployed_versions(client, engine, tmp_path, count, prefix=None, built_on=None):
    """A repo whose one node's web service was deployed at versions 1..count (each its own image and commit).

    ``built_on``: version -> the version its image is built FROM (classic builder: a parent chain)."""
    repo = prefix or f"deployer-test/prune-{uuid.uuid4().hex[:8]}"
    refs = [f"{repo}:{i}" for i in range(1, count + 1)]
    for i, ref in enumerate(refs, 1):
        base = refs[built_on[i] - 1] if built_on and i in built_on else BASE_TAG
        build_web_image(client, ref, body=f"prune v{i} {repo}", base=base)
    root, node = make_repo(tmp_path / "infra", engine.unix_url, web_compose(refs[0]))
    for ref in refs:
        r = cli(root, "deploy", ref, f"test/{node}", "--settle", "0")
        assert r.exit_code == 0, r.output
    return root, node, refs


def prune_json(root, *args):
    r = cli(root, "prune", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def removed_refs(data):
    return sorted(ref for node in data for image in node["removed"] for ref in image["references"])


def test_keep_3_of_5_removes_versions_1_and_2_only(client, clean_engine, tmp_path):
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 5)
    ids = {ref: image_id(client, ref) for ref in refs}
    sizes = {ref: client.api.inspect_image(ref)["Size"] for ref in refs}
    head = git(root, "rev-parse", "HEAD")

    data = prune_json(root, f"test/{node}/web", "--keep", "3")
    assert removed_refs(data) == sorted(refs[:2])
    assert [image_id(client, ref) for ref in refs] == [None, None, ids[refs[2]], ids[refs[3]], ids[refs[4]]]
    # the bytes reported are the sizes of the images removed (each image's whole size)
    (result,) = data
    assert result["bytes"] == sizes[refs[0]] + sizes[refs[1]] and result["bytes_counts_shared_layers"] is True
    assert {i["id"] for i in result["removed"]} == {ids[refs[0]], ids[refs[1]]}
    # no commit, nothing changed in the repository; the service still runs version 5
    assert git(root, "rev-parse", "HEAD") == head and git(root, "status", "--porcelain") == ""
    (running,) = client.containers.list(filters={"label": f"deployer.node={node}"})
    assert running.attrs["Config"]["Image"] == refs[4]
    # a second prune finds nothing more to remove
    assert removed_refs(prune_json(root, f"test/{node}/web", "--keep", "3")) == []
    remove_node_containers(client, node)


def test_images_built_on_others_go_children_first_and_ancestors_of_kept_ones_stay(client, clean_engine, tmp_path):
    # v2 is built on v1, v4 on v3; keeping v4 keeps v3 under it, v1 and v2 both go (v2 first)
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 4, built_on={2: 1, 4: 3})
    data = prune_json(root, f"test/{node}/web", "--keep", "1")
    assert data[0]["refused"] == [] and data[0]["error"] is None
    assert removed_refs(data) == sorted(refs[:2])
    assert [image_id(client, ref) is None for ref in refs] == [True, True, False, False]
    remove_node_containers(client, node)


def test_dry_run_lists_what_would_go_and_removes_nothing(client, clean_engine, tmp_path):
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 4)
    r = cli(root, "prune", f"test/{node}/web", "--keep", "2", "--dry-run")
    assert r.exit_code == 0, r.output
    assert f"test/{node}: would remove {refs[0]} (" in r.stdout and f"would remove {refs[1]} (" in r.stdout
    assert refs[2] not in r.stdout and refs[3] not in r.stdout
    assert all(image_id(client, ref) for ref in refs)
    data = prune_json(root, f"test/{node}/web", "--keep", "2", "--dry-run")
    assert data[0]["dry_run"] is True and removed_refs(data) == sorted(refs[:2])
    assert all(image_id(client, ref) for ref in refs)
    remove_node_containers(client, node)


def test_stopped_containers_and_unrelated_images_keep_theirs(client, clean_engine, tmp_path):
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 5)
    # an operator's stopped container (not the deployer's) on version 1
    stopped = client.containers.create(refs[0], name=f"oper-{node}")
    # an image in a repository no service has run, and a dangling one (its tag moved to a new build)
    other = f"deployer-test/unrelated-{uuid.uuid4().hex[:8]}"
    build_web_image(client, f"{other}:1", body="unrelated")
    dangling_tag = f"{other}:moved"
    old = build_web_image(client, dangling_tag, body="first build")
    build_web_image(client, dangling_tag, body="second build")
    assert client.api.inspect_image(old.id)["RepoTags"] == []

    # the whole node: dangling images go too, the unrelated repository stays
    data = prune_json(root, f"test/{node}", "--keep", "3")
    gone = {i["id"] for i in data[0]["removed"]}
    assert image_id(client, refs[0]) is not None  # the stopped container's image
    assert image_id(client, refs[1]) is None
    assert all(image_id(client, ref) for ref in refs[2:])
    assert image_id(client, f"{other}:1") and image_id(client, dangling_tag)
    assert old.id in gone and image_id(client, old.id) is None
    for image in data[0]["removed"]:  # every other removal was refs[1] or a dangling image
        assert image["references"] in ([refs[1]], []), image
    stopped.remove()
    remove_node_containers(client, node)


def test_prune_while_the_lock_is_held_fails_naming_the_holder_and_removes_nothing(client, clean_engine, tmp_path):
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 5)
    lock = DeployLock(root / ".git", {"command": "deployer deploy held-by-test"})
    lock.acquire()
    try:
        r = run(root, "prune", "--keep", "1")
        assert r.returncode != 0
        assert "repository lock held by" in r.stderr and "deployer deploy held-by-test" in r.stderr, r.stderr
        assert all(image_id(client, ref) for ref in refs)
        # with --wait, prune waits for the deploy to finish, then prunes
        threading.Timer(1.0, lock.release).start()
        started = time.monotonic()
        r = run(root, "prune", f"test/{node}/web", "--keep", "1", "--wait", "30")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started >= 0.9
    finally:
        if lock.held:
            lock.release()
    assert [image_id(client, ref) is None for ref in refs] == [True, True, True, True, False]
    assert f"test/{node}: removed 4 images" in r.stdout
    remove_node_containers(client, node)


@pytest.fixture(scope="module")
def registry(fleet):
    server = RegistryServer(fleet.gateway)
    server.start()
    try:
        yield server.address
    finally:
        server.stop()


def test_rollback_to_a_pruned_image_the_registry_lacks_says_so(client, clean_engine, registry, tmp_path):
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 3,
                                         prefix=f"{registry}/prune-{uuid.uuid4().hex[:8]}")
    prune_json(root, f"test/{node}/web", "--keep", "1")
    assert image_id(client, refs[0]) is None
    head = git(root, "rev-parse", "HEAD")
    r = cli(root, "rollback", f"test/{node}/web", "--steps", "2")
    assert r.exit_code == 1
    name = refs[0].split("/", 1)[1]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: the image rollback needs, {refs[0]}, is not on the node and the registry {registry} "
        f"has no {name} (pruned?)")
    assert git(root, "rev-parse", "HEAD") == head
    # a deploy of a missing image still reads as before
    r = cli(root, "deploy", f"{registry}/never-pushed:1", f"test/{node}", "--service", "web")
    assert r.exit_code == 1 and "(was it pushed?)" in r.stderr and "pruned" not in r.stderr
    remove_node_containers(client, node)


def test_an_unreachable_node_fails_alone_the_others_are_pruned(client, clean_engine, tmp_path):
    root, node, refs = deployed_versions(client, clean_engine, tmp_path, 3)
    gone = root / "datacenters" / "test" / "gone"
    gone.mkdir()
    (gone / "node.yml").write_text(f"docker: unix://{tmp_path}/no-engine.sock\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a node whose engine is down")
    r = cli(root, "prune", "--keep", "1")
    assert r.exit_code == 1
    assert "test/gone: FAILED " in r.stdout and f"test/{node}: removed " in r.stdout, r.stdout
    assert [image_id(client, ref) is None for ref in refs] == [True, True, False]
    remove_node_containers(client, node)
