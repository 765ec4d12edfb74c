"""The status of a ModelDeployment, computed from what is observed: a pure function.

Status is recomputed from the children every time, never accumulated from events, so an
operator restart or a missed event cannot make it lie. Conditions keep their
lastTransitionTime unless their status flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelship.operator import canary, naming
from modelship.operator.manifests import Revision
from modelship.operator.observed import PodFailure, RevisionState
from modelship.operator.rollout import RolloutPlan
from modelship.operator.spec import ModelDeployment

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"

PHASE_PROGRESSING = "Progressing"
PHASE_PAUSED = "Paused"
PHASE_HEALTHY = "Healthy"
PHASE_DEGRADED = "Degraded"


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str


@dataclass(frozen=True)
class Observations:
    """Everything the status is computed from, besides the spec."""

    revisions: Mapping[str, RevisionState]
    pod_failures: Sequence[PodFailure] = ()
    unschedulable: str | None = None
    apply_errors: Sequence[str] = ()
    rollout: canary.Outcome | None = None


def _target_failure(
    revision: Revision, plan: RolloutPlan, seen: Observations, target: RevisionState | None
) -> Failure | None:
    if seen.apply_errors:
        return Failure("ApplyFailed", "; ".join(seen.apply_errors))
    if plan.target_complete:
        return None
    for failure in seen.pod_failures:
        if failure.revision == plan.target:
            return Failure(
                failure.reason,
                f"version {revision.version} (revision {plan.target}), pod {failure.pod}: {failure.message}",
            )
    if target is not None and target.failure is not None:
        reason, message = target.failure
        return Failure(reason, f"version {revision.version} (revision {plan.target}): {message}")
    return None


def _serving_note(plan: RolloutPlan, stable: RevisionState | None) -> str:
    if plan.target_complete or plan.stable == plan.target:
        return ""
    if stable is None:
        return "; no earlier version is serving"
    return f"; version {stable.version} (revision {stable.revision}) keeps serving"


def compute_status(
    md: ModelDeployment,
    revision: Revision,
    plan: RolloutPlan,
    seen: Observations,
    *,
    now: str,
) -> dict[str, Any]:
    target = seen.revisions.get(plan.target)
    stable = seen.revisions.get(plan.stable) if plan.stable else None
    desired = md.desired_replicas
    if desired is None:  # autoscaled: the size the autoscaler chose, or its floor until it has
        assert md.autoscaling is not None
        floor = md.autoscaling.min_replicas
        desired = max(target.spec_replicas, floor) if target is not None else floor
    target_ready = target.ready_replicas if target is not None else 0
    failure = _target_failure(revision, plan, seen, target)
    note = _serving_note(plan, stable)
    version = revision.version
    rolling = plan.stable is not None and plan.stable != plan.target

    outcome = seen.rollout
    abort = outcome.abort if outcome is not None and rolling else None
    paused = outcome.paused if outcome is not None and rolling else None
    if abort is not None:
        failure = Failure(
            abort_reason(abort), f"version {version} (revision {plan.target}) was rolled back: {abort}"
        )
    progress = _progress_note(md, outcome) if rolling and abort is None else ""

    if failure is not None and not plan.target_complete:
        ready = (False, failure.reason, failure.message + note)
    elif plan.target_complete:
        reason = "ScaledToZero" if desired == 0 else "Available"
        ready = (True, reason, f"version {version} serves with {target_ready}/{desired} replicas ready")
    else:
        detail = f"version {version}: {target_ready}/{desired} replicas ready"
        if seen.unschedulable:
            detail += f" (pods cannot be scheduled: {seen.unschedulable})"
        reason = "RolloutPaused" if paused else "RolloutInProgress" if rolling else "PodsNotReady"
        ready = (False, reason, detail + progress + note)

    if plan.target_complete:
        progressing = (False, "RolloutComplete", f"revision {plan.target} (version {version}) is complete")
    elif abort is not None and failure is not None:
        progressing = (False, "RolloutAborted", failure.message)
    elif failure is not None:
        progressing = (False, "RolloutStalled", failure.message)
    elif paused:
        progressing = (True, "RolloutPaused", f"revision {plan.target} (version {version}): {paused}")
    else:
        what = "rolling out" if rolling else "scaling up"
        progressing = (
            True,
            "RolloutInProgress",
            f"revision {plan.target} (version {version}) is {what}{progress}",
        )

    if failure is not None:
        degraded = (True, failure.reason, failure.message + note)
    else:
        degraded = (False, "NoFailure", "")

    previous = md.status.get("conditions") or []
    conditions = [
        make_condition(kind, *values, generation=md.generation, previous=previous, now=now)
        for kind, values in ((READY, ready), (PROGRESSING, progressing), (DEGRADED, degraded))
    ]
    phase = (
        PHASE_DEGRADED
        if degraded[0]
        else PHASE_HEALTHY
        if ready[0]
        else PHASE_PAUSED
        if paused
        else PHASE_PROGRESSING
    )
    states = list(seen.revisions.values())
    ready_total = sum(s.ready_replicas for s in states)
    model: dict[str, Any] = {"name": revision.model_name}
    if stable is not None:
        model = {
            "name": stable.model_name or revision.model_name,
            "version": stable.version,
            "revision": stable.revision,
        }
    return {
        "observedGeneration": md.generation,
        "phase": phase,
        "replicas": sum(s.replicas for s in states),
        "readyReplicas": ready_total,
        "readyText": f"{ready_total}/{desired}",
        "selector": ",".join(f"{k}={v}" for k, v in sorted(naming.selector_labels(md.name).items())),
        "url": naming.service_url(md.name, md.namespace, model["name"]),
        "model": model,
        "revisions": _revisions(md, revision, plan, seen.revisions, desired),
        "conditions": conditions,
        **({"rollout": rollout_status(md, outcome, seen.revisions)} if outcome is not None else {}),
    }


def abort_reason(text: str) -> str:
    """The condition reason of an abort: what failed, as specific as its text allows."""
    if text.startswith(canary.ANALYSIS_FAILED):
        return "AnalysisFailed"
    first = text.split(":", 1)[0]
    if first.isalnum() and first[:1].isupper():  # a pod failure's own reason: ModelLoadFailed, ...
        return first
    return "RolloutAborted"


def _progress_note(md: ModelDeployment, outcome: canary.Outcome | None) -> str:
    if outcome is None:
        return ""
    steps = len(md.rollout.steps)
    step = min(outcome.state.step + 1, steps)
    where = f"step {step}/{steps}" if outcome.state.step < steps else "all steps done"
    return f" ({where}, canary weight {outcome.weight}%)"


def actual_weight(
    md: ModelDeployment, outcome: canary.Outcome, revisions: Mapping[str, RevisionState]
) -> tuple[int, str]:
    """The share the canary really gets, and how traffic is split, in words."""
    if outcome.canary is None:
        return 0, "every request goes to the stable revision"
    if md.rollout.http_route is not None:
        return outcome.weight, f"exact weights on HTTPRoute {md.rollout.http_route}"
    stable = revisions.get(outcome.stable or "")
    cand = revisions.get(outcome.canary)
    stable_ready = stable.ready_replicas if stable is not None else 0
    canary_ready = cand.ready_replicas if cand is not None else 0
    total = stable_ready + canary_ready
    real = round(100 * canary_ready / total) if total else 0
    text = (
        f"by replica ratio: {canary_ready} canary and {stable_ready} stable pods ready behind one "
        "Service, so the weight is approximate"
    )
    return real, text


def rollout_status(
    md: ModelDeployment, outcome: canary.Outcome, revisions: Mapping[str, RevisionState]
) -> dict[str, Any]:
    out = canary.state_to_status(outcome.state, md.rollout)
    out["weight"] = outcome.weight
    real, out["traffic"] = actual_weight(md, outcome, revisions)
    if outcome.canary is not None:  # `kubectl get md -o wide` shows no weight without a canary
        out["actualWeight"] = real
    out["paused"] = outcome.paused is not None
    if outcome.paused:
        out["pauseReason"] = outcome.paused
    message = (outcome.abort and f"aborted: {outcome.abort}") or outcome.paused or ""
    if outcome.action_note:
        message = f"{message}; {outcome.action_note}" if message else outcome.action_note
    if message:
        out["message"] = message
    return out


def _revisions(
    md: ModelDeployment,
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


def condition_of(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or ():
        if condition.get("type") == kind:
            return condition
    return None


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
    }
)
