"""The status of a ModelDeployment, computed from what is observed: a pure function.

Status is recomputed from the children every time, never accumulated from events, so an
operator restart or a missed event cannot make it lie. Conditions keep their
lastTransitionTime unless their status flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelship.operator import autoscaling, bodies, naming, reasons
from modelship.operator.children import RevisionState
from modelship.operator.manifests import Revision
from modelship.operator.reasons import Failure
from modelship.operator.rollout import analysis
from modelship.operator.rollout.plan import RolloutPlan
from modelship.operator.rollout.steps import StepResult
from modelship.operator.spec import ModelDeployment

Condition = tuple[bool, str, str]  # status, reason, message


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status is computed from, besides the spec and the plan."""

    revisions: Mapping[str, RevisionState]
    target_failure: Failure | None = None  # why the target's pods cannot serve (children.revision_failure)
    unschedulable: str | None = None
    apply_errors: Sequence[str] = ()
    rollout: StepResult | None = None
    autoscaler: Mapping[str, Any] | None = None  # the live HPA's status; None: there is no HPA
    artifacts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # children.artifacts


@dataclass(frozen=True)
class _Facts:
    """What the three conditions are computed from, worked out once."""

    what: str  # "version V (revision R)" of the target
    version: str
    desired: int
    target_ready: int
    complete: bool
    rolling: bool
    failure: Failure | None
    aborted: bool
    paused: str | None
    pause_reason: str  # the condition reason while paused
    progress: str  # " (step 2/4, canary weight 25%)" while a canary runs
    note: str  # "; version 1 (revision ...) keeps serving" while the target does not serve


def _desired(md: ModelDeployment, target: RevisionState | None) -> int:
    desired = md.desired_replicas
    if desired is not None:
        return desired
    assert md.autoscaling is not None  # autoscaled: the size the autoscaler chose, or its floor until it has
    floor = md.autoscaling.min_replicas
    return max(target.spec_replicas, floor) if target is not None else floor


def _failure(plan: RolloutPlan, seen: StatusInputs, abort: Failure | None) -> Failure | None:
    if abort is not None:
        return abort
    if seen.apply_errors:
        return Failure(reasons.APPLY_FAILED, "; ".join(seen.apply_errors))
    return None if plan.target_complete else seen.target_failure


def _serving_note(plan: RolloutPlan, stable: RevisionState | None) -> str:
    if plan.target_complete or plan.stable == plan.target:
        return ""
    if stable is None:
        return "; no earlier version is serving"
    return f"; {naming.describe_revision(stable.version, stable.revision)} keeps serving"


def _facts(md: ModelDeployment, revision: Revision, plan: RolloutPlan, seen: StatusInputs) -> _Facts:
    target = seen.revisions.get(plan.target)
    stable = seen.revisions.get(plan.stable) if plan.stable else None
    rolling = plan.stable is not None and plan.stable != plan.target
    outcome = seen.rollout if rolling else None
    abort = outcome.abort if outcome is not None else None
    return _Facts(
        what=naming.describe_revision(revision.version, plan.target),
        version=revision.version,
        desired=_desired(md, target),
        target_ready=target.ready_replicas if target is not None else 0,
        complete=plan.target_complete,
        rolling=rolling,
        failure=_failure(plan, seen, abort),
        aborted=abort is not None,
        paused=outcome.paused if outcome is not None else None,
        pause_reason=outcome.pause_reason if outcome is not None else reasons.ROLLOUT_PAUSED,
        progress=_progress_note(md, outcome) if outcome is not None and abort is None else "",
        note=_serving_note(plan, stable),
    )


def _ready(facts: _Facts, unschedulable: str | None) -> Condition:
    if facts.failure is not None and not facts.complete:
        return False, facts.failure.reason, facts.failure.message + facts.note
    if facts.complete:
        reason = reasons.SCALED_TO_ZERO if facts.desired == 0 else reasons.AVAILABLE
        return (
            True,
            reason,
            f"version {facts.version} serves with {facts.target_ready}/{facts.desired} replicas ready",
        )
    detail = f"version {facts.version}: {facts.target_ready}/{facts.desired} replicas ready"
    if unschedulable:
        detail += f" (pods cannot be scheduled: {unschedulable})"
    if facts.paused:
        reason = facts.pause_reason
    else:
        reason = reasons.ROLLOUT_IN_PROGRESS if facts.rolling else reasons.PODS_NOT_READY
    return False, reason, detail + facts.progress + facts.note


def _progressing(facts: _Facts) -> Condition:
    if facts.complete:
        return False, reasons.ROLLOUT_COMPLETE, f"{facts.what} is complete"
    if facts.failure is not None:
        reason = reasons.ROLLOUT_ABORTED if facts.aborted else reasons.ROLLOUT_STALLED
        return False, reason, facts.failure.message
    if facts.paused:
        return True, facts.pause_reason, f"{facts.what}: {facts.paused}"
    what = "rolling out" if facts.rolling else "scaling up"
    return True, reasons.ROLLOUT_IN_PROGRESS, f"{facts.what} is {what}{facts.progress}"


