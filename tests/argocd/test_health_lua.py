"""The Argo CD health check reads a ModelDeployment's status the way the operator means it."""

from __future__ import annotations

from typing import Any

import pytest
from modelship.operator import reasons

from tests.argocd.lua_health import argo_health


def _md(generation: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "generation": generation},
        "status": status,
    }


def _cond(kind: str, value: str, reason: str = "R", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": value, "reason": reason, "message": message}


READY = _cond(reasons.READY, "True", reasons.AVAILABLE, "version 3 serves with 2/2 replicas ready")
NOT_DEGRADED = _cond(reasons.DEGRADED, "False", reasons.NO_FAILURE)


def test_ready_and_observed_is_healthy() -> None:
    health = argo_health(_md(observedGeneration=2, conditions=[READY, NOT_DEGRADED]))
    assert health == {"status": "Healthy", "message": "version 3 serves with 2/2 replicas ready"}


def test_ready_but_not_yet_observed_is_progressing() -> None:
    # Argo CD must not call a stale Ready healthy right after a sync changed the spec.
    health = argo_health(_md(generation=3, observedGeneration=2, conditions=[READY]))
    assert health["status"] == "Progressing"
    assert "generation 3" in health["message"]


@pytest.mark.parametrize("status", [{}, {"conditions": [READY]}])
def test_no_status_or_no_observed_generation_is_progressing(status: dict[str, Any]) -> None:
    assert argo_health(_md(**status))["status"] == "Progressing"


def test_object_without_status_is_progressing() -> None:
    obj = _md()
    del obj["status"]
    assert argo_health(obj)["status"] == "Progressing"


def test_degraded_carries_the_operators_message() -> None:
    message = "model load failed: sha256 mismatch: expected 9f86d081..., got 2c26b46b..."
    health = argo_health(
        _md(
            observedGeneration=2,
            conditions=[READY, _cond(reasons.DEGRADED, "True", reasons.MODEL_LOAD_FAILED, message)],
        )
    )
    assert health == {"status": "Degraded", "message": message}


def test_paused_rollout_is_suspended_with_the_rollouts_own_message() -> None:
    # The shape the operator writes: the rollout's message under status.rollout (a status with no
    # top-level message, which the script once read and so always said its fallback).
    waiting = "step 2: waiting for a manual promote (kubectl modelship promote)"
    health = argo_health(
        _md(
            observedGeneration=2,
            phase=reasons.PHASE_PAUSED,
            rollout={"paused": True, "pauseReason": waiting, "message": waiting},
            conditions=[READY, NOT_DEGRADED],
        )
    )
    assert health == {"status": "Suspended", "message": waiting}


def test_paused_rollout_without_a_rollout_message_says_what_progressing_says() -> None:
    health = argo_health(
        _md(
            observedGeneration=2,
            phase=reasons.PHASE_PAUSED,
            conditions=[
                READY,
                NOT_DEGRADED,
                _cond("Progressing", "True", "RolloutPaused", "paused at step 2"),
            ],
        )
    )
    assert health == {"status": "Suspended", "message": "paused at step 2"}


def test_not_ready_is_progressing_with_the_progressing_message() -> None:
    health = argo_health(
        _md(
            observedGeneration=2,
            conditions=[
                _cond(reasons.READY, "False", reasons.ROLLOUT_IN_PROGRESS, "version 3: 0/2 replicas ready"),
                _cond(
                    reasons.PROGRESSING,
                    "True",
                    reasons.ROLLOUT_IN_PROGRESS,
                    "version 3 (revision 5d8f9) is rolling out",
                ),
                NOT_DEGRADED,
            ],
        )
    )
    assert health == {"status": "Progressing", "message": "version 3 (revision 5d8f9) is rolling out"}
