"""Every condition type, phase and reason the operator writes, named once, and `Failure`.

Reasons are an API: `kubectl wait --for=condition=...`, the Argo CD health check
(`helm/modelship/files/argocd-health.lua`), alerting rules and the README match on them, so
code and tests import them from here instead of spelling them (as Argo Rollouts keeps its own in
`utils/conditions/conditions.go`). A failure travels as one `Failure(reason, message)` value
from where it is seen (`children`) through the step function (`rollout.steps`) to the status
(`status`), never as text parsed back into a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# ---- condition types (status.conditions[].type)
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
CONDITION_TYPES: Final = (READY, PROGRESSING, DEGRADED)

# ---- phases (status.phase)
PHASE_PROGRESSING: Final = "Progressing"
PHASE_PAUSED: Final = "Paused"
PHASE_HEALTHY: Final = "Healthy"
PHASE_DEGRADED: Final = "Degraded"

# ---- Ready reasons
AVAILABLE: Final = "Available"  # the target serves alone with every pod ready
SCALED_TO_ZERO: Final = "ScaledToZero"
PODS_NOT_READY: Final = "PodsNotReady"

# ---- Progressing reasons (also Ready's while a rollout runs)
ROLLOUT_IN_PROGRESS: Final = "RolloutInProgress"
ROLLOUT_PAUSED: Final = "RolloutPaused"  # also the Event of a pause that starts
ANALYSIS_INCONCLUSIVE: Final = "AnalysisInconclusive"  # paused: inconclusiveLimit measurements in a row
ROLLOUT_COMPLETE: Final = "RolloutComplete"
ROLLOUT_ABORTED: Final = "RolloutAborted"  # also the reason of an abort by a user
ROLLOUT_STALLED: Final = "RolloutStalled"

# ---- Degraded reasons: why the target cannot serve (also Ready's, and Warning Events)
NO_FAILURE: Final = "NoFailure"  # Degraded=False
INVALID_SPEC: Final = "InvalidSpec"
APPLY_FAILED: Final = "ApplyFailed"
MODEL_LOAD_FAILED: Final = "ModelLoadFailed"  # the init container (fetch, sha256) failed
SERVER_FAILED: Final = "ServerFailed"  # the server container exited with an error
IMAGE_PULL_FAILED: Final = "ImagePullFailed"
CONTAINER_CONFIG_ERROR: Final = "ContainerConfigError"
REPLICA_FAILURE: Final = "ReplicaFailure"  # the Deployment cannot create pods (quota, admission)
PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"
ANALYSIS_FAILED: Final = "AnalysisFailed"

# ---- Event reasons (kubectl describe md)
EVENT_READY: Final = READY
EVENT_RECOVERED: Final = "Recovered"
EVENT_CANARY_STARTED: Final = "CanaryStarted"
EVENT_CANARY_STEP: Final = "CanaryStep"
EVENT_PROMOTED: Final = "Promoted"
EVENT_REVISION_CREATED: Final = "RevisionCreated"
EVENT_REVISION_UPDATED: Final = "RevisionUpdated"
EVENT_REVISION_RETIRED: Final = "RevisionRetired"
EVENT_AUTOSCALER_CREATED: Final = "AutoscalerCreated"
EVENT_AUTOSCALER_UPDATED: Final = "AutoscalerUpdated"
EVENT_AUTOSCALER_REMOVED: Final = "AutoscalerRemoved"
EVENT_AUTOSCALER_METRIC_UNAVAILABLE: Final = "AutoscalerMetricUnavailable"  # the HPA cannot read its metric
EVENT_AUTOSCALER_FAILING: Final = "AutoscalerFailing"  # the HPA cannot scale for another reason
EVENT_AUTOSCALER_RECOVERED: Final = "AutoscalerRecovered"
EVENT_DRIFT_REPAIRED: Final = "DriftRepaired"


@dataclass(frozen=True)
class Failure:
    """Why something cannot serve: a reason from this module and a message a person reads.

    The message names what failed (version, revision, pod) once; whoever shows it adds only
    what it knows besides (which version keeps serving).
    """

    reason: str
    message: str

    def to_status(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}

    @classmethod
    def from_status(cls, raw: object) -> Failure | None:
        if not isinstance(raw, Mapping) or not raw.get("reason"):
            return None
        return cls(str(raw["reason"]), str(raw.get("message") or ""))
