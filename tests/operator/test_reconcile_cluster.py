"""The operator against the real API server: children, status, scaling, drift, deletion.

KWOK nodes make pods Running and Ready without running containers, so these prove the
control plane's side (objects, ownership, status, events); the server's own behaviour is
tested with real processes in tests/server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from modelship.operator import naming

from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models, failed_model_fetch_status, model_spec
from tests.support import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def models(k8s_api: client.ApiClient, namespace: str, operator: OperatorProcess) -> Models:
    return Models(k8s_api, namespace)


def events(models: Models, name: str) -> list[tuple[str, str]]:
    found = models.core.list_namespaced_event(
        models.namespace, field_selector=f"involvedObject.kind={naming.KIND},involvedObject.name={name}"
    ).items
    return [(e.type, e.reason) for e in found]


def wait_for_event(models: Models, name: str, type_: str, reason: str) -> None:
    """Kopf posts events from a background queue, so one may land just after the write it tells of."""
    wait_until(lambda: (type_, reason) in events(models, name), what=f"a {type_} {reason} event on {name}")


def test_a_model_deployment_gets_its_children_and_becomes_ready(
    models: Models, kubectl: Callable[..., Any]
) -> None:
    models.create("iris", model_spec(replicas=2))
    result = kubectl("wait", "--for=condition=Ready", "md/iris", "-n", models.namespace, "--timeout=30s")
    assert "condition met" in result.stdout

    body = models.get("iris")
    status = body["status"]
    assert status["phase"] == "Healthy"
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert (status["replicas"], status["readyReplicas"], status["readyText"]) == (2, 2, "2/2")
    assert status["model"]["version"] == "3"
    assert status["url"] == f"http://iris.{models.namespace}.svc.cluster.local/v2/models/iris"

    [deployment] = models.deployments("iris")
    revision = status["model"]["revision"]
    assert deployment.metadata.name == f"iris-{revision}"
    assert deployment.metadata.labels[naming.LABEL_REVISION] == revision
    assert deployment.metadata.labels[naming.LABEL_MANAGED_BY] == "modelship"
    owner = deployment.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        naming.KIND,
        "iris",
        body["metadata"]["uid"],
        True,
    )
    managers = {entry.manager for entry in deployment.metadata.managed_fields if entry.operation == "Apply"}
    assert managers == {naming.FIELD_MANAGER}

    service = models.core.read_namespaced_service("iris", models.namespace)
    assert service.spec.selector == naming.selector_labels("iris")
    assert len([p for p in models.pods("iris") if p.status.phase == "Running"]) == 2

    # The operator writes the status subresource and nothing else of the user's object.
    ours = [e for e in body["metadata"]["managedFields"] if e["manager"] == naming.FIELD_MANAGER]
    assert ours and {e.get("subresource") for e in ours} == {"status"}
    # Nothing of Kopf's on the user's object: no finalizer, no annotations (GitOps sees no drift).
    assert not body["metadata"].get("finalizers")
    assert not any(key.startswith("kopf.") for key in body["metadata"].get("annotations") or {})
    assert "kopf" not in status

    table = kubectl("get", "md", "-n", models.namespace).stdout.split()
    assert table[:8] == ["NAME", "MODEL", "VERSION", "READY", "STATUS", "LOAD", "DESIRED", "AGE"]
    # Not autoscaled: LOAD and DESIRED are blank, so the row's words follow the header's.
    assert table[8:13] == ["iris", "iris", "3", "2/2", "Healthy"]
    assert {("Normal", "RevisionCreated"), ("Normal", "Ready")} <= set(events(models, "iris"))


def test_scaling_through_the_scale_subresource(models: Models, kubectl: Callable[..., Any]) -> None:
    models.create("iris", model_spec())
    models.wait_ready("iris")
    kubectl("scale", "md/iris", "-n", models.namespace, "--replicas=3")
    body = models.wait_ready("iris")
    assert body["status"]["readyText"] == "3/3"
    [deployment] = models.deployments("iris")
    assert deployment.spec.replicas == 3
    scale = models.custom.get_namespaced_custom_object_scale(
        naming.GROUP, naming.VERSION, models.namespace, naming.PLURAL, "iris"
    )
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == body["status"]["selector"]


def test_autoscaling_brings_an_hpa_and_taking_it_away_removes_it(models: Models) -> None:
    models.create(
        "iris", model_spec(autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetCPUUtilization": 60})
    )
    body = models.wait_ready("iris")
    hpa = wait_until(
        lambda: models.autoscaling.read_namespaced_horizontal_pod_autoscaler("iris", models.namespace),
        what="the HPA",
    )
    revision = body["status"]["model"]["revision"]
    assert hpa.spec.scale_target_ref.name == f"iris-{revision}"
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 4)
    assert hpa.metadata.owner_references[0].uid == body["metadata"]["uid"]
    # The HPA owns the size: our field manager does not hold spec.replicas.
    [deployment] = models.deployments("iris")
    ours = next(e for e in deployment.metadata.managed_fields if e.manager == naming.FIELD_MANAGER)
    assert "f:replicas" not in ours.fields_v1.get("f:spec", {})

    models.patch("iris", {"spec": {"autoscaling": None, "replicas": 2}})

    def hpa_gone() -> bool:
        try:
            models.autoscaling.read_namespaced_horizontal_pod_autoscaler("iris", models.namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(hpa_gone, what="the HPA to be deleted")
    assert models.wait_ready("iris")["status"]["readyText"] == "2/2"
    wait_for_event(models, "iris", "Normal", "AutoscalerRemoved")


def test_children_changed_or_deleted_by_hand_are_restored(models: Models) -> None:
    models.create("iris", model_spec(replicas=2))
    models.wait_ready("iris")
    [deployment] = models.deployments("iris")
    name = deployment.metadata.name

    models.apps.patch_namespaced_deployment(name, models.namespace, {"spec": {"replicas": 5}})
    wait_until(
        lambda: models.apps.read_namespaced_deployment(name, models.namespace).spec.replicas == 2,
        what="the replica count to be restored",
    )

    selector = {"spec": {"selector": {"app": "hijacked", naming.LABEL_MODEL_DEPLOYMENT: None}}}
    models.core.patch_namespaced_service("iris", models.namespace, selector)
    wait_until(
        lambda: (
            models.core.read_namespaced_service("iris", models.namespace).spec.selector
            == naming.selector_labels("iris")
        ),
        what="the Service selector to be restored",
    )

    models.core.delete_namespaced_service("iris", models.namespace)
    models.apps.delete_namespaced_deployment(name, models.namespace)
    wait_until(lambda: models.core.read_namespaced_service("iris", models.namespace), what="the Service back")
    wait_until(
        lambda: models.apps.read_namespaced_deployment(name, models.namespace), what="the Deployment back"
    )
    models.wait_ready("iris")
    wait_for_event(models, "iris", "Normal", "DriftRepaired")


def test_deleting_a_model_deployment_deletes_its_children(models: Models) -> None:
    models.create("iris", model_spec(replicas=1))
    models.wait_ready("iris")
    assert models.deployments("iris")
    models.delete("iris")
    wait_until(lambda: not models.deployments("iris"), what="the Deployments to be collected")
    wait_until(
        lambda: (
            not models.core.list_namespaced_service(
                models.namespace, label_selector=f"{naming.LABEL_MODEL_DEPLOYMENT}=iris"
            ).items
        ),
        what="the Service to be collected",
    )
    wait_until(lambda: not models.pods("iris"), what="the pods to be collected")


def test_a_new_version_replaces_the_old_one_once_it_is_ready(models: Models) -> None:
    models.create("iris", model_spec(replicas=2))
    old_revision = models.wait_ready("iris")["status"]["model"]["revision"]
    models.patch(
        "iris", {"spec": {"model": {"version": "4", "uri": "https://models.example.com/iris/4/model.onnx"}}}
    )
    body = models.wait_ready("iris")
    assert body["status"]["model"]["version"] == "4"
    new_revision = body["status"]["model"]["revision"]
    assert new_revision != old_revision
    wait_until(
        lambda: [d.metadata.name for d in models.deployments("iris")] == [f"iris-{new_revision}"],
        what="the old revision to be retired",
    )
    wait_for_event(models, "iris", "Normal", "RevisionRetired")
    deployment = models.deployments("iris")[0]
    assert deployment.metadata.labels[naming.LABEL_VERSION] == "4"


def test_a_model_that_fails_to_load_is_degraded_while_the_old_version_serves(models: Models) -> None:
    models.create("iris", model_spec(replicas=1))
    old = models.wait_ready("iris")["status"]["model"]

    # KWOK leaves pods annotated `kwok.x-k8s.io/status: custom` alone: the test plays the kubelet
    # and reports what a real node would, an init container that exited with the server's message.
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

    pod = wait_until(new_pod, what="a scheduled pod of version 4")
    try:
        _fail_to_load(models, pod, old)
    finally:
        _remove_unmanaged_pods(models)


def _remove_unmanaged_pods(models: Models) -> None:
    """Pods KWOK leaves alone have no kubelet to confirm their deletion: without a forced
    delete they, and the test's namespace, would stay Terminating for ever."""
    models.delete("iris")

    def force_delete() -> bool:
        for pod in models.pods("iris"):
            models.core.delete_namespaced_pod(pod.metadata.name, models.namespace, grace_period_seconds=0)
        return not models.pods("iris")

    wait_until(force_delete, what="the test's pods to be gone")


