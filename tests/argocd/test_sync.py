"""GitOps for real: the pinned Argo CD (hack/argocd) syncs Modelship from a local Git repository.

Argo CD installs the chart (examples/argocd/modelship-chart.yaml, only its repository, names and
namespaces changed), whose operator runs as a pod on the real node, and syncs the examples
(examples/argocd/application.yaml) whose models serve from the real node. Every verdict is Argo
CD's own (sync status, health by the Lua of argocd-cm, the sync operation), read from the
Application's status; each commit is seen at once through a refresh, as a Git webhook does.

The tests of this module run in order, each from where the one before left the models: version
1 synced and healthy, version 2 through a canary that waits for a promote, a version that cannot
load. The last one brings the CRD and a ModelDeployment in one Application to a cluster that has
never seen either.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.argocd.gitops import ArgoCD, GitRepo, resource, running_argocd, summary
from tests.argocd.lua_health import argo_health
from tests.conftest import RESTRICTED, ROOT, delete_namespace_if_present, fresh_namespace_name
from tests.operator.models import Models
from tests.real_node import ready_real_node, routed_into_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster

EXAMPLES = ROOT / "examples"
PLUGIN = ROOT / ".venv" / "bin" / "kubectl-modelship"
OPERATOR_IMAGE = "docker.io/modelship/operator:0.1.0"
IRIS_REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}
# Version 2 of the store's iris (a decision tree), and its digest, as examples/canary.yaml names them.
CANARY = yaml.safe_load((EXAMPLES / "canary.yaml").read_text())["spec"]["model"]


@dataclass
class GitOps:
    argocd: ArgoCD
    repo: GitRepo
    models: Models
    models_ns: str
    chart_app: str
    examples_app: str
    head: str  # the commit Argo CD was last asked to sync

    def push(self, message: str) -> str:
        """Commit the working copy, push it and refresh the examples' Application, as a webhook would."""
        self.head = self.repo.commit(message)
        self.argocd.refresh(self.examples_app)
        return self.head

    def predict(self, service: str) -> dict[str, Any]:
        core = self.models.core
        ip = routed_into_node(core.read_namespaced_service(service, self.models_ns).spec.cluster_ip)

        def answered() -> dict[str, Any] | None:
            response = httpx.post(f"http://{ip}/v2/models/iris/infer", json=IRIS_REQUEST, timeout=5)
            return dict(response.json()) if response.status_code == 200 else None

        return wait_until(answered, timeout=60, what=f"a prediction through the ClusterIP of {service}")

    def stays_synced(self, refreshes: int = 3) -> None:
        """Across several refreshes, Argo CD finds nothing to sync: every resource Synced, no new
        sync operation (self-heal would start one), no write to any ModelDeployment's spec."""
        app = self.argocd.get(self.examples_app)
        started = app["status"]["operationState"]["startedAt"]
        generations = {
            name: self.models.get(name)["metadata"]["generation"] for name in ("iris", "iris-autoscaled")
        }
        for _ in range(refreshes):
            app = self.argocd.refresh(self.examples_app)
            status = app["status"]
            assert status["sync"]["status"] == "Synced", summary(app)
            assert all(r.get("status") == "Synced" for r in status["resources"]), summary(app)
            assert status["operationState"]["startedAt"] == started, "Argo CD synced again: " + summary(app)
        after = {name: self.models.get(name)["metadata"]["generation"] for name in generations}
        assert after == generations


def _application(path: str, name: str, repo_url: str, namespace: str) -> dict[str, Any]:
    app = dict(yaml.safe_load((EXAMPLES / "argocd" / path).read_text()))
    app["metadata"]["name"] = name
    app["spec"]["source"]["repoURL"] = repo_url
    app["spec"]["destination"]["namespace"] = namespace
    return app


