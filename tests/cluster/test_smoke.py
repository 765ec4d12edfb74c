"""The local cluster is a real one: its controllers, garbage collector and admission all work."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import wait_until

pytestmark = pytest.mark.cluster

LABELS = {"app": "smoke"}


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    container = client.V1Container(name="app", image="registry.invalid/smoke:1")
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=LABELS),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=LABELS),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=LABELS),
                # KWOK nodes carry this taint when the cluster also has a real node: these
                # pods run nothing, so they go to the fake nodes only.
                spec=client.V1PodSpec(
                    containers=[container],
                    node_selector={"type": "kwok"},
                    tolerations=[
                        client.V1Toleration(key="kwok.x-k8s.io/node", operator="Exists", effect="NoSchedule")
                    ],
                ),
            ),
        ),
    )


def _available(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    status = apps.read_namespaced_deployment_status(name, namespace).status
    return (
        any(c.type == "Available" and c.status == "True" for c in status.conditions or [])
        and (status.ready_replicas or 0) == (status.replicas or 0) > 0
    )


def test_deployment_becomes_available_with_ready_pods_on_kwok_nodes(k8s_api, namespace):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))

    wait_until(lambda: _available(apps, namespace, "web"), timeout=60, what="Deployment web Available")

    pods = core.list_namespaced_pod(namespace, label_selector="app=smoke").items
    assert len(pods) == 3
    kwok_nodes = {n.metadata.name for n in core.list_node(label_selector="type=kwok").items}
    for pod in pods:
        assert pod.spec.node_name in kwok_nodes
        assert pod.status.phase == "Running"
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def test_garbage_collector_removes_children_of_a_deleted_owner(k8s_api, namespace):
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, _deployment("owner", replicas=1))
    replica_sets = wait_until(
        lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=smoke").items,
        timeout=30,
        what="the Deployment's ReplicaSet",
    )
    assert replica_sets[0].metadata.owner_references[0].name == "owner"

    # Orphan-free background deletion: only the garbage collector can remove the ReplicaSet.
    apps.delete_namespaced_deployment("owner", namespace, propagation_policy="Background")

    wait_until(
        lambda: not apps.list_namespaced_replica_set(namespace, label_selector="app=smoke").items,
        timeout=60,
        what="the garbage collector to delete the ReplicaSet",
    )


def test_privileged_pod_is_rejected_in_a_restricted_namespace(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="root"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="app",
                    image="registry.invalid/smoke:1",
                    security_context=client.V1SecurityContext(privileged=True),
                )
            ]
        ),
    )

    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, pod)

    assert rejected.value.status == 403
    assert "violates PodSecurity" in rejected.value.body
    assert "privileged" in rejected.value.body


def test_horizontal_pod_autoscaler_is_processed_by_the_controller_manager(k8s_api, namespace):
    apps, autoscaling = client.AppsV1Api(k8s_api), client.AutoscalingV2Api(k8s_api)
    apps.create_namespaced_deployment(namespace, _deployment("scaled", replicas=1))
    hpa = client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name="scaled"),
        spec=client.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V2CrossVersionObjectReference(
                api_version="apps/v1", kind="Deployment", name="scaled"
            ),
            min_replicas=2,
            max_replicas=4,
            metrics=[
                client.V2MetricSpec(
                    type="Resource",
                    resource=client.V2ResourceMetricSource(
                        name="cpu",
                        target=client.V2MetricTarget(type="Utilization", average_utilization=70),
                    ),
                )
            ],
        ),
    )
    autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)

    # The HPA controller raises the Deployment to minReplicas even without metrics, and
    # reports its conditions: proof that the controller-manager runs it.
    wait_until(
        lambda: apps.read_namespaced_deployment("scaled", namespace).spec.replicas == 2,
        timeout=60,
        what="the HPA controller to scale the Deployment to minReplicas",
    )
    status = wait_until(
        lambda: (
            (s := autoscaling.read_namespaced_horizontal_pod_autoscaler("scaled", namespace).status)
            and s.conditions
        ),
        timeout=30,
        what="HPA conditions",
    )
    assert {c.type for c in status} >= {"AbleToScale"}
