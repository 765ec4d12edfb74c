"""The operator's cache: filled by a startup LIST, kept by watch events, synced before use."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modelship.operator import bodies, manifests, naming, spec
from modelship.operator import cache as cache_module
from modelship.operator.cache import MODEL_DEPLOYMENT, ObjectCache

from tests.operator.factories import live, md_body


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def child(kind: str, name: str, version: str, owner: str = "iris") -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ml",
            "resourceVersion": version,
            "labels": {naming.LABEL_MODEL_DEPLOYMENT: owner},
        },
        "spec": {"replicas": 1},
    }


def test_events_fill_and_empty_the_cache_by_owner() -> None:
    cache = ObjectCache()
    assert cache.apply_event(MODEL_DEPLOYMENT, None, md_body()) == ("ml", "iris")
    assert cache.apply_event("Deployment", "ADDED", child("Deployment", "iris-a", "5")) == ("ml", "iris")
    assert cache.apply_event("Service", None, child("Service", "iris", "6")) == ("ml", "iris")
    assert cache.model_deployment(("ml", "iris"))["spec"]["model"]["version"] == "3"  # type: ignore[index]
    children = cache.children(("ml", "iris"))
    assert [d["metadata"]["name"] for d in children.deployments] == ["iris-a"]
    assert [s["metadata"]["name"] for s in children.services] == ["iris"]
    assert cache.children(("ml", "other")).deployments == []

    cache.apply_event("Deployment", "DELETED", child("Deployment", "iris-a", "7"))
    assert cache.children(("ml", "iris")).deployments == []


def test_objects_without_an_owner_label_are_ignored() -> None:
    cache = ObjectCache()
    body = child("Pod", "stray", "1")
    del body["metadata"]["labels"]
    assert cache.apply_event("Pod", "ADDED", body) is None
    assert len(cache) == 0


def test_an_older_version_does_not_replace_a_newer_one() -> None:
    cache = ObjectCache()
    cache.prefill("Deployment", [child("Deployment", "iris-a", "20")])
    older = child("Deployment", "iris-a", "15")
    older["spec"]["replicas"] = 9
    cache.apply_event("Deployment", None, older)
    assert cache.children(("ml", "iris")).deployments[0]["metadata"]["resourceVersion"] == "20"
    assert cache.synced  # the late event still proved the object exists


async def test_not_synced_until_every_listed_object_is_confirmed_by_the_watch() -> None:
    cache = ObjectCache()
    assert (
        cache.prefill("Deployment", [child("Deployment", "iris-a", "5"), child("Deployment", "iris-b", "6")])
        == 2
    )
    assert not cache.synced
    waiter = asyncio.create_task(cache.wait_synced())
    cache.apply_event("Deployment", None, child("Deployment", "iris-a", "5"))
    await asyncio.sleep(0)
    assert not waiter.done()
    cache.apply_event("Deployment", "MODIFIED", child("Deployment", "iris-b", "9"))
    await asyncio.wait_for(waiter, 1)
    assert cache.synced


async def test_what_the_watch_never_shows_is_dropped_after_the_settle_time() -> None:
    clock = Clock()
    cache = ObjectCache(settle=10, clock=clock)
    cache.prefill("Deployment", [child("Deployment", "iris-a", "5"), child("Deployment", "gone", "6")])
    cache.apply_event("Deployment", None, child("Deployment", "iris-a", "5"))
    clock.now = 11
    await asyncio.wait_for(cache.wait_synced(), 1)
    assert [d["metadata"]["name"] for d in cache.children(("ml", "iris")).deployments] == ["iris-a"]


async def test_a_listed_object_deleted_before_the_watch_saw_it_settles_too() -> None:
    cache = ObjectCache()
    cache.prefill("Service", [child("Service", "iris", "5")])
    cache.apply_event("Service", "DELETED", child("Service", "iris", "6"))
    assert cache.synced
    await asyncio.wait_for(cache.wait_synced(), 1)


@pytest.mark.parametrize(
    ("namespace", "pattern", "served"),
    [
        ("ml", "ml", True),
        ("ml-prod", "ml-*", True),
        ("web", "ml-*", False),
        ("myapp-test", "myapp-*, !*-pr-*, *pr-123", True),
        ("myapp-pr-123", "myapp-*, !*-pr-*, *pr-123", True),
        ("myapp-pr-456", "myapp-*, !*-pr-*, *pr-123", False),
        ("otherapp-pr-123", "myapp-*, !*-pr-*, *pr-123", False),
        ("otherapp-pr-123", "!*-pr-*, *pr-123", True),
        ("kube-system", "!kube-*", False),
        ("default", "!kube-*", True),
    ],
)
def test_namespace_patterns_follow_kopfs_rules(namespace: str, pattern: str, served: bool) -> None:
    from modelship.operator.watching import namespace_matches

    assert namespace_matches(namespace, pattern) is served


def test_served_namespaces_from_kopf_run_options() -> None:
    from modelship.operator.watching import Served

    assert Served.from_options(True, []).namespaces is None
    assert Served.from_options(False, ["a", "b"]).namespaces == ("a", "b")
    patterned = Served.from_options(False, ["ml-*"])
    assert patterned.namespaces is None and patterned.includes("ml-x") and not patterned.includes("web")


def test_an_ignored_pattern_takes_namespaces_out_of_what_is_served() -> None:
    from modelship.operator.watching import Served

    demo = Served.from_options(True, [], "mst-*")  # a demo's operator leaves the tests' namespaces alone
    assert demo.includes("modelship-demo") and not demo.includes("mst-canary-1a2b3c")
    tests = Served.from_options(True, [], "!mst-*")  # and the tests' operators everything else
    assert tests.includes("mst-canary-1a2b3c") and not tests.includes("modelship-demo")
    assert Served.from_options(False, ["ml-*"], "ml-sandbox").includes("ml-prod")
    assert not Served.from_options(False, ["ml-*"], "ml-sandbox").includes("ml-sandbox")


def target_deployment(replicas: int = 2) -> dict[str, Any]:
    md = spec.parse(md_body(replicas=replicas))
    return manifests.revision_deployment(md, manifests.desired_revision(md, server_image="img:1"), replicas)


def test_trimming_keeps_what_reconciling_reads() -> None:
    body = live(target_deployment())
    body["metadata"]["managedFields"] = [{"manager": "x"}]
    trimmed = cache_module.trim_object(body)
    assert "managedFields" not in trimmed["metadata"]
    assert trimmed["spec"] == body["spec"]
    assert trimmed["metadata"]["labels"][naming.LABEL_REVISION]


def test_trimming_keeps_only_who_owns_spec_replicas_of_the_managed_fields() -> None:
    """Whether our apply still owns spec.replicas decides the handover to the autoscaler."""
    body = live(target_deployment())
    template = {"f:template": {"f:spec": {"f:containers": {}}}}
    body["metadata"]["managedFields"] = [
        {
            "manager": naming.FIELD_MANAGER,
            "operation": "Apply",
            "fieldsV1": {"f:spec": {"f:replicas": {}, **template}},
        },
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "subresource": "status",
            "fieldsV1": {"f:status": {}},
        },
    ]
    trimmed = cache_module.trim_object(body)
    assert trimmed["metadata"]["managedFields"] == [
        {"manager": naming.FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]
    assert bodies.applies_replicas(trimmed, naming.FIELD_MANAGER)
    assert not bodies.applies_replicas(trimmed, naming.HANDOVER_FIELD_MANAGER)


def test_the_cache_keeps_objects_packed_and_unpacks_them_unchanged() -> None:
    trimmed = cache_module.trim_object(live(target_deployment()))
    packed = cache_module.pack(trimmed)
    assert isinstance(packed, str)
    assert cache_module.unpack(packed) == trimmed


def test_an_hpas_status_change_reaches_its_owner_with_the_status_kept() -> None:
    """status.autoscaling is read from the HPA's status: the HPA controller's writes must reach it."""
    cache = ObjectCache()
    cache.apply_event(MODEL_DEPLOYMENT, None, md_body())
    hpa = child("HorizontalPodAutoscaler", "iris", "7")
    assert cache.apply_event("HorizontalPodAutoscaler", "ADDED", hpa) == ("ml", "iris")
    hpa = {**hpa, "metadata": {**hpa["metadata"], "resourceVersion": "8"}, "status": {"desiredReplicas": 3}}
    assert cache.apply_event("HorizontalPodAutoscaler", "MODIFIED", hpa) == ("ml", "iris")
    assert cache.children(("ml", "iris")).autoscalers[0]["status"] == {"desiredReplicas": 3}