@pytest.fixture(scope="module")
def gitops(
    k8s_api: client.ApiClient, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitOps]:
    core = client.CoreV1Api(k8s_api)
    ready_real_node(core, OPERATOR_IMAGE, "hack/images operator")
    operator_ns = fresh_namespace_name("argocd-op")
    models_ns = fresh_namespace_name("argocd-models")
    suffix = models_ns[-6:]
    release = f"ms-argocd-{suffix}"  # ClusterRole names are cluster-wide
    # The operator's Roles go into the namespace it serves: a platform team makes it first.
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=models_ns, labels=RESTRICTED)))
    with running_argocd() as env:
        argocd = ArgoCD(k8s_api, env["MODELSHIP_ARGOCD_NAMESPACE"])
        work = tmp_path_factory.mktemp("gitops") / "work"
        work.mkdir()
        repo = GitRepo(Path(env["MODELSHIP_ARGOCD_GIT_ROOT"]), env["MODELSHIP_ARGOCD_GIT_URL"], suffix, work)
        repo.copy_in(ROOT / "helm" / "modelship", "helm/modelship")
        for example in EXAMPLES.glob("*.yaml"):
            repo.copy_in(example, f"examples/{example.name}")
        head = repo.commit("Modelship's chart and examples")

        chart = _application("modelship-chart.yaml", f"modelship-{suffix}", repo.url, operator_ns)
        chart["spec"]["source"]["helm"]["releaseName"] = release
        chart["spec"]["source"]["helm"]["valuesObject"] = {
            "watchNamespaces": [models_ns],
            "peering": {"name": f"modelship-{operator_ns}", "lifetime": 10},
            "replicaCount": 1,
        }
        examples = _application("application.yaml", f"examples-{suffix}", repo.url, models_ns)
        state = GitOps(
            argocd,
            repo,
            Models(k8s_api, models_ns),
            models_ns,
            chart["metadata"]["name"],
            examples["metadata"]["name"],
            head,
        )
        try:
            argocd.apply(chart)
            argocd.apply(examples)
            yield state
        finally:
            for app in (state.examples_app, state.chart_app):
                try:
                    argocd.delete(app)
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
            rbac = client.RbacAuthorizationV1Api(k8s_api)
            selector = f"app.kubernetes.io/instance={release}"
            for binding in rbac.list_cluster_role_binding(label_selector=selector).items:
                rbac.delete_cluster_role_binding(binding.metadata.name)
            for role in rbac.list_cluster_role(label_selector=selector).items:
                rbac.delete_cluster_role(role.metadata.name)
            for ns in (models_ns, operator_ns):
                delete_namespace_if_present(core, ns)


def test_the_chart_syncs_as_an_application_and_its_operator_runs_on_the_real_node(gitops: GitOps) -> None:
    app = gitops.argocd.wait(gitops.chart_app, revision=gitops.head, health="Healthy")
    deployment = resource(
        app, "Deployment", next(r["name"] for r in app["status"]["resources"] if r["kind"] == "Deployment")
    )
    assert deployment["health"]["status"] == "Healthy", summary(app)
    kinds = {r["kind"] for r in app["status"]["resources"]}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Role", "RoleBinding"} <= kinds, kinds
    namespace = gitops.models.core.read_namespace(deployment["namespace"])
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_examples_sync_synced_and_healthy_and_their_models_serve(gitops: GitOps) -> None:
    app = gitops.argocd.wait(gitops.examples_app, revision=gitops.head, health="Healthy")
    for name in ("iris", "iris-autoscaled"):
        entry = resource(app, "ModelDeployment", name)
        assert entry["health"]["status"] == "Healthy", summary(app)
        assert entry["status"] == "Synced"
    assert gitops.predict("iris")["model_version"] == "1"
    assert gitops.predict("iris-autoscaled")["model_version"] == "1"
    # The HPA owns iris-autoscaled's size; its Deployment is the operator's, not Git's.
    assert {r["kind"] for r in app["status"]["resources"]} == {"ModelDeployment"}, summary(app)
    gitops.stays_synced()


