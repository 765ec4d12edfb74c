"""Traffic follows the pods for clients that keep their connections (issue #29).

On the real node, through the Service's ClusterIP and kube-proxy, with nothing simulated. A
Service balances connections, not requests, and conntrack keeps an established connection on its
pod: a canary pod, or a pod added by a scale-up, gets nothing from clients connected before it
existed, unless the servers end their connections now and then (`server.connections`:
`Connection: close` after a jittered number of requests or age). The clients here pool as real
ones do and never reconnect on their own: `wrk -t2 -c8`, an httpx pool of 4 and 4 single
`http.client` connections, all at once.

- a canary at 25% and then 50% (a pause, then an analysis step each): the share of requests the
  canary gets, measured in Prometheus and reported in `status.rollout.actualWeight`, is within
  10 points of the weight at each analysis, and the rollout completes;
- a scale-up from 2 to 4 pods: every pod serves its share within seconds of being ready.
Zero failed requests in all of it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming, reasons

from tests.conftest import ROOT
from tests.keepalive_load import KeepAliveLoad, LoadResult, wrk_load, wrk_result
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models
from tests.real_node import ready_real_node, routed_into_node
from tests.support import wait_until

if TYPE_CHECKING:  # imported by pytest_plugins, where pytest rewrites its asserts
    from tests.prometheus_support import Prometheus

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support"]

NAME = "iris"
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}
# Small, so that five pods fit on the real node's 2 cores beside the control plane and the load.
RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
INTERVAL = 10  # seconds: the analysis interval, and the window the share is measured over
TOLERANCE = 10  # points of percent the measured share may be off the weight (the bound)


def _example_model(path: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / path).read_text())["spec"]["model"])


V1, V2 = _example_model("minimal.yaml"), _example_model("canary.yaml")


def _serve(models: Models, prometheus: Prometheus, replicas: int) -> str:
    """iris version 1 Ready with `replicas` pods that Prometheus scrapes; its ClusterIP's infer URL."""
    models.create(NAME, {"model": V1, "replicas": replicas, "resources": RESOURCES})
    revision = models.wait_ready(NAME, timeout=240)["status"]["model"]["revision"]
    prometheus.wait_scraped(
        f'count(modelship_model_info{{namespace="{models.namespace}",revision="{revision}"}}) == {replicas}',
        timeout=60,
    )
    ip = routed_into_node(models.core.read_namespaced_service(NAME, models.namespace).spec.cluster_ip)
    return f"http://{ip}/v2/models/{NAME}/infer"


@pytest.fixture
def models(k8s_api: client.ApiClient, real_namespace: str, operator: OperatorProcess) -> Models:
    ready_real_node(
        client.CoreV1Api(k8s_api), f"docker.io/{naming.DEFAULT_SERVER_IMAGE}", "hack/images server"
    )
    return Models(k8s_api, real_namespace)


