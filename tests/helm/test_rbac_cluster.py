"""RBAC proven, not guessed: the operator logs in with a token of the chart's ServiceAccount,
bound only by the chart's Role(s), and still reconciles, rolls out and writes status; what the
chart does not grant is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.helm.scoped_operator import ScopedOperator, scoped_operator
from tests.operator.models import Models
from tests.support import wait_until

pytestmark = pytest.mark.cluster

MINIMAL = ROOT / "examples" / "minimal.yaml"
AUTOSCALED = ROOT / "examples" / "autoscaled.yaml"


@pytest.fixture(scope="module")
def namespaced(
    kube_bin_dir: Path, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScopedOperator]:
    """The chart's `watchNamespaces: [two namespaces]` RBAC, and the operator running with it."""
    workdir = tmp_path_factory.mktemp("rbac")
    with scoped_operator(kube_bin_dir, kubeconfig, workdir, watched=2) as op:
        op.start(peering=f"modelship-{op.release_namespace}")
        yield op


def test_the_chart_grants_namespaces_roles_and_a_read_only_scan(namespaced: ScopedOperator) -> None:
    kinds = sorted(obj["kind"] for obj in namespaced.rbac)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "ServiceAccount",
    ]


def test_with_the_charts_token_a_model_is_reconciled_rolled_out_and_reported_ready(
    namespaced: ScopedOperator, k8s_api: client.ApiClient
) -> None:
    ns = namespaced.watched[0]
    namespaced.kubectl("apply", "--server-side", "-n", ns, "-f", str(MINIMAL))
    models = Models(k8s_api, ns)
    body = models.wait_ready("iris", timeout=60)
    assert body["status"]["phase"] == "Healthy"
    first = body["status"]["model"]["revision"]

    # A new version: a second Deployment rolls out, then the old one is deleted.
    models.patch("iris", {"spec": {"model": {"version": "2"}}})
    body = models.wait_ready("iris", timeout=60)
    assert body["status"]["model"]["version"] == "2"

    def old_revision_gone() -> bool:
        return all(d.metadata.name != f"iris-{first}" for d in models.deployments("iris"))

    wait_until(old_revision_gone, timeout=60, what="the old revision's Deployment to be deleted")

    # The operator's decisions were posted as Events with the same token.
    events = client.CoreV1Api(k8s_api).list_namespaced_event(ns).items
    assert any(e.reporting_component == "modelship-operator" for e in events)
    assert not namespaced.errors(), namespaced.errors()


def test_an_autoscaled_model_gets_its_hpa_and_loses_it_when_autoscaling_is_removed(
    namespaced: ScopedOperator, k8s_api: client.ApiClient
) -> None:
    ns = namespaced.watched[1]
    namespaced.kubectl("apply", "--server-side", "-n", ns, "-f", str(AUTOSCALED))
    models = Models(k8s_api, ns)
    models.wait_ready("iris-autoscaled", timeout=60)
    autoscaling = client.AutoscalingV2Api(k8s_api)
    selector = f"{naming.LABEL_MODEL_DEPLOYMENT}=iris-autoscaled"
    assert autoscaling.list_namespaced_horizontal_pod_autoscaler(ns, label_selector=selector).items

    models.patch("iris-autoscaled", {"spec": {"autoscaling": None, "replicas": 2}})
    models.wait_ready("iris-autoscaled", timeout=60)
    wait_until(
        lambda: not autoscaling.list_namespaced_horizontal_pod_autoscaler(ns, label_selector=selector).items,
        timeout=60,
        what="the HPA to be deleted",
    )
    assert not namespaced.errors(), namespaced.errors()


def _can_i(op: ScopedOperator, *args: str) -> str:
    result = op.kubectl("auth", "can-i", *args, as_operator=True, check=False)
    answer = result.stdout.strip()
    assert answer in {"yes", "no"}, f"can-i {args}: {result.stderr}"
    return answer


@pytest.mark.parametrize(
    "request_",
    [
        ("delete", "nodes"),
        ("get", "secrets", "-n", "{watched}"),
        ("list", "configmaps", "-n", "{watched}"),
        ("delete", "pods", "-n", "{watched}"),
        ("update", "modeldeployments.modelship.io", "-n", "{watched}"),
        ("delete", "modeldeployments.modelship.io", "-n", "{watched}"),
        ("patch", "modeldeployments.modelship.io", "-n", "{release}"),
        ("create", "deployments.apps", "-n", "{release}"),
        ("list", "pods", "-n", "default"),
        ("create", "clusterrolebindings"),
        ("get", "namespaces/{watched}"),
        ("delete", "namespaces/{watched}"),
        ("get", "customresourcedefinitions.apiextensions.k8s.io/modeldeployments.modelship.io"),
    ],
    ids=lambda r: " ".join(r),
)
def test_what_the_chart_does_not_grant_is_refused(
    namespaced: ScopedOperator, request_: tuple[str, ...]
) -> None:
    args = [a.format(watched=namespaced.watched[0], release=namespaced.release_namespace) for a in request_]
    assert _can_i(namespaced, *args) == "no"


