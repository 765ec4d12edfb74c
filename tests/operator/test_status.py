"""Status computed from observations: conditions that tell the truth, and stable timestamps."""

from __future__ import annotations

from typing import Any

from modelship.operator import children, manifests, naming, reasons, spec
from modelship.operator import status as st
from modelship.operator.children import RevisionState
from modelship.operator.reasons import Failure
from modelship.operator.rollout import state, steps
from modelship.operator.rollout.analysis import Result as R
from modelship.operator.rollout.plan import plan_of

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
    failure: Failure | None = None,
    errors: tuple[str, ...] = (),
    rolled_back: bool = False,
    hpa: dict[str, Any] | None = None,
    artifacts: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status for these revisions; `failure` is the target's (children.revision_failure),
    shown to the step function too when `rolled_back`."""
    md = spec.parse(body)
    revision = manifests.desired_revision(md, server_image="img:1")
    seen_now = steps.Inputs(
        target=revision.revision,
        target_version=revision.version,
        revisions=observed,
        size=md.desired_replicas or 1,
        target_failure=failure if rolled_back else None,
    )
    outcome = steps.advance(md.rollout, state.RolloutState.from_status(md.status), seen_now, 0.0)
    plan = plan_of(revision.revision, outcome, observed.get(revision.revision))
    seen = st.StatusInputs(
        revisions=observed,
        target_failure=failure,
        apply_errors=errors,
        rollout=outcome,
        autoscaler=hpa,
        artifacts=artifacts or {},
    )
    return st.compute_status(md, revision, plan, seen, now=NOW)


def load_failure(body: dict[str, Any], observed: dict[str, RevisionState]) -> Failure | None:
    target = target_of(body)
    fetch = {"state": {"terminated": {"exitCode": 1, "message": "sha256 mismatch"}}}
    return children.revision_failure(target, "4", observed, [factories.pod(target, "iris-x-1", init=fetch)])


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


ARTIFACT = {"uri": "s3://models/iris/3/model.onnx", "sha256": "ab" * 32, "size": 2048, "fetchSeconds": 0.5}


def test_the_model_names_the_artifact_the_stable_pods_fetched_and_keeps_it_without_pods() -> None:
    body = md_body(replicas=2)
    rev = target_of(body)
    status = compute(body, ready_target(body), artifacts={rev: ARTIFACT, "other": {**ARTIFACT, "size": 1}})
    assert status["model"] == {"name": "iris", "version": "3", "revision": rev, **ARTIFACT}
    # Scaled to zero, or every pod replaced at once: what the revision's pods said still holds ...
    again = compute({**body, "status": status}, ready_target(body, ready=0, wanted=0))
    assert again["model"] == status["model"]
    # ... but never for another revision.
    stale = {**status, "model": {**status["model"], "revision": "old"}}
    assert compute({**body, "status": stale}, ready_target(body))["model"] == {
        "name": "iris",
        "version": "3",
        "revision": rev,
    }


def test_scaled_to_zero_is_ready() -> None:
    body = md_body(replicas=0)
    status = compute(body, ready_target(body, ready=0, wanted=0))
    assert conditions(status)["Ready"] == ("True", "ScaledToZero")


def test_a_model_that_fails_to_load_is_degraded_with_the_servers_message_while_the_old_one_serves() -> None:
    body = md_body(replicas=2, model={"version": "4"}, status={"model": {"revision": "old"}})
    observed = {"old": revision_state("old", "3", ready=2), **ready_target(body, "4", ready=0)}
    status = compute(body, observed, failure=load_failure(body, observed))
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
    body = md_body(replicas=2)
    observed = ready_target(body, ready=1)
    crashed = factories.pod(
        "other", "p", server={"state": {"terminated": {"exitCode": 1, "message": "boom"}}}
    )
    failure = children.revision_failure(target_of(body), "3", observed, [crashed])
    status = compute(body, observed, failure=failure)
    assert conditions(status)["Degraded"] == ("False", "NoFailure")


def test_a_rolled_back_model_names_its_version_once_and_what_keeps_serving() -> None:
    body = md_body(replicas=2, model={"version": "4"}, status={"model": {"revision": "old"}})
    observed = {"old": revision_state("old", "3", ready=2), **ready_target(body, "4", ready=0)}
    status = compute(body, observed, failure=load_failure(body, observed), rolled_back=True)
    assert conditions(status) == {
        "Ready": ("False", reasons.MODEL_LOAD_FAILED),
        "Progressing": ("False", reasons.ROLLOUT_ABORTED),
        "Degraded": ("True", reasons.MODEL_LOAD_FAILED),
    }
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    target = target_of(body)
    assert degraded["message"] == (
        f"version 4 (revision {target}), pod iris-x-1: container fetch-model: sha256 mismatch"
        "; version 3 (revision old) keeps serving"
    )
    assert status["rollout"]["abort"] == {
        "reason": reasons.MODEL_LOAD_FAILED,
        "message": degraded["message"].split(";")[0],
    }


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


INFLIGHT = {"minReplicas": 1, "maxReplicas": 6, "metric": "inflightRequests", "targetInflightRequests": 2}


def test_the_autoscaler_reports_its_load_and_size() -> None:
    body = md_body(autoscaling=INFLIGHT)
    reading = {
        "type": "Pods",
        "pods": {"metric": {"name": "modelship_inflight_requests"}, "current": {"averageValue": "3200m"}},
    }
    hpa = {"currentReplicas": 3, "desiredReplicas": 4, "currentMetrics": [reading]}
    status = compute(body, ready_target(body, ready=3, wanted=3), hpa=hpa)
    assert status["autoscaling"] == {
        "metric": "inflightRequests",
        "target": "2",
        "current": "3.2",
        "load": "3.2/2 in-flight",
        "currentReplicas": 3,
        "desiredReplicas": 4,
    }


def test_no_autoscaling_status_without_an_hpa_or_without_autoscaling() -> None:
    body = md_body(autoscaling=INFLIGHT)
    assert "autoscaling" not in compute(body, {})
    # An HPA left over after spec.autoscaling was removed is being deleted: not reported.
    assert "autoscaling" not in compute(md_body(replicas=2), {}, hpa={"desiredReplicas": 3})


def test_an_hpa_that_cannot_read_its_metric_leaves_the_model_ready() -> None:
    body = md_body(autoscaling=INFLIGHT)
    failing = {
        "type": "ScalingActive",
        "status": "False",
        "reason": "FailedGetPodsMetric",
        "message": f"unable to get metric {naming.INFLIGHT_METRIC}",
    }
    status = compute(body, ready_target(body, ready=1, wanted=1), hpa={"conditions": [failing]})
    assert status["autoscaling"]["problem"] == {
        "reason": "FailedGetPodsMetric",
        "message": f"the HPA cannot read {naming.INFLIGHT_METRIC}: {failing['message']}",
    }
    assert conditions(status) == {
        "Ready": ("True", "Available"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "NoFailure"),
    }


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


# ---- traffic: by ready pods and as measured (issue #29)

CANARY_BODY = md_body(
    replicas=4,
    rollout={"canary": {"steps": [{"setWeight": 25}, {"analysis": {}}, {"setWeight": 50}]}},
    status={"rollout": {"stableRevision": "old", "stableVersion": "1"}},
)


def _at_analysis(measurement: steps.Verdict | None, streak: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(status.rollout, conditions) at the analysis step, 3 stable and 1 canary pod ready."""
    md = spec.parse(CANARY_BODY)
    revision = manifests.desired_revision(md, server_image="img:1")
    observed = {
        "old": revision_state("old", "1", ready=3, wanted=3),
        revision.revision: revision_state(revision.revision, "2", ready=1, wanted=1),
    }
    current = state.RolloutState(
        stable="old",
        stable_version="1",
        canary=revision.revision,
        step=1,
        step_started=0.0,
        weight=25,
        inconclusive=streak,
    )
    seen = steps.Inputs(revision.revision, "2", observed, size=4, measurement=measurement)
    outcome = steps.advance(md.rollout, current, seen, 10.0)
    plan = plan_of(revision.revision, outcome, observed[revision.revision])
    status = st.compute_status(md, revision, plan, st.StatusInputs(observed, rollout=outcome), now=NOW)
    return status["rollout"], conditions(status)


