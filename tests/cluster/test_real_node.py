"""The real node of `hack/cluster up --real-node`: real containers from locally built images.

Needs the node and the echo image (`hack/images echo`); without them the fixture fails and says so.
Every request goes to addresses inside the node's own network namespace (Service and pod IPs).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import fresh_namespace_name
from tests.real_node import is_ready, ready_real_node, routed_into_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster

IMAGE = "modelship/echo:test"
LABELS = {"app": "echo"}


@dataclass(frozen=True)
class EchoApp:
    namespace: str
    node: str
    core: client.CoreV1Api
    apps: client.AppsV1Api
    kubectl: list[str]

    def service_ip(self, name: str) -> str:
        return routed_into_node(str(self.core.read_namespaced_service(name, self.namespace).spec.cluster_ip))

    def ready_pods(self) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector="app=echo").items
        return [p for p in pods if p.metadata.deletion_timestamp is None and is_ready(p)]

    def run_kubectl(self, *args: str) -> str:
        out = subprocess.run(
            [*self.kubectl, "-n", self.namespace, *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"kubectl {' '.join(args)} failed: {out.stderr}"
        return out.stdout


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _container(**extra: Any) -> client.V1Container:
    return client.V1Container(
        name="echo",
        image=IMAGE,
        image_pull_policy="IfNotPresent",
        ports=[client.V1ContainerPort(container_port=8080, name="http")],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/ready", port="http"),
            period_seconds=1,
            failure_threshold=1,
        ),
        **extra,
    )


@pytest.fixture(scope="module")
def real_node(k8s_api) -> str:  # type: ignore[no-untyped-def]
    node = ready_real_node(client.CoreV1Api(k8s_api), f"docker.io/{IMAGE}", "hack/images echo")
    return str(node.metadata.name)


@pytest.fixture(scope="module")
def echo(k8s_api, real_node: str, kubeconfig: str, kube_bin_dir: Path) -> Iterator[EchoApp]:  # type: ignore[no-untyped-def]
    """A one-replica Deployment of the echo image with a Service, and a second Service, `peer`."""
    core, apps = client.CoreV1Api(k8s_api), client.AppsV1Api(k8s_api)
    namespace = fresh_namespace_name("real-node")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        apps.create_namespaced_deployment(
            namespace,
            client.V1Deployment(
                metadata=client.V1ObjectMeta(name="echo", labels=LABELS),
                spec=client.V1DeploymentSpec(
                    replicas=1,
                    selector=client.V1LabelSelector(match_labels=LABELS),
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels=LABELS),
                        spec=client.V1PodSpec(containers=[_container()], termination_grace_period_seconds=5),
                    ),
                ),
            ),
        )
        for name in ("echo", "peer"):
            core.create_namespaced_service(
                namespace,
                client.V1Service(
                    metadata=client.V1ObjectMeta(name=name),
                    spec=client.V1ServiceSpec(
                        selector=LABELS,
                        ports=[client.V1ServicePort(port=80, target_port="http", name="http")],
                    ),
                ),
            )
        app = EchoApp(
            namespace,
            real_node,
            core,
            apps,
            [str(kube_bin_dir / "kubectl"), "--kubeconfig", kubeconfig],
        )
        wait_until(app.ready_pods, timeout=90, what="a Ready echo pod")
        yield app
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")


def _answer_through_service(app: EchoApp, path: str = "/hello") -> tuple[int, Any]:
    return _get_json(f"http://{app.service_ip('echo')}{path}")


def test_deployment_of_a_local_image_becomes_available_on_the_real_node(echo: EchoApp) -> None:
    # The Deployment controller sets Available after it has seen the pod Ready, a moment after.
    def available() -> bool:
        status = echo.apps.read_namespaced_deployment_status("echo", echo.namespace).status
        return any(c.type == "Available" and c.status == "True" for c in status.conditions or [])

    wait_until(available, timeout=30, what="the echo Deployment to be Available")
    (pod,) = echo.ready_pods()
    assert pod.spec.node_name == echo.node
    assert pod.status.pod_ip, "a real pod has an address from the node's bridge"
    statuses = pod.status.container_statuses
    assert statuses[0].image_id, "containerd ran an image it has"
    assert statuses[0].state.running is not None


def test_readiness_probe_holds_a_pod_back_until_its_http_endpoint_answers(echo: EchoApp) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="gated", labels={"app": "gated"}),
        spec=client.V1PodSpec(
            containers=[_container(env=[client.V1EnvVar(name="READY_FILE", value="/tmp/ready")])],
            termination_grace_period_seconds=5,
        ),
    )
    echo.core.create_namespaced_pod(echo.namespace, pod)

    def probe_failed_with_503() -> bool:
        events = echo.core.list_namespaced_event(
            echo.namespace, field_selector="involvedObject.name=gated"
        ).items
        return any(e.reason == "Unhealthy" and "503" in (e.message or "") for e in events)

    wait_until(probe_failed_with_503, timeout=60, what="the kubelet's probe to get 503 from /ready")
    assert not is_ready(echo.core.read_namespaced_pod("gated", echo.namespace))

    echo.run_kubectl("exec", "gated", "--", "python3", "-c", "open('/tmp/ready', 'w').close()")

    wait_until(
        lambda: is_ready(echo.core.read_namespaced_pod("gated", echo.namespace)),
        timeout=30,
        what="the gated pod to become Ready",
    )


def test_service_cluster_ip_reaches_the_pod_from_the_host(echo: EchoApp) -> None:
    (pod,) = echo.ready_pods()
    status, body = wait_until(
        lambda: r if (r := _answer_through_service(echo))[0] == 200 else None,
        timeout=30,
        what="an answer through the Service's ClusterIP",
    )
    assert status == 200
    assert body == {"pod": pod.metadata.name, "path": "/hello"}


def test_pod_resolves_another_service_by_its_dns_name(echo: EchoApp) -> None:
    peer = f"peer.{echo.namespace}.svc.cluster.local"
    status, body = _answer_through_service(echo, f"/resolve/{peer}")
    assert (status, body) == (200, {"name": peer, "address": echo.service_ip("peer")})

    # Cluster DNS only: names outside the cluster do not resolve (nothing is forwarded upstream).
    status, body = _answer_through_service(echo, "/resolve/example.com")
    assert status == 502
    assert body["name"] == "example.com"


def test_kubectl_logs_and_exec_reach_the_container(echo: EchoApp) -> None:
    (pod,) = echo.ready_pods()
    name = pod.metadata.name
    _answer_through_service(echo, "/from-the-test")

    logs = wait_until(
        lambda: out if "/from-the-test" in (out := echo.run_kubectl("logs", name)) else None,
        timeout=30,
        what="the request in the pod's log",
    )
    assert "echo listening on 8080" in logs
    assert "GET /ready" in logs, "the kubelet's readiness probe reached the server"

    out = echo.run_kubectl(
        "exec",
        name,
        "--",
        "python3",
        "-c",
        "import os; print(os.getuid(), open('/proc/1/cmdline').read().replace(chr(0), ' '))",
    )
    uid, cmdline = out.strip().split(" ", 1)
    assert uid == "65534"
    assert "/srv/echo_server.py" in cmdline


def test_deleting_the_pod_makes_the_deployment_start_a_new_one(echo: EchoApp) -> None:
    (old,) = echo.ready_pods()
    echo.core.delete_namespaced_pod(old.metadata.name, echo.namespace, grace_period_seconds=0)

    new = wait_until(
        lambda: [p for p in echo.ready_pods() if p.metadata.name != old.metadata.name],
        timeout=90,
        what="a new Ready pod from the Deployment",
    )[0]
    assert new.spec.node_name == echo.node
    _, body = wait_until(
        lambda: (
            r if (r := _answer_through_service(echo))[0] == 200 and r[1]["pod"] == new.metadata.name else None
        ),
        timeout=30,
        what="the Service to answer from the new pod",
    )
    assert body["pod"] == new.metadata.name


def test_kubectl_top_shows_the_real_pods_cpu_and_memory_from_metrics_server(echo: EchoApp) -> None:
    # metrics-server scrapes the kubelet every 10 s: a pod's first figures come after two scrapes,
    # and a pod an earlier test replaced may still be listed until the next one.
    def top() -> dict[str, list[str]] | None:
        out = subprocess.run(
            [*echo.kubectl, "-n", echo.namespace, "top", "pods", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            return None
        figures = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
        pods = {p.metadata.name for p in echo.ready_pods()}
        return figures if pods and pods <= set(figures) else None

    figures = wait_until(top, timeout=90, interval=2, what="kubectl top pods to show every ready echo pod")
    for cpu, memory in figures.values():
        assert cpu.endswith("m") and memory.endswith("Mi"), figures
        assert int(memory[:-2]) > 0, figures


def test_the_custom_metrics_api_is_served_through_the_aggregation_layer(echo: EchoApp) -> None:
    listing = json.loads(echo.run_kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta1"))
    assert listing["kind"] == "APIResourceList", listing
    assert listing["groupVersion"] == "custom.metrics.k8s.io/v1beta1", listing
    services = json.loads(echo.run_kubectl("get", "apiservices", "-o", "json"))["items"]
    available = {
        s["metadata"]["name"]
        for s in services
        if any(c["type"] == "Available" and c["status"] == "True" for c in s["status"].get("conditions", ()))
    }
    assert {
        "v1beta1.metrics.k8s.io",
        "v1beta1.custom.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
    } <= available
