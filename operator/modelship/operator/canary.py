"""The canary rollout as a pure step function: (spec, state, observations, now) -> (actions, state).

Everything a rollout remembers lives in `status.rollout` (`RolloutState`), so an operator
restart resumes at the same step: a finished step is never repeated (the step index only
moves forward) and a pause is never skipped (its start time is stored, not its remaining time).

Traffic without a mesh is split by ready pods behind one Service, so the weight is
approximate: the canary gets ceil(N*w/100) pods and the stable revision keeps at least its
own share, ceil(N*(100-w)/100), and never shrinks before canary pods are ready to take over
(so the serving capacity never drops below N). With a Gateway API HTTPRoute the weight is
exact and the stable revision keeps all N pods.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelship.operator.observed import RevisionState
from modelship.operator.spec import RolloutSpec, Step

VERB_PROMOTE = "promote"
VERB_PROMOTE_FULL = "promote-full"
VERB_ABORT = "abort"
VERB_RETRY = "retry"
VERBS = frozenset({VERB_PROMOTE, VERB_PROMOTE_FULL, VERB_ABORT, VERB_RETRY})

PASS, FAIL, INCONCLUSIVE = "Pass", "Fail", "Inconclusive"
ANALYSIS_FAILED = "analysis failed"


@dataclass(frozen=True)
class Verdict:
    """One analysis measurement, as the step function needs it (analysis.Measurement has more)."""

    verdict: str  # Pass | Fail | Inconclusive
    summary: str
    results: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RolloutState:
    """`status.rollout`, typed. Times are seconds since the epoch (RFC 3339 in status)."""

    stable: str | None = None
    stable_version: str | None = None
    canary: str | None = None
    canary_version: str | None = None
    step: int = 0
    step_started: float | None = None
    weight: int = 0
    aborted: str | None = None
    abort_reason: str | None = None
    promoted_at: float | None = None
    retiring: str | None = None
    handled_action: str | None = None
    failures: int = 0
    runs: int = 0
    last_run: float | None = None
    verdict: str | None = None
    summary: str | None = None
    results: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> RolloutState:
        raw = status.get("rollout") or {}
        analysis = raw.get("analysis") or {}
        model = status.get("model") or {}
        return cls(
            # An object from before rollouts were in status: its serving revision is in status.model.
            stable=raw.get("stableRevision") or model.get("revision") or None,
            stable_version=raw.get("stableVersion") or model.get("version") or None,
            canary=raw.get("canaryRevision") or None,
            canary_version=raw.get("canaryVersion") or None,
            step=int(raw.get("step") or 0),
            step_started=parse_time(raw.get("stepStartedAt")),
            weight=int(raw.get("weight") or 0),
            aborted=raw.get("abortedRevision") or None,
            abort_reason=raw.get("abortReason") or None,
            promoted_at=parse_time(raw.get("promotedAt")),
            retiring=raw.get("retiring") or None,
            handled_action=raw.get("handledAction") or None,
            failures=int(analysis.get("failures") or 0),
            runs=int(analysis.get("runs") or 0),
            last_run=parse_time(analysis.get("lastRun")),
            verdict=analysis.get("verdict") or None,
            summary=analysis.get("summary") or None,
            results=tuple(analysis.get("results") or ()),
        )


@dataclass(frozen=True)
class Observed:
    """What the step function sees of the world this reconcile."""

    target: str
    target_version: str
    revisions: Mapping[str, RevisionState]  # live revision Deployments
    size: int  # N: the replicas the model should serve with
    autoscaled: bool = False
    target_failure: str | None = None  # why the target's pods cannot serve (a model that does not load)
    measurement: Verdict | None = None  # taken this reconcile because analysis_due said so
    action: str | None = None  # the modelship.io/action annotation
    routed: bool = False  # traffic split by an HTTPRoute: exact weights


@dataclass(frozen=True)
class Outcome:
    state: RolloutState
    replicas: Mapping[str, int | None]  # revision -> wanted replicas (None: the autoscaler decides)
    retire: tuple[str, ...]  # revisions whose Deployments are deleted now
    weight: int  # the canary's share of traffic the steps ask for now
    requeue_after: float | None = None
    paused: str | None = None  # why the rollout waits, when it waits for a person or a clock
    abort: str | None = None  # why the canary was aborted (it stays aborted until a retry or change)
    clear_action: bool = False
    action_note: str | None = None  # what the manual action did (or why it was ignored)

    @property
    def stable(self) -> str | None:
        return self.state.stable

    @property
    def canary(self) -> str | None:
        return self.state.canary


def canary_replicas(size: int, weight: int) -> int:
    if weight <= 0 or size <= 0:
        return 0
    return min(size, max(1, math.ceil(size * weight / 100)))


def stable_replicas(size: int, weight: int, canary_ready: int) -> int:
    """At least the stable revision's share, and no fewer than the canary cannot yet replace."""
    share = math.ceil(size * (100 - weight) / 100)
    covered = min(canary_ready, canary_replicas(size, weight))
    return max(share, size - covered)