def _degraded(facts: _Facts) -> Condition:
    if facts.failure is not None:
        return True, facts.failure.reason, facts.failure.message + facts.note
    return False, reasons.NO_FAILURE, ""


def _phase(ready: Condition, degraded: Condition, paused: str | None) -> str:
    if degraded[0]:
        return reasons.PHASE_DEGRADED
    if ready[0]:
        return reasons.PHASE_HEALTHY
    return reasons.PHASE_PAUSED if paused else reasons.PHASE_PROGRESSING


_ARTIFACT_FIELDS = ("uri", "sha256", "size", "fetchSeconds")


def _model(
    revision: Revision,
    stable: RevisionState | None,
    artifacts: Mapping[str, Mapping[str, Any]],
    previous: Mapping[str, Any],
) -> dict[str, Any]:
    if stable is None:
        return {"name": revision.model_name}
    model = {
        "name": stable.model_name or revision.model_name,
        "version": stable.version,
        "revision": stable.revision,
    }
    # No pod to ask (scaled to 0, all replaced at once): what the revision's pods said before holds.
    artifact = artifacts.get(stable.revision)
    if artifact is None and previous.get("revision") == stable.revision:
        artifact = previous
    if artifact is not None:
        model.update({key: artifact[key] for key in _ARTIFACT_FIELDS if key in artifact})
    return model


def compute_status(
    md: ModelDeployment,
    revision: Revision,
    plan: RolloutPlan,
    seen: StatusInputs,
    *,
    now: str,
) -> dict[str, Any]:
    facts = _facts(md, revision, plan, seen)
    ready, progressing, degraded = _ready(facts, seen.unschedulable), _progressing(facts), _degraded(facts)
    previous = md.status.get("conditions") or []
    conditions = [
        make_condition(kind, *values, generation=md.generation, previous=previous, now=now)
        for kind, values in (
            (reasons.READY, ready),
            (reasons.PROGRESSING, progressing),
            (reasons.DEGRADED, degraded),
        )
    ]
    states = list(seen.revisions.values())
    ready_total = sum(s.ready_replicas for s in states)
    model = _model(
        revision,
        seen.revisions.get(plan.stable) if plan.stable else None,
        seen.artifacts,
        md.status.get("model") or {},
    )
    return {
        "observedGeneration": md.generation,
        "phase": _phase(ready, degraded, facts.paused),
        "replicas": sum(s.replicas for s in states),
        "readyReplicas": ready_total,
        "readyText": f"{ready_total}/{facts.desired}",
        "selector": ",".join(f"{k}={v}" for k, v in sorted(naming.selector_labels(md.name).items())),
        "url": naming.service_url(md.name, md.namespace, model["name"]),
        "model": model,
        "revisions": _revisions(revision, plan, seen.revisions, facts.desired),
        "conditions": conditions,
        **({"rollout": rollout_status(md, seen.rollout, seen.revisions)} if seen.rollout is not None else {}),
        **_autoscaling(md, seen.autoscaler),
    }


def _autoscaling(md: ModelDeployment, hpa_status: Mapping[str, Any] | None) -> dict[str, Any]:
    # Told only of the HPA the spec asks for: one left while spec.autoscaling is gone is being deleted.
    if md.autoscaling is None or hpa_status is None:
        return {}
    return {"autoscaling": autoscaling.autoscaling_status(md.autoscaling, hpa_status)}


def invalid_status(body: Mapping[str, Any], message: str, *, now: str) -> dict[str, Any]:
    """The status of a ModelDeployment whose spec cannot be acted on."""
    generation = int(bodies.meta(body).get("generation") or 0)
    previous = bodies.status_of(body).get("conditions") or []
    return {
        "observedGeneration": generation,
        "phase": reasons.PHASE_DEGRADED,
        "conditions": [
            make_condition(
                kind, value, reasons.INVALID_SPEC, message, generation=generation, previous=previous, now=now
            )
            for kind, value in (
                (reasons.READY, False),
                (reasons.PROGRESSING, False),
                (reasons.DEGRADED, True),
            )
        ],
    }


def _progress_note(md: ModelDeployment, outcome: StepResult) -> str:
    steps = len(md.rollout.steps)
    step = min(outcome.state.step + 1, steps)
    where = f"step {step}/{steps}" if outcome.state.step < steps else "all steps done"
    shadow = f", shadow {outcome.state.mirror}%" if outcome.state.mirror else ""
    return f" ({where}, canary weight {outcome.weight}%{shadow})"


