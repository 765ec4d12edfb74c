"""The chart renders what the issue asks for, rejects bad values, and the API server accepts it.

These need the pinned helm (and, for the dry-run, the cluster) from `hack/cluster`.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import fresh_namespace_name
from tests.helm.chart import CHART, helm, of_kind, one, render, render_text, set_args

pytestmark = pytest.mark.cluster


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return dict(pod["containers"][0])


def test_helm_lint_is_clean(kube_bin_dir: Path) -> None:
    for values in ({}, {"watchNamespaces": "{team-a,team-b}"}, {"metrics.podMonitor.enabled": "true"}):
        result = helm(kube_bin_dir, "lint", "--strict", str(CHART), *set_args(values), check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_the_operator_runs_two_peered_replicas_with_the_default_image(kube_bin_dir: Path) -> None:
    objects = render(kube_bin_dir)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = _container(objects)
    assert container["image"] == "modelship/operator:0.1.0"
    assert container["command"] == ["kopf", "run", "-m", "modelship.operator"]
    assert "--peering=modelship" in container["args"]
    assert "--all-namespaces" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # No fixed priority: each replica draws its own, since equal priorities pause them all.
    assert "MODELSHIP_PEERING_PRIORITY" not in env
    assert env["MODELSHIP_SERVER_IMAGE"] == "modelship/server:0.1.0"
    assert "MODELSHIP_IGNORE_NAMESPACES" not in env
    # Kopf names a peer by POD_ID; without it, it asks the OS for uid 65532's name, which fails.
    pod_id = next(e for e in container["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_ignored_namespaces_reach_the_operator(kube_bin_dir: Path) -> None:
    container = _container(render(kube_bin_dir, values={"operator.ignoreNamespaces": "mst-*"}))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSHIP_IGNORE_NAMESPACES"] == "mst-*"


def test_the_liveness_probe_asks_the_port_kopf_serves_it_on(kube_bin_dir: Path) -> None:
    container = _container(render(kube_bin_dir, values={"operator.probePort": "9090"}))
    assert "--liveness=http://0.0.0.0:9090/healthz" in container["args"]
    probe = container["livenessProbe"]["httpGet"]
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    assert (probe["path"], port["containerPort"]) == ("/healthz", 9090)
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_pod_meets_the_restricted_pod_security_profile(kube_bin_dir: Path) -> None:
    objects = render(kube_bin_dir)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_watching_the_whole_cluster_binds_a_cluster_role(kube_bin_dir: Path) -> None:
    objects = render(kube_bin_dir, release="ms", namespace="ops")
    role = one(objects, "ClusterRole")
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ops"}
    ]
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"clusterkopfpeerings", "customresourcedefinitions"} <= resources


def test_a_list_of_namespaces_gets_roles_and_only_a_read_only_scan_cluster_wide(kube_bin_dir: Path) -> None:
    objects = render(kube_bin_dir, values={"watchNamespaces": "{team-a,team-b}"})
    roles = of_kind(objects, "Role")
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    scan = one(objects, "ClusterRole")
    assert scan["metadata"]["name"].endswith("-scan")
    assert {(r, v) for rule in scan["rules"] for r in rule["resources"] for v in rule["verbs"]} == {
        ("namespaces", "list"),
        ("namespaces", "watch"),
        ("customresourcedefinitions", "list"),
        ("customresourcedefinitions", "watch"),
    }
    assert one(objects, "ClusterRoleBinding")["roleRef"]["name"] == scan["metadata"]["name"]
    args = _container(objects)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_without_the_namespace_scan_a_list_of_namespaces_gets_roles_only(kube_bin_dir: Path) -> None:
    objects = render(kube_bin_dir, values={"watchNamespaces": "{team-a}", "rbac.namespaceScan": "false"})
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    assert len(of_kind(objects, "Role")) == 1


def test_no_rule_grants_wildcards_secrets_or_more_than_a_patch_of_model_deployments(
    kube_bin_dir: Path,
) -> None:
    # patch: taking a handled modelship.io/action annotation off; no create, update or delete.
    for values in ({}, {"watchNamespaces": "{team-a}"}):
        objects = render(kube_bin_dir, values=values)
        for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
                assert "secrets" not in rule["resources"], rule
                if "modeldeployments" in rule["resources"]:
                    assert set(rule["verbs"]) <= {"get", "list", "watch", "patch"}, rule


def test_monitoring_objects_are_off_by_default_and_rendered_when_enabled(kube_bin_dir: Path) -> None:
    objects = render(kube_bin_dir)
    assert not of_kind(objects, "PodMonitor") and not of_kind(objects, "PrometheusRule")
    enabled = render(
        kube_bin_dir,
        values={
            "metrics.podMonitor.enabled": "true",
            "metrics.prometheusRule.enabled": "true",
            "watchNamespaces": "{team-a}",
        },
    )
    monitor = one(enabled, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    rules = one(enabled, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"ModelshipHighErrorRatio", "ModelshipSlowInference"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("operator.concurrency=many", "at '/operator/concurrency': got string, want integer"),
        ("peering.lifetime=1", "at '/peering/lifetime': minimum: got 1, want 2"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("image.tag=", "at '/image/tag'"),
    ],
)
def test_bad_values_are_rejected_with_a_message_naming_the_value(
    kube_bin_dir: Path, value: str, message: str
) -> None:
    for command in ("template", "lint"):
        args = [command, *(["ms"] if command == "template" else []), str(CHART), "--set", value]
        result = helm(kube_bin_dir, *args, check=False)
        assert result.returncode != 0, f"helm {command} accepted {value}"
        assert message in result.stdout + result.stderr


@pytest.fixture
def own_namespaces(kube_bin_dir: Path, kubeconfig: str) -> Iterator[list[str]]:
    """Two namespaces for a dry-run (the release's and a watched one), the first one enforcing
    the restricted Pod Security profile."""
    names = [fresh_namespace_name("helm-dry"), fresh_namespace_name("helm-dry-w")]
    kubectl = [str(kube_bin_dir / "kubectl"), "--kubeconfig", kubeconfig]
    for name in names:
        subprocess.run([*kubectl, "create", "namespace", name], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "label", "namespace", names[0], "pod-security.kubernetes.io/enforce=restricted"],
        check=True,
        capture_output=True,
    )
    yield names
    for name in names:
        subprocess.run([*kubectl, "delete", "namespace", name, "--wait=false"], capture_output=True)


def _dry_run(kube_bin_dir: Path, kubeconfig: str, manifests: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kube_bin_dir / "kubectl"), "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-f", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("mode", ["cluster", "namespaces"])
def test_the_rendered_chart_is_accepted_by_the_api_server(
    kube_bin_dir: Path, kubeconfig: str, own_namespaces: list[str], mode: str
) -> None:
    release_ns, watched = own_namespaces
    values = {"watchNamespaces": "{" + watched + "}"} if mode == "namespaces" else {}
    # A unique release name: cluster-scoped names must not collide with anyone's real install.
    release = f"dry-{uuid.uuid4().hex[:6]}"
    text = render_text(
        kube_bin_dir, release=release, namespace=release_ns, values=values, extra=("--include-crds",)
    )
    result = _dry_run(kube_bin_dir, kubeconfig, text)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(text) if doc}
    for kind in kinds:
        assert kind.lower() in result.stdout, f"{kind} missing from: {result.stdout}"


def test_the_operator_pod_is_admitted_under_the_restricted_profile(
    kube_bin_dir: Path, kubeconfig: str, own_namespaces: list[str]
) -> None:
    # A Deployment is admitted whatever its pods look like; a Pod is where the profile is enforced.
    release_ns = own_namespaces[0]
    deployment = one(render(kube_bin_dir, namespace=release_ns), "Deployment")
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-pss-check", "namespace": release_ns, **template["metadata"]},
        "spec": {**template["spec"], "serviceAccountName": "default"},
    }
    result = _dry_run(kube_bin_dir, kubeconfig, yaml.safe_dump(pod))
    assert result.returncode == 0, result.stderr
    assert "violate" not in result.stderr.lower()

    # The check can fail: the same pod without its seccomp profile is refused.
    bad = yaml.safe_load(yaml.safe_dump(pod))
    del bad["spec"]["securityContext"]["seccompProfile"]
    del bad["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    refused = _dry_run(kube_bin_dir, kubeconfig, yaml.safe_dump(bad))
    assert refused.returncode != 0 and "restricted" in refused.stderr
