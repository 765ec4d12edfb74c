"""Every validation rule of the CRD rejects a bad manifest at apply time, with its message.

These run against the real API server (server-side dry run), without the operator: the
schema and its CEL rules are the earliest layer a user meets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from modelship.operator import naming

from tests.operator.factories import SHA
from tests.operator.models import Models, manifest, model_spec

pytestmark = pytest.mark.cluster

HTTPS = "https://models.example.com/iris.onnx"


def model(**fields: Any) -> dict[str, Any]:
    return {"version": "3", "uri": HTTPS, "sha256": SHA, **fields}


CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "replicas-and-autoscaling",
        model_spec(replicas=2, autoscaling={"maxReplicas": 3}),
        "set either replicas (a fixed size) or autoscaling, not both",
    ),
    (
        "min-above-max",
        model_spec(autoscaling={"minReplicas": 5, "maxReplicas": 3}),
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    (
        "autoscaling-without-cpu-request",
        model_spec(autoscaling={"maxReplicas": 3}, resources={"requests": {"memory": "1Gi"}}),
        "autoscaling on CPU utilisation needs resources.requests.cpu",
    ),
    (
        "inflight-target-without-its-metric",
        model_spec(autoscaling={"maxReplicas": 3, "targetInflightRequests": 2}),
        "targetInflightRequests applies to metric: inflightRequests (metric defaults to cpu)",
    ),
    (
        "inflight-metric-without-its-target",
        model_spec(autoscaling={"maxReplicas": 3, "metric": "inflightRequests"}),
        "metric inflightRequests needs targetInflightRequests",
    ),
    (
        "cpu-target-with-inflight-metric",
        model_spec(
            autoscaling={
                "maxReplicas": 3,
                "metric": "inflightRequests",
                "targetInflightRequests": 2,
                "targetCPUUtilization": 60,
            }
        ),
        "targetCPUUtilization applies to metric: cpu only",
    ),
    (
        "uppercase-sha",
        model_spec(model=model(sha256=SHA.upper())),
        "sha256 must be 64 lowercase hexadecimal characters",
    ),
    (
        "short-sha",
        model_spec(model=model(sha256="abc123")),
        "sha256 must be 64 lowercase hexadecimal characters",
    ),
    (
        "unknown-scheme",
        model_spec(model=model(uri="gs://bucket/iris.onnx")),
        "uri must start with one of https://, http://, s3://, file:// or pvc://",
    ),
    (
        "s3-without-sha",
        model_spec(model={"version": "3", "uri": "s3://models/iris/3/model.onnx"}),
        "sha256 is required for an s3 uri (an ETag is not a digest)",
    ),
    (
        "s3-without-key",
        model_spec(model=model(uri="s3://models/")),
        "an s3 uri names a bucket and a key",
    ),
    (
        "s3-settings-for-https",
        model_spec(model=model(s3={"endpoint": "http://minio.storage:9000"})),
        "s3 settings apply only to an s3:// uri",
    ),
    (
        "s3-virtual-addressing-with-an-ip",
        model_spec(
            model=model(
                uri="s3://models/iris.onnx", s3={"endpoint": "http://10.0.0.7:9000", "addressing": "virtual"}
            )
        ),
        "virtual-host addressing puts the bucket in the host name",
    ),
    (
        "s3-credentials-twice",
        model_spec(
            model=model(uri="s3://models/iris.onnx", s3={"credentialsSecretRef": {"name": "s3"}}),
            env=[{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}],
        ),
        "env must not set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_SESSION_TOKEN",
    ),
    (
        "https-without-sha",
        model_spec(model={"version": "3", "uri": HTTPS}),
        "sha256 is required for an http(s) uri",
    ),
    (
        "https-without-path",
        model_spec(model=model(uri="https://models.example.com")),
        "an http(s) uri needs a host and a path",
    ),
    (
        "pvc-without-path",
        model_spec(model={"version": "3", "uri": "pvc://models"}),
        "a pvc uri names a claim and a path inside it",
    ),
    (
        "relative-file",
        model_spec(model={"version": "3", "uri": "file://models/iris.onnx"}),
        "a file uri is an absolute path inside the pod",
    ),
    ("version-with-spaces", model_spec(model=model(version="three point one")), "spec.model.version"),
    ("negative-replicas", model_spec(replicas=-1), "spec.replicas"),
    (
        "request-above-limit",
        model_spec(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
        "every resource request must be less than or equal to its limit",
    ),
    (
        "not-a-quantity",
        model_spec(resources={"requests": {"cpu": "lots"}}),
        "must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi",
    ),
    (
        "reserved-env",
        model_spec(env=[{"name": "MODELSHIP_MODEL_URI", "value": "file:///x"}]),
        "environment variables starting with MODELSHIP_ are set by the operator",
    ),
    ("missing-model", {"replicas": 1}, "spec.model: Required value"),
]


def _reject(models: Models, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        models.custom.create_namespaced_custom_object(
            naming.GROUP, naming.VERSION, models.namespace, naming.PLURAL, body, dry_run="All"
        )
    assert caught.value.status == 422, caught.value.body
    return str(json.loads(caught.value.body)["message"])


@pytest.fixture
def models(k8s_api: client.ApiClient, namespace: str, crds: None) -> Models:
    return Models(k8s_api, namespace)


@pytest.mark.parametrize(("case", "spec", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_manifest_is_rejected_with_its_message(
    models: Models, case: str, spec: dict, message: str
) -> None:
    assert message in _reject(models, manifest("iris", spec))


def test_a_name_that_cannot_become_a_service_name_is_rejected(models: Models) -> None:
    message = _reject(models, manifest("a" * 53, model_spec()))
    assert "at most 52 characters" in message


@pytest.mark.parametrize(
    "spec",
    [
        model_spec(),
        model_spec(replicas=0),
        model_spec(autoscaling={"maxReplicas": 4}),
        model_spec(
            autoscaling={
                "maxReplicas": 4,
                "metric": "inflightRequests",
                "targetInflightRequests": 1.5,
                "behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}},
            },
            resources={"requests": {"memory": "1Gi"}},
        ),
        model_spec(model={"version": "3", "uri": "file:///models/iris.onnx"}),
        model_spec(model={"version": "2024.06-01", "uri": "pvc://models/iris/3/model.onnx"}),
        model_spec(resources={"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": "1500m"}}),
    ],
)
def test_good_manifests_are_accepted(models: Models, spec: dict) -> None:
    created = models.custom.create_namespaced_custom_object(
        naming.GROUP, naming.VERSION, models.namespace, naming.PLURAL, manifest("iris", spec), dry_run="All"
    )
    assert created["spec"]["server"]["batching"] == {"maxBatchSize": 32, "maxDelayMs": 5}
    assert "replicas" not in spec or created["spec"]["replicas"] == spec["replicas"]


def test_defaults_live_in_the_schema(models: Models) -> None:
    spec = model_spec(autoscaling={"maxReplicas": 4})
    del spec["resources"]
    created = models.custom.create_namespaced_custom_object(
        naming.GROUP, naming.VERSION, models.namespace, naming.PLURAL, manifest("iris", spec), dry_run="All"
    )
    # No targetCPUUtilization (nor metric): a default there would contradict metric inflightRequests,
    # so the operator applies 70 itself.
    assert created["spec"]["autoscaling"] == {"minReplicas": 1, "maxReplicas": 4}
    assert created["spec"]["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}}
    assert "replicas" not in created["spec"]


def test_a_new_artifact_needs_a_new_version(models: Models) -> None:
    models.create("iris", model_spec())
    for change in ({"uri": "https://models.example.com/other.onnx"}, {"sha256": "0" * 64}):
        with pytest.raises(ApiException) as caught:
            models.patch("iris", {"spec": {"model": change}})
        assert caught.value.status == 422
        assert "a new model artifact needs a new version" in json.loads(caught.value.body)["message"]
    models.patch("iris", {"spec": {"model": {"version": "4", "sha256": "0" * 64}}})
    assert models.get("iris")["spec"]["model"]["version"] == "4"


def test_kubectl_scale_is_refused_for_an_autoscaled_model(
    models: Models, kubectl: Callable[..., Any]
) -> None:
    models.create("iris", model_spec(autoscaling={"maxReplicas": 4}))
    result = kubectl("scale", "md/iris", "-n", models.namespace, "--replicas=3", check=False)
    assert result.returncode != 0
    assert "set either replicas (a fixed size) or autoscaling, not both" in result.stderr
