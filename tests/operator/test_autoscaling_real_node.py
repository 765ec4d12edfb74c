"""Autoscaling under real load on the real node (issue #14).

Nothing is simulated: the model's pods run on the real node, `wrk` (a load generator nobody here
wrote) sends requests to the model's ClusterIP through kube-proxy, Prometheus discovers the pods
with kubernetes_sd, prometheus-adapter serves `modelship_inflight_requests` through the
aggregation layer, metrics-server reads the kubelet's CPU figures, and kube-controller-manager's
HPA controller sizes the Deployment. For each metric the operator offers (in-flight requests per
pod, CPU utilisation):

- under heavy load the HPA scales from minReplicas up, and every added pod takes traffic;
- under light load it scales back down to minReplicas (windows shortened by `behavior`);
- no request fails in all of it, while pods are added or removed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.keepalive_load import KeepAliveLoad, LoadResult, wrk_load, wrk_result
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models
from tests.real_node import ready_real_node, routed_into_node
from tests.support import wait_until

if TYPE_CHECKING:  # imported by pytest_plugins, where pytest rewrites its asserts
    from tests.prometheus_support import Prometheus

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support"]

NAME = "iris"
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}
V1 = dict(yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())["spec"]["model"])
MAX_REPLICAS = 3
# The test's windows: scale up at once, and down 10 s after the load falls, all surplus pods at once
# (the defaults wait 5 minutes and remove a quarter a minute).
SHORT_WINDOWS = {
    "scaleUp": {"stabilizationWindowSeconds": 0},
    "scaleDown": {
        "stabilizationWindowSeconds": 10,
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
    },
}
SCALE_TIMEOUT = 150  # seconds for the HPA to act and the pods to be ready


@pytest.fixture
def models(k8s_api: client.ApiClient, real_namespace: str, operator: OperatorProcess) -> Models:
    ready_real_node(
        client.CoreV1Api(k8s_api), f"docker.io/{naming.DEFAULT_SERVER_IMAGE}", "hack/images server"
    )
    return Models(k8s_api, real_namespace)


class Load:
    """Heavy load (`wrk -t2 -c8`), then light load (two paced connections), on one URL; both
    stopped after the test, also when it fails."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.heavy: subprocess.Popen[str] | None = None
        self.light: KeepAliveLoad | None = None

    def start_heavy(self) -> None:
        self.heavy = wrk_load(self.url, REQUEST, seconds=400)

    def stop_heavy(self) -> LoadResult:
        assert self.heavy is not None
        result, self.heavy = wrk_result(self.heavy, interrupt=True), None
        return result

    def start_light(self) -> None:
        # About 40 requests a second: below any target, so that the HPA scales down while requests
        # keep flowing to the pods it removes.
        self.light = KeepAliveLoad(self.url, REQUEST, connections=2, pooled=0, pace=0.05)
        self.light.start()

    def stop_light(self) -> LoadResult:
        assert self.light is not None
        result, self.light = self.light.stop(), None
        return result

    def stop(self) -> None:
        if self.heavy is not None:
            self.stop_heavy()
        if self.light is not None:
            self.stop_light()


@pytest.fixture
def load() -> Iterator[list[Load]]:
    started: list[Load] = []
    yield started
    for each in started:
        each.stop()


def _custom_metric(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    """The custom metrics API's values of modelship_inflight_requests, by pod."""
    path = f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/*/modelship_inflight_requests"
    out = kubectl("get", "--raw", path)
    return {item["describedObject"]["name"]: item["value"] for item in json.loads(out.stdout)["items"]}


def _autoscaling_status(models: Models) -> dict[str, Any]:
    return dict((models.get(NAME).get("status") or {}).get("autoscaling") or {})


def _ready_pods(models: Models) -> set[str]:
    return {
        p.metadata.name
        for p in models.pods(NAME)
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ())
    }


def _scale_up_and_down(
    models: Models,
    kubectl: Kubectl,
    prometheus: Prometheus,
    load: list[Load],
    autoscaling: dict[str, Any],
    resources: dict[str, Any],
) -> None:
    spec = {"model": V1, "resources": resources, "autoscaling": {**autoscaling, "behavior": SHORT_WINDOWS}}
    models.create(NAME, spec)
    models.wait_ready(NAME, timeout=240)
    # The HPA reads its metric before any load: the figure is there and nothing is wrong.
    idle = wait_until(
        lambda: (s := _autoscaling_status(models)).get("current") is not None and s,
        timeout=90,
        interval=1,
        what="the autoscaler to read its metric",
    )
    assert "problem" not in idle, idle
    assert idle["desiredReplicas"] == 1, idle
    first = _ready_pods(models)
    assert len(first) == 1, first
    if autoscaling["metric"] == "inflightRequests":
        # What the HPA reads, as any client of the custom metrics API gets it.
        values = _custom_metric(kubectl, models.namespace)
        assert set(values) == first, values

    ip = routed_into_node(models.core.read_namespaced_service(NAME, models.namespace).spec.cluster_ip)
    traffic = Load(f"http://{ip}/v2/models/{NAME}/infer")
    load.append(traffic)
    traffic.start_heavy()
    grown = wait_until(
        lambda: len(pods := _ready_pods(models)) >= 2 and pods,
        timeout=SCALE_TIMEOUT,
        interval=1,
        what="the autoscaler to add pods under load",
    )
    busy = _autoscaling_status(models)
    print(f"under load: {busy.get('load')}, {len(grown)} ready pods, desired {busy.get('desiredReplicas')}")

    def every_pod_serves() -> dict[str, float] | None:
        counts = prometheus.requests_by_pod(models.namespace, "5s")
        serving = {pod: n for pod, n in counts.items() if pod in grown and n > 0}
        return serving if len(serving) == len(grown) else None

    wait_until(every_pod_serves, timeout=60, interval=1, what="every added pod to take traffic")
    heavy = traffic.stop_heavy()
    traffic.start_light()
    shrunk = wait_until(
        lambda: len(pods := {p.metadata.name for p in models.pods(NAME)}) == 1 and pods,
        timeout=SCALE_TIMEOUT,
        interval=1,
        what="the autoscaler to remove the pods once the load fell",
    )
    light = traffic.stop_light()
    print(f"heavy load: {heavy}; light load while scaling down: {light}")
    assert heavy.failed == 0, f"wrk, while pods were added: {heavy}"
    assert light.failed == 0, f"requests while pods were removed: {light}"
    assert light.ok > 100, light
    status = _autoscaling_status(models)
    assert status["desiredReplicas"] == 1, status
    assert shrunk <= grown | first, (shrunk, grown)


def test_in_flight_requests_scale_the_model_up_under_load_and_down_after_it(
    models: Models, kubectl: Kubectl, prometheus: Prometheus, load: list[Load]
) -> None:
    _scale_up_and_down(
        models,
        kubectl,
        prometheus,
        load,
        {
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "metric": "inflightRequests",
            "targetInflightRequests": 1,
        },
        # Small, so that three pods fit on the real node's 2 cores beside the control plane and wrk.
        {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
    )


def test_cpu_utilisation_scales_the_model_up_under_load_and_down_after_it(
    models: Models, kubectl: Kubectl, prometheus: Prometheus, load: list[Load]
) -> None:
    _scale_up_and_down(
        models,
        kubectl,
        prometheus,
        load,
        {"minReplicas": 1, "maxReplicas": MAX_REPLICAS, "metric": "cpu", "targetCPUUtilization": 60},
        # A request large enough that light load stays far below 60% of it and heavy load far above.
        {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
    )
