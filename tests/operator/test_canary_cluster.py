"""Canary rollouts end to end: the operator, the API server, a real Prometheus and real servers.

The revisions' pods run on KWOK nodes (Ready without containers), so the traffic a canary takes
is made by the test: real inference server processes, started with the canary's revision,
serve real requests and are scraped by the local Prometheus with the `namespace` and `pod`
labels a cluster's Prometheus gives them. The operator measures them there, as it would in a
cluster, and acts on what it measures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from modelship.operator import naming

from tests.operator import canary_models
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models, failed_model_fetch_status, model_spec
from tests.operator.revision_watch import watching_revision
from tests.support import wait_until

if TYPE_CHECKING:  # imported by pytest_plugins, where pytest rewrites its asserts
    from tests.prometheus_support import ScrapedServers

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support"]

INTERVAL = 2  # seconds between measurements: short, so the tests are quick
FAILURE_LIMIT = 2


@pytest.fixture
def models(k8s_api: client.ApiClient, namespace: str, operator: OperatorProcess) -> Models:
    return Models(k8s_api, namespace)


def rollout_spec(steps: list[dict[str, Any]], *, analysis: bool = True, **canary: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"steps": steps, "scaleDownDelaySeconds": 2, **canary}
    if analysis:
        settings["analysis"] = {
            "interval": f"{INTERVAL}s",
            "failureLimit": FAILURE_LIMIT,
            "minRequests": 5,
            "successRate": 0.95,
        }
    return {"canary": settings}


def start(models: Models, name: str, rollout: dict[str, Any], replicas: int = 4) -> dict[str, Any]:
    """Version 1 up and serving, then version 2 asked for; returns the status with its canary."""
    models.create(name, model_spec(version="1", replicas=replicas, rollout=rollout))
    models.wait_ready(name)
    models.patch(name, {"spec": {"model": model_spec(version="2")["model"]}})

    def canary_started() -> dict[str, Any] | None:
        status = models.get(name).get("status") or {}
        return status if (status.get("rollout") or {}).get("canaryRevision") else None

    return wait_until(canary_started, what="a canary revision in status")


def rollout_of(models: Models, name: str) -> dict[str, Any]:
    return dict((models.get(name).get("status") or {}).get("rollout") or {})


def phase_of(models: Models, name: str) -> str | None:
    return (models.get(name).get("status") or {}).get("phase")


def replicas(models: Models, name: str) -> dict[str, int]:
    """spec.replicas of each revision's Deployment, by revision."""
    return {
        d.metadata.labels[naming.LABEL_REVISION]: d.spec.replicas
        for d in models.deployments(name)
        if d.metadata.deletion_timestamp is None
    }


def event_reasons(models: Models) -> set[str]:
    return {e.reason for e in models.core.list_namespaced_event(models.namespace).items}


def plugin(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelship.operator.plugin.cli", "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )


def wait_promoted(models: Models, name: str, version: str, timeout: float = 60) -> dict[str, Any]:
    def promoted() -> dict[str, Any] | None:
        status = models.get(name).get("status") or {}
        done = status.get("phase") == "Healthy" and (status.get("model") or {}).get("version") == version
        return status if done else None

    return wait_until(promoted, timeout=timeout, what=f"version {version} to take over")


