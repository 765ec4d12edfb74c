"""Running the operator: restarts that change nothing, peering between two instances, liveness."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from modelship.operator import naming

from tests.operator.conftest import TEST_PEERING, OperatorProcess
from tests.operator.models import Models, model_spec
from tests.support import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def models(k8s_api: client.ApiClient, namespace: str, operator: OperatorProcess) -> Models:
    return Models(k8s_api, namespace)


def versions(models: Models) -> dict[str, str]:
    """resourceVersion of every object a ModelDeployment has in the namespace, and its own."""
    ns = models.namespace
    selector = f"{naming.LABEL_MANAGED_BY}=modelship"
    found = {}
    for kind, items in (
        (
            "md",
            models.custom.list_namespaced_custom_object(naming.GROUP, naming.VERSION, ns, naming.PLURAL)[
                "items"
            ],
        ),
    ):
        for item in items:
            found[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    for kind, listed in (
        ("deployment", models.apps.list_namespaced_deployment(ns, label_selector=selector)),
        ("service", models.core.list_namespaced_service(ns, label_selector=selector)),
        ("hpa", models.autoscaling.list_namespaced_horizontal_pod_autoscaler(ns, label_selector=selector)),
    ):
        for obj in listed.items:
            found[f"{kind}/{obj.metadata.name}"] = obj.metadata.resource_version
    return found


def test_a_restarted_operator_writes_nothing_when_nothing_changed(
    models: Models, operator: OperatorProcess
) -> None:
    models.create("fixed", model_spec(replicas=2))
    models.create("scaled", model_spec(autoscaling={"minReplicas": 1, "maxReplicas": 3}))
    models.create("zero", model_spec(replicas=0))
    for name in ("fixed", "scaled", "zero"):
        models.wait_ready(name)

    operator.stop()
    before = versions(models)
    events_before = len(models.core.list_namespaced_event(models.namespace).items)
    operator.start()

    lines = [
        operator.wait_for(
            lambda line, name=name: (
                line.get("md") == f"{models.namespace}/{name}" and line.get("first") is True
            ),
            what=f"the first reconcile of {name}",
        )
        for name in ("fixed", "scaled", "zero")
    ]
    assert [line["writes"] for line in lines] == [0, 0, 0]
    assert versions(models) == before
    assert len(models.core.list_namespaced_event(models.namespace).items) == events_before


def _paused(line: dict[str, Any]) -> bool:
    return "Pausing operations in favour of" in line["message"]


def _peer_priorities(models: Models) -> list[int]:
    peering = models.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", TEST_PEERING)
    return sorted(int(peer["priority"]) for peer in (peering.get("status") or {}).values())


def test_of_two_operators_only_one_acts_and_the_other_takes_over(
    models: Models, operator: OperatorProcess, second_operator: OperatorProcess
) -> None:
    # An instance starts paused and stays so unless the peering shows it has the highest priority.
    second_operator.start()
    wait_until(lambda: {10, 100} <= set(_peer_priorities(models)), what="both operators in the peering")

    models.create("iris", model_spec())
    models.wait_ready("iris")
    assert operator.reconciles(models.namespace, "iris")
    assert second_operator.reconciles(models.namespace) == []

    # The active instance goes away (a rolling update, a lost node): the other one takes over.
    operator.stop()
    second_operator.wait_for(lambda line: "Resuming operations" in line["message"], what="the takeover")
    models.patch("iris", {"spec": {"replicas": 2}})
    assert models.wait_ready("iris")["status"]["readyText"] == "2/2"
    assert second_operator.reconciles(models.namespace, "iris")

    # The higher priority comes back: the second instance steps aside again.
    operator.start()
    second_operator.wait_for(_paused, what="the second operator to pause again")
    acted = len(second_operator.reconciles(models.namespace))
    models.patch("iris", {"spec": {"replicas": 3}})
    assert models.wait_ready("iris")["status"]["readyText"] == "3/3"
    assert len(second_operator.reconciles(models.namespace)) == acted


def test_the_liveness_endpoint_answers_with_the_reconcile_counters(operator: OperatorProcess) -> None:
    def counters() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=10) as response:
            assert response.status == 200
            return json.load(response)["reconciles"]  # type: ignore[no-any-return]

    body = counters()
    assert set(body) == {"reconciles", "errors", "pending", "writes", "cached", "synced"}
    # The cache counts as synced only once Kopf's events confirm the startup LIST: a while after
    # start, when other namespaces hold many objects (a demo running beside the tests).
    wait_until(lambda: counters()["synced"] is True, timeout=60, what="the operator's cache to be synced")
