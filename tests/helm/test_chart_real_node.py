"""`helm install` as a user runs it: the chart's operator runs as a pod on the real node, with the
chart's ServiceAccount and RBAC and in-cluster credentials (the `kubernetes` Service), passing
the `restricted` Pod Security profile, and serves a ModelDeployment whose real pods answer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from tests.conftest import RESTRICTED, ROOT, delete_namespace_if_present, fresh_namespace_name
from tests.helm.chart import CHART, helm
from tests.operator.models import Models
from tests.real_node import is_ready, ready_real_node, routed_into_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster

MINIMAL = ROOT / "examples" / "minimal.yaml"


@pytest.fixture
def release(kube_bin_dir: Path, kubeconfig: str, k8s_api: client.ApiClient) -> Iterator[dict[str, str]]:
    core = client.CoreV1Api(k8s_api)
    ready_real_node(core, "docker.io/modelship/operator:0.1.0", "hack/images operator")
    names = {"release_ns": fresh_namespace_name("helm-op"), "models_ns": fresh_namespace_name("helm-models")}
    for ns in names.values():
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=RESTRICTED)))
    names["release"] = f"ms-{names['release_ns'][-6:]}"  # ClusterRole names are cluster-wide
    try:
        helm(
            kube_bin_dir,
            "install",
            names["release"],
            str(CHART),
            "--kubeconfig",
            kubeconfig,
            "-n",
            names["release_ns"],
            "--set",
            f"watchNamespaces={{{names['models_ns']}}}",
            "--set",
            f"peering.name=modelship-{names['release_ns']}",
            "--set",
            "peering.lifetime=10",
        )
        yield names
    finally:
        helm(
            kube_bin_dir,
            "uninstall",
            names["release"],
            "-n",
            names["release_ns"],
            "--kubeconfig",
            kubeconfig,
            check=False,
        )
        for ns in (names["models_ns"], names["release_ns"]):
            delete_namespace_if_present(core, ns)


def test_the_charts_operator_runs_on_the_real_node_and_serves_a_model(
    release: dict[str, str],
    k8s_api: client.ApiClient,
    kube_bin_dir: Path,
    kubeconfig: str,
) -> None:
    core = client.CoreV1Api(k8s_api)

    def operator_pods_ready() -> list[Any] | None:
        pods = core.list_namespaced_pod(release["release_ns"]).items
        return pods if len(pods) == 2 and all(is_ready(p) for p in pods) else None

    pods = wait_until(operator_pods_ready, timeout=120, what="both operator pods Running and Ready")
    assert {p.spec.node_name for p in pods} == {"modelship-node"}
    assert all(p.status.container_statuses[0].restart_count == 0 for p in pods), "an operator pod restarted"

    kubectl = [str(kube_bin_dir / "kubectl"), "--kubeconfig", kubeconfig]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-n", release["models_ns"], "-f", str(MINIMAL)], check=True
    )
    body = Models(k8s_api, release["models_ns"]).wait_ready("iris", timeout=180)
    assert body["status"]["phase"] == "Healthy"
    ip = routed_into_node(core.read_namespaced_service("iris", release["models_ns"]).spec.cluster_ip)
    request = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}

    def predicted() -> Any:
        response = httpx.post(f"http://{ip}/v2/models/iris/infer", json=request, timeout=5)
        return response.json() if response.status_code == 200 else None

    answer = wait_until(predicted, timeout=30, what="a prediction through the ClusterIP")
    assert answer["model_version"] == "1"
    # The active replica did the work with the chart's rights: nothing was refused.
    logs = "".join(
        core.read_namespaced_pod_log(p.metadata.name, release["release_ns"], container="operator")
        for p in pods
    )
    assert " 403 " not in logs and "Forbidden" not in logs, logs[-2000:]
