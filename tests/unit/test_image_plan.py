"""engine.image_plan: which images a prune removes, from image listings in the engine's own shape."""

from __future__ import annotations

import pytest

from deployer.engine.apply import pull_failed
from deployer.engine.image_plan import (FOREIGN, IN_USE, KEPT, PARENT, ImageInfo, image_from_summary,
                                        images_to_remove)


def sha(n: int) -> str:
    return "sha256:" + f"{n:02x}" * 32


def summary(n: int, tags=(), digests=(), parent: int | None = None, size: int = 1000) -> dict:
    """One entry as GET /images/json returns it (docker 24+: absent tags are [] ; older: <none>:<none>)."""
    return {"Containers": -1, "Created": 1700000000 + n, "Id": sha(n), "Labels": None,
            "ParentId": sha(parent) if parent is not None else "", "RepoDigests": list(digests),
            "RepoTags": list(tags), "SharedSize": -1, "Size": size, "VirtualSize": size}


def listing(*entries: dict) -> list[ImageInfo]:
    return [image_from_summary(e) for e in entries]


def test_summary_drops_placeholders_and_reads_size():
    info = image_from_summary(summary(1, tags=["<none>:<none>"], digests=["<none>@<none>"], size=4242))
    assert info.dangling and info.size == 4242 and info.references == ()
    assert image_from_summary(summary(2, tags=["app:1"])).tags == ("app:1",)


def test_old_versions_of_an_owned_repository_go_kept_and_used_stay():
    images = listing(*(summary(i, tags=[f"team/app:{i}"], size=100 * i) for i in range(1, 6)))
    decision = images_to_remove(images, used_ids=[sha(5)], keep_ids=[sha(5), sha(4), sha(3)],
                                owned=["team/app:5"])
    assert [i.id for i in decision.remove] == [sha(2), sha(1)]  # newest first
    assert decision.bytes == 300
    assert dict((i.id, why) for i, why in decision.stay) == {sha(3): KEPT, sha(4): KEPT, sha(5): IN_USE}


def test_an_image_a_stopped_or_foreign_container_uses_stays():
    images = listing(summary(1, tags=["team/app:1"]), summary(2))
    decision = images_to_remove(images, used_ids=[sha(1), sha(2)], keep_ids=[], owned=["team/app"])
    assert decision.remove == [] and {why for _, why in decision.stay} == {IN_USE}


def test_foreign_repositories_stay_dangling_go():
    images = listing(summary(1, tags=["postgres:16"]), summary(2), summary(3, tags=["team/app:1", "other/x:1"]),
                     summary(4, digests=["team/app@sha256:" + "cd" * 32]))
    decision = images_to_remove(images, used_ids=[], keep_ids=[], owned=["team/app:9"])
    assert [i.id for i in decision.remove] == [sha(4), sha(2)]
    assert dict((i.id, why) for i, why in decision.stay) == {sha(1): FOREIGN, sha(3): FOREIGN}


def test_dangling_images_stay_when_only_a_service_is_pruned():
    decision = images_to_remove(listing(summary(1)), [], [], ["team/app"], dangling=False)
    assert decision.remove == [] and decision.stay[0][1] == FOREIGN


def test_repositories_compare_in_docker_short_form():
    images = listing(summary(1, tags=["nginx:1.25"]), summary(2, tags=["docker.io/library/nginx:1.24"]))
    decision = images_to_remove(images, [], [], ["docker.io/library/nginx:1.26"])
    assert [i.id for i in decision.remove] == [sha(2), sha(1)]


def test_a_parent_of_an_image_that_stays_stays_up_the_chain():
    images = listing(summary(1, tags=["team/app:1"]), summary(2, tags=["team/app:2"], parent=1),
                     summary(3, tags=["team/app:3"], parent=2), summary(4, tags=["team/app:4"]))
    decision = images_to_remove(images, used_ids=[sha(3)], keep_ids=[], owned=["team/app"])
    assert [i.id for i in decision.remove] == [sha(4)]
    assert dict((i.id, why) for i, why in decision.stay) == {sha(1): PARENT, sha(2): PARENT, sha(3): IN_USE}


def test_intermediate_images_are_walked_through_never_decided_on():
    # the classic builder: 1 <- 2 (untagged intermediate) <- 3; 3 stays, so 1 does
    images = listing(summary(1, tags=["team/app:1"]), summary(2, parent=1), summary(3, tags=["team/app:3"], parent=2),
                     summary(4, tags=["team/app:4"]), summary(5, parent=4), summary(6, tags=["team/app:6"], parent=5))
    decision = images_to_remove(images, used_ids=[sha(3)], keep_ids=[], owned=["team/app"])
    assert [i.id for i in decision.remove] == [sha(6), sha(4)]
    assert decision.ancestors == {sha(4)}  # removed after 6, which is built on it
    assert dict((i.id, why) for i, why in decision.stay) == {sha(1): PARENT, sha(3): IN_USE}


def test_children_are_removed_before_their_parents():
    images = listing(summary(1, tags=["team/app:1"]), summary(2, tags=["team/app:2"], parent=1),
                     summary(3, tags=["team/app:3"], parent=2))
    decision = images_to_remove(images, [], [], ["team/app"])
    assert [i.id for i in decision.remove] == [sha(3), sha(2), sha(1)]


def test_unparseable_references_are_not_ours():
    decision = images_to_remove(listing(summary(1, tags=["Bad Ref:1"])), [], [], ["team/app"])
    assert decision.remove == [] and decision.stay[0][1] == FOREIGN


@pytest.mark.parametrize("detail", ["manifest unknown: manifest unknown",
                                    "manifest for localhost:5000/team/app:1 not found: manifest unknown"])
def test_rollback_names_the_image_gone_from_node_and_registry(detail):
    msg = pull_failed("localhost:5000/team/app:1", detail, needed_by="rollback").one_line()
    assert msg == ("the image rollback needs, localhost:5000/team/app:1, is not on the node and the registry "
                   "localhost:5000 has no team/app:1 (pruned?)")


def test_a_deploy_pull_failure_reads_as_before():
    msg = pull_failed("localhost:5000/team/app:1", "manifest unknown").one_line()
    assert msg == "image localhost:5000/team/app:1 is not on the node and registry localhost:5000 has no team/app:1 " \
                  "(was it pushed?)"
    refused = pull_failed("localhost:5000/team/app:1", "connection refused", needed_by="rollback").one_line()
    assert "unreachable from the node" in refused and "pruned" not in refused
