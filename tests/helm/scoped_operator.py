"""The operator as the chart deploys it, but as a local process: only the chart's ServiceAccount,
Role(s) and RoleBinding(s) are applied, and the operator logs in with a token of that account.

Each instance watches only the namespaces it is given and meets in a peering of its own, so
it never touches (nor pauses) another operator on the same shared cluster.
"""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import KWOK_ONLY, ROOT
from tests.helm.chart import render
from tests.operator_process import KopfProcess, free_port

CRDS = ROOT / "crds"
# An HTTP 403 in a log line, not the digits inside a random name such as "ms-w0-4403a1".
REFUSED = re.compile(r"\b403\b")
KOPF_CLUSTER_SCANS = re.compile(
    r"GET \S+/(api/v1/namespaces|apis/apiextensions\.k8s\.io/v1/customresourcedefinitions)"
    r"(\?\S*)? -> APIForbiddenError"
)
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@dataclass
class ScopedOperator(KopfProcess):
    kubectl_path: Path
    admin_kubeconfig: str
    token_kubeconfig: Path
    release_namespace: str
    watched: list[str]
    rbac: list[dict[str, Any]]
    log_path: Path
    probe_port: int = 0

    wait_timeout = 60.0

    def __post_init__(self) -> None:
        super().__init__(self.log_path, name=self.log_path.stem)

    def kubectl(
        self, *args: str, as_operator: bool = False, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = str(self.token_kubeconfig) if as_operator else self.admin_kubeconfig
        result = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", config, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def start(
        self, peering: str, extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
    ) -> None:
        env = {
            "KUBECONFIG": str(self.token_kubeconfig),
            "MODELSHIP_PEERING_LIFETIME": "10",
            **(extra_env or {}),
        }
        self.probe_port = free_port()
        args = [*(f"--namespace={ns}" for ns in self.watched), f"--peering={peering}", *extra_args]
        self.launch(args, env, ready="Activity 'startup' succeeded", liveness_port=self.probe_port)

    def replica(self, name: str) -> ScopedOperator:
        """Another process with the same token and namespaces, as a second replica of the chart."""
        return ScopedOperator(
            kubectl_path=self.kubectl_path,
            admin_kubeconfig=self.admin_kubeconfig,
            token_kubeconfig=self.token_kubeconfig,
            release_namespace=self.release_namespace,
            watched=self.watched,
            rbac=self.rbac,
            log_path=self.log_path.with_name(f"{self.log_path.stem}-{name}.log"),
        )

    def errors(self) -> list[dict[str, Any]]:
        """Log lines at ERROR or above, or that mention a refused request."""
        return [
            line
            for line in self.snapshot()
            if str(line.get("severity", "")).lower() in {"error", "critical"}
            or REFUSED.search(str(line.get("message", "")))
        ]

    def refused_scans(self) -> list[dict[str, Any]]:
        """Kopf's cluster-wide lists of namespaces and CRDs, refused (with Roles only)."""
        return [line for line in self.errors() if KOPF_CLUSTER_SCANS.search(line.get("message", ""))]


def _token_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> None:
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    cluster = dict(cluster)
    if "certificate-authority" in cluster:  # inline it, so the file stands alone
        data = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(data).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "modelship-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "c", "user": "modelship-operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


@contextmanager
def scoped_operator(
    kube_bin_dir: Path,
    admin_kubeconfig: str,
    workdir: Path,
    *,
    watched: int = 1,
    cluster_role: bool = False,
    namespace_scan: bool = True,
) -> Iterator[ScopedOperator]:
    """Namespaces of its own, the chart's RBAC for them, a token, and a ready `ScopedOperator`
    (not started: call `start`). With `cluster_role` the chart is rendered for the whole
    cluster (ClusterRole), though the process still watches only its own namespaces."""
    suffix = uuid.uuid4().hex[:6]
    release_ns = f"mst-op-{suffix}"
    watched_ns = [f"mst-w{i}-{suffix}" for i in range(watched)]
    release = f"rbac-{suffix}"  # unique: ClusterRole names are cluster-wide
    values = {} if cluster_role else {"watchNamespaces": "{" + ",".join(watched_ns) + "}"}
    values["rbac.namespaceScan"] = str(namespace_scan).lower()
    objects = render(kube_bin_dir, release=release, namespace=release_ns, values=values)
    rbac = [obj for obj in objects if obj["kind"] in RBAC_KINDS]
    account = next(obj for obj in rbac if obj["kind"] == "ServiceAccount")["metadata"]["name"]
    if cluster_role:
        rbac += _namespace_scan_for_the_test(release, account, release_ns)
    op = ScopedOperator(
        kubectl_path=kube_bin_dir / "kubectl",
        admin_kubeconfig=admin_kubeconfig,
        token_kubeconfig=workdir / f"operator-{suffix}.kubeconfig",
        release_namespace=release_ns,
        watched=watched_ns,
        rbac=rbac,
        log_path=workdir / f"operator-{suffix}.log",
    )
    op.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for name in ("modeldeployments.modelship.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        op.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    for ns in [release_ns, *watched_ns]:
        op.kubectl("create", "namespace", ns)
        # As the `namespace` fixture does: pods land on KWOK nodes even when a real node is up.
        op.kubectl("annotate", "namespace", ns, *(f"{key}={value}" for key, value in KWOK_ONLY.items()))
    try:
        op.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
        token = op.kubectl("create", "token", account, "-n", release_ns, "--duration=2h").stdout.strip()
        _token_kubeconfig(admin_kubeconfig, token, op.token_kubeconfig)
        yield op
    finally:
        op.stop()
        for obj in rbac:
            if obj["kind"].startswith("Cluster"):
                op.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--wait=false", check=False)
        for ns in [release_ns, *watched_ns]:
            op.kubectl("delete", "modeldeployments", "--all", "-n", ns, "--wait=false", check=False)
            _force_delete_pods(op, ns)
            op.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _namespace_scan_for_the_test(release: str, account: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's cluster mode runs `--all-namespaces`: Kopf lists no namespaces and peers in a
    ClusterKopfPeering. The test runs the process with `--namespace` instead (so it leaves other
    people's objects alone), and then Kopf lists namespaces (waiting about a minute if refused)
    and peers in a KopfPeering. These two grants are the test's, not the chart's."""
    name = f"{release}-test-scan"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
                {
                    "apiGroups": ["kopf.dev"],
                    "resources": ["kopfpeerings"],
                    "verbs": ["list", "watch", "create", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def _force_delete_pods(op: ScopedOperator, namespace: str) -> None:
    # Pods KWOK was told to leave alone have no kubelet to confirm their deletion; without a
    # forced delete they would keep the namespace Terminating.
    op.kubectl(
        "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=false", check=False
    )