def test_a_change_made_by_hand_is_healed_back_to_what_git_says(gitops: GitOps) -> None:
    gitops.models.patch("iris-autoscaled", {"spec": {"autoscaling": {"maxReplicas": 3}}})

    def healed() -> bool:
        return bool(gitops.models.get("iris-autoscaled")["spec"]["autoscaling"]["maxReplicas"] == 4)

    # Self-heal: Argo CD syncs the object back, by itself (no refresh asked).
    wait_until(healed, timeout=60, what="Argo CD to put maxReplicas back to 4")
    app = gitops.argocd.wait(gitops.examples_app, revision=gitops.head, health="Healthy")
    assert app["status"]["sync"]["status"] == "Synced"
    gitops.stays_synced()


def _commit_iris(gitops: GitOps, model: dict[str, Any], steps: list[dict[str, Any]], message: str) -> str:
    iris = yaml.safe_load((gitops.repo.work / "examples" / "minimal.yaml").read_text())
    iris["spec"]["model"].update(model)
    iris["spec"]["rollout"] = {"canary": {"steps": steps, "scaleDownDelaySeconds": 5}}
    gitops.repo.write("examples/minimal.yaml", yaml.safe_dump(iris, sort_keys=False))
    return gitops.push(message)


def test_a_canary_waiting_on_pause_is_suspended_and_a_promote_makes_it_healthy(
    gitops: GitOps, kubeconfig: str
) -> None:
    version_2 = {"version": "2", "uri": CANARY["uri"], "sha256": CANARY["sha256"]}
    head = _commit_iris(
        gitops, version_2, [{"setWeight": 50}, {"pause": {}}], "iris 2 as a canary behind a manual gate"
    )
    app = gitops.argocd.wait(gitops.examples_app, revision=head, health="Suspended")
    entry = resource(app, "ModelDeployment", "iris")
    assert entry["health"]["status"] == "Suspended", summary(app)
    # Argo CD's Lua engine and ours (lupa, tests/argocd/lua_health.py) read the object alike.
    assert entry["health"] == argo_health(gitops.models.get("iris")), summary(app)
    assert "waiting for a manual promote" in entry["health"]["message"], entry

    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    promoted = subprocess.run(
        [str(PLUGIN), "promote", "iris", "-n", gitops.models_ns, "--kubeconfig", kubeconfig],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert promoted.returncode == 0, promoted.stderr
    gitops.argocd.wait(gitops.examples_app, revision=head, health="Healthy")
    # Version 1's pods take requests until they retire, after the scale-down delay.
    wait_until(
        lambda: len(gitops.models.get("iris")["status"].get("revisions") or ()) == 1,
        timeout=60,
        what="version 1 to retire",
    )
    assert {gitops.predict("iris")["model_version"] for _ in range(5)} == {"2"}
    import json as _j

    Path("/tmp/debug.json").write_text(_j.dumps(gitops.models.get("iris"), indent=1))
    # The operator takes its action annotation off once status records the promote; Argo CD,
    # which tracks the object by an annotation of its own, sees no diff before or after.
    wait_until(
        lambda: (
            naming.ANNOTATION_ACTION not in (gitops.models.get("iris")["metadata"].get("annotations") or {})
        ),
        timeout=30,
        what="the operator to take its action annotation off",
    )
    gitops.stays_synced()


def test_a_version_that_cannot_load_is_degraded_with_the_operators_message_and_the_old_one_serves(
    gitops: GitOps,
) -> None:
    serving = gitops.predict("iris")["model_version"]
    # Version 2's file under a digest it does not have: the pods' fetch refuses it.
    wrong = {"version": "3", "uri": CANARY["uri"], "sha256": "0" * 64}
    head = _commit_iris(
        gitops, wrong, [{"setWeight": 50}, {"pause": {"duration": "5s"}}], "iris 3, whose digest is wrong"
    )
    app = gitops.argocd.wait(gitops.examples_app, revision=head, health="Degraded")
    entry = resource(app, "ModelDeployment", "iris")
    degraded = gitops.models.condition("iris", "Degraded")
    assert degraded is not None and degraded["reason"] == "ModelLoadFailed", degraded
    assert entry["health"] == {"status": "Degraded", "message": degraded["message"]}, summary(app)
    assert "sha256" in entry["health"]["message"], entry
    assert {gitops.predict("iris")["model_version"] for _ in range(5)} == {serving}
    gitops.stays_synced()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A second local cluster, just started: no ModelDeployment CRD, no namespace of ours."""
    env = {
        **os.environ,
        "MODELSHIP_CLUSTER_DIR": str(tmp_path / "fresh"),
        "MODELSHIP_APISERVER_PORT": "27443",
        "MODELSHIP_ETCD_PORT": "23379",
        "MODELSHIP_KCM_PORT": "21257",
        "MODELSHIP_SCHEDULER_PORT": "21259",
        "MODELSHIP_KWOK_PORT": "21247",
        "MODELSHIP_KWOK_NODES": "1",
    }
    cluster = ROOT / "hack" / "cluster"
    try:
        up = subprocess.run(
            [str(cluster), "up"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert up.returncode == 0, up.stderr[-3000:]
        yield {"kubeconfig": str(tmp_path / "fresh" / "kubeconfig"), "server": "https://127.0.0.1:27443"}
    finally:
        subprocess.run([str(cluster), "down"], env=env, capture_output=True, timeout=300, check=False)


def _cluster_secret(name: str, server: str, kubeconfig: str) -> client.V1Secret:
    """The destination cluster as Argo CD's users declare one: a Secret labelled as a cluster."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]

    def data(inline: str, path: str, section: dict[str, Any]) -> str:
        if inline in section:
            return str(section[inline])
        return base64.b64encode(Path(section[path]).read_bytes()).decode()

    tls = {
        "caData": data("certificate-authority-data", "certificate-authority", cluster),
        "certData": data("client-certificate-data", "client-certificate", user),
        "keyData": data("client-key-data", "client-key", user),
    }
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={"argocd.argoproj.io/secret-type": "cluster"}),
        string_data={"name": name, "server": server, "config": json.dumps({"tlsClientConfig": tls})},
    )


