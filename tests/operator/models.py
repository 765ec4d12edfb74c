"""ModelDeployments on the test cluster, through the official `kubernetes` client."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from modelship.operator import naming

from tests.operator.factories import SHA
from tests.support import wait_until


def model_spec(version: str = "3", **overrides: Any) -> dict[str, Any]:
    """A small spec: KWOK pods need no real CPU, so requests stay tiny to fit many on a node."""
    spec: dict[str, Any] = {
        "model": {
            "version": version,
            "uri": f"https://models.example.com/iris/{version}/model.onnx",
            "sha256": SHA,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }
    spec.update(overrides)
    return spec


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "metadata": {"name": name}, "spec": spec}


def failed_model_fetch_status(message: str) -> dict[str, Any]:
    """The status a kubelet reports for a pod whose model fetch init container keeps failing."""
    return {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            ],
            "initContainerStatuses": [
                {
                    "name": naming.INIT_CONTAINER,
                    "image": "modelship/server:0.1.0",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "reason": "Error", "message": message + "\n"}
                    },
                }
            ],
            "containerStatuses": [
                {
                    "name": naming.SERVER_CONTAINER,
                    "image": "modelship/server:0.1.0",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                }
            ],
        }
    }


class Models:
    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, manifest(name, spec)
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, name
        )

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(  # type: ignore[no-any-return]
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, name, patch
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, name
        )

    def deployments(self, name: str) -> list[client.V1Deployment]:
        selector = f"{naming.LABEL_MODEL_DEPLOYMENT}={name}"
        return list(self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items)

    def pods(self, name: str) -> list[client.V1Pod]:
        selector = f"{naming.LABEL_MODEL_DEPLOYMENT}={name}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        status = self.get(name).get("status") or {}
        return next((c for c in status.get("conditions") or () if c["type"] == kind), None)

    def wait_condition(
        self,
        name: str,
        kind: str = "Ready",
        status: str = "True",
        *,
        reason: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until the condition holds for the current generation; return the whole object."""

        def check() -> dict[str, Any] | None:
            body = self.get(name)
            generation = body["metadata"]["generation"]
            for condition in (body.get("status") or {}).get("conditions") or ():
                if (
                    condition["type"] == kind
                    and condition["status"] == status
                    and condition.get("observedGeneration") == generation
                    and (reason is None or condition.get("reason") == reason)
                ):
                    return body
            return None

        return wait_until(check, timeout=timeout, what=f"{kind}={status} on {self.namespace}/{name}")

    def wait_ready(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_condition(name, "Ready", "True", timeout=timeout)