def parse_action(value: str | None) -> str | None:
    """The verb of a `modelship.io/action` value `<verb>@<nonce>` (or a bare verb)."""
    if not value:
        return None
    verb = value.split("@", 1)[0].strip()
    return verb if verb in VERBS else None


def analysis_due(rollout: RolloutSpec, state: RolloutState, target: str, interval: float, now: float) -> bool:
    """Should the reconciler measure the canary now (before calling `advance`)?"""
    if state.canary != target or state.aborted == target or state.stable in (None, target):
        return False
    in_analysis_step = state.step < len(rollout.steps) and rollout.steps[state.step].analysis
    if in_analysis_step and (state.last_run is None or (state.step_started or 0) > state.last_run):
        return True  # an analysis step measures as soon as it starts
    background = rollout.analysis is not None and state.weight > 0
    if not (background or in_analysis_step):
        return False
    return state.last_run is None or now >= state.last_run + interval


def _pick_stable(state: RolloutState, target: str, live: Mapping[str, RevisionState]) -> str | None:
    if state.stable is not None and (state.stable in live or state.stable == target):
        return state.stable
    # A lost status (or a stable revision deleted by hand): the revision with most ready pods serves.
    candidates = [s for rev, s in live.items() if rev != target and s.ready_replicas > 0]
    candidates.sort(key=lambda s: (s.ready_replicas, s.created, s.revision), reverse=True)
    return candidates[0].revision if candidates else None


def _last_weight(steps: tuple[Step, ...], upto: int) -> int:
    for step in reversed(steps[:upto]):
        if step.set_weight is not None:
            return step.set_weight
    return 0


def advance(
    rollout: RolloutSpec,
    state: RolloutState,
    seen: Observed,
    now: float,
    *,
    analysis_interval: float = 30.0,
    failure_limit: int = 2,
) -> Outcome:
    live = {rev: s for rev, s in seen.revisions.items() if not s.being_deleted}
    verb = parse_action(seen.action)
    new_action = seen.action is not None and seen.action != state.handled_action
    if not new_action:
        verb = None
    stable = _pick_stable(state, seen.target, live)
    handled = seen.action if seen.action is not None else state.handled_action
    base = dataclasses.replace(state, handled_action=handled)

    if stable is None or stable == seen.target or rollout.recreate:
        return _steady(rollout, base, seen, stable, live, now, verb, new_action)
    return _rolling(
        rollout,
        base,
        seen,
        stable,
        live,
        now,
        verb,
        new_action,
        analysis_interval=analysis_interval,
        failure_limit=failure_limit,
    )


def _retire_others(live: Mapping[str, RevisionState], keep: set[str]) -> tuple[str, ...]:
    return tuple(sorted(rev for rev in live if rev not in keep))


def _steady(
    rollout: RolloutSpec,
    state: RolloutState,
    seen: Observed,
    stable: str | None,
    live: Mapping[str, RevisionState],
    now: float,
    verb: str | None,
    new_action: bool,
) -> Outcome:
    """No rollout runs: the target serves (or is the first revision, or Recreate replaced the old)."""
    target = seen.target
    keep = {target}
    requeue: float | None = None
    retiring = state.retiring
    promoted_at = state.promoted_at
    if retiring is not None and retiring in live and retiring != target and promoted_at is not None:
        remaining = promoted_at + rollout.scale_down_delay - now
        if remaining > 0 and not rollout.recreate:
            keep.add(retiring)  # keeps serving its connections until the delay ends
            requeue = remaining
    if retiring is not None and retiring not in keep:
        retiring, promoted_at = None, None
    note = None
    if new_action and verb is not None:
        note = f"{verb}: no rollout is in progress"
    # A first revision (or one Recreate started) serves only once it is complete: until then
    # nothing serves, and status.model must not claim otherwise.
    target_state = live.get(target)
    serves = stable == target or (target_state is not None and target_state.complete)
    new = dataclasses.replace(
        state,
        stable=target if serves else None,
        stable_version=seen.target_version if serves else None,
        canary=None,
        canary_version=None,
        step=len(rollout.steps),
        step_started=None,
        weight=0,
        aborted=None,
        abort_reason=None,
        retiring=retiring,
        promoted_at=promoted_at,
    )
    replicas: dict[str, int | None] = {target: None if seen.autoscaled else seen.size}
    return Outcome(
        state=new,
        replicas=replicas,
        retire=_retire_others(live, keep),
        weight=0,
        requeue_after=requeue,
        clear_action=seen.action is not None,
        action_note=note,
    )


