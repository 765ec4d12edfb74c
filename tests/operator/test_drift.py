"""Telling apart a missing, an outdated and a hand-edited child from one that is fine."""

from __future__ import annotations

import copy

from modelship.operator import manifests, naming, spec
from modelship.operator.drift import Difference, difference, is_subset

from tests.operator.factories import live, md_body


def deployment(**kwargs: object) -> dict:
    md = spec.parse(md_body(**kwargs))
    revision = manifests.desired_revision(md, server_image="img:1")
    return manifests.revision_deployment(md, revision, md.desired_replicas)


def test_a_live_object_with_defaults_and_status_matches_what_we_applied() -> None:
    desired = deployment(replicas=2)
    assert difference(desired, live(desired)) is Difference.NONE


def test_quantities_the_api_server_rewrote_still_match() -> None:
    desired = deployment(resources={"requests": {"cpu": "0.5", "memory": "1024Mi"}})
    stored = live(desired)
    container = stored["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["requests"] = {"cpu": "500m", "memory": "1Gi"}
    assert difference(desired, stored) is Difference.NONE


def test_a_missing_object_is_missing() -> None:
    assert difference(deployment(), None) is Difference.MISSING


def test_a_changed_desired_state_is_outdated() -> None:
    before, after = deployment(replicas=2), deployment(replicas=3)
    assert difference(after, live(before)) is Difference.OUTDATED


def test_a_hand_edit_of_our_fields_is_drift() -> None:
    desired = deployment(replicas=2)
    edited = live(desired)
    edited["spec"]["replicas"] = 7
    assert difference(desired, edited) is Difference.DRIFTED
    relabelled = live(desired)
    del relabelled["metadata"]["labels"][naming.LABEL_VERSION]
    assert difference(desired, relabelled) is Difference.DRIFTED


def test_fields_others_added_are_left_alone() -> None:
    desired = deployment()
    stored = live(desired)
    stored["metadata"]["labels"]["team"] = "ml"
    stored["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    stored["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    assert difference(desired, stored) is Difference.NONE


def test_an_extra_list_item_is_a_difference() -> None:
    desired = deployment()
    stored = live(desired)
    stored["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": "1"})
    assert difference(desired, stored) is Difference.DRIFTED


def test_empty_maps_and_lists_match_absent_fields() -> None:
    assert is_subset({"a": {}, "b": [], "c": None}, {})
    assert is_subset(
        {"volumes": [{"name": "tmp", "emptyDir": {}}]}, {"volumes": [{"name": "tmp", "emptyDir": {}}]}
    )
    assert not is_subset({"a": 1}, {})


def test_a_removed_field_changes_the_hash_so_it_is_re_applied() -> None:
    with_selector = deployment(nodeSelector={"pool": "a"})
    without = copy.deepcopy(with_selector)
    del without["spec"]["template"]["spec"]["nodeSelector"]
    without = manifests._stamp(without)
    assert is_subset(without["spec"], live(with_selector)["spec"])  # a subset check alone misses it
    assert difference(without, live(with_selector)) is Difference.OUTDATED
