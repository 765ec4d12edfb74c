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

import functools
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import onnx
import pytest
from kubernetes import client
from modelship.operator import naming
from onnx import TensorProto, helper

from tests.operator import canary_models
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models
from tests.real_node import is_ready, ready_real_node, routed_into_node
from tests.server import models as server_models
from tests.support import wait_until

if TYPE_CHECKING:  # imported by pytest_plugins, where pytest rewrites its asserts
    from tests.prometheus_support import Prometheus

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support"]

SERVER_IMAGE = f"docker.io/{naming.DEFAULT_SERVER_IMAGE}"
NAME = "labels"
REPLICAS = 3
# ceil(3 * 33%) = 1 canary pod, and the stable revision keeps ceil(3 * 67%) = 3: a quarter of the
# ready endpoints is the canary's. (34 would make ceil(1.02) = 2 canary pods and 2 stable ones.)
WEIGHT = 33
INTERVAL = 2  # seconds between measurements
FAILURE_LIMIT = 2
# Pulling nothing, but starting containerd tasks, downloading, loading and probing on 2 cores
# shared with the control plane: 20-60 s per pod, more when several start at once.
POD_START = 180
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


@pytest.fixture
def real_node(k8s_api: client.ApiClient) -> client.V1Node:
    """The Ready real node with the server image; fails, saying what to run, when there is none."""
    return ready_real_node(client.CoreV1Api(k8s_api), SERVER_IMAGE, "hack/images server")


def host_address(node: client.V1Node) -> str:
    """The host's end of the veth pair to the node: the source address the host reaches it from,
    and the address the node's pods reach the host at (their default route leads there)."""
    node_ip = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((node_ip, 9))  # UDP: nothing is sent, the kernel only picks a route
        return str(sock.getsockname()[0])


@dataclass(frozen=True)
class Published:
    url: str
    sha256: str


@dataclass
class ModelFiles:
    """A threaded HTTP server on the host serving a folder of model files, and who fetched what."""

    folder: Path
    server: ThreadingHTTPServer
    fetches: list[tuple[str, str]] = field(default_factory=list)  # (path, client address)

    def publish(self, name: str, model: onnx.ModelProto) -> Published:
        data = model.SerializeToString()
        (self.folder / name).write_bytes(data)
        host, port = self.server.server_address[:2]
        return Published(f"http://{host}:{port}/{name}", hashlib.sha256(data).hexdigest())

    def fetched_by(self, path: str) -> set[str]:
        return {address for fetched, address in list(self.fetches) if fetched == path}