def _at_first_step(state: RolloutState, now: float) -> RolloutState:
    """The canary starts over: step 0, no weight, no measurement yet."""
    return dataclasses.replace(
        state,
        step=0,
        step_started=now,
        weight=0,
        failures=0,
        runs=0,
        last_run=None,
        verdict=None,
        summary=None,
        results=(),
    )


def _rolling(
    rollout: RolloutSpec,
    state: RolloutState,
    seen: Observed,
    stable: str,
    live: Mapping[str, RevisionState],
    now: float,
    verb: str | None,
    new_action: bool,
    *,
    analysis_interval: float,
    failure_limit: int,
) -> Outcome:
    target = seen.target
    steps = rollout.steps
    stable_state = live.get(stable)
    stable_version = stable_state.version if stable_state is not None else state.stable_version
    note: str | None = None

    if state.canary != target:
        # A new canary (or the first one after a restart from an older status): start at step 0.
        kept_abort = state.aborted == target
        state = dataclasses.replace(
            _at_first_step(state, now),
            canary=target,
            canary_version=seen.target_version,
            aborted=state.aborted if kept_abort else None,
            abort_reason=state.abort_reason if kept_abort else None,
        )
    state = dataclasses.replace(
        state,
        stable=stable,
        stable_version=stable_version,
        canary_version=seen.target_version,
        retiring=None,
        promoted_at=None,
    )

    if state.aborted == target:
        if verb == VERB_RETRY:
            state = dataclasses.replace(_at_first_step(state, now), aborted=None, abort_reason=None)
            note, verb = "retry: the rollout starts again at step 0", None
        else:
            if verb is not None:
                note = f"{verb}: the rollout was aborted; retry it first"
            return _aborted(state, seen, stable, live, note)
    elif verb == VERB_RETRY:
        note, verb = "retry: nothing was aborted", None

    if verb == VERB_ABORT:
        return _abort(state, seen, stable, live, "aborted by a user (modelship.io/action)", None)
    if seen.target_failure is not None:
        return _abort(state, seen, stable, live, seen.target_failure, note)

    measurement = seen.measurement
    if measurement is not None:
        failures = (
            state.failures + 1
            if measurement.verdict == FAIL
            else 0
            if measurement.verdict == PASS
            else state.failures
        )
        state = dataclasses.replace(
            state,
            failures=failures,
            runs=state.runs + 1,
            last_run=now,
            verdict=measurement.verdict,
            summary=measurement.summary,
            results=measurement.results,
        )
        if failures >= failure_limit:
            reason = f"{ANALYSIS_FAILED} {failures} times in a row: {measurement.summary}"
            return _abort(state, seen, stable, live, reason, note)

    if verb == VERB_PROMOTE_FULL:
        state = dataclasses.replace(state, step=len(steps), step_started=now)
        note, verb = "promote-full: every remaining step skipped", None

    canary_state = live.get(target)
    current = canary_state is not None and canary_state.observed_current
    canary_ready = canary_state.ready_replicas if canary_state is not None and current else 0
    size = seen.size
    requeue: float | None = None
    paused: str | None = None
    while state.step < len(steps):
        step = steps[state.step]
        started = state.step_started if state.step_started is not None else now
        done = False
        if verb == VERB_PROMOTE:
            done, verb = True, None
            note = f"promote: step {state.step + 1} ({step.describe()}) skipped"
        elif step.set_weight is not None:
            state = dataclasses.replace(state, weight=step.set_weight)
            done = canary_ready >= canary_replicas(size, step.set_weight)
        elif step.analysis:
            done = state.last_run is not None and state.last_run >= started and state.verdict == PASS
            if not done:
                due = (
                    now
                    if state.last_run is None or state.last_run < started
                    else state.last_run + analysis_interval
                )
                requeue = max(0.5, due - now)
        else:
            pause = step.pause if step.pause is not None else math.inf
            if math.isinf(pause):
                paused = f"step {state.step + 1}: waiting for a manual promote (kubectl modelship promote)"
            elif now >= started + pause:
                done = True
            else:
                requeue = started + pause - now
                paused = f"step {state.step + 1}: pause until {format_time(started + pause)}"
        if not done:
            break
        state = dataclasses.replace(state, step=state.step + 1, step_started=now)
        requeue, paused = None, None
    if verb is not None and note is None:
        note = f"{verb}: nothing to do"

    if state.step >= len(steps):
        weight = 100
        state = dataclasses.replace(state, weight=weight)
        canary_want = size
        if (
            canary_state is not None
            and current
            and canary_state.spec_replicas == size
            and canary_state.ready_replicas >= size
            and canary_state.available_replicas >= size
        ):
            return _promote(rollout, state, seen, stable, live, now, note)
        stable_weight = _last_weight(steps, len(steps))
    else:
        weight = state.weight
        canary_want = canary_replicas(size, weight)
        stable_weight = weight
    if rollout.analysis is not None and weight > 0:
        next_run = (state.last_run or now) + analysis_interval
        requeue = min(requeue, max(0.5, next_run - now)) if requeue is not None else max(0.5, next_run - now)

    replicas: dict[str, int | None] = {target: canary_want}
    if seen.autoscaled:
        replicas[stable] = None
    elif seen.routed:
        replicas[stable] = size
    else:
        replicas[stable] = stable_replicas(size, stable_weight, min(canary_ready, canary_want))
    return Outcome(
        state=state,
        replicas=replicas,
        retire=_retire_others(live, {stable, target}),
        weight=weight if state.step < len(steps) else 100,
        requeue_after=requeue,
        paused=paused,
        clear_action=seen.action is not None,
        action_note=note,
    )


