"""The Argo CD health check on ModelDeployments as the real operator leaves them, read back from
the API server: Healthy when Ready, Progressing when a spec change is not observed yet, Degraded
with the operator's message when a new version fails to load.

The operator runs with the chart's ServiceAccount token (tests/helm/scoped_operator.py), watching
only this module's namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from modelship.operator import naming, reasons

from tests.argocd.lua_health import argo_health
from tests.helm.scoped_operator import ScopedOperator, scoped_operator
from tests.operator.models import Models, failed_model_fetch_status, model_spec
from tests.support import wait_until

pytestmark = pytest.mark.cluster

LOAD_FAILURE = (
    "sha256 mismatch for https://models.example.com/iris/4/model.onnx: expected 9f86d081, got 2c26b46b"
)


@pytest.fixture(scope="module")
def operator(
    kube_bin_dir: Path, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScopedOperator]:
    with scoped_operator(kube_bin_dir, kubeconfig, tmp_path_factory.mktemp("argocd"), watched=1) as op:
        op.start(peering=f"modelship-{op.release_namespace}")
        yield op


@pytest.fixture
def models(operator: ScopedOperator, k8s_api: client.ApiClient) -> Models:
    return Models(k8s_api, operator.watched[0])


def test_a_new_object_is_progressing_then_healthy_once_ready(models: Models) -> None:
    created = models.create("fresh", model_spec(replicas=1))
    assert argo_health(created)["status"] == "Progressing"

    ready = models.wait_ready("fresh", timeout=60)
    health = argo_health(ready)
    assert health["status"] == "Healthy", health
    ready_condition = next(c for c in ready["status"]["conditions"] if c["type"] == reasons.READY)
    assert health["message"] == ready_condition["message"]


def test_a_spec_change_the_operator_has_not_observed_yet_is_progressing(models: Models) -> None:
    models.create("changed", model_spec(replicas=1))
    before = models.wait_ready("changed", timeout=60)
    assert argo_health(before)["status"] == "Healthy"

    # The patch's response is the object right after the write: the new generation, and the
    # status the operator wrote for the old one. Exactly what Argo CD sees until the operator acts.
    patched = models.patch("changed", {"spec": {"replicas": 2}})
    assert patched["metadata"]["generation"] > patched["status"]["observedGeneration"]
    health = argo_health(patched)
    assert health["status"] == "Progressing", health
    assert str(patched["metadata"]["generation"]) in health["message"]

    # Ready conditions are kept from before, yet the check does not call it Healthy early:
    assert any(c["type"] == reasons.READY and c["status"] == "True" for c in patched["status"]["conditions"])
    assert argo_health(models.wait_ready("changed", timeout=60))["status"] == "Healthy"


def test_a_version_that_fails_to_load_is_degraded_with_the_operators_message(models: Models) -> None:
    models.create("iris", model_spec(replicas=1))
    models.wait_ready("iris", timeout=60)
    # KWOK leaves pods annotated `kwok.x-k8s.io/status: custom` alone: the test plays the kubelet.
    models.patch(
        "iris",
        {
            "spec": {
                "model": {"version": "4", "uri": "https://models.example.com/iris/4/model.onnx"},
                "podMetadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}},
            }
        },
    )

    def new_pod() -> client.V1Pod | None:
        pods = [p for p in models.pods("iris") if p.metadata.labels[naming.LABEL_VERSION] == "4"]
        return pods[0] if pods and pods[0].spec.node_name else None

    pod = wait_until(new_pod, timeout=60, what="a scheduled pod of version 4")
    try:
        models.core.patch_namespaced_pod_status(
            pod.metadata.name, models.namespace, failed_model_fetch_status(LOAD_FAILURE)
        )
        body = models.wait_condition(
            "iris", reasons.DEGRADED, "True", reason=reasons.MODEL_LOAD_FAILED, timeout=60
        )
        health = argo_health(body)
        assert health["status"] == "Degraded", health
        degraded = next(c for c in body["status"]["conditions"] if c["type"] == reasons.DEGRADED)
        assert health["message"] == degraded["message"]
        assert LOAD_FAILURE in health["message"]
    finally:
        models.delete("iris")
        for leftover in models.pods("iris"):
            try:
                models.core.delete_namespaced_pod(
                    leftover.metadata.name, models.namespace, grace_period_seconds=0
                )
            except ApiException as exc:
                if exc.status != 404:  # the garbage collector got there first
                    raise
