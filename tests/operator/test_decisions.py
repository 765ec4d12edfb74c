"""A reconcile's decision: what to apply and what to delete, given what exists."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelship.operator import bodies, manifests, naming, spec
from modelship.operator.children import Children
from modelship.operator.decisions import Decision, decide, replicas_hold
from modelship.operator.drift import Difference
from modelship.operator.rollout import traffic

from tests.operator.factories import live, md_body, pod, ready_deployment, replicas_managed_by

IMAGE = "img:1"
NOW = 1_800_000_000.0


def desired(body: dict) -> tuple[dict, dict, dict | None]:
    md = spec.parse(body)
    revision = manifests.desired_revision(md, server_image=IMAGE)
    return (
        manifests.revision_deployment(md, revision, md.desired_replicas),
        manifests.service(md),
        manifests.autoscaler(md, revision.deployment_name),
    )


def test_a_new_model_deployment_gets_a_deployment_and_a_service() -> None:
    decision = decide(spec.parse(md_body(replicas=2)), Children(), server_image=IMAGE, now=NOW)
    assert [(a.kind, a.difference) for a in decision.apply] == [
        ("Deployment", Difference.MISSING),
        ("Service", Difference.MISSING),
    ]
    assert decision.delete == ()


def test_nothing_to_do_when_the_children_are_as_wanted() -> None:
    body = md_body(replicas=2)
    deployment, service, _ = desired(body)
    children = Children(deployments=[ready_deployment(deployment)], services=[live(service)])
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert decision.apply == ()
    assert decision.delete == ()
    assert decision.plan.target_complete


def test_a_new_version_keeps_the_old_deployment_until_the_new_one_is_complete() -> None:
    old_body = md_body(replicas=2)
    old_deployment, service, _ = desired(old_body)
    new_body = md_body(replicas=2, model={"version": "4"}, status={"model": {"revision": "x"}})
    new_deployment, _, _ = desired(new_body)
    children = Children(deployments=[ready_deployment(old_deployment)], services=[live(service)])
    decision = decide(spec.parse(new_body), children, server_image=IMAGE, now=NOW)
    assert [a.name for a in decision.apply] == [new_deployment["metadata"]["name"]]
    assert decision.delete == ()

    children = Children(
        deployments=[ready_deployment(old_deployment), ready_deployment(new_deployment)],
        services=[live(service)],
    )
    decision = decide(spec.parse(new_body), children, server_image=IMAGE, now=NOW)
    assert decision.apply == ()
    assert decision.plan.stable == decision.revision.revision
    # The old revision keeps its pods for scaleDownDelaySeconds (30 by default), then goes.
    assert decision.delete == ()
    old_revision = old_deployment["metadata"]["labels"][naming.LABEL_REVISION]
    promoted = {
        "stableRevision": decision.revision.revision,
        "retiring": old_revision,
        "promotedAt": "2027-01-15T08:00:00Z",
    }
    later = md_body(replicas=2, model={"version": "4"}, status={"rollout": promoted})
    decision = decide(
        spec.parse(later), children, server_image=IMAGE, now=bodies.timestamp("2027-01-15T08:00:29Z") or 0
    )
    assert decision.delete == ()
    decision = decide(
        spec.parse(later), children, server_image=IMAGE, now=bodies.timestamp("2027-01-15T08:00:31Z") or 0
    )
    assert [(d.kind, d.name) for d in decision.delete] == [("Deployment", old_deployment["metadata"]["name"])]
    assert decision.delete[0].uid == f"uid-{old_deployment['metadata']['name']}"


def test_autoscaling_adds_an_hpa_and_unsetting_it_removes_it() -> None:
    body = md_body(autoscaling={"maxReplicas": 3})
    deployment, service, hpa = desired(body)
    assert hpa is not None
    decision = decide(
        spec.parse(body),
        Children(deployments=[ready_deployment(deployment)], services=[live(service)]),
        server_image=IMAGE,
        now=NOW,
    )
    assert [a.kind for a in decision.apply] == ["HorizontalPodAutoscaler"]

    plain = md_body()
    plain_deployment, _, _ = desired(plain)
    children = Children(
        deployments=[ready_deployment(plain_deployment)], services=[live(service)], autoscalers=[live(hpa)]
    )
    decision = decide(spec.parse(plain), children, server_image=IMAGE, now=NOW)
    assert [(d.kind, d.name) for d in decision.delete] == [("HorizontalPodAutoscaler", "iris")]


def test_children_of_an_earlier_object_with_the_same_name_are_ignored() -> None:
    body = md_body(replicas=2)
    deployment, service, _ = desired(body)
    leftover = ready_deployment(deployment)
    leftover["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-iris"
    decision = decide(
        spec.parse(body),
        Children(deployments=[leftover], services=[live(service)]),
        server_image=IMAGE,
        now=NOW,
    )
    assert [a.kind for a in decision.apply] == ["Deployment"]


def test_an_autoscaled_canary_is_sized_from_the_autoscaler_and_the_hpa_keeps_the_stable() -> None:
    scaling = {"minReplicas": 2, "maxReplicas": 10}
    old_body = md_body(autoscaling=scaling)
    old_deployment, service, _ = desired(old_body)
    old_deployment["spec"]["replicas"] = 8  # what the HPA chose
    old_revision = old_deployment["metadata"]["labels"][naming.LABEL_REVISION]
    new_body = md_body(
        autoscaling=scaling,
        model={"version": "4"},
        rollout={"canary": {"steps": [{"setWeight": 25}, {"pause": {}}]}},
        status={"rollout": {"stableRevision": old_revision, "stableVersion": "3"}},
    )
    children = Children(deployments=[ready_deployment(old_deployment)], services=[live(service)])
    decision = decide(spec.parse(new_body), children, server_image=IMAGE, now=NOW)
    by_name = {a.name: a.manifest for a in decision.apply}
    canary_deployment = by_name[decision.revision.deployment_name]
    assert canary_deployment["spec"]["replicas"] == 2  # 25% of the 8 the autoscaler runs
    # The stable revision is left to the HPA, which keeps scaling it during the rollout.
    assert old_deployment["metadata"]["name"] not in by_name
    hpa = by_name["iris"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == old_deployment["metadata"]["name"]


# ---- handing spec.replicas over to the autoscaler (issue #14)

SCALING = {"minReplicas": 2, "maxReplicas": 10}
TWO_STEPS = {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 100}]}}


def deployment_of(body: dict, replicas: int | None) -> dict:
    md = spec.parse(body)
    return manifests.revision_deployment(md, manifests.desired_revision(md, server_image=IMAGE), replicas)


def revision_of(manifest: dict) -> str:
    return str(manifest["metadata"]["labels"][naming.LABEL_REVISION])


def hpa_targets(decision: Decision, live_hpa: Mapping[str, Any] | None) -> str:
    """The Deployment the HPA scales once this decision is written."""
    applied = [a.manifest for a in decision.apply if a.kind == "HorizontalPodAutoscaler"]
    hpa = applied[0] if applied else live_hpa
    assert hpa is not None
    return str(hpa["spec"]["scaleTargetRef"]["name"])


HPA_SCALE_WRITE = {"operation": "Update", "subresource": "scale"}  # kube-controller-manager's


def canary_world(
    stable_size: int, canary_size: int, *, hpa_took_canary: bool = False, **status: Any
) -> tuple[dict, dict, dict, Children]:
    """An autoscaled model whose version 4 is the canary of version 3, sized by the steps (or,
    `hpa_took_canary`, whose canary's size the HPA has written since)."""
    old_body = md_body(autoscaling=SCALING)
    stable = deployment_of(old_body, None)
    stable["spec"]["replicas"] = stable_size  # what the HPA chose
    stable_live = replicas_managed_by(ready_deployment(stable), "kube-controller-manager", **HPA_SCALE_WRITE)
    new_body = md_body(autoscaling=SCALING, model={"version": "4"}, rollout=TWO_STEPS)
    canary = deployment_of(new_body, canary_size)
    canary_live = (
        replicas_managed_by(ready_deployment(canary), "kube-controller-manager", **HPA_SCALE_WRITE)
        if hpa_took_canary
        else replicas_managed_by(ready_deployment(canary), naming.FIELD_MANAGER)
    )
    rollout = {
        "stableRevision": revision_of(stable),
        "stableVersion": "3",
        "canaryRevision": revision_of(canary),
        "canaryVersion": "4",
        **status,
    }
    new_body["status"] = {"rollout": rollout}
    hpa = manifests.autoscaler(spec.parse(new_body), stable["metadata"]["name"])
    assert hpa is not None
    children = Children(
        deployments=[stable_live, canary_live],
        services=[live(manifests.service(spec.parse(new_body)))],
        autoscalers=[live(hpa)],
    )
    return new_body, stable, canary, children


def test_a_promoted_autoscaled_canary_keeps_its_size_while_the_autoscaler_takes_it_over() -> None:
    body, stable, canary, children = canary_world(4, 4, step=2, steps=2, weight=100)
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert decision.plan.stable == revision_of(canary)
    [handover] = [a for a in decision.apply if a.name == canary["metadata"]["name"]]
    # Our manager stops applying spec.replicas (the HPA sizes the serving revision now): the
    # hash of the manifest changes with it, so the apply is made, after holding the 4 pods.
    assert "replicas" not in handover.manifest["spec"]
    assert handover.difference is Difference.OUTDATED
    assert handover.hold_replicas == 4
    assert hpa_targets(decision, children.autoscalers[0]) == canary["metadata"]["name"]
    assert all(a.hold_replicas is None for a in decision.apply if a is not handover)
    # The replaced revision keeps its pods for the scale-down delay, untouched.
    assert stable["metadata"]["name"] not in {a.name for a in decision.apply}


def test_the_hold_is_never_below_min_replicas_or_what_the_hpa_gave_the_stable_revision() -> None:
    body, _, canary, children = canary_world(4, 4)
    manifest = deployment_of(body, None)
    canary_live = bodies.by_name(children.deployments, canary["metadata"]["name"])
    assert replicas_hold(manifest, canary_live, 2) == 4  # its own size
    assert replicas_hold(manifest, canary_live, 6) == 6  # the HPA ran the stable revision at 6
    assert replicas_hold(manifest, canary_live, None) is None  # not autoscaled
    assert replicas_hold(deployment_of(body, 4), canary_live, 2) is None  # still sized by us
    assert replicas_hold(manifest, None, 2) is None  # created, not handed over
    assert replicas_hold(manifests.service(spec.parse(body)), canary_live, 2) is None


def test_a_deployment_the_autoscaler_already_sizes_is_not_held() -> None:
    # The HPA's scale write took spec.replicas from our apply.
    body, _, canary, children = canary_world(4, 4, hpa_took_canary=True, step=2, steps=2, weight=100)
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    [apply] = [a for a in decision.apply if a.name == canary["metadata"]["name"]]
    assert "replicas" not in apply.manifest["spec"] and apply.hold_replicas is None
    # Nor is one that only the handover manager holds (our apply has already let go).
    held = replicas_managed_by(
        {"kind": "Deployment", "metadata": {}, "spec": {}}, naming.HANDOVER_FIELD_MANAGER
    )
    assert replicas_hold(apply.manifest, held, 2) is None


def test_a_new_autoscaled_model_starts_at_min_replicas_then_hands_its_size_over() -> None:
    body = md_body(autoscaling={"minReplicas": 3, "maxReplicas": 6})
    created = decide(spec.parse(body), Children(), server_image=IMAGE, now=NOW)
    [deployment] = [a for a in created.apply if a.kind == "Deployment"]
    assert deployment.manifest["spec"]["replicas"] == 3  # not the default of 1
    assert deployment.hold_replicas is None
    assert hpa_targets(created, None) == deployment.name

    service = live(manifests.service(spec.parse(body)))
    hpa = live(next(a.manifest for a in created.apply if a.kind == "HorizontalPodAutoscaler"))
    ours = replicas_managed_by(ready_deployment(deployment.manifest), naming.FIELD_MANAGER)
    children = Children(deployments=[ours], services=[service], autoscalers=[hpa])
    handover = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    [apply] = handover.apply
    assert "replicas" not in apply.manifest["spec"] and apply.hold_replicas == 3
    assert not handover.plan.target_complete  # until the handover is written and seen

    # Written: the handover manager holds the field, ours does not; nothing more to do.
    handed = ready_deployment(apply.manifest)
    handed["spec"]["replicas"] = 3
    handed["status"].update(replicas=3, readyReplicas=3, availableReplicas=3)
    replicas_managed_by(handed, naming.HANDOVER_FIELD_MANAGER)
    children = Children(deployments=[handed], services=[service], autoscalers=[hpa])
    settled = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert settled.apply == () and settled.plan.target_complete


def test_a_fixed_size_model_that_becomes_autoscaled_keeps_its_size() -> None:
    fixed = md_body(replicas=5)
    deployment = replicas_managed_by(ready_deployment(deployment_of(fixed, 5)), naming.FIELD_MANAGER)
    revision = revision_of(deployment)
    body = md_body(
        autoscaling=SCALING, status={"rollout": {"stableRevision": revision, "stableVersion": "3"}}
    )
    children = Children(deployments=[deployment], services=[live(manifests.service(spec.parse(body)))])
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    [apply] = [a for a in decision.apply if a.kind == "Deployment"]
    assert "replicas" not in apply.manifest["spec"] and apply.hold_replicas == 5


def test_an_aborted_autoscaled_canary_stays_at_zero_and_the_hpa_keeps_the_stable() -> None:
    """argo-rollouts#4973: there, the HPA scales an aborted canary back up. Here it only ever
    targets the stable revision's Deployment, and our manager keeps the canary's at 0."""
    body, stable, canary, children = canary_world(6, 3, step=1, steps=2, weight=50)
    body["metadata"]["annotations"] = {naming.ANNOTATION_ACTION: "abort@1"}
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert decision.rollout.abort is not None
    by_name = {a.name: a for a in decision.apply}
    scaled_down = by_name[canary["metadata"]["name"]]
    assert scaled_down.manifest["spec"]["replicas"] == 0 and scaled_down.hold_replicas is None
    assert stable["metadata"]["name"] not in by_name  # left to the HPA
    assert hpa_targets(decision, children.autoscalers[0]) == stable["metadata"]["name"]

    # Later, aborted and written: the canary's replicas are ours at 0; any other writer's
    # size is drift, restored to 0; the HPA still scales the stable revision only.
    state = decision.rollout.state.to_status(spec.parse(body).rollout)
    aborted = {**body, "metadata": {**body["metadata"], "annotations": {}}, "status": {"rollout": state}}
    scaled_up = replicas_managed_by(ready_deployment(scaled_down.manifest), naming.FIELD_MANAGER)
    scaled_up["spec"]["replicas"] = 3  # someone scaled it
    others = [d for d in children.deployments if bodies.name_of(d) != canary["metadata"]["name"]]
    children = Children(
        deployments=[*others, scaled_up], services=children.services, autoscalers=children.autoscalers
    )
    decision = decide(spec.parse(aborted), children, server_image=IMAGE, now=NOW)
    assert decision.rollout.abort is not None
    [restored] = [a for a in decision.apply if a.kind == "Deployment"]
    assert restored.name == canary["metadata"]["name"]
    assert restored.difference is Difference.DRIFTED and restored.manifest["spec"]["replicas"] == 0
    assert hpa_targets(decision, children.autoscalers[0]) == stable["metadata"]["name"]


# ---- a shadow step (issue #16): the canary out of the Service, the stable pods told where to copy

SHADOW = {
    "canary": {"steps": [{"shadow": {"percent": 20, "duration": "1m"}}, {"setWeight": 50}, {"pause": {}}]}
}


def shadow_world(*, with_service: bool) -> tuple[dict, str, str, Children]:
    """Version 3 serves (two pods), version 4 is in its shadow step with one ready pod."""
    old_body = md_body(replicas=2)
    stable = deployment_of(old_body, 2)
    new_body = md_body(replicas=2, model={"version": "4"}, rollout=SHADOW)
    canary = deployment_of(new_body, 1)
    old, new = revision_of(stable), revision_of(canary)
    new_body["status"] = {
        "rollout": {"stableRevision": old, "stableVersion": "3", "canaryRevision": new, "canaryVersion": "4"}
    }
    md = spec.parse(new_body)
    services = [live(manifests.service(md, only=old))]
    if with_service:
        shadow_service = live(traffic.revision_service(md, new))
        shadow_service["spec"]["clusterIP"] = "10.96.7.7"
        services.append(shadow_service)
    pods = [
        pod(old, "iris-old-a", ready=True),
        pod(old, "iris-old-b", ready=True),
        pod(new, "iris-new-a", ready=True),
    ]
    pods[1]["metadata"]["annotations"] = {"other": "kept"}
    children = Children(
        deployments=[ready_deployment(stable), ready_deployment(canary)], services=services, pods=pods
    )
    return new_body, old, new, children


def test_a_shadow_step_keeps_the_canary_out_of_the_service_and_gives_it_a_service_of_its_own() -> None:
    body, _old, new, children = shadow_world(with_service=False)
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert decision.rollout.weight == 0 and decision.rollout.mirror == 20
    applied = {a.name: a.manifest for a in decision.apply}
    assert "iris" not in applied, "the main Service already selects the stable revision alone"
    shadow_service = applied[f"iris-{new}"]
    assert shadow_service["spec"]["selector"][naming.LABEL_REVISION] == new
    # Until that Service has its address, no pod is told to copy anything.
    assert decision.annotate == ()


def test_the_stable_pods_alone_are_told_where_to_copy_and_how_much() -> None:
    body, _old, new, children = shadow_world(with_service=True)
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert [a.pod for a in decision.annotate] == ["iris-old-a", "iris-old-b"]
    value = decision.annotate[0].value
    assert value is not None
    assert json.loads(value) == {"url": "http://10.96.7.7:80", "percent": 20, "revision": new}
    # A pod without annotations gets the map; one with some gets the key added to it.
    key = "modelship.io~1mirror"
    assert decision.annotate[0].operations == [
        {"op": "add", "path": "/metadata/annotations", "value": {naming.ANNOTATION_MIRROR: value}}
    ]
    assert decision.annotate[1].operations == [
        {"op": "add", "path": f"/metadata/annotations/{key}", "value": value}
    ]
    # Told once: annotated pods are left alone, and the canary's own pod is never told.
    for one in children.pods[:2]:
        one["metadata"].setdefault("annotations", {})[naming.ANNOTATION_MIRROR] = value
    assert decide(spec.parse(body), children, server_image=IMAGE, now=NOW).annotate == ()


def test_after_the_shadow_step_the_copies_stop_and_the_canary_joins_the_service() -> None:
    body, _old, new, children = shadow_world(with_service=True)
    for one in children.pods[:2]:
        one["metadata"]["annotations"] = {naming.ANNOTATION_MIRROR: "{}"}
    body["status"]["rollout"].update(step=1, weight=50)
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert decision.rollout.weight == 50 and decision.rollout.mirror == 0
    assert [(a.pod, a.value) for a in decision.annotate] == [("iris-old-a", None), ("iris-old-b", None)]
    assert decision.annotate[0].operations == [
        {"op": "remove", "path": "/metadata/annotations/modelship.io~1mirror"}
    ]
    service = next(a.manifest for a in decision.apply if a.name == "iris")
    assert service["spec"]["selector"] == naming.selector_labels("iris")
    assert [(d.kind, d.name) for d in decision.delete] == [("Service", f"iris-{new}")]


def test_an_aborted_canary_stays_out_of_the_service() -> None:
    body, _old, new, children = shadow_world(with_service=True)
    body["status"]["rollout"].update(abortedRevision=new, abort={"reason": "AnalysisFailed", "message": "x"})
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW)
    assert decision.rollout.abort is not None and decision.rollout.mirror == 0
    assert not any(a.name == "iris" for a in decision.apply), "still the stable revision alone"
    assert decision.annotate == ()


def test_with_an_http_route_the_gateway_copies_the_requests_and_no_pod_is_told() -> None:
    body, old, new, children = shadow_world(with_service=True)
    body["spec"]["rollout"]["canary"]["trafficRouting"] = {"gatewayAPI": {"httpRoute": "models"}}
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "models", "namespace": "ml"},
        "spec": {"rules": [{"backendRefs": [{"name": "iris", "port": 80}]}]},
    }
    decision = decide(spec.parse(body), children, server_image=IMAGE, now=NOW, route=route)
    assert decision.annotate == ()
    assert decision.route_rules is not None
    [rule] = decision.route_rules
    assert rule["backendRefs"] == [{"name": f"iris-{old}", "port": 80, "weight": 100}]
    assert rule["filters"] == [traffic.mirror_filter(f"iris-{new}", 20)]
