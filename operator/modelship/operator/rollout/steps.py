"""The rollout as a pure step function: (spec, state, inputs, now) -> StepResult.

One call decides one reconcile of a rollout, for both strategies: `Canary` walks the steps,
`Recreate` (and a first revision, or no rollout at all) takes the steady path. A canary
reconcile runs in phases, each a function of its own, as Argo Rollouts' `rollout/canary.go`
does: adopt the target as the canary, settle a retry, abort on a failure or a bad
measurement, walk the steps, size the revisions. The phases share one small `_Intent` (like
Argo's `pauseContext`): the manual action not yet used, what it did, and when to look again.

Traffic without a mesh is split by ready pods behind one Service, so the weight is
approximate: the canary gets ceil(N*w/100) pods and the stable revision keeps at least its
own share, ceil(N*(100-w)/100), and never shrinks before canary pods are ready to take over
(so the serving capacity never drops below N while the canary's pods come up). The surge is
the canary's own pods: the stable revision never has more than N, and while one canary rolls
out it never grows, except to the share a step that lowers the weight gives back to it. Every
stable pod created mid-rollout would be deleted again a moment later, and with real models
(minutes to load, GPUs, a ResourceQuota) that costs more than the pod it covers. With a
Gateway API HTTPRoute the weight is exact and the stable revision keeps all N pods.

A shadow step takes the canary out of the users' traffic (weight 0) and has the stable revision's
pods copy `percent` of their requests to it instead: the canary gets the pods that share of the
requests needs, ceil(N*percent/100), the stable revision keeps all N. The copying starts once a
canary pod is ready (`StepResult.mirror`). The step lasts its duration from its start; with
analysis, until the first passing measurement after that too, so that a shadow step never ends on
what it could not measure (too few copies, Prometheus down): an inconclusive streak pauses it as it
pauses any step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelship.operator import bodies, naming, reasons
from modelship.operator.children import RevisionState
from modelship.operator.reasons import Failure
from modelship.operator.rollout.analysis import AnalysisSettings, Result
from modelship.operator.rollout.state import (
    VERB_ABORT,
    VERB_PROMOTE,
    VERB_PROMOTE_FULL,
    VERB_RETRY,
    RolloutState,
    parse_action,
)
from modelship.operator.spec import RolloutSpec, Step

DEFAULT_SETTINGS = AnalysisSettings()
ABORTED_BY_USER = "aborted by a user (modelship.io/action)"
MIN_REQUEUE = 0.5  # seconds: a clock that is due "now" is looked at again this soon


@dataclass(frozen=True)
class Verdict:
    """One analysis measurement, as the step function needs it (analysis.Measurement has more)."""

    verdict: Result
    summary: str
    results: tuple[Mapping[str, Any], ...] = ()
    requests: float | None = None  # to the canary in the window; None: unknown
    total: float | None = None  # to the canary and the stable revision in the window; None: unknown


@dataclass(frozen=True)
class Inputs:
    """What the step function is given of the world this reconcile."""

    target: str
    target_version: str
    revisions: Mapping[str, RevisionState]  # live revision Deployments
    size: int  # N: the replicas the model should serve with
    autoscaled: bool = False
    target_failure: Failure | None = None  # why the target's pods cannot serve (a model that does not load)
    measurement: Verdict | None = None  # taken this reconcile because analysis_due said so
    action: str | None = None  # the modelship.io/action annotation
    routed: bool = False  # traffic split by an HTTPRoute: exact weights


@dataclass(frozen=True)
class StepResult:
    state: RolloutState
    replicas: Mapping[str, int | None]  # revision -> wanted replicas (None: the autoscaler decides)
    retire: tuple[str, ...]  # revisions whose Deployments are deleted now
    weight: int  # the canary's share of traffic the steps ask for now
    mirror: int = 0  # percent of the stable revision's requests its pods copy to the canary now
    requeue_after: float | None = None
    paused: str | None = None  # why the rollout waits, when it waits for a person or a clock
    pause_reason: str = reasons.ROLLOUT_PAUSED  # the condition reason of that wait
    abort: Failure | None = None  # why the canary was rolled back (until a retry or a change)
    clear_action: bool = False
    action_note: str | None = None  # what the manual action did (or why it was ignored)

    @property
    def stable(self) -> str | None:
        return self.state.stable

    @property
    def canary(self) -> str | None:
        return self.state.canary


@dataclass
class _Intent:
    """What the phases of one canary reconcile decided besides the state."""

    verb: str | None  # the manual action, until a phase uses it
    note: str | None = None  # what the action did, for status
    requeue: float | None = None
    paused: str | None = None
    pause_reason: str = reasons.ROLLOUT_PAUSED

    def use(self, note: str) -> None:
        self.verb, self.note = None, note

    def wake_by(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)


def canary_replicas(size: int, weight: int) -> int:
    if weight <= 0 or size <= 0:
        return 0
    return min(size, max(1, math.ceil(size * weight / 100)))


def stable_replicas(size: int, weight: int, canary_ready: int, current: int | None = None) -> int:
    """At least the stable revision's share, and no fewer than the canary cannot yet replace;
    but never more than the `current` size of its Deployment beyond that share (a canary pod
    that stops being ready is not covered by a new stable pod: see the module's docstring)."""
    share = math.ceil(size * (100 - weight) / 100)
    covered = min(canary_ready, canary_replicas(size, weight))
    uncovered = size - covered if current is None else min(size - covered, current)
    return max(share, uncovered)


def analysis_due(rollout: RolloutSpec, state: RolloutState, target: str, interval: float, now: float) -> bool:
    """Should the reconciler measure the canary now (before calling `advance`)?"""
    if state.canary != target or state.aborted == target or state.stable in (None, target):
        return False
    in_analysis_step = state.step < len(rollout.steps) and rollout.steps[state.step].analysis
    if in_analysis_step and (state.last_run is None or (state.step_started or 0) >= state.last_run):
        return True  # an analysis step measures as soon as it starts
    background = rollout.analysis is not None and (state.weight > 0 or state.mirror > 0)
    if not (background or in_analysis_step):
        return False
    return state.last_run is None or now >= state.last_run + interval


def advance(
    rollout: RolloutSpec,
    state: RolloutState,
    inputs: Inputs,
    now: float,
    settings: AnalysisSettings = DEFAULT_SETTINGS,
) -> StepResult:
    """One reconcile's rollout decision. `settings` gives the analysis interval and failure limit."""
    live = {rev: s for rev, s in inputs.revisions.items() if not s.being_deleted}
    new_action = inputs.action is not None and inputs.action != state.handled_action
    verb = parse_action(inputs.action) if new_action else None
    stable = _pick_stable(state, inputs.target, live)
    handled = inputs.action if inputs.action is not None else state.handled_action
    state = dataclasses.replace(state, handled_action=handled)
    if stable is None or stable == inputs.target or rollout.recreate:
        note = f"{verb}: no rollout is in progress" if verb is not None else None
        return _steady(rollout, state, inputs, stable, live, now, note)
    return _canary(rollout, state, inputs, stable, live, now, _Intent(verb), settings)


def _pick_stable(state: RolloutState, target: str, live: Mapping[str, RevisionState]) -> str | None:
    if state.stable is not None and (state.stable in live or state.stable == target):
        return state.stable
    # A lost status (or a stable revision deleted by hand): the revision with most ready pods serves.
    candidates = [s for rev, s in live.items() if rev != target and s.ready_replicas > 0]
    candidates.sort(key=lambda s: (s.ready_replicas, s.created, s.revision), reverse=True)
    return candidates[0].revision if candidates else None


def _retire_others(live: Mapping[str, RevisionState], keep: set[str]) -> tuple[str, ...]:
    return tuple(sorted(rev for rev in live if rev not in keep))


# ---- no rollout runs


def _steady(
    rollout: RolloutSpec,
    state: RolloutState,
    inputs: Inputs,
    stable: str | None,
    live: Mapping[str, RevisionState],
    now: float,
    note: str | None,
) -> StepResult:
    """The target serves (or is the first revision, or Recreate replaced the old one)."""
    target = inputs.target
    keep = {target}
    requeue: float | None = None
    retiring, promoted_at = state.retiring, state.promoted_at
    if retiring is not None and retiring in live and retiring != target and promoted_at is not None:
        remaining = promoted_at + rollout.scale_down_delay - now
        if remaining > 0 and not rollout.recreate:
            keep.add(retiring)  # keeps serving its connections until the delay ends
            requeue = remaining
    if retiring is not None and retiring not in keep:
        retiring, promoted_at = None, None
    # A first revision (or one Recreate started) serves only once it is complete: until then
    # nothing serves, and status.model must not claim otherwise.
    target_state = live.get(target)
    serves = stable == target or (target_state is not None and target_state.complete)
    new = dataclasses.replace(
        state,
        stable=target if serves else None,
        stable_version=inputs.target_version if serves else None,
        canary=None,
        canary_version=None,
        step=len(rollout.steps),
        step_started=None,
        weight=0,
        mirror=0,
        aborted=None,
        abort=None,
        retiring=retiring,
        promoted_at=promoted_at,
    )
    return StepResult(
        state=new,
        replicas={target: None if inputs.autoscaled else inputs.size},
        retire=_retire_others(live, keep),
        weight=0,
        requeue_after=requeue,
        clear_action=inputs.action is not None,
        action_note=note,
    )


# ---- a canary rollout, phase by phase


def _canary(
    rollout: RolloutSpec,
    state: RolloutState,
    inputs: Inputs,
    stable: str,
    live: Mapping[str, RevisionState],
    now: float,
    intent: _Intent,
    settings: AnalysisSettings,
) -> StepResult:
    state = _adopt(state, inputs, stable, live, now)
    state = _settle_retry(state, inputs, intent, now)
    if state.aborted != inputs.target:
        state = _check(state, inputs, intent, now, settings)
    if state.aborted == inputs.target:
        if intent.verb is not None:
            intent.use(f"{intent.verb}: the rollout was aborted; retry it first")
        return _rolled_back(state, inputs, stable, live, intent)
    if intent.verb == VERB_PROMOTE_FULL:
        state = dataclasses.replace(state, step=len(rollout.steps), step_started=now)
        intent.use("promote-full: every remaining step skipped")
    canary_ready = _ready(live.get(inputs.target))
    analysed = rollout.analysis is not None
    state = _walk_steps(rollout.steps, state, inputs.size, canary_ready, intent, now, settings, analysed)
    state = dataclasses.replace(state, mirror=_shadow_at(rollout.steps, state.step))
    if intent.verb is not None:
        intent.use(f"{intent.verb}: nothing to do")
    if state.step >= len(rollout.steps) and _serves_alone(live.get(inputs.target), inputs.size):
        return _promote(rollout, state, inputs, stable, live, now, intent.note)
    return _sized(rollout, state, inputs, stable, live, canary_ready, intent, now, settings)


def _adopt(
    state: RolloutState, inputs: Inputs, stable: str, live: Mapping[str, RevisionState], now: float
) -> RolloutState:
    """The target is the canary; a new one (or the first after a restart from an older status)
    starts at step 0, keeping an abort of the same revision."""
    if state.canary != inputs.target:
        kept = state.aborted == inputs.target
        state = dataclasses.replace(
            _at_first_step(state, now),
            canary=inputs.target,
            aborted=state.aborted if kept else None,
            abort=state.abort if kept else None,
        )
    stable_state = live.get(stable)
    return dataclasses.replace(
        state,
        stable=stable,
        stable_version=stable_state.version if stable_state is not None else state.stable_version,
        canary_version=inputs.target_version,
        retiring=None,
        promoted_at=None,
    )


def _settle_retry(state: RolloutState, inputs: Inputs, intent: _Intent, now: float) -> RolloutState:
    if intent.verb != VERB_RETRY:
        return state
    if state.aborted != inputs.target:
        intent.use("retry: nothing was aborted")
        return state
    intent.use("retry: the rollout starts again at step 0")
    return dataclasses.replace(_at_first_step(state, now), aborted=None, abort=None)


def _check(
    state: RolloutState, inputs: Inputs, intent: _Intent, now: float, settings: AnalysisSettings
) -> RolloutState:
    """Abort on a user's word, on pods that cannot serve, or on failed measurements in a row."""
    what = naming.describe_revision(inputs.target_version, inputs.target)
    if intent.verb == VERB_ABORT:
        intent.verb = None  # the abort is its own note
        return _abort(state, inputs, Failure(reasons.ROLLOUT_ABORTED, f"{what}: {ABORTED_BY_USER}"))
    if inputs.target_failure is not None:
        return _abort(state, inputs, inputs.target_failure)
    measurement = inputs.measurement
    if measurement is None:
        return state
    failures = {Result.FAIL: state.failures + 1, Result.PASS: 0}.get(measurement.verdict, state.failures)
    inconclusive = state.inconclusive + 1 if measurement.verdict == Result.INCONCLUSIVE else 0
    state = dataclasses.replace(
        state,
        failures=failures,
        inconclusive=inconclusive,
        canary_requests=measurement.requests,
        all_requests=measurement.total,
        measured_at_weight=state.weight,
        runs=state.runs + 1,
        last_run=now,
        verdict=str(measurement.verdict),
        summary=measurement.summary,
        results=measurement.results,
    )
    if failures < settings.failure_limit:
        return state
    message = f"{what}: analysis failed {failures} times in a row: {measurement.summary}"
    return _abort(state, inputs, Failure(reasons.ANALYSIS_FAILED, message))


def _walk_steps(
    steps: tuple[Step, ...],
    state: RolloutState,
    size: int,
    canary_ready: int,
    intent: _Intent,
    now: float,
    settings: AnalysisSettings,
    analysed: bool = False,
) -> RolloutState:
    """Every step that is done moves the index on; the first that is not sets the wait.
    `analysed`: the rollout has canary.analysis (a shadow step then waits for a pass too)."""
    if state.step < len(steps) and state.inconclusive >= settings.inconclusive_limit:
        if intent.verb != VERB_PROMOTE:
            return _inconclusive_pause(state, intent, now, settings)
        # The user accepts what could not be measured: the step the rollout waits at is skipped
        # below, as any promote skips it, and the streak starts over.
        state = dataclasses.replace(state, inconclusive=0)
    while state.step < len(steps):
        step = steps[state.step]
        started = state.step_started if state.step_started is not None else now
        if intent.verb == VERB_PROMOTE:
            intent.use(f"promote: step {state.step + 1} ({step.describe()}) skipped")
        elif step.set_weight is not None:
            state = dataclasses.replace(state, weight=step.set_weight)
            if canary_ready < canary_replicas(size, step.set_weight):
                return state
        elif step.shadow is not None:
            state = dataclasses.replace(state, weight=0, mirror=step.shadow)
            if not _shadowed(
                step,
                state,
                started,
                canary_replicas(size, step.shadow) <= canary_ready,
                intent,
                now,
                settings,
                analysed,
            ):
                return state
        elif step.analysis:
            # Taken after the step started: a measurement of the reconcile that walked into this
            # step was taken before it, at the previous step's weight (or a shadow step's copies).
            measured = state.last_run is not None and state.last_run > started
            if not _passed(state, measured, intent, now, settings):
                return state
        else:
            pause = step.pause if step.pause is not None else math.inf
            if math.isinf(pause):
                intent.paused = (
                    f"step {state.step + 1}: waiting for a manual promote (kubectl modelship promote)"
                )
                return state
            if now < started + pause:
                intent.wake_by(started + pause - now)
                intent.paused = f"step {state.step + 1}: pause until {bodies.format_time(started + pause)}"
                return state
        state = dataclasses.replace(state, step=state.step + 1, step_started=now)
    return state


def _shadowed(
    step: Step,
    state: RolloutState,
    started: float,
    ready: bool,
    intent: _Intent,
    now: float,
    settings: AnalysisSettings,
    analysed: bool,
) -> bool:
    """Whether a shadow step is done: its canary pods came up, its duration passed and, with
    analysis, a measurement after that passed. Otherwise the wait is set on `intent`."""
    if not ready:
        return False
    duration = step.pause if step.pause is not None else math.inf
    if math.isinf(duration):
        intent.paused = f"step {state.step + 1} ({step.describe()}): waiting for a manual promote"
        return False
    ends = started + duration
    if now < ends:
        intent.wake_by(ends - now)
        return False
    if not analysed:
        return True
    return _passed(state, state.last_run is not None and state.last_run >= ends, intent, now, settings)


def _passed(
    state: RolloutState, measured: bool, intent: _Intent, now: float, settings: AnalysisSettings
) -> bool:
    """Whether the last measurement, `measured` late enough for the step, passed; otherwise the
    step is looked at again when the next measurement is due (at once if none was late enough)."""
    if measured and state.verdict == Result.PASS:
        return True
    due = state.last_run + settings.interval if measured and state.last_run is not None else now
    intent.wake_by(max(MIN_REQUEUE, due - now))
    return False


def _shadow_at(steps: tuple[Step, ...], index: int) -> int:
    """The percent the step at `index` copies (0: it is no shadow step, or every step is done)."""
    shadow = steps[index].shadow if index < len(steps) else None
    return shadow or 0


def _inconclusive_pause(
    state: RolloutState, intent: _Intent, now: float, settings: AnalysisSettings
) -> RolloutState:
    """Too many inconclusive measurements in a row: the rollout waits for a person or for data.

    Argo Rollouts pauses on an Inconclusive AnalysisRun too; unlike it, the measurements go on
    while paused, so a pass resumes the rollout and failures still abort it."""
    intent.paused = (
        f"step {state.step + 1}: analysis inconclusive {state.inconclusive} times in a row "
        f"(inconclusiveLimit {settings.inconclusive_limit}): {state.summary or 'no data'}; "
        "the rollout goes on after a pass, or now with kubectl modelship promote"
    )
    intent.pause_reason = reasons.ANALYSIS_INCONCLUSIVE
    due = (state.last_run or now) + settings.interval
    intent.wake_by(max(MIN_REQUEUE, due - now))
    return state


def _sized(
    rollout: RolloutSpec,
    state: RolloutState,
    inputs: Inputs,
    stable: str,
    live: Mapping[str, RevisionState],
    canary_ready: int,
    intent: _Intent,
    now: float,
    settings: AnalysisSettings,
) -> StepResult:
    """How many pods each revision gets at the current step."""
    steps, size = rollout.steps, inputs.size
    if state.step >= len(steps):  # every step done: the canary grows to N before it takes over
        state = dataclasses.replace(state, weight=100)
        canary_want, stable_weight = size, _last_weight(steps)
    else:
        canary_want, stable_weight = canary_replicas(size, max(state.weight, state.mirror)), state.weight
    if rollout.analysis is not None and (state.weight > 0 or state.mirror > 0):
        intent.wake_by(max(MIN_REQUEUE, (state.last_run or now) + settings.interval - now))
    replicas: dict[str, int | None] = {inputs.target: canary_want}
    if inputs.autoscaled:
        replicas[stable] = None
    elif inputs.routed:
        replicas[stable] = size
    else:
        current = live[stable].spec_replicas if stable in live else None
        replicas[stable] = stable_replicas(size, stable_weight, min(canary_ready, canary_want), current)
    return StepResult(
        state=state,
        replicas=replicas,
        retire=_retire_others(live, {stable, inputs.target}),
        weight=state.weight,
        # Copies go out once a canary pod can answer them: before, they would all be errors.
        mirror=state.mirror if canary_ready > 0 else 0,
        requeue_after=intent.requeue,
        paused=intent.paused,
        pause_reason=intent.pause_reason,
        clear_action=inputs.action is not None,
        action_note=intent.note,
    )


def _ready(canary: RevisionState | None) -> int:
    """Ready canary pods, as last observed. A resize the Deployment controller has not observed
    yet leaves them ready: counting none then would grow the stable revision to full size for
    that moment and shrink it again (issue #31). The canary's template never changes within a
    rollout (a new template is a new revision), so its ready pods serve its model."""
    return canary.ready_replicas if canary is not None else 0


def _serves_alone(canary: RevisionState | None, size: int) -> bool:
    return (
        canary is not None
        and canary.observed_current
        and canary.spec_replicas == size
        and canary.ready_replicas >= size
        and canary.available_replicas >= size
    )


def _last_weight(steps: tuple[Step, ...]) -> int:
    return next((step.set_weight for step in reversed(steps) if step.set_weight is not None), 0)


def _at_first_step(state: RolloutState, now: float) -> RolloutState:
    """The canary starts over: step 0, no weight, no measurement yet."""
    return dataclasses.replace(
        state,
        step=0,
        step_started=now,
        weight=0,
        mirror=0,
        failures=0,
        inconclusive=0,
        canary_requests=None,
        all_requests=None,
        measured_at_weight=None,
        runs=0,
        last_run=None,
        verdict=None,
        summary=None,
        results=(),
    )


def _abort(state: RolloutState, inputs: Inputs, why: Failure) -> RolloutState:
    return dataclasses.replace(state, aborted=inputs.target, abort=why, weight=0, mirror=0)


def _rolled_back(
    state: RolloutState,
    inputs: Inputs,
    stable: str,
    live: Mapping[str, RevisionState],
    intent: _Intent,
) -> StepResult:
    """Every request back on the stable revision at full size; the canary keeps no pods."""
    replicas: dict[str, int | None] = {stable: None if inputs.autoscaled else inputs.size, inputs.target: 0}
    why = state.abort or Failure(reasons.ROLLOUT_ABORTED, "aborted")
    return StepResult(
        state=dataclasses.replace(state, weight=0, mirror=0),
        replicas=replicas,
        retire=_retire_others(live, {stable, inputs.target}),
        weight=0,
        abort=why,
        clear_action=inputs.action is not None,
        action_note=intent.note,
    )


def _promote(
    rollout: RolloutSpec,
    state: RolloutState,
    inputs: Inputs,
    old_stable: str,
    live: Mapping[str, RevisionState],
    now: float,
    note: str | None,
) -> StepResult:
    promoted = dataclasses.replace(
        state,
        stable=inputs.target,
        stable_version=inputs.target_version,
        canary=None,
        canary_version=None,
        weight=0,
        promoted_at=now,
        retiring=old_stable,
        step=len(rollout.steps),
        step_started=None,
    )
    return _steady(rollout, promoted, inputs, inputs.target, live, now, note)