def traffic(
    md: ModelDeployment, outcome: StepResult, revisions: Mapping[str, RevisionState]
) -> dict[str, Any]:
    """How traffic is split, in words, with the canary's share by ready pods (`replicaWeight`) and
    as measured (`actualWeight`: its share of the requests in the last analysis window)."""
    if outcome.canary is None:
        return {"traffic": "every request goes to the stable revision"}
    state = outcome.state
    # After an abort the last measurement tells of a split that is over.
    share = None if outcome.abort else analysis.share_of(state.canary_requests, state.all_requests)
    measured = round(100 * share) if share is not None else None
    if outcome.abort is not None:
        seen = "aborted: the canary takes no requests"
    elif share is not None and state.all_requests is not None:
        when = f" at {bodies.format_time(state.last_run)}" if state.last_run is not None else ""
        seen = (
            f"measured {analysis.format_share(share)} of {round(state.all_requests)} requests in the "
            f"last analysis window{when}"
        )
    else:
        seen = "not measured yet (the canary's share is measured with its analysis)"
    if outcome.abort is None and outcome.weight == 0:
        if md.rollout.http_route is None:
            return {"replicaWeight": 0, "traffic": _no_share(outcome)}
        if outcome.state.mirror:
            return {
                "actualWeight": 0,
                "traffic": (
                    f"shadow: HTTPRoute {md.rollout.http_route} sends every request to the stable revision "
                    f"and a copy of {outcome.state.mirror}% of them to the canary (RequestMirror)"
                ),
            }
    if md.rollout.http_route is not None:
        return {
            "actualWeight": measured if measured is not None else outcome.weight,
            "traffic": f"exact weights on HTTPRoute {md.rollout.http_route}; {seen}",
        }
    stable = revisions.get(outcome.stable or "")
    cand = revisions.get(outcome.canary)
    stable_ready = stable.ready_replicas if stable is not None else 0
    canary_ready = cand.ready_replicas if cand is not None else 0
    total = stable_ready + canary_ready
    out: dict[str, Any] = {
        "replicaWeight": round(100 * canary_ready / total) if total else 0,
        "traffic": (
            f"by replica ratio: {canary_ready} canary and {stable_ready} stable pods ready behind one "
            f"Service; {seen}"
        ),
    }
    if measured is not None:
        out["actualWeight"] = measured
    return out


def _no_share(outcome: StepResult) -> str:
    """A canary at weight 0 is out of the Service: what it gets, if anything."""
    mirror = outcome.state.mirror
    if not mirror:
        return "every request goes to the stable revision (the canary's weight is 0)"
    when = "" if outcome.mirror else ", once a canary pod is ready"
    return (
        f"shadow: users get only the stable revision's answers; its pods copy {mirror}% of their "
        f"requests to the canary{when}"
    )


def rollout_status(
    md: ModelDeployment, outcome: StepResult, revisions: Mapping[str, RevisionState]
) -> dict[str, Any]:
    out = outcome.state.to_status(md.rollout)
    out["weight"] = outcome.weight
    out.update(traffic(md, outcome, revisions))
    out["paused"] = outcome.paused is not None
    if outcome.paused:
        out["pauseReason"] = outcome.paused
        out["pauseCondition"] = outcome.pause_reason
    message = (outcome.abort and f"aborted: {outcome.abort.message}") or outcome.paused or ""
    if outcome.action_note:
        message = f"{message}; {outcome.action_note}" if message else outcome.action_note
    if message:
        out["message"] = message
    return out


def _revisions(
    revision: Revision,
    plan: RolloutPlan,
    revisions: Mapping[str, RevisionState],
    desired: int,
) -> list[dict[str, Any]]:
    def role(rev: str) -> str:
        if rev == plan.stable:
            return "stable"
        return "target" if rev == plan.target else "retiring"

    entries = [
        {
            "revision": state.revision,
            "version": state.version,
            "deployment": state.deployment,
            "role": role(state.revision),
            "replicas": state.spec_replicas,
            "readyReplicas": state.ready_replicas,
        }
        for state in sorted(revisions.values(), key=lambda s: (s.created, s.revision))
    ]
    if plan.target not in revisions:
        entries.append(
            {
                "revision": plan.target,
                "version": revision.version,
                "deployment": revision.deployment_name,
                "role": role(plan.target),
                "replicas": desired,
                "readyReplicas": 0,
            }
        )
    return entries


def make_condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    text = "True" if status else "False"
    since = now
    for old in previous:
        if old.get("type") == kind and old.get("status") == text and old.get("lastTransitionTime"):
            since = old["lastTransitionTime"]
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def merge_patch(
    old: Mapping[str, Any], new: Mapping[str, Any], *, owned: frozenset[str] | None = None
) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that turns `old` into `new`: keys gone from `new` become
    nulls (at the top, only the keys in `owned`), nested maps recurse, lists are replaced whole."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value:
            patch[key] = value
    for key in old:
        if key not in new and (owned is None or key in owned):
            patch[key] = None
    return patch


# Top-level status fields this operator writes; anything else in status is someone else's.
OWNED_STATUS_FIELDS = frozenset(
    {
        "observedGeneration",
        "phase",
        "replicas",
        "readyReplicas",
        "readyText",
        "selector",
        "url",
        "model",
        "revisions",
        "conditions",
        "rollout",
        "autoscaling",
    }
)
