"""A shadow step on the real node: the stable pods copy live requests to the canary, users get only
the stable revision's answers, and a wrong-but-healthy canary never answers a user.

Version 2 is version 1's classifier with its classes permuted: 200s, as fast, every input in the
wrong class. Its rollout starts with `shadow: 100%`: the operator keeps the canary's pod out of the
Service and annotates the stable pods with the canary's own Service; their servers read the
annotation from a downwardAPI file and copy each request to the canary after answering it, compare
the two answers and count them (`modelship_mirror_requests_total`). The local Prometheus scrapes
the counts and the `agreement` check aborts the rollout: no user answer may be wrong, at any time,
and the stable pods must never restart. Version 3, the same classifier exported again, must then
pass its shadow step on agreement and go on to its weight and its promotion. A version that fails
on half of the valid requests (500) is rolled back in its shadow step by its own success rate, and
no user gets a 500. Nothing is simulated: pods on the real node, traffic through the Service's
ClusterIP, each request on a new connection.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from modelship.operator import naming

from tests.operator import canary_models
from tests.operator.models import Models
from tests.operator.real_node_canary import (
    POD_START,
    ModelFiles,
    Published,
    ServiceTraffic,
    endpoints,
    endpoints_of,
    model_spec,
    pods_of,
    revision_pods,
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

NAME = "shadowed"
REPLICAS = 2
SHADOW_SECONDS = 6
INTERVAL = 2
FAILURE_LIMIT = 2
MIN_AGREEMENT = 0.98
# The abort needs the copies counted, the stable pods scraped twice, then FAILURE_LIMIT measurements.
ABORT_SLACK = 20
ANSWERS_AFTER = 30


def spec(published: Published) -> dict[str, Any]:
    return {
        "model": model_spec("1", published),
        "replicas": REPLICAS,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "rollout": {
            "canary": {
                "steps": [
                    {"shadow": {"percent": 100, "duration": f"{SHADOW_SECONDS}s"}},
                    {"setWeight": 50},
                    {"analysis": {}},
                ],
                "scaleDownDelaySeconds": 2,
                "analysis": {
                    "interval": f"{INTERVAL}s",
                    "failureLimit": FAILURE_LIMIT,
                    "minRequests": 5,
                    "successRate": 0.95,
                    "agreement": {"min": MIN_AGREEMENT, "minRequests": 10},
                },
            }
        },
    }


def mirror_of(pod: client.V1Pod) -> dict[str, Any] | None:
    value = (pod.metadata.annotations or {}).get(naming.ANNOTATION_MIRROR)
    return json.loads(value) if value else None


def restarts(pods: list[client.V1Pod]) -> dict[str, int]:
    """Each pod's uid with the restarts of its containers: a pod restarted or replaced differs."""
    return {p.metadata.uid: sum(c.restart_count for c in (p.status.container_statuses or ())) for p in pods}


def serve(models: Models, body: dict[str, Any], requests: list[dict[str, Any]]) -> tuple[str, str]:
    """Version 1 created and serving through the ClusterIP: its revision, and the inference URL."""
    models.create(NAME, body)
    stable = models.wait_ready(NAME, timeout=POD_START)["status"]["model"]["revision"]
    service = models.core.read_namespaced_service(NAME, models.namespace)
    url = f"http://{routed_into_node(str(service.spec.cluster_ip))}/v2/models/{NAME}/infer"
    wait_until(
        lambda: sum(bool(e.conditions and e.conditions.ready) for e in endpoints(models, NAME)) == REPLICAS,
        what="two ready endpoints",
    )
    # Ready endpoints come before kube-proxy's rules for them: the first answer says they are in.
    wait_until(lambda: send(url, requests, 1)[200] == 1, what="an answer through the ClusterIP")
    return stable, url


def aborted(models: Models, canary: str) -> dict[str, Any]:
    """The status once the canary is aborted."""
    return wait_until(
        lambda: (
            (s := models.get(NAME).get("status") or {}).get("rollout", {}).get("abortedRevision") == canary
            and s
        ),
        timeout=60,
        interval=0.2,
        what="the canary to be aborted in its shadow step",
    )


