"""Objects shaped like the API server returns them, for the operator's pure unit tests."""

from __future__ import annotations

import copy
from typing import Any

from modelship.operator import naming
from modelship.operator.children import RevisionState

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def md_body(
    name: str = "iris",
    namespace: str = "ml",
    *,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A ModelDeployment with the defaults the CRD schema adds."""
    full: dict[str, Any] = {
        "model": {"version": "3", "uri": "https://models.example.com/iris/3/model.onnx", "sha256": SHA},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
        "server": {"batching": {"maxBatchSize": 32, "maxDelayMs": 5}},
    }
    for key, value in spec.items():
        if key == "model":
            full["model"] = {**full["model"], **value}
        else:
            full[key] = value
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": generation,
            "resourceVersion": "100",
        },
        "spec": full,
        "status": status or {},
    }


def live(manifest: dict[str, Any], *, resource_version: str = "1", **status: Any) -> dict[str, Any]:
    """What the API server returns for an applied manifest: defaults added, uid and status set."""
    body = copy.deepcopy(manifest)
    meta = body["metadata"]
    meta["uid"] = f"uid-{meta['name']}"
    meta["resourceVersion"] = resource_version
    meta["generation"] = 1
    meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
    if body["kind"] == "Deployment":
        spec = body["spec"]
        spec.setdefault("replicas", 1)
        pod = spec["template"]["spec"]
        pod["restartPolicy"] = "Always"
        pod["dnsPolicy"] = "ClusterFirst"
        for container in pod["initContainers"] + pod["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    container[probe]["successThreshold"] = 1
                    container[probe]["httpGet"]["scheme"] = "HTTP"
        body["status"] = {"observedGeneration": 1, **status}
    if body["kind"] == "Service":
        body["spec"]["clusterIP"] = "10.96.0.10"
        body["spec"]["sessionAffinity"] = "None"
    return body


def ready_deployment(manifest: dict[str, Any], ready: int | None = None, **kwargs: Any) -> dict[str, Any]:
    replicas = manifest["spec"].get("replicas", 1)
    count = replicas if ready is None else ready
    return live(
        manifest,
        replicas=replicas,
        readyReplicas=count,
        availableReplicas=count,
        updatedReplicas=replicas,
        **kwargs,
    )


def replicas_managed_by(
    body: dict[str, Any], manager: str, *, operation: str = "Apply", subresource: str | None = None
) -> dict[str, Any]:
    """The body with `manager` recorded as owning spec.replicas, as the API server's managedFields
    say it (an HPA's scale writes: manager kube-controller-manager, Update, subresource scale)."""
    entry: dict[str, Any] = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}}},
    }
    if subresource is not None:
        entry["subresource"] = subresource
    body["metadata"].setdefault("managedFields", []).append(entry)
    return body


def pod(
    revision: str,
    name: str = "iris-pod",
    *,
    ready: bool = False,
    init: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    init_status = {"name": naming.INIT_CONTAINER, "ready": False, "restartCount": 0, "state": {}}
    server_status = {"name": naming.SERVER_CONTAINER, "ready": ready, "restartCount": 0, "state": {}}
    init_status.update(init or {})
    server_status.update(server or {})
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {naming.LABEL_REVISION: revision, naming.LABEL_MODEL_DEPLOYMENT: "iris"},
        },
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": (conditions or []) + [{"type": "Ready", "status": "True" if ready else "False"}],
            "initContainerStatuses": [init_status],
            "containerStatuses": [server_status],
        },
    }


def revision_state(
    revision: str,
    version: str | None = None,
    *,
    ready: int,
    wanted: int = 2,
    created: str = "2026-01-01T00:00:00Z",
) -> RevisionState:
    """A revision's Deployment as the operator sees it: `wanted` pods asked for, `ready` of them up."""
    return RevisionState(
        revision=revision,
        deployment=f"iris-{revision}",
        version=version or revision,
        model_name="iris",
        spec_replicas=wanted,
        replicas=wanted,
        ready_replicas=ready,
        available_replicas=ready,
        observed_current=True,
        being_deleted=False,
        created=created,
        failure=None,
    )
