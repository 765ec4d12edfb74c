"""A reconcile's decision: what to apply and what to delete, given what exists."""

from __future__ import annotations

from modelship.operator import bodies, manifests, naming, spec
from modelship.operator.children import Children
from modelship.operator.decisions import decide
from modelship.operator.drift import Difference

from tests.operator.factories import live, md_body, ready_deployment

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