def test_a_good_canary_is_promoted_through_every_step(
    models: Models, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    steps = [
        {"setWeight": 25},
        {"pause": {"duration": "2s"}},
        {"analysis": {}},
        {"setWeight": 50},
        {"pause": {"duration": 2}},
    ]
    status = start(models, "good", rollout_spec(steps))
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    model = canary_models.healthy()
    server = scraped_servers.start(model.save(tmp_path), namespace=models.namespace, revision=canary)

    seen: set[tuple[int, int, int]] = set()  # (step, weight, canary replicas)

    def watch() -> dict[str, Any] | None:
        status = models.get("good").get("status") or {}
        rollout = status.get("rollout") or {}
        if rollout.get("canaryRevision") == canary:
            seen.add(
                (rollout.get("step", -1), rollout.get("weight", -1), replicas(models, "good").get(canary, 0))
            )
        done = status.get("phase") == "Healthy" and (status.get("model") or {}).get("version") == "2"
        return status if done else None

    with server.traffic([model.request]):
        status = wait_until(watch, timeout=90, interval=0.1, what="the canary to be promoted")
    # Steps 0 and 1 may pass while the canary's server starts; the analysis step waits for it.
    assert (2, 25, 1) in seen, seen  # 25% of 4 replicas: one canary pod
    assert (4, 50, 2) in seen, seen  # 50%: two, during the last pause
    assert max(step for step, _, _ in seen) == len(steps), seen
    rollout = status["rollout"]
    assert rollout["stableRevision"] == canary and "canaryRevision" not in rollout
    assert rollout["analysis"]["verdict"] == "Pass" and rollout["analysis"]["runs"] >= 1
    assert {r["name"]: r["result"] for r in rollout["analysis"]["results"]}["success-rate"] == "Pass"
    # The old revision goes after scaleDownDelaySeconds.
    wait_until(lambda: stable not in replicas(models, "good"), what="the old revision to be retired")
    assert replicas(models, "good") == {canary: 4}
    told = {"CanaryStarted", "CanaryStep", "Promoted", "RevisionRetired"}
    # Kopf posts events from a background queue, after the write they tell of.
    wait_until(lambda: told <= event_reasons(models), what=f"events {sorted(told)}")


def test_a_canary_no_traffic_reaches_pauses_and_goes_on_when_its_requests_pass(
    models: Models, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    """Issue #29: the stable revision serves all the model's requests, the canary none (clients
    that keep their connections): inconclusiveLimit measurements pause the rollout with a reason
    that says so, the measurements go on, and the first pass once requests reach it resumes it."""
    steps = [{"setWeight": 25}, {"analysis": {}}, {"setWeight": 50}]
    rollout = rollout_spec(steps)
    rollout["canary"]["analysis"]["inconclusiveLimit"] = 2
    status = start(models, "starved", rollout)
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    model = canary_models.healthy()
    path = model.save(tmp_path)
    old = scraped_servers.start(path, namespace=models.namespace, revision=stable)
    new = scraped_servers.start(path, namespace=models.namespace, revision=canary)

    def paused_for_no_traffic() -> dict[str, Any] | None:
        status = models.get("starved").get("status") or {}
        rollout = status.get("rollout") or {}
        reads = rollout.get("pauseCondition") == "AnalysisInconclusive" and rollout.get("actualWeight") == 0
        return status if reads else None

    with old.traffic([model.request]):
        status = wait_until(paused_for_no_traffic, timeout=60, what="a pause for inconclusive analysis")
        rollout = status["rollout"]
        assert status["phase"] == "Paused" and rollout["step"] == 1 and rollout["weight"] == 25
        assert "the model's traffic does not reach the canary" in rollout["pauseReason"], rollout
        assert rollout["analysis"]["inconclusive"] >= 2 and rollout["analysis"]["canaryRequests"] == 0
        assert rollout["analysis"]["requests"] >= 5, rollout["analysis"]
        conditions = {c["type"]: c["reason"] for c in status["conditions"]}
        assert conditions["Progressing"] == conditions["Ready"] == "AnalysisInconclusive"
        runs = rollout["analysis"]["runs"]
        wait_until(
            lambda: rollout_of(models, "starved")["analysis"]["runs"] > runs,
            what="the measurements to go on while paused",
        )
        with new.traffic([model.request]):
            status = wait_promoted(models, "starved", "2", timeout=90)
    assert status["rollout"]["analysis"]["verdict"] == "Pass"
    wait_until(lambda: "AnalysisInconclusive" in event_reasons(models), what="the AnalysisInconclusive event")


def test_a_growing_canary_never_grows_the_stable_revision(models: Models, k8s_api: client.ApiClient) -> None:
    """Issue #31, watched from outside: every size the stable Deployment is written with through
    a full canary never goes up, and its ReplicaSets create no pod; one RevisionUpdated per size."""
    steps = [{"setWeight": 25}, {"setWeight": 50}, {"pause": {"duration": 1}}, {"setWeight": 75}]
    models.create("steady", model_spec(version="1", replicas=4, rollout=rollout_spec(steps, analysis=False)))
    stable = models.wait_ready("steady")["status"]["model"]["revision"]
    with watching_revision(k8s_api, models.namespace, "steady", stable) as history:
        models.patch("steady", {"spec": {"model": model_spec(version="2")["model"]}})
        wait_promoted(models, "steady", "2")
        wait_until(lambda: stable not in replicas(models, "steady"), what="the old revision to be retired")
    assert not history.errors, history.errors
    # 4, then 3 once the 25% canary pod is ready, 2 at 50%, 1 at 75%; then deleted.
    assert history.sizes == [4, 3, 2, 1], history.sizes
    assert history.pods_created == [], history.pods_created

    deployment = naming.deployment_name("steady", stable)

    def stable_updates() -> list[str] | None:
        found = [
            e.message
            for e in models.core.list_namespaced_event(models.namespace).items
            if e.reason == "RevisionUpdated" and f"Deployment {deployment} " in e.message
        ]
        return found if len(found) >= 3 else None

    updates = wait_until(stable_updates, what="the stable revision's RevisionUpdated events")
    assert sorted(re.findall(r"(\d+) replicas", " ".join(updates))) == ["1", "2", "3"], updates


def test_a_canary_that_returns_errors_is_rolled_back_within_interval_times_failure_limit(
    models: Models, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    status = start(models, "bad", rollout_spec([{"setWeight": 25}, {"pause": {}}]))
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    model = canary_models.broken_labels()
    assert model.failing_request is not None
    server = scraped_servers.start(model.save(tmp_path), namespace=models.namespace, revision=canary)
    wait_until(lambda: replicas(models, "bad").get(canary) == 1, what="the canary at 25%")

    with server.traffic([model.request, model.failing_request]) as traffic:
        first_failure = time.monotonic()
        rollout = wait_until(
            lambda: rollout_of(models, "bad").get("abortedRevision") == canary and rollout_of(models, "bad"),
            timeout=60,
            interval=0.1,
            what="the canary to be aborted",
        )
        elapsed = time.monotonic() - first_failure
    assert traffic.statuses[500] > 0
    # Prometheus needs a couple of scrapes before a rate exists; a few seconds of slack for that.
    assert elapsed <= INTERVAL * FAILURE_LIMIT + 8, elapsed
    assert replicas(models, "bad") == {stable: 4, canary: 0}
    assert rollout["weight"] == 0 and rollout["analysis"]["verdict"] == "Fail"
    degraded = models.condition("bad", "Degraded")
    assert degraded is not None and degraded["status"] == "True"
    assert degraded["reason"] == "AnalysisFailed"
    assert "success-rate" in degraded["message"] and "< 0.95" in degraded["message"], degraded["message"]
    body = models.get("bad")
    assert body["status"]["phase"] == "Degraded"
    assert body["status"]["model"]["version"] == "1"  # the old version serves throughout


def test_a_canary_whose_model_does_not_load_is_aborted(models: Models) -> None:
    status = start(models, "noload", rollout_spec([{"setWeight": 50}, {"pause": {}}], analysis=False))
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    pod = wait_until(
        lambda: next(
            (p for p in models.pods("noload") if p.metadata.labels.get(naming.LABEL_REVISION) == canary), None
        ),
        what="a canary pod",
    )
    message = "model file sha256 mismatch: expected 1f2e..., got 9a8b..."
    models.core.patch_namespaced_pod_status(
        pod.metadata.name, models.namespace, failed_model_fetch_status(message)
    )
    models.wait_condition("noload", "Degraded", "True", reason="ModelLoadFailed")
    degraded = models.condition("noload", "Degraded")
    assert degraded is not None and "sha256 mismatch" in degraded["message"], degraded
    wait_until(lambda: replicas(models, "noload") == {stable: 4, canary: 0}, what="everything back on stable")


def test_a_paused_rollout_survives_an_operator_restart_and_a_promote_finishes_it(
    models: Models, operator: OperatorProcess, kubeconfig: str
) -> None:
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1s"}}]
    status = start(models, "paused", rollout_spec(steps, analysis=False))
    canary = status["rollout"]["canaryRevision"]
    wait_until(lambda: phase_of(models, "paused") == "Paused", what="the pause")
    before = models.get("paused")["status"]["rollout"]
    assert before["step"] == 1 and before["paused"] is True
    [canary_deployment] = [d for d in models.deployments("paused") if d.metadata.name.endswith(canary)]

    operator.restart()
    wait_until(lambda: operator.reconciles(models.namespace, "paused"), what="a reconcile after the restart")
    after = models.get("paused")["status"]
    assert after["phase"] == "Paused" and after["rollout"]["step"] == 1
    assert after["rollout"]["stepStartedAt"] == before["stepStartedAt"]
    [same] = [d for d in models.deployments("paused") if d.metadata.name.endswith(canary)]
    assert same.metadata.uid == canary_deployment.metadata.uid

    result = plugin(kubeconfig, "promote", "paused", "-n", models.namespace)
    assert result.returncode == 0, result.stderr
    wait_promoted(models, "paused", "2")
    body = models.get("paused")
    assert naming.ANNOTATION_ACTION not in (body["metadata"].get("annotations") or {})


def test_abort_and_retry_from_the_plugin(models: Models, kubeconfig: str) -> None:
    status = start(models, "manual", rollout_spec([{"setWeight": 25}, {"pause": {}}], analysis=False))
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    wait_until(lambda: phase_of(models, "manual") == "Paused", what="the pause")

    result = plugin(kubeconfig, "abort", "manual", "-n", models.namespace)
    assert result.returncode == 0, result.stderr
    models.wait_condition("manual", "Degraded", "True", reason="RolloutAborted")
    degraded = models.condition("manual", "Degraded")
    assert degraded is not None and "aborted by a user" in degraded["message"], degraded
    wait_until(lambda: replicas(models, "manual") == {stable: 4, canary: 0}, what="everything back on stable")

    result = plugin(kubeconfig, "retry", "manual", "-n", models.namespace)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: phase_of(models, "manual") == "Paused", what="the retried canary's pause")
    assert replicas(models, "manual") == {stable: 3, canary: 1}

    printed = plugin(kubeconfig, "status", "manual", "-n", models.namespace)
    assert printed.returncode == 0 and canary in printed.stdout, printed.stdout + printed.stderr


def test_http_route_weights_follow_the_steps(
    models: Models, k8s_api: client.ApiClient, kubectl: Callable[..., Any], kubeconfig: str
) -> None:
    routes = client.CustomObjectsApi(k8s_api)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "routed"},
        "spec": {"rules": [{"backendRefs": [{"name": "routed", "port": 80}]}]},
    }
    routes.create_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", models.namespace, "httproutes", route
    )

    def weights() -> dict[str, int]:
        body = routes.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", models.namespace, "httproutes", "routed"
        )
        return {ref["name"]: ref.get("weight", 1) for ref in body["spec"]["rules"][0]["backendRefs"]}

    rollout = rollout_spec(
        [{"setWeight": 30}, {"pause": {}}],
        analysis=False,
        trafficRouting={"gatewayAPI": {"httpRoute": "routed"}},
    )
    status = start(models, "routed", rollout)
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    wanted = {f"routed-{stable}": 70, f"routed-{canary}": 30}
    wait_until(lambda: weights() == wanted, what=f"route weights {wanted}")
    services = {s.metadata.name for s in models.core.list_namespaced_service(models.namespace).items}
    assert {f"routed-{stable}", f"routed-{canary}", "routed"} <= services
    paused = models.get("routed")["status"]["rollout"]
    assert paused["actualWeight"] == 30 and "HTTPRoute routed" in paused["traffic"]

    assert plugin(kubeconfig, "promote", "routed", "-n", models.namespace).returncode == 0
    wait_promoted(models, "routed", "2")
    wait_until(lambda: weights() == {f"routed-{canary}": 100}, what="all traffic on the new revision")


