"""A wrong-but-healthy canary on the real node is rolled back by the distribution of its predictions.

Version 2 is version 1's classifier with its classes permuted: it answers every request, as fast,
with 200, and puts every input in the wrong class, so success rate and latency pass it. The servers
count their predictions (`modelship_predictions_total`), the local Prometheus scrapes them, and the
operator's `predictionDrift` check compares the canary's distribution with the stable revision's:
the rollout must abort on it, with the measured distance in status, and every answer afterwards must
be version 1's. Version 3, the same classifier exported again, must then pass the same check and be
promoted. Nothing is simulated: pods on the real node, traffic through the Service's ClusterIP.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.operator import canary_models
from tests.operator.models import Models
from tests.operator.real_node_canary import (
    POD_START,
    ModelFiles,
    Published,
    ServiceTraffic,
    deployment,
    endpoints,
    model_spec,
    pods_of,
    rollout_of,
    send,
    true_condition,
    wrong,
)
from tests.real_node import routed_into_node
from tests.support import wait_until

if TYPE_CHECKING:  # imported by pytest_plugins, where pytest rewrites its asserts
    from tests.prometheus_support import Prometheus

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support", "tests.operator.real_node_canary"]

NAME = "classes"
REPLICAS = 3
WEIGHT = 33  # one canary pod beside the three stable ones: a quarter of the endpoints
INTERVAL = 2
FAILURE_LIMIT = 2
MAX_DRIFT = 0.3
# The abort needs the canary's target found and scraped twice, then FAILURE_LIMIT measurements.
ABORT_SLACK = 15
ANSWERS_AFTER = 40


def spec(published: Published) -> dict[str, Any]:
    return {
        "model": model_spec("1", published),
        "replicas": REPLICAS,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "rollout": {
            "canary": {
                "steps": [{"setWeight": WEIGHT}, {"analysis": {}}],
                "scaleDownDelaySeconds": 2,
                "analysis": {
                    "interval": f"{INTERVAL}s",
                    "failureLimit": FAILURE_LIMIT,
                    "minRequests": 5,
                    "successRate": 0.95,
                    "predictionDrift": {"max": MAX_DRIFT, "minRequests": 10},
                },
            }
        },
    }


def drift_results(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    results = (rollout.get("analysis") or {}).get("results") or ()
    return [r for r in results if r.get("name") == "prediction-drift"]


def test_a_wrong_but_healthy_canary_is_rolled_back_on_its_predictions_and_a_good_one_is_promoted(
    real_node: client.V1Node, model_files: ModelFiles, models: Models, prometheus: Prometheus
) -> None:
    v1 = model_files.publish("v1.onnx", canary_models.classifier().model)
    v2 = model_files.publish("v2.onnx", canary_models.permuted_classifier().model)
    v3 = model_files.publish("v3.onnx", canary_models.classifier("3").model)
    assert v3.sha256 != v1.sha256
    requests = canary_models.classifier_requests()
    ns = models.namespace

    models.create(NAME, spec(v1))
    stable = models.wait_ready(NAME, timeout=POD_START)["status"]["model"]["revision"]
    cluster_ip = routed_into_node(models.core.read_namespaced_service(NAME, ns).spec.cluster_ip)
    url = f"http://{cluster_ip}/v2/models/{NAME}/infer"
    wait_until(
        lambda: sum(bool(e.conditions and e.conditions.ready) for e in endpoints(models, NAME)) == REPLICAS,
        what="three ready endpoints",
    )
    # Ready endpoints come before kube-proxy's rules for them: the first answer says they are in.
    wait_until(lambda: send(url, requests, 1)[200] == 1, what="an answer through the ClusterIP")

    with ServiceTraffic(url, requests) as traffic:
        before = wait_until(
            lambda: list(traffic.answers) if len(traffic.answers) >= 20 else None, what="20 answers"
        )
        assert not wrong(before), f"version 1 sorts every input into its class: {wrong(before)[:3]}"

        # Version 2: wrong but healthy. Success rate passes it, the predictions do not.
        models.patch(NAME, {"spec": {"model": model_spec("2", v2)}})
        canary = wait_until(lambda: rollout_of(models, NAME).get("canaryRevision"), what="a canary revision")
        status = wait_until(
            lambda: (
                (s := models.get(NAME).get("status") or {}).get("rollout", {}).get("abortedRevision")
                == canary
                and s
            ),
            timeout=POD_START + 60,
            interval=0.2,
            what="the permuted canary to be aborted",
        )
        aborted_at = time.monotonic()
        # Gone, not only out of the endpoints: a terminating pod could still answer until kube-proxy
        # has synced its rules.
        wait_until(lambda: not pods_of(models, NAME, canary), timeout=90, what="no canary pod")
        after_abort = len(traffic.answers)
        wait_until(
            lambda: len(traffic.answers) >= after_abort + ANSWERS_AFTER, what="answers after the abort"
        )
        during = list(traffic.answers)

        # Version 3: the same classifier exported again passes the same check and takes over.
        models.patch(NAME, {"spec": {"model": model_spec("3", v3)}})
        passes: list[dict[str, Any]] = []

        def promoted() -> bool:
            body = models.get(NAME)
            rollout = (body.get("status") or {}).get("rollout") or {}
            passes.extend(r for r in drift_results(rollout) if r.get("result") == "Pass")
            return (body.get("status") or {}).get("model", {}).get("version") == "3" and not rollout.get(
                "canaryRevision"
            )

        wait_until(promoted, timeout=POD_START + 60, interval=0.2, what="version 3 to be promoted")
        good = models.wait_ready(NAME, timeout=60)["status"]["model"]["revision"]
        wait_until(lambda: not pods_of(models, NAME, stable), timeout=90, what="no pod of version 1")
        promoted_at = len(traffic.answers)
        wait_until(
            lambda: len(traffic.answers) >= promoted_at + ANSWERS_AFTER, what="answers after promotion"
        )
    answers = list(traffic.answers)

    # The abort: for the measured drift, in time, while success rate passed the canary.
    first_wrong = wrong(during)
    assert first_wrong, "the canary took no user request: the test proves nothing"
    assert {a.code for a in answers} == {200}, f"every request answered: {traffic.statuses()}"
    elapsed = aborted_at - first_wrong[0].at
    assert elapsed <= INTERVAL * FAILURE_LIMIT + ABORT_SLACK, elapsed
    rollout = status["rollout"]
    assert rollout["weight"] == 0 and rollout["analysis"]["verdict"] == "Fail", rollout
    results = {r["name"]: r for r in rollout["analysis"]["results"]}
    assert results["success-rate"]["result"] == "Pass", results
    assert results["prediction-drift"]["result"] == "Fail", results
    assert results["prediction-drift"]["value"] > MAX_DRIFT, results
    degraded = true_condition(status, "Degraded")
    assert degraded["reason"] == "AnalysisFailed", degraded
    measured = re.search(r"prediction-drift (\d+(?:\.\d+)?) > 0\.3", degraded["message"])
    assert measured is not None and float(measured.group(1)) > MAX_DRIFT, degraded["message"]
    # Once the canary's endpoint is gone, every answer is version 1's.
    assert not wrong(during[after_abort:]), wrong(during[after_abort:])[:3]

    # The good version: passed on its predictions, promoted, and answering right.
    assert passes and all(r["value"] <= MAX_DRIFT for r in passes), passes
    assert good != stable and deployment(models, NAME, good).status.ready_replicas == REPLICAS
    assert not wrong(answers[len(during) :]), wrong(answers[len(during) :])[:3]
    print(
        f"\npermuted canary aborted {elapsed:.2f}s after its first wrong answer "
        f"({len(first_wrong)} wrong answers of {len(during)}); {degraded['message']}; "
        f"good canary's drift {[r['value'] for r in passes]}"
    )
