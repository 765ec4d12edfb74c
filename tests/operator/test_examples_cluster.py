"""Every manifest in examples/ works as it is written: applied in a new namespace, its pods run on
the real node, fetch the model from the cluster's model store (hack/models), verify its sha256,
become Ready, and answer a prediction through the Service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models
from tests.real_node import ready_real_node, routed_into_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# One iris flower (cm); version 1 calls it class 2, version 2 class 1.
FLOWER = [5.9, 3.2, 4.8, 1.8]
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": FLOWER}]}


def test_the_minimal_autoscaled_and_canary_examples_exist() -> None:
    assert {"minimal.yaml", "autoscaled.yaml", "canary.yaml"} <= {path.name for path in EXAMPLES}


def _model_deployments(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == naming.KIND]


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_an_example_serves_predictions_on_the_real_node(
    path: Path,
    k8s_api: client.ApiClient,
    real_namespace: str,
    operator: OperatorProcess,
    kubectl: Callable[..., Any],
) -> None:
    core = client.CoreV1Api(k8s_api)
    node = ready_real_node(core, f"docker.io/{naming.DEFAULT_SERVER_IMAGE}", "hack/images server")
    kubectl("apply", "--server-side", "-n", real_namespace, "-f", str(path))
    models = Models(k8s_api, real_namespace)
    documents = _model_deployments(path)
    assert documents, f"{path.name} holds no ModelDeployment"
    for document in documents:
        name = document["metadata"]["name"]
        body = models.wait_ready(name, timeout=180)
        assert body["status"]["phase"] == "Healthy"
        pods = core.list_namespaced_pod(
            real_namespace, label_selector=f"{naming.LABEL_MODEL_DEPLOYMENT}={name}"
        ).items
        nodes = {pod.spec.node_name for pod in pods}
        assert nodes == {node.metadata.name}, f"{name}'s pods run on {nodes}, not on the real node"

        model = document["spec"]["model"]
        served_as = model.get("name", name)
        ip = routed_into_node(core.read_namespaced_service(name, real_namespace).spec.cluster_ip)

        def answer(url: str = f"http://{ip}/v2/models/{served_as}/infer") -> httpx.Response | None:
            try:
                return httpx.post(url, json=REQUEST, timeout=5)
            except httpx.TransportError:
                return None  # kube-proxy may not have programmed the new Service yet

        response = wait_until(answer, timeout=30, what=f"a prediction from {name} through its ClusterIP")
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["model_version"] == model["version"]
        outputs = {output["name"]: output for output in result["outputs"]}
        assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["data"][0] in (0, 1, 2)
        assert sum(outputs["probabilities"]["data"]) == pytest.approx(1.0, abs=1e-4)