def test_what_the_chart_grants_is_allowed(namespaced: ScopedOperator) -> None:
    # The same question that says "no" above can say "yes": the check is not vacuous.
    ns = namespaced.watched[0]
    assert (
        _can_i(namespaced, "patch", "modeldeployments.modelship.io", "--subresource=status", "-n", ns)
        == "yes"
    )
    assert _can_i(namespaced, "create", "deployments.apps", "-n", ns) == "yes"
    # To take a handled modelship.io/action annotation off (tests/argocd/test_sync.py saw the
    # chart's operator refused that and every promote's annotation stay).
    assert _can_i(namespaced, "patch", "modeldeployments.modelship.io", "-n", ns) == "yes"
    # A shadow step tells the stable revision's pods where to copy requests to (an annotation).
    assert _can_i(namespaced, "patch", "pods", "-n", ns) == "yes"


def test_a_refused_request_is_really_forbidden_by_the_api_server(namespaced: ScopedOperator) -> None:
    ns = namespaced.watched[0]
    result = namespaced.kubectl("get", "secrets", "-n", ns, as_operator=True, check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr and 'cannot list resource "secrets"' in result.stderr
    spec_write = namespaced.kubectl(
        "patch",
        "md",
        "iris",
        "-n",
        ns,
        "--type=merge",
        "-p",
        yaml.safe_dump({"spec": {"replicas": 5}}),
        as_operator=True,
        check=False,
    )
    assert spec_write.returncode != 0 and "Forbidden" in spec_write.stderr


@pytest.fixture(scope="module")
def clusterwide(
    kube_bin_dir: Path, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScopedOperator]:
    """The chart's `watchNamespaces: []` RBAC (a ClusterRole). The process still watches only its
    own namespace: on a shared cluster an --all-namespaces operator would act on other people's
    ModelDeployments."""
    workdir = tmp_path_factory.mktemp("rbac-cluster")
    with scoped_operator(kube_bin_dir, kubeconfig, workdir, watched=1, cluster_role=True) as op:
        op.start(peering=f"modelship-{op.release_namespace}")
        yield op


def test_with_the_cluster_role_a_model_is_reconciled_and_reported_ready(
    clusterwide: ScopedOperator, k8s_api: client.ApiClient
) -> None:
    chart = [obj["kind"] for obj in clusterwide.rbac if not obj["metadata"]["name"].endswith("-test-scan")]
    assert sorted(chart) == ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
    ns = clusterwide.watched[0]
    clusterwide.kubectl("apply", "--server-side", "-n", ns, "-f", str(MINIMAL))
    assert Models(k8s_api, ns).wait_ready("iris", timeout=60)["status"]["phase"] == "Healthy"
    assert not clusterwide.errors(), clusterwide.errors()


def test_the_cluster_role_lets_the_operator_create_and_update_its_cluster_peering(
    clusterwide: ScopedOperator,
) -> None:
    # What the operator does at start-up with --all-namespaces (server-side apply, then Kopf's
    # patches), done here with its token under a name of our own.
    name = f"modelship-{clusterwide.release_namespace}"
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        for _ in range(2):  # the first apply creates, the second patches
            clusterwide.kubectl(
                "apply",
                "--server-side",
                "--field-manager=modelship",
                "-f",
                "-",
                as_operator=True,
                input=yaml.safe_dump(peering),
            )
        assert _can_i(clusterwide, "watch", "clusterkopfpeerings.kopf.dev") == "yes"
        assert _can_i(clusterwide, "delete", "clusterkopfpeerings.kopf.dev") == "no"
        assert _can_i(clusterwide, "watch", "customresourcedefinitions.apiextensions.k8s.io") == "yes"
        assert _can_i(clusterwide, "list", "secrets", "--all-namespaces") == "no"
        assert _can_i(clusterwide, "delete", "nodes") == "no"
    finally:
        clusterwide.kubectl("delete", "clusterkopfpeering", name, check=False)


def test_with_roles_only_the_operator_still_reconciles(
    kube_bin_dir: Path, kubeconfig: str, tmp_path: Path, k8s_api: client.ApiClient
) -> None:
    """`rbac.namespaceScan: false`: no cluster-wide right at all. Kopf's scans are refused (and
    it waits for them, which is why the chart grants them by default), yet reconciles work."""
    with scoped_operator(kube_bin_dir, kubeconfig, tmp_path, watched=1, namespace_scan=False) as op:
        assert not [obj for obj in op.rbac if obj["kind"].startswith("Cluster")]
        op.start(peering=f"modelship-{op.release_namespace}")
        ns = op.watched[0]
        op.kubectl("apply", "--server-side", "-n", ns, "-f", str(MINIMAL))
        assert Models(k8s_api, ns).wait_ready("iris", timeout=120)["status"]["phase"] == "Healthy"
        assert op.refused_scans(), "Kopf's namespace scan was not refused: the test proves nothing"
        others = [line for line in op.errors() if line not in op.refused_scans()]
        assert not others, others