def test_a_first_sync_brings_the_crd_and_a_model_deployment_to_a_fresh_cluster_in_one_application(
    gitops: GitOps, fresh_cluster: dict[str, str], kube_bin_dir: Path
) -> None:
    core = gitops.models.core
    name = f"fresh-{gitops.models_ns[-6:]}"
    core.create_namespaced_secret(
        gitops.argocd.namespace, _cluster_secret(name, fresh_cluster["server"], fresh_cluster["kubeconfig"])
    )
    gitops.repo.copy_in(ROOT / "crds" / "modelship.io_modeldeployments.yaml", "fresh/crd.yaml")
    gitops.repo.copy_in(EXAMPLES / "minimal.yaml", "fresh/iris.yaml")
    head = gitops.repo.commit("a cluster's first sync: the CRD and a model")
    app = _application("application.yaml", name, gitops.repo.url, "models")
    app["spec"]["source"] = {"repoURL": gitops.repo.url, "targetRevision": "main", "path": "fresh"}
    app["spec"]["destination"]["server"] = fresh_cluster["server"]
    try:
        gitops.argocd.apply(app)
        # No operator runs there: the model waits for one, and Argo CD says so.
        synced = gitops.argocd.wait(name, revision=head, health="Progressing", timeout=180)
        entry = resource(synced, "ModelDeployment", "iris")
        assert entry["health"]["message"] == "Waiting for the operator to observe generation 1", summary(
            synced
        )
        kubectl = [str(kube_bin_dir / "kubectl"), "--kubeconfig", fresh_cluster["kubeconfig"]]
        got = subprocess.run(
            [*kubectl, "get", "md", "iris", "-n", "models", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["spec"]["model"]["version"] == "1"
    finally:
        gitops.argocd.delete(name)
        core.delete_namespaced_secret(name, gitops.argocd.namespace)