@pytest.fixture
def model_files(real_node: client.V1Node, tmp_path: Path) -> Iterator[ModelFiles]:
    folder = tmp_path / "models"
    folder.mkdir()
    fetches: list[tuple[str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append((self.path, self.client_address[0]))
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the fetches are recorded above; nothing for stderr

    server = ThreadingHTTPServer(
        (host_address(real_node), 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ModelFiles(folder, server, fetches)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def models(k8s_api: client.ApiClient, real_namespace: str, operator: OperatorProcess) -> Models:
    return Models(k8s_api, real_namespace)


def new_connection_client() -> httpx.Client:
    # kube-proxy picks an endpoint per connection: a kept-alive connection would stay on one pod.
    return httpx.Client(
        timeout=10,
        headers={"content-type": "application/json"},
        limits=httpx.Limits(max_keepalive_connections=0),
    )


class ServiceTraffic:
    """Inference requests through the Service from a thread until stopped, each on a new
    connection, the given bodies in turn; every answer's status is kept with its time."""

    def __init__(self, url: str, requests: Sequence[Mapping[str, Any]], *, pause: float = 0.02) -> None:
        self.url = url
        self.bodies = [json.dumps(dict(r)).encode() for r in requests]
        self.pause = pause
        self.answers: list[tuple[float, int]] = []  # (time.monotonic(), HTTP status; 0 for none)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with new_connection_client() as http:
            turn = 0
            while not self._stop.is_set():
                try:
                    code = http.post(self.url, content=self.bodies[turn % len(self.bodies)]).status_code
                except httpx.TransportError:
                    code = 0
                self.answers.append((time.monotonic(), code))
                turn += 1
                self._stop.wait(self.pause)  # paces the requests, so they leave the servers some CPU

    def statuses(self) -> Counter[int]:
        return Counter(code for _, code in list(self.answers))

    def first(self, code: int) -> float | None:
        return next((at for at, answered in list(self.answers) if answered == code), None)

    def __enter__(self) -> ServiceTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def send(url: str, requests: Sequence[Mapping[str, Any]], count: int) -> Counter[int]:
    """`count` requests, the bodies in turn, each on a new connection; their statuses."""
    statuses: Counter[int] = Counter()
    with new_connection_client() as http:
        for turn in range(count):
            try:
                statuses[http.post(url, json=dict(requests[turn % len(requests)])).status_code] += 1
            except httpx.TransportError:
                statuses[0] += 1
    return statuses


def model_spec(version: str, published: Published) -> dict[str, Any]:
    return {"version": version, "uri": published.url, "sha256": published.sha256}


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


def revision_pods(models: Models, revision: str) -> list[client.V1Pod]:
    return [
        p
        for p in models.pods(NAME)
        if p.metadata.labels.get(naming.LABEL_REVISION) == revision and p.metadata.deletion_timestamp is None
    ]


def deployment(models: Models, revision: str) -> client.V1Deployment:
    return models.apps.read_namespaced_deployment(naming.deployment_name(NAME, revision), models.namespace)


def endpoints(models: Models) -> list[client.V1Endpoint]:
    slices = client.DiscoveryV1Api(models.apps.api_client).list_namespaced_endpoint_slice(
        models.namespace, label_selector=f"kubernetes.io/service-name={NAME}"
    )
    return [e for s in slices.items for e in s.endpoints or []]


def endpoints_of(models: Models, revision: str) -> list[client.V1Endpoint]:
    prefix = naming.deployment_name(NAME, revision) + "-"
    return [e for e in endpoints(models) if e.target_ref is not None and e.target_ref.name.startswith(prefix)]


def ever_scraped(prometheus: Prometheus, selector: str) -> list[dict[str, Any]]:
    """Series Prometheus scraped in the last minutes, even those gone stale since (a pod gone)."""
    return prometheus.query(f"max_over_time({selector}[10m])")


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
    pods = revision_pods(models, stable)
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
        lambda: sum(bool(e.conditions and e.conditions.ready) for e in endpoints(models)) == REPLICAS,
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
            stable_ready.append(deployment(models, stable).status.ready_replicas or 0)
            canary_ips.update(
                (p.metadata.name, p.status.pod_ip) for p in revision_pods(models, canary) if is_ready(p)
            )
            if rollout.get("canaryRevision") == canary:
                seen.add((rollout.get("weight", -1), deployment(models, canary).spec.replicas))
            return status if rollout.get("abortedRevision") == canary else None

        status = wait_until(aborted, timeout=POD_START + 60, interval=0.1, what="the canary to be aborted")
        aborted_at = time.monotonic()
        # The canary's pod goes away while the requests keep coming: none of them may be lost.
        wait_until(
            lambda: not endpoints_of(models, canary), timeout=60, what="no canary endpoint in the Service"
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
    wait_until(lambda: deployment(models, canary).spec.replicas == 0, timeout=10, what="the canary at 0")
    assert deployment(models, stable).spec.replicas == REPLICAS
    assert min(stable_ready) == REPLICAS, f"the stable revision's ready pods over the rollout: {stable_ready}"

    # With no endpoint of the canary left, every request is answered by version 1.
    after = send(url, requests, REQUESTS_AFTER_ABORT)
    assert after == {200: REQUESTS_AFTER_ABORT}, after
    assert deployment(models, stable).status.ready_replicas == REPLICAS
    print(
        f"\nabort {elapsed:.2f}s after the first 500; answers during the rollout {dict(answered)}; "
        f"degraded: {degraded['message']}"
    )
