"""A canary rollout on the real node of `hack/cluster up --real-node`, with nothing simulated.

The model files are served over HTTP from the host; the pods' init containers download them
and check their sha256, the inference server in the `modelship/server` image loads them, the
kubelet's probes make the pods ready, the local Prometheus finds them (hack/pod_targets.py, as a
cluster's kubernetes_sd would) and scrapes their own /metrics, and
the traffic goes from the host through the Service's ClusterIP, spread over the ready endpoints
by kube-proxy. Version 1 answers every request; version 2 fails half of them with a 500. The
operator has to see that in Prometheus, roll the canary back, and leave the stable pods serving
everything.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import onnx
import pytest
from kubernetes import client
from modelship.operator import naming
from onnx import TensorProto, helper

from tests.operator import canary_models
from tests.operator.models import Models
from tests.operator.real_node_canary import (
    POD_START,
    ModelFiles,
    Published,
    ServiceTraffic,
    deployment,
    endpoints,
    endpoints_of,
    ever_scraped,
    model_spec,
    revision_pods,
    send,
)
from tests.real_node import is_ready, routed_into_node
from tests.server import models as server_models
from tests.support import wait_until

if TYPE_CHECKING:  # imported by pytest_plugins, where pytest rewrites its asserts
    from tests.prometheus_support import Prometheus

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support", "tests.operator.real_node_canary"]

NAME = "labels"
REPLICAS = 3
# ceil(3 * 33%) = 1 canary pod, and the stable revision keeps ceil(3 * 67%) = 3: a quarter of the
# ready endpoints is the canary's. (34 would make ceil(1.02) = 2 canary pods and 2 stable ones.)
WEIGHT = 33
INTERVAL = 2  # seconds between measurements
FAILURE_LIMIT = 2
# Prometheus has to find the canary's target (file_sd every 1 s), scrape it twice (every 1 s)
# before a rate exists, and the operator measures every INTERVAL: a few seconds beyond
# INTERVAL * FAILURE_LIMIT.
ABORT_SLACK = 10
REQUESTS_AFTER_ABORT = 60


def good_labels() -> onnx.ModelProto:
    """broken_labels' signature (index [batch] int64 -> label [batch]) over a table of good UTF-8,
    so that version 1 answers with 200 both requests that version 2 splits into a 200 and a 500."""
    table = helper.make_tensor("table", TensorProto.STRING, [2], [b"ok", b"fine"])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["label"], axis=0)],
        "good_labels",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", server_models.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def spec(published: Published) -> dict[str, Any]:
    return {
        "model": model_spec("1", published),
        "replicas": REPLICAS,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        # One request per onnxruntime run: a failing request cannot take others down with it.
        "server": {"batching": {"maxBatchSize": 1}},
        "rollout": {
            "canary": {
                "steps": [{"setWeight": WEIGHT}, {"pause": {}}],
                "scaleDownDelaySeconds": 2,
                "analysis": {
                    "interval": f"{INTERVAL}s",
                    "failureLimit": FAILURE_LIMIT,
                    "minRequests": 5,
                    "successRate": 0.95,
                },
            }
        },
    }


def test_a_failing_canary_on_the_real_node_is_rolled_back_and_the_stable_pods_serve_everything(
    real_node: client.V1Node,
    model_files: ModelFiles,
    models: Models,
    prometheus: Prometheus,
) -> None:
    broken = canary_models.broken_labels()
    assert broken.failing_request is not None
    v1 = model_files.publish("v1.onnx", good_labels())
    v2 = model_files.publish("v2.onnx", broken.model)
    requests = [broken.request, broken.failing_request]
    ns = models.namespace

    # Version 1: three real pods that downloaded and verified the file, loaded it and got ready.
    models.create(NAME, spec(v1))
    stable = models.wait_ready(NAME, timeout=POD_START)["status"]["model"]["revision"]
    pods = revision_pods(models, NAME, stable)
    assert len(pods) == REPLICAS and all(is_ready(p) for p in pods), pods
    assert {p.spec.node_name for p in pods} == {real_node.metadata.name}
    for pod in pods:
        [fetch] = pod.status.init_container_statuses
        assert fetch.name == naming.INIT_CONTAINER and fetch.state.terminated.exit_code == 0, fetch
    stable_ips = {p.status.pod_ip for p in pods}
    assert stable_ips <= model_files.fetched_by("/v1.onnx"), model_files.fetches
    wait_until(
        lambda: (
            len(
                prometheus.query(
                    f'modelship_model_info{{namespace="{ns}",revision="{stable}",sha256="{v1.sha256}"}}'
                )
            )
            == REPLICAS
        ),
        timeout=30,
        what="Prometheus to scrape the three stable pods",
    )

    core = models.core
    cluster_ip = routed_into_node(core.read_namespaced_service(NAME, ns).spec.cluster_ip)
    url = f"http://{cluster_ip}/v2/models/{NAME}/infer"
    wait_until(
        lambda: sum(bool(e.conditions and e.conditions.ready) for e in endpoints(models, NAME)) == REPLICAS,
        what="three ready endpoints",
    )
    wait_until(lambda: send(url, requests, 1)[200] == 1, what="an answer through the ClusterIP")

    seen: set[tuple[int, int | None]] = set()  # (weight, canary replicas)
    stable_ready: list[int] = []
    canary_ips: dict[str, str] = {}  # the canary's ready pods, by name

    with ServiceTraffic(url, requests) as traffic:
        before = wait_until(
            lambda: traffic.statuses() if len(traffic.answers) >= 20 else None,
            what="20 answers from version 1",
        )
        assert set(before) == {200}, f"version 1 answers both requests: {before}"

        models.patch(NAME, {"spec": {"model": model_spec("2", v2)}})
        canary = wait_until(
            lambda: ((models.get(NAME).get("status") or {}).get("rollout") or {}).get("canaryRevision"),
            what="a canary revision in status",
        )
        assert canary != stable

        def aborted() -> dict[str, Any] | None:
            status = models.get(NAME).get("status") or {}
            rollout = status.get("rollout") or {}
            stable_ready.append(deployment(models, NAME, stable).status.ready_replicas or 0)
            canary_ips.update(
                (p.metadata.name, p.status.pod_ip) for p in revision_pods(models, NAME, canary) if is_ready(p)
            )
            if rollout.get("canaryRevision") == canary:
                seen.add((rollout.get("weight", -1), deployment(models, NAME, canary).spec.replicas))
            return status if rollout.get("abortedRevision") == canary else None

        status = wait_until(aborted, timeout=POD_START + 60, interval=0.1, what="the canary to be aborted")
        aborted_at = time.monotonic()
        # The canary's pod goes away while the requests keep coming: none of them may be lost.
        wait_until(
            lambda: not endpoints_of(models, NAME, canary),
            timeout=60,
            what="no canary endpoint in the Service",
        )
    answered = traffic.statuses()
    first_failure = traffic.first(500)

    # The canary: one real pod at the step's weight, with version 2 loaded, ready and taking traffic.
    assert (WEIGHT, 1) in seen, seen
    assert len(canary_ips) == 1, canary_ips
    assert model_files.fetched_by("/v2.onnx") == set(canary_ips.values()), model_files.fetches
    assert first_failure is not None, f"no 500 through the ClusterIP: {answered}"
    assert set(answered) == {200, 500}, f"every request answered, by one version or the other: {answered}"
    canary_info = ever_scraped(
        prometheus, f'modelship_model_info{{namespace="{ns}",revision="{canary}",sha256="{v2.sha256}"}}'
    )
    assert len(canary_info) == 1, canary_info
    errors = ever_scraped(
        prometheus, f'modelship_requests_total{{namespace="{ns}",revision="{canary}",code="500"}}'
    )
    assert errors and float(errors[0]["value"][1]) > 0, errors

    # The abort: in time, for the measured success rate, everything back on version 1.
    elapsed = aborted_at - first_failure
    assert elapsed <= INTERVAL * FAILURE_LIMIT + ABORT_SLACK, elapsed
    rollout = status["rollout"]
    assert rollout["weight"] == 0 and rollout["analysis"]["verdict"] == "Fail", rollout
    degraded = models.condition(NAME, "Degraded")
    assert degraded is not None and degraded["status"] == "True", degraded
    assert degraded["reason"] == "AnalysisFailed", degraded
    measured = re.search(r"success-rate (\d+(?:\.\d+)?(?:e-?\d+)?) < 0\.95", degraded["message"])
    assert measured is not None and float(measured.group(1)) < 0.95, degraded["message"]
    body = models.get(NAME)
    assert body["status"]["phase"] == "Degraded" and body["status"]["model"]["version"] == "1"
    wait_until(
        lambda: deployment(models, NAME, canary).spec.replicas == 0, timeout=10, what="the canary at 0"
    )
    assert deployment(models, NAME, stable).spec.replicas == REPLICAS
    assert min(stable_ready) == REPLICAS, f"the stable revision's ready pods over the rollout: {stable_ready}"

    # With no endpoint of the canary left, every request is answered by version 1.
    after = send(url, requests, REQUESTS_AFTER_ABORT)
    assert after == {200: REQUESTS_AFTER_ABORT}, after
    assert deployment(models, NAME, stable).status.ready_replicas == REPLICAS
    print(
        f"\nabort {elapsed:.2f}s after the first 500; answers during the rollout {dict(answered)}; "
        f"degraded: {degraded['message']}"
    )
