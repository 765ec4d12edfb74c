"""`status.rollout`: what a rollout remembers between reconciles, typed, and its manual actions.

Everything a rollout remembers lives here, so an operator restart resumes at the same step:
the step index only moves forward and a pause keeps its start time, not its remaining time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelship.operator import bodies, reasons
from modelship.operator.reasons import Failure
from modelship.operator.spec import RolloutSpec

VERB_PROMOTE = "promote"
VERB_PROMOTE_FULL = "promote-full"
VERB_ABORT = "abort"
VERB_RETRY = "retry"
VERBS = frozenset({VERB_PROMOTE, VERB_PROMOTE_FULL, VERB_ABORT, VERB_RETRY})


def parse_action(value: str | None) -> str | None:
    """The verb of a `modelship.io/action` value `<verb>@<nonce>` (or a bare verb)."""
    if not value:
        return None
    verb = value.split("@", 1)[0].strip()
    return verb if verb in VERBS else None


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
    mirror: int = 0  # percent of the stable revision's requests copied to the canary (a shadow step)
    aborted: str | None = None  # the revision that was rolled back
    abort: Failure | None = None  # why
    promoted_at: float | None = None
    retiring: str | None = None
    handled_action: str | None = None
    failures: int = 0
    inconclusive: int = 0  # inconclusive measurements in a row
    canary_requests: float | None = None  # of the last measurement, in its window
    all_requests: float | None = None  # to the canary and the stable revision, in the same window
    measured_at_weight: int | None = None  # the weight asked while the last measurement was taken
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
        abort = Failure.from_status(raw.get("abort"))
        if abort is None and raw.get("abortReason"):
            # Written by an operator before `abort` had a reason of its own: keep the words.
            abort = Failure(reasons.ROLLOUT_ABORTED, str(raw["abortReason"]))
        return cls(
            # An object from before rollouts were in status: its serving revision is in status.model.
            stable=raw.get("stableRevision") or model.get("revision") or None,
            stable_version=raw.get("stableVersion") or model.get("version") or None,
            canary=raw.get("canaryRevision") or None,
            canary_version=raw.get("canaryVersion") or None,
            step=int(raw.get("step") or 0),
            step_started=bodies.timestamp(raw.get("stepStartedAt")),
            weight=int(raw.get("weight") or 0),
            mirror=int(raw.get("mirror") or 0),
            aborted=raw.get("abortedRevision") or None,
            abort=abort,
            promoted_at=bodies.timestamp(raw.get("promotedAt")),
            retiring=raw.get("retiring") or None,
            handled_action=raw.get("handledAction") or None,
            failures=int(analysis.get("failures") or 0),
            inconclusive=int(analysis.get("inconclusive") or 0),
            canary_requests=_number(analysis.get("canaryRequests")),
            all_requests=_number(analysis.get("requests")),
            measured_at_weight=_whole(_number(analysis.get("weight"))),
            runs=int(analysis.get("runs") or 0),
            last_run=bodies.timestamp(analysis.get("lastRun")),
            verdict=analysis.get("verdict") or None,
            summary=analysis.get("summary") or None,
            results=tuple(analysis.get("results") or ()),
        )

    def to_status(self, rollout: RolloutSpec) -> dict[str, Any]:
        """`status.rollout` for this state (the fields the rollout keeps across restarts)."""

        def time(seconds: float | None) -> str | None:
            return bodies.format_time(seconds) if seconds is not None else None

        out: dict[str, Any] = {
            "strategy": rollout.strategy,
            "stableRevision": self.stable,
            "stableVersion": self.stable_version,
            "canaryRevision": self.canary,
            "canaryVersion": self.canary_version,
            "step": self.step,
            "steps": len(rollout.steps),
            "stepStartedAt": time(self.step_started),
            "weight": self.weight,
            "mirror": self.mirror or None,
            "abortedRevision": self.aborted,
            "abort": self.abort.to_status() if self.abort is not None else None,
            "promotedAt": time(self.promoted_at),
            "retiring": self.retiring,
            "handledAction": self.handled_action,
        }
        if self.runs or self.last_run is not None:
            out["analysis"] = {
                "failures": self.failures,
                "inconclusive": self.inconclusive,
                "canaryRequests": _whole(self.canary_requests),
                "requests": _whole(self.all_requests),
                "weight": self.measured_at_weight,
                "runs": self.runs,
                "lastRun": time(self.last_run),
                "verdict": self.verdict,
                "summary": self.summary,
                "results": [dict(r) for r in self.results],
            }
            out["analysis"] = {k: v for k, v in out["analysis"].items() if v is not None}
        return {key: value for key, value in out.items() if value is not None}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _whole(value: float | None) -> int | None:
    # increase() extrapolates to the window's edges, so counts come back fractional.
    return round(value) if value is not None else None
