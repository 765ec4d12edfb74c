"""Status computed from observations: conditions that tell the truth, and stable timestamps."""

from __future__ import annotations

from typing import Any

from modelship.operator import canary, manifests, spec
from modelship.operator import status as st
from modelship.operator.observed import PodFailure, RevisionState
from modelship.operator.rollout import plan_of

from tests.operator import factories
from tests.operator.factories import md_body

NOW = "2026-01-01T00:00:10Z"
EARLIER = "2026-01-01T00:00:00Z"


def revision_state(revision: str, version: str, *, ready: int, wanted: int = 2) -> RevisionState:
    return factories.revision_state(revision, version, ready=ready, wanted=wanted, created=EARLIER)


def target_of(body: dict[str, Any]) -> str:
    return manifests.desired_revision(spec.parse(body), server_image="img:1").revision


def compute(
    body: dict[str, Any],
    observed: dict[str, RevisionState],
    *,
    failures: tuple[PodFailure, ...] = (),
    errors: tuple[str, ...] = (),
) -> dict[str, Any]:
    md = spec.parse(body)
    revision = manifests.desired_revision(md, server_image="img:1")
    seen_now = canary.Observed(
        target=revision.revision,
        target_version=revision.version,
        revisions=observed,
        size=md.desired_replicas or 1,
    )
    outcome = canary.advance(md.rollout, canary.RolloutState.from_status(md.status), seen_now, 0.0)
    plan = plan_of(revision.revision, outcome, observed.get(revision.revision))
    seen = st.Observations(revisions=observed, pod_failures=failures, apply_errors=errors, rollout=outcome)
    return st.compute_status(md, revision, plan, seen, now=NOW)


def ready_target(
    body: dict[str, Any], version: str = "3", *, ready: int = 2, wanted: int = 2
) -> dict[str, RevisionState]:
    rev = target_of(body)
    return {rev: revision_state(rev, version, ready=ready, wanted=wanted)}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_new_model_deployment_is_progressing() -> None:
    status = compute(md_body(replicas=2), {})
    assert status["phase"] == "Progressing"
    assert conditions(status) == {
        "Ready": ("False", "PodsNotReady"),
        "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("False", "NoFailure"),
    }
    assert status["readyText"] == "0/2"
    assert status["model"] == {"name": "iris"}
    assert status["revisions"][0]["role"] == "target"
    assert status["url"] == "http://iris.ml.svc.cluster.local/v2/models/iris"
    assert status["selector"] == "app.kubernetes.io/component=predictor,modelship.io/model-deployment=iris"


def test_a_complete_revision_is_ready_and_healthy() -> None:
    body = md_body(replicas=2, generation=4)
    status = compute(body, ready_target(body))
    assert status["phase"] == "Healthy"
    assert conditions(status)["Ready"] == ("True", "Available")
    assert conditions(status)["Progressing"] == ("False", "RolloutComplete")
    assert status["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])
    assert (status["replicas"], status["readyReplicas"], status["readyText"]) == (2, 2, "2/2")
    assert status["model"]["version"] == "3"
    assert status["model"]["revision"] == status["revisions"][0]["revision"]
    assert status["revisions"][0]["role"] == "stable"


def test_scaled_to_zero_is_ready() -> None:
    body = md_body(replicas=0)
    status = compute(body, ready_target(body, ready=0, wanted=0))
    assert conditions(status)["Ready"] == ("True", "ScaledToZero")


def test_a_model_that_fails_to_load_is_degraded_with_the_servers_message_while_the_old_one_serves() -> None:
    body = md_body(replicas=2, model={"version": "4"}, status={"model": {"revision": "old"}})
    failure = PodFailure(
        target_of(body), "iris-x-1", "ModelLoadFailed", "container fetch-model: sha256 mismatch"
    )
    observed = {"old": revision_state("old", "3", ready=2), **ready_target(body, "4", ready=0)}
    status = compute(body, observed, failures=(failure,))
    assert status["phase"] == "Degraded"
    assert conditions(status) == {
        "Ready": ("False", "ModelLoadFailed"),
        "Progressing": ("False", "RolloutStalled"),
        "Degraded": ("True", "ModelLoadFailed"),
    }
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "sha256 mismatch" in degraded["message"]
    assert "pod iris-x-1" in degraded["message"]
    assert degraded["message"].endswith("version 3 (revision old) keeps serving")
    assert status["model"] == {"name": "iris", "version": "3", "revision": "old"}
    assert {r["role"] for r in status["revisions"]} == {"stable", "target"}
    assert status["readyText"] == "2/2"


def test_failures_of_other_revisions_do_not_degrade_the_target() -> None:
    failure = PodFailure("other", "p", "ServerFailed", "boom")
    body = md_body(replicas=2)
    status = compute(body, ready_target(body, ready=1), failures=(failure,))
    assert conditions(status)["Degraded"] == ("False", "NoFailure")


def test_a_refused_write_is_degraded_even_when_pods_serve() -> None:
    body = md_body(replicas=2)
    status = compute(body, ready_target(body), errors=("HorizontalPodAutoscaler iris: forbidden",))
    assert conditions(status)["Degraded"] == ("True", "ApplyFailed")
    assert conditions(status)["Ready"] == ("True", "Available")
    assert status["phase"] == "Degraded"


def test_an_autoscaled_target_counts_what_the_autoscaler_chose() -> None:
    body = md_body(autoscaling={"minReplicas": 2, "maxReplicas": 6})
    assert compute(body, {})["readyText"] == "0/2"
    status = compute(body, ready_target(body, ready=5, wanted=5))
    assert status["readyText"] == "5/5"


def test_last_transition_time_changes_only_when_a_condition_flips() -> None:
    previous = [
        {"type": "Ready", "status": "False", "reason": "PodsNotReady", "lastTransitionTime": EARLIER},
        {"type": "Degraded", "status": "False", "reason": "NoFailure", "lastTransitionTime": EARLIER},
    ]
    body = md_body(replicas=2, status={"conditions": previous})
    status = compute(body, ready_target(body))
    times = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
    assert times == {"Ready": NOW, "Progressing": NOW, "Degraded": EARLIER}


def test_the_merge_patch_nulls_what_disappeared_and_keeps_what_others_own() -> None:
    old = {"model": {"name": "iris", "version": "3", "revision": "a"}, "phase": "Healthy", "kopf": {"x": 1}}
    new = {"model": {"name": "iris"}, "phase": "Healthy"}
    assert st.merge_patch(old, new, owned=st.OWNED_STATUS_FIELDS) == {
        "model": {"version": None, "revision": None}
    }
    assert st.merge_patch(new, new, owned=st.OWNED_STATUS_FIELDS) == {}
