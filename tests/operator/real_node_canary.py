"""What the canary tests on the real node share: the model files served from the host, the traffic
through a Service's ClusterIP (each request on a new connection, so kube-proxy spreads them over the
endpoints), and reads of the revisions' pods, Deployments and endpoints.

Loaded as a pytest plugin (`pytest_plugins`) for its fixtures: `real_node`, `model_files`, `models`.
"""

from __future__ import annotations

import functools
import hashlib
import json
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

from tests.operator import canary_models
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models
from tests.real_node import ready_real_node

if TYPE_CHECKING:
    from tests.prometheus_support import Prometheus

SERVER_IMAGE = f"docker.io/{naming.DEFAULT_SERVER_IMAGE}"
# Pulling nothing, but starting containerd tasks, downloading, loading and probing on 2 cores
# shared with the control plane: 20-60 s per pod, more when several start at once.
POD_START = 180


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


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when it came
    code: int  # HTTP status; 0 for none
    turn: int  # which request: the index of its body in ServiceTraffic's requests
    body: bytes


class ServiceTraffic:
    """Inference requests through the Service from a thread until stopped, each on a new
    connection, the given bodies in turn; every answer is kept with its time."""

    def __init__(self, url: str, requests: Sequence[Mapping[str, Any]], *, pause: float = 0.02) -> None:
        self.url = url
        self.bodies = [json.dumps(dict(r)).encode() for r in requests]
        self.pause = pause
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with new_connection_client() as http:
            count = 0
            while not self._stop.is_set():
                turn = count % len(self.bodies)
                try:
                    response = http.post(self.url, content=self.bodies[turn])
                    code, body = response.status_code, response.content
                except httpx.TransportError:
                    code, body = 0, b""
                self.answers.append(Answer(time.monotonic(), code, turn, body))
                count += 1
                self._stop.wait(self.pause)  # paces the requests, so they leave the servers some CPU

    def statuses(self) -> Counter[int]:
        return Counter(answer.code for answer in list(self.answers))

    def first(self, code: int) -> float | None:
        return next((answer.at for answer in list(self.answers) if answer.code == code), None)

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


def revision_pods(models: Models, name: str, revision: str) -> list[client.V1Pod]:
    return [
        p
        for p in models.pods(name)
        if p.metadata.labels.get(naming.LABEL_REVISION) == revision and p.metadata.deletion_timestamp is None
    ]


def deployment(models: Models, name: str, revision: str) -> client.V1Deployment:
    return models.apps.read_namespaced_deployment(naming.deployment_name(name, revision), models.namespace)


def endpoints(models: Models, name: str) -> list[client.V1Endpoint]:
    slices = client.DiscoveryV1Api(models.apps.api_client).list_namespaced_endpoint_slice(
        models.namespace, label_selector=f"kubernetes.io/service-name={name}"
    )
    return [e for s in slices.items for e in s.endpoints or []]


def endpoints_of(models: Models, name: str, revision: str) -> list[client.V1Endpoint]:
    prefix = naming.deployment_name(name, revision) + "-"
    return [
        e
        for e in endpoints(models, name)
        if e.target_ref is not None and e.target_ref.name.startswith(prefix)
    ]


def ever_scraped(prometheus: Prometheus, selector: str) -> list[dict[str, Any]]:
    """Series Prometheus scraped in the last minutes, even those gone stale since (a pod gone)."""
    return prometheus.query(f"max_over_time({selector}[10m])")


def predicted(answer: Answer) -> int | None:
    """The class a 200 answer of canary_models' classifiers gives (argmax of its scores); None for
    any other answer."""
    if answer.code != 200:
        return None
    [output] = json.loads(answer.body)["outputs"]
    scores: list[float] = output["data"]
    return max(range(len(scores)), key=scores.__getitem__)


def wrong(answers: Sequence[Answer]) -> list[Answer]:
    """The answers that put their input in another class than canary_models.classifier() does."""
    return [a for a in answers if predicted(a) != canary_models.CLASSIFIER_INPUTS[a.turn][1]]


def rollout_of(models: Models, name: str) -> dict[str, Any]:
    return ((models.get(name).get("status") or {}).get("rollout")) or {}


def pods_of(models: Models, name: str, revision: str) -> list[client.V1Pod]:
    """The revision's pods, terminating ones included."""
    return [p for p in models.pods(name) if p.metadata.labels.get(naming.LABEL_REVISION) == revision]


def true_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    found = next((c for c in status.get("conditions") or () if c["type"] == kind), None)
    assert found is not None and found["status"] == "True", status.get("conditions")
    return found