class RolloutHistory:
    """Every analysis measurement the status reports while a rollout runs, read every 0.2 s."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self.measurements: dict[str, dict[str, Any]] = {}  # lastRun -> status.rollout at that run
        self.inconclusive_pauses = 0  # reads that found it paused for inconclusive measurements
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                rollout = (self.models.get(NAME).get("status") or {}).get("rollout") or {}
            except Exception:  # a transient API error: the next read catches up
                continue
            last = (rollout.get("analysis") or {}).get("lastRun")
            if last and rollout.get("canaryRevision") and last not in self.measurements:
                self.measurements[last] = rollout
            if rollout.get("pauseCondition") == reasons.ANALYSIS_INCONCLUSIVE:
                self.inconclusive_pauses += 1

    def __enter__(self) -> RolloutHistory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Clients:
    """The pooled clients of a test, all at once: 4 http.client connections and an httpx pool of 4
    (`pool`), and `wrk -t2 -c8`."""

    pool: KeepAliveLoad
    wrk: subprocess.Popen[str]

    def stop(self) -> tuple[LoadResult, LoadResult]:
        """(the pool's result, wrk's result)."""
        return self.pool.stop(), wrk_result(self.wrk, interrupt=True)


@pytest.fixture
def start_clients() -> Iterator[Callable[[str], Clients]]:
    """Starts the clients on a URL and waits until they are answered; stops them after the test,
    also when it fails."""
    started: list[Clients] = []

    def start(url: str) -> Clients:
        pool = KeepAliveLoad(url, REQUEST, connections=4, pooled=4)
        pool.start()
        clients = Clients(pool, wrk_load(url, REQUEST, seconds=400))
        started.append(clients)
        wait_until(lambda: pool.result.ok >= 100 or pool.result.failed, timeout=30, what="the load to run")
        return clients

    yield start
    for clients in started:
        if clients.wrk.poll() is None:
            clients.stop()


def test_a_canary_gets_its_weight_of_the_requests_of_clients_connected_before_it(
    models: Models, prometheus: Prometheus, start_clients: Callable[[str], Clients]
) -> None:
    clients = start_clients(_serve(models, prometheus, replicas=4))
    steps = [
        {"setWeight": 25},
        # The analysis measures the window before it: within two intervals of the canary's pods
        # being ready (when a setWeight step is done), the share must be the weight's.
        {"pause": {"duration": f"{2 * INTERVAL}s"}},
        {"analysis": {}},
        {"setWeight": 50},
        {"pause": {"duration": f"{2 * INTERVAL}s"}},
        {"analysis": {}},
    ]
    analysis = {"interval": f"{INTERVAL}s", "minRequests": 20}
    with RolloutHistory(models) as history:
        models.patch(
            NAME,
            {"spec": {"model": V2, "rollout": {"canary": {"steps": steps, "analysis": analysis}}}},
        )
        body = models.wait_ready(NAME, timeout=300)
    pooled, wrk = clients.stop()
    assert body["status"]["model"]["version"] == V2["version"]
    assert pooled.failed == 0, f"the pooled clients: {pooled}"
    assert wrk.failed == 0, f"wrk: {wrk}"
    assert history.inconclusive_pauses == 0, "the rollout paused for inconclusive measurements"

    # The measurement that let each analysis step pass: at its weight, and about that share.
    passed = {
        run["analysis"]["weight"]: run
        for _, run in sorted(history.measurements.items())
        if run["analysis"].get("verdict") == "Pass" and run["analysis"].get("weight") in (25, 50)
    }
    assert set(passed) == {25, 50}, history.measurements
    for last, run in sorted(history.measurements.items()):
        analysed = run["analysis"]
        measured = run.get("actualWeight")
        print(f"{last} at {analysed.get('weight')}%, {measured}% measured: {analysed['summary']}")
    for weight, run in passed.items():
        analysed = run["analysis"]
        share = analysed["canaryRequests"] / analysed["requests"]
        assert abs(run["actualWeight"] - weight) <= TOLERANCE, (weight, analysed, run["traffic"])
        assert abs(100 * share - weight) <= TOLERANCE + 1, analysed
        assert analysed["requests"] >= 1000, analysed  # the share of real load, not of a trickle
    # The clients connected before the canary existed reached it too, and were asked to reconnect.
    assert clients.pool.versions()[V2["version"]] > 0, clients.pool.versions()
    assert pooled.reconnects > 0, pooled


def test_pods_added_under_load_get_their_share_of_connected_clients_within_seconds(
    models: Models, prometheus: Prometheus, start_clients: Callable[[str], Clients]
) -> None:
    clients = start_clients(_serve(models, prometheus, replicas=2))
    before = {p.metadata.name for p in models.pods(NAME)}

    models.patch(NAME, {"spec": {"replicas": 4}})
    models.wait_ready(NAME, timeout=240)
    ready_at = time.monotonic()
    added = {p.metadata.name for p in models.pods(NAME)} - before
    assert len(added) == 2, added

    def every_pod_serves() -> dict[str, float] | None:
        # Each pod's requests in the last 5 s; a fair share would be a quarter of them.
        counts = prometheus.requests_by_pod(models.namespace, "5s")
        total = sum(counts.values())
        serving = {pod: n / total for pod, n in counts.items() if pod in before | added} if total else {}
        return serving if len(serving) == 4 and min(serving.values()) >= 0.10 else None

    shares = wait_until(every_pod_serves, timeout=30, interval=0.5, what="every pod to serve a tenth or more")
    took = time.monotonic() - ready_at
    pooled, wrk = clients.stop()
    print(f"every pod served within {took:.1f}s of the scale-up being ready: {shares}")
    assert pooled.failed == 0, f"the pooled clients: {pooled}"
    assert wrk.failed == 0, f"wrk: {wrk}"