def _fail_to_load(models: Models, pod: client.V1Pod, old: dict[str, Any]) -> None:
    message = (
        "sha256 mismatch for https://models.example.com/iris/4/model.onnx: expected 9f86d081, got 2c26b46b"
    )
    models.core.patch_namespaced_pod_status(
        pod.metadata.name, models.namespace, failed_model_fetch_status(message)
    )

    body = models.wait_condition("iris", "Degraded", "True", reason="ModelLoadFailed")
    degraded = next(c for c in body["status"]["conditions"] if c["type"] == "Degraded")
    assert message in degraded["message"]
    assert f"version 3 (revision {old['revision']}) keeps serving" in degraded["message"]
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert body["status"]["phase"] == "Degraded"
    # The old revision keeps serving: its Deployment is still there with its ready pods.
    assert body["status"]["model"] == old
    old_deployment = models.apps.read_namespaced_deployment(f"iris-{old['revision']}", models.namespace)
    assert old_deployment.status.ready_replicas == 1
    wait_for_event(models, "iris", "Warning", "ModelLoadFailed")


def test_a_deployment_that_cannot_create_pods_is_degraded_with_the_reason(models: Models) -> None:
    models.create("iris", model_spec(priorityClassName="no-such-class"))
    body = models.wait_condition("iris", "Degraded", "True", reason="ReplicaFailure", timeout=45)
    degraded = next(c for c in body["status"]["conditions"] if c["type"] == "Degraded")
    assert "no-such-class" in degraded["message"]