def test_a_wrong_canary_is_rolled_back_in_its_shadow_step_without_a_wrong_answer_to_a_user(
    real_node: client.V1Node, model_files: ModelFiles, models: Models, prometheus: Prometheus
) -> None:
    v1 = model_files.publish("v1.onnx", canary_models.classifier().model)
    v2 = model_files.publish("v2.onnx", canary_models.permuted_classifier().model)
    v3 = model_files.publish("v3.onnx", canary_models.classifier("3").model)
    requests = canary_models.classifier_requests()

    stable, url = serve(models, spec(v1), requests)
    stable_pods = restarts(revision_pods(models, NAME, stable))

    with ServiceTraffic(url, requests) as traffic:
        wait_until(lambda: len(traffic.answers) >= 20, what="20 answers")

        # Version 2: wrong but healthy, in a shadow step. Users must never see one of its answers.
        models.patch(NAME, {"spec": {"model": model_spec("2", v2)}})
        canary = wait_until(lambda: rollout_of(models, NAME).get("canaryRevision"), what="a canary revision")
        told = wait_until(
            lambda: [m for p in revision_pods(models, NAME, stable) if (m := mirror_of(p))],
            timeout=POD_START,
            interval=0.2,
            what="the stable pods told to copy requests to the canary",
        )
        mirroring_at = time.monotonic()
        assert all(m["revision"] == canary and m["percent"] == 100 for m in told), told
        assert len(told) == REPLICAS, told
        status = aborted(models, canary)
        aborted_at = time.monotonic()
        # The copies stop: the annotation goes from every stable pod.
        wait_until(
            lambda: not any(mirror_of(p) for p in revision_pods(models, NAME, stable)),
            what="the stable pods told to stop copying",
        )
        wait_until(lambda: not pods_of(models, NAME, canary), timeout=90, what="no canary pod")
        shadowed = len(traffic.answers)
        stable_after = restarts(revision_pods(models, NAME, stable))

        # Version 3: the same classifier exported again agrees, goes on to its weight, takes over.
        models.patch(NAME, {"spec": {"model": model_spec("3", v3)}})

        def promoted() -> bool:
            status = models.get(NAME).get("status") or {}
            rollout = status.get("rollout") or {}
            return status.get("model", {}).get("version") == "3" and not rollout.get("canaryRevision")

        wait_until(promoted, timeout=POD_START + 60, interval=0.2, what="version 3 to be promoted")
        good = models.wait_ready(NAME, timeout=60)["status"]["model"]["revision"]
        wait_until(lambda: not pods_of(models, NAME, stable), timeout=90, what="no pod of version 1")
        promoted_at = len(traffic.answers)
        wait_until(
            lambda: len(traffic.answers) >= promoted_at + ANSWERS_AFTER, what="answers after promotion"
        )
    answers = list(traffic.answers)

    # No user ever got the permuted canary's answer: not before, during or after its shadow step.
    assert {a.code for a in answers} == {200}, f"every request answered: {traffic.statuses()}"
    assert not wrong(answers), wrong(answers)[:3]
    # It was judged on the copies of those requests, and rolled back on them, in time.
    rollout = status["rollout"]
    assert rollout["weight"] == 0 and rollout["analysis"]["verdict"] == "Fail", rollout
    results = {r["name"]: r for r in rollout["analysis"]["results"]}
    assert results["success-rate"]["result"] == "Pass", results
    assert results["agreement"]["result"] == "Fail" and results["agreement"]["value"] < MIN_AGREEMENT, results
    degraded = true_condition(status, "Degraded")
    assert degraded["reason"] == "AnalysisFailed" and "agreement 0 < 0.98" in degraded["message"], degraded
    elapsed = aborted_at - mirroring_at
    assert elapsed <= INTERVAL * FAILURE_LIMIT + ABORT_SLACK, elapsed
    # The copying was switched on and off in the stable pods as they were: none restarted.
    assert stable_after == stable_pods
    # The good version's copies agreed, counted by the stable pods (Prometheus keeps what they
    # said after they are gone); it passed its shadow step, then took users' requests at its weight.
    compared = {
        r["metric"]["result"]: float(r["value"][1])
        for r in prometheus.query(
            "sum by (result) (last_over_time(modelship_mirror_requests_total"
            f'{{namespace="{models.namespace}",target="{good}"}}[10m]))'
        )
    }
    assert compared.get("agree", 0) >= 10 and compared.get("disagree") == 0, compared
    steps_done = [e.message for e in models.core.list_namespaced_event(models.namespace).items]
    assert any(re.match(r"step [12]/3 done, canary weight 50%", m or "") for m in steps_done), steps_done
    assert good not in (stable, canary)
    assert not endpoints_of(models, NAME, stable)
    print(
        f"\npermuted canary aborted {elapsed:.2f}s after the stable pods were told to copy; "
        f"{len(answers)} user answers, none wrong ({shadowed} until the abort was cleaned up); "
        f"{degraded['message']}; the good canary's copies: {compared}"
    )


def test_a_canary_that_fails_on_valid_requests_is_rolled_back_in_its_shadow_step_without_a_500_to_a_user(
    real_node: client.V1Node, model_files: ModelFiles, models: Models, prometheus: Prometheus
) -> None:
    good, broken = canary_models.good_labels(), canary_models.broken_labels()
    assert broken.failing_request is not None
    v1 = model_files.publish("v1.onnx", good.model)
    v2 = model_files.publish("v2.onnx", broken.model)
    requests = [broken.request, broken.failing_request]  # valid for both: index 0, then 1
    _, url = serve(models, spec(v1), requests)

    with ServiceTraffic(url, requests) as traffic:
        wait_until(lambda: len(traffic.answers) >= 20, what="20 answers")
        models.patch(NAME, {"spec": {"model": model_spec("2", v2)}})
        canary = wait_until(lambda: rollout_of(models, NAME).get("canaryRevision"), what="a canary revision")
        status = aborted(models, canary)
        wait_until(lambda: not pods_of(models, NAME, canary), timeout=90, what="no canary pod")
        done = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) >= done + ANSWERS_AFTER, what="answers after the abort")
    # Its 500s answered the stable pods' copies, never a user.
    assert traffic.statuses() == {200: len(traffic.answers)}, traffic.statuses()
    results = {r["name"]: r for r in status["rollout"]["analysis"]["results"]}
    assert results["success-rate"]["result"] == "Fail" and results["success-rate"]["value"] < 0.95, results
    degraded = true_condition(status, "Degraded")
    assert degraded["reason"] == "AnalysisFailed" and "success-rate" in degraded["message"], degraded
    print(f"\nbroken canary rolled back in its shadow step: {degraded['message']}")
