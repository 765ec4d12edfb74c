"""No request lost while pods go away, for clients that keep their connections open.

On the real node, through the Service's ClusterIP and kube-proxy, with nothing simulated: the
model's pods fetch iris from the cluster's model store (the examples' URIs). Conntrack keeps an
established connection pinned to its pod after the pod's endpoint is gone, so these clients keep
talking to a terminating pod until it says `Connection: close`: the server must drain them (serve,
close, exit when none is left), never refuse them with a 503 or reset them.

- a full canary rollout (canary up, stable shrunk, promotion, the old revision scaled away) under
  pooled (httpx) and single-connection (http.client, no pipelining) clients;
- a scale-down from 3 pods to 1 under `wrk -t2 -c8`, the load of the issue that found it.
Each ends only once every pod that was removed is gone, and asserts zero failed requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.keepalive_load import KeepAliveLoad, wrk_load, wrk_result
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models
from tests.operator.revision_watch import watching_revision
from tests.real_node import ready_real_node, routed_into_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster

NAME = "iris"
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}


def _example_model(path: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / path).read_text())["spec"]["model"])


V1, V2 = _example_model("minimal.yaml"), _example_model("canary.yaml")
# Small, so that both revisions fit on the real node's 2 cores beside whatever else runs there.
RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


@pytest.fixture
def serving(k8s_api: client.ApiClient, real_namespace: str, operator: OperatorProcess) -> tuple[Models, str]:
    """iris version 1 Ready on the real node, and the URL of its inference through the ClusterIP."""
    ready_real_node(
        client.CoreV1Api(k8s_api), f"docker.io/{naming.DEFAULT_SERVER_IMAGE}", "hack/images server"
    )
    models = Models(k8s_api, real_namespace)
    models.create(NAME, {"model": V1, "replicas": 2, "resources": RESOURCES})
    models.wait_ready(NAME, timeout=180)
    ip = routed_into_node(models.core.read_namespaced_service(NAME, real_namespace).spec.cluster_ip)
    url = f"http://{ip}/v2/models/{NAME}/infer"
    with KeepAliveLoad(url, REQUEST, connections=1, pooled=1) as probe:
        wait_until(lambda: probe.result.ok >= 5, timeout=30, what="answers through the ClusterIP")
    return models, url


def _pods_gone(models: Models, names: set[str]) -> Callable[[], bool]:
    return lambda: not names & {p.metadata.name for p in models.pods(NAME)}


def test_a_full_canary_rollout_loses_no_request_of_keep_alive_clients(
    serving: tuple[Models, str], k8s_api: client.ApiClient
) -> None:
    models, url = serving
    before = {p.metadata.name for p in models.pods(NAME)}
    stable = models.get(NAME)["status"]["model"]["revision"]
    watched = watching_revision(k8s_api, models.namespace, NAME, stable)
    with watched as history, KeepAliveLoad(url, REQUEST, connections=4, pooled=4) as load:
        # A failed request ends a wait at once: the load exists to prove that none fails.
        wait_until(lambda: load.result.ok >= 50 or load.result.failed, timeout=30, what="the load to run")
        assert load.result.failed == 0, f"before the rollout: {load.result}"
        models.patch(
            NAME,
            {
                "spec": {
                    "model": V2,
                    "rollout": {
                        "canary": {
                            "steps": [{"setWeight": 50}, {"pause": {"duration": "5s"}}],
                            "scaleDownDelaySeconds": 2,
                        }
                    },
                }
            },
        )
        body = models.wait_ready(NAME, timeout=240)
        assert body["status"]["model"]["version"] == V2["version"]
        # The old revision's pods were removed under load; wait until the last one has exited.
        wait_until(_pods_gone(models, before), timeout=120, what="the old revision's pods to be gone")
        sent_before = load.result.sent
        wait_until(
            lambda: load.result.sent > sent_before + 50 or load.result.failed,
            timeout=30,
            what="load after the rollout",
        )
    result = load.result
    assert result.failed == 0, f"during the rollout: {result}"
    # Issue #31: the stable revision only shrinks (2, then 1 once the canary pod is ready) and
    # starts no pod, also when the canary grows to its full size after the last step.
    assert not history.errors, history.errors
    assert history.sizes == [2, 1], history.sizes
    assert history.pods_created == [], history.pods_created
    assert result.sent > 500, result
    assert result.reconnects > 0, f"no client was ever told to reconnect: {result}"


def test_a_scale_down_loses_no_request_of_wrk(serving: tuple[Models, str]) -> None:
    models, url = serving
    models.patch(NAME, {"spec": {"replicas": 3}})
    models.wait_ready(NAME, timeout=120)
    # wrk opens its 8 connections at once; the first pod leaves only after its 5 s preStop wait.
    wrk = wrk_load(url, REQUEST, seconds=180)
    try:
        before = {p.metadata.name for p in models.pods(NAME)}
        models.patch(NAME, {"spec": {"replicas": 1}})
        wait_until(
            lambda: len({p.metadata.name for p in models.pods(NAME)} & before) == 1,
            timeout=120,
            what="two of the three pods to be gone",
        )
    finally:
        result = wrk_result(wrk, interrupt=True)
    assert result.failed == 0, f"wrk during the scale-down: {result}"
    assert result.sent > 1000, result
