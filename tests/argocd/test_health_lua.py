"""The Argo CD health check reads a ModelDeployment's status the way the operator means it."""

from __future__ import annotations

from typing import Any

import pytest

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


READY = _cond("Ready", "True", "Available", "2/2 replicas of iris version 3 ready")
NOT_DEGRADED = _cond("Degraded", "False", "AsExpected")


def test_ready_and_observed_is_healthy() -> None:
    health = argo_health(_md(observedGeneration=2, conditions=[READY, NOT_DEGRADED]))
    assert health == {"status": "Healthy", "message": "2/2 replicas of iris version 3 ready"}


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
        _md(observedGeneration=2, conditions=[READY, _cond("Degraded", "True", "ModelLoadFailed", message)])
    )
    assert health == {"status": "Degraded", "message": message}


def test_paused_rollout_is_suspended() -> None:
    health = argo_health(
        _md(
            observedGeneration=2,
            phase="Paused",
            message="Canary at 10%: waiting for a manual promote",
            conditions=[READY, NOT_DEGRADED],
        )
    )
    assert health == {"status": "Suspended", "message": "Canary at 10%: waiting for a manual promote"}


def test_not_ready_is_progressing_with_the_progressing_message() -> None:
    health = argo_health(
        _md(
            observedGeneration=2,
            conditions=[
                _cond("Ready", "False", "Unavailable", "0/2 replicas ready"),
                _cond("Progressing", "True", "NewRevision", "Waiting for revision 5d8f9 to become ready"),
                NOT_DEGRADED,
            ],
        )
    )
    assert health == {"status": "Progressing", "message": "Waiting for revision 5d8f9 to become ready"}