def test_the_measured_share_is_the_actual_weight_beside_the_share_of_pods() -> None:
    rollout, _ = _at_analysis(steps.Verdict(R.INCONCLUSIVE, "x", requests=6, total=1000))
    assert rollout["weight"] == 25 and rollout["replicaWeight"] == 25
    assert rollout["actualWeight"] == 1
    assert "1 canary and 3 stable pods ready" in rollout["traffic"]
    assert "measured 1% of 1000 requests in the last analysis window at" in rollout["traffic"]
    assert (rollout["analysis"]["canaryRequests"], rollout["analysis"]["requests"]) == (6, 1000)


def test_without_a_measurement_the_weight_is_not_claimed() -> None:
    rollout, _ = _at_analysis(None)
    assert "actualWeight" not in rollout
    assert rollout["replicaWeight"] == 25
    assert "not measured yet" in rollout["traffic"]


def test_a_starved_canary_pauses_with_the_analysis_reason_in_the_conditions() -> None:
    rollout, conds = _at_analysis(
        steps.Verdict(R.INCONCLUSIVE, "inconclusive: no traffic", requests=0, total=900), 2
    )
    assert rollout["paused"] is True and rollout["pauseCondition"] == reasons.ANALYSIS_INCONCLUSIVE
    assert "inconclusive: no traffic" in rollout["pauseReason"]
    assert rollout["actualWeight"] == 0
    assert conds[reasons.PROGRESSING] == ("True", reasons.ANALYSIS_INCONCLUSIVE)
    assert conds[reasons.READY] == ("False", reasons.ANALYSIS_INCONCLUSIVE)


def test_an_aborted_canary_claims_no_measured_share() -> None:
    md = spec.parse(CANARY_BODY)
    revision = manifests.desired_revision(md, server_image="img:1")
    observed = {"old": revision_state("old", "1", ready=4, wanted=4)}
    current = state.RolloutState(
        stable="old",
        canary=revision.revision,
        step=1,
        weight=25,
        canary_requests=250,
        all_requests=1000,
        runs=1,
    )
    failing = Failure(reasons.MODEL_LOAD_FAILED, "sha256 mismatch")
    seen = steps.Inputs(revision.revision, "2", observed, size=4, target_failure=failing)
    rollout = st.rollout_status(md, steps.advance(md.rollout, current, seen, 10.0), observed)
    assert "actualWeight" not in rollout and rollout["replicaWeight"] == 0
    assert "aborted" in rollout["traffic"]