def _abort(
    state: RolloutState,
    seen: Observed,
    stable: str,
    live: Mapping[str, RevisionState],
    reason: str,
    note: str | None,
) -> Outcome:
    state = dataclasses.replace(state, aborted=seen.target, abort_reason=reason, weight=0)
    return _aborted(state, seen, stable, live, note)


def _aborted(
    state: RolloutState,
    seen: Observed,
    stable: str,
    live: Mapping[str, RevisionState],
    note: str | None,
) -> Outcome:
    """Every request back on the stable revision at full size; the canary keeps no pods."""
    replicas: dict[str, int | None] = {stable: None if seen.autoscaled else seen.size, seen.target: 0}
    return Outcome(
        state=dataclasses.replace(state, weight=0),
        replicas=replicas,
        retire=_retire_others(live, {stable, seen.target}),
        weight=0,
        abort=state.abort_reason or "aborted",
        clear_action=seen.action is not None,
        action_note=note,
    )


def _promote(
    rollout: RolloutSpec,
    state: RolloutState,
    seen: Observed,
    old_stable: str,
    live: Mapping[str, RevisionState],
    now: float,
    note: str | None,
) -> Outcome:
    promoted = dataclasses.replace(
        state,
        stable=seen.target,
        stable_version=seen.target_version,
        canary=None,
        canary_version=None,
        weight=0,
        promoted_at=now,
        retiring=old_stable,
        step=len(rollout.steps),
        step_started=None,
    )
    outcome = _steady(rollout, promoted, seen, seen.target, live, now, None, False)
    return dataclasses.replace(outcome, clear_action=seen.action is not None, action_note=note)


def parse_time(value: Any) -> float | None:
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def format_time(seconds: float) -> str:
    # Milliseconds, so that "measured after the step started" survives the round trip through status.
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def state_to_status(state: RolloutState, rollout: RolloutSpec) -> dict[str, Any]:
    """`status.rollout` for a RolloutState (the fields the rollout keeps across restarts)."""
    out: dict[str, Any] = {
        "strategy": rollout.strategy,
        "stableRevision": state.stable,
        "stableVersion": state.stable_version,
        "canaryRevision": state.canary,
        "canaryVersion": state.canary_version,
        "step": state.step,
        "steps": len(rollout.steps),
        "stepStartedAt": format_time(state.step_started) if state.step_started is not None else None,
        "weight": state.weight,
        "abortedRevision": state.aborted,
        "abortReason": state.abort_reason,
        "promotedAt": format_time(state.promoted_at) if state.promoted_at is not None else None,
        "retiring": state.retiring,
        "handledAction": state.handled_action,
    }
    if state.runs or state.last_run is not None:
        out["analysis"] = {
            "failures": state.failures,
            "runs": state.runs,
            "lastRun": format_time(state.last_run) if state.last_run is not None else None,
            "verdict": state.verdict,
            "summary": state.summary,
            "results": [dict(r) for r in state.results],
        }
    return {key: value for key, value in out.items() if value is not None}


__all__ = [
    "Observed",
    "Outcome",
    "RolloutState",
    "Verdict",
    "advance",
    "analysis_due",
    "canary_replicas",
    "parse_action",
    "stable_replicas",
    "state_to_status",
]