def test_recreate_deletes_the_old_revision_before_the_new_one_serves(models: Models) -> None:
    models.create("recreate", model_spec(version="1", replicas=2, rollout={"strategy": "Recreate"}))
    old = models.wait_ready("recreate")["status"]["model"]["revision"]
    models.patch("recreate", {"spec": {"model": model_spec(version="2")["model"]}})
    new = wait_promoted(models, "recreate", "2")["model"]["revision"]
    assert new != old and replicas(models, "recreate") == {new: 2}
    retired = wait_until(
        lambda: [
            e
            for e in models.core.list_namespaced_event(models.namespace).items
            if e.reason == "RevisionRetired"
        ],
        what="a RevisionRetired event",
    )
    assert "replaced by version 2 (revision" in retired[0].message


def test_canary_settings_with_recreate_are_refused_when_applied(models: Models) -> None:
    rollout = {"strategy": "Recreate", "canary": {"steps": [{"setWeight": 10}]}}
    with pytest.raises(client.ApiException) as refused:
        models.create("both", model_spec(rollout=rollout))
    assert "canary settings need strategy Canary" in str(refused.value.body)


def test_a_slow_canary_is_rolled_back_on_its_p99_latency(
    models: Models, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    rollout = rollout_spec([{"setWeight": 25}, {"pause": {}}])
    rollout["canary"]["analysis"]["maxLatencyP99"] = "10ms"
    status = start(models, "slow", rollout)
    canary = status["rollout"]["canaryRevision"]
    stable = status["rollout"]["stableRevision"]
    model = canary_models.slow()
    server = scraped_servers.start(model.save(tmp_path), namespace=models.namespace, revision=canary)

    with server.traffic([model.request], pause=0.005) as traffic:
        started = time.monotonic()
        wait_until(
            lambda: rollout_of(models, "slow").get("abortedRevision") == canary,
            timeout=60,
            interval=0.1,
            what="the slow canary to be aborted",
        )
        elapsed = time.monotonic() - started
    assert traffic.statuses[200] > 0 and set(traffic.statuses) == {200}  # slow, never failing
    assert elapsed <= INTERVAL * FAILURE_LIMIT + 8, elapsed
    degraded = models.condition("slow", "Degraded")
    assert degraded is not None and degraded["reason"] == "AnalysisFailed"
    assert "latency-p99" in degraded["message"] and "> 0.01s" in degraded["message"], degraded["message"]
    assert replicas(models, "slow") == {stable: 4, canary: 0}


class ServingSizes:
    """What the HPA scales, read every 0.1 s from outside: (its scaleTargetRef, that Deployment's
    spec.replicas) at each read, from before the model exists until the block ends."""

    def __init__(self, models: Models, name: str) -> None:
        self.models, self.name = models, name
        self.seen: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                hpa = self.models.autoscaling.read_namespaced_horizontal_pod_autoscaler(
                    self.name, self.models.namespace
                )
                target = hpa.spec.scale_target_ref.name
                deployment = self.models.apps.read_namespaced_deployment(target, self.models.namespace)
            except Exception:  # not there yet (or gone, retired), or a transient API error
                continue
            if deployment.metadata.deletion_timestamp is None:
                self.seen.append((target, deployment.spec.replicas))

    def __enter__(self) -> ServingSizes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_promoting_an_autoscaled_canary_never_shrinks_the_serving_size(models: Models) -> None:
    """Issue #14: the Deployment the HPA scales never has fewer than minReplicas, neither when the
    model is created nor when a canary is promoted and the HPA's size handed over to it (server-side
    apply used to drop the field we stopped applying, and the Deployment to 1 replica). KWOK pods
    have no CPU metrics, so the HPA keeps whatever size it finds within its bounds."""
    scaling = {"minReplicas": 3, "maxReplicas": 6, "metric": "cpu"}
    rollout = rollout_spec([{"setWeight": 50}, {"setWeight": 100}], analysis=False)
    with ServingSizes(models, "handover") as sizes:
        models.create("handover", model_spec(version="1", autoscaling=scaling, rollout=rollout))
        stable = models.wait_ready("handover", timeout=60)["status"]["model"]["revision"]
        models.patch("handover", {"spec": {"model": model_spec(version="2")["model"]}})
        new = wait_promoted(models, "handover", "2")["model"]["revision"]
        # A while longer than the HPA's sync period (5 s on the test cluster), which would raise
        # a Deployment that fell to 1 replica back up.
        time.sleep(6)
    assert new != stable
    serving = naming.deployment_name("handover", new)
    targets = [target for target, _ in sizes.seen]
    assert naming.deployment_name("handover", stable) in targets and serving in targets, targets
    assert min(size for _, size in sizes.seen) >= 3, sizes.seen

    hpa = models.autoscaling.read_namespaced_horizontal_pod_autoscaler("handover", models.namespace)
    assert hpa.spec.scale_target_ref.name == serving
    deployment = models.apps.read_namespaced_deployment(serving, models.namespace)
    assert deployment.spec.replicas >= 3
    # Handed over: our apply no longer holds spec.replicas, another manager does.
    owners = {
        entry.manager
        for entry in deployment.metadata.managed_fields
        if "f:replicas" in (entry.fields_v1 or {}).get("f:spec", {})
    }
    assert owners and naming.FIELD_MANAGER not in owners, owners
