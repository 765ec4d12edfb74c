"""`spec.parse` refuses a ModelDeployment exactly when the CRD does.

The CRD is the first layer a user meets, `spec.parse` the operator's; a body one accepts and the other
refuses is either an object the API server stores and the operator cannot reconcile, or a check the
operator makes that users are never told of at apply time. Each case below is checked twice: that the
CRD (tests/crd_schema.py: defaults, structural schema and CEL, without a cluster) refuses it with the
rule the table names, and that `spec.parse` raises SpecError on the defaulted body iff the CRD refused.

`spec.parse` checks the CRD's rules itself (`operator/modelship/operator/validation.py`), so every
case below must be refused by both; the only rule left to the API server needs the old object.
"""

from __future__ import annotations

from typing import Any

import pytest
from modelship.operator import spec

from tests.crd_schema import defaulted, refusals, rules
from tests.operator.factories import SHA, md_body

HTTPS = "https://models.example.com/iris/3/model.onnx"
S3 = "s3://models/iris/3/model.onnx"


def body(name: str = "iris", **fields: Any) -> dict[str, Any]:
    return md_body(name, **fields)


def without(path: str, **fields: Any) -> dict[str, Any]:
    """A body whose field at the dotted `path` (under spec) is removed."""
    made = body(**fields)
    *parents, last = path.split(".")
    node = made["spec"]
    for part in parents:
        node = node[part]
    del node[last]
    return made


def canary(*steps: dict[str, Any], **more: Any) -> dict[str, Any]:
    return body(rollout={"canary": {"steps": list(steps), **more}})


def analysis(**settings: Any) -> dict[str, Any]:
    return canary({"analysis": {}}, analysis=settings)


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("minimal", body()),
    ("zero-replicas", body(replicas=0)),
    ("most-replicas", body(replicas=1000)),
    ("autoscaled-with-defaults", body(autoscaling={"maxReplicas": 4})),
    (
        "autoscaled-on-cpu-said-so",
        body(autoscaling={"maxReplicas": 4, "metric": "cpu", "targetCPUUtilization": 60}),
    ),
    (
        "autoscaled-on-inflight-requests-without-a-cpu-request",
        body(
            autoscaling={"maxReplicas": 4, "metric": "inflightRequests", "targetInflightRequests": 1.5},
            resources={"requests": {"memory": "1Gi"}},
        ),
    ),
    (
        "scaling-behavior",
        body(
            autoscaling={
                "maxReplicas": 4,
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Disabled"},
                    "scaleDown": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 1800}]},
                },
            }
        ),
    ),
    ("http-uri", body(model={"uri": "http://store.local/iris.onnx"})),
    ("file-uri-without-sha", without("model.sha256", model={"uri": "file:///models/iris.onnx"})),
    ("pvc-uri", without("model.sha256", model={"version": "2024.06-01", "uri": "pvc://models/iris/3.onnx"})),
    ("s3-uri", body(model={"uri": S3})),
    (
        "s3-settings",
        body(
            model={
                "uri": "s3://my.models-2/iris/3/model.onnx",
                "s3": {
                    "endpoint": "https://minio.storage.svc:9000/",
                    "region": "eu-west-1",
                    "addressing": "virtual",
                    "credentialsSecretRef": {"name": "s3-reader"},
                },
            },
            env=[{"name": "AWS_REGION", "value": "eu-west-1"}],
        ),
    ),
    ("s3-ip-endpoint-path-style", body(model={"uri": S3, "s3": {"endpoint": "http://10.0.0.7:9000"}})),
    (
        "s3-pod-credentials-from-env",
        body(model={"uri": S3}, env=[{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {}}}]),
    ),
    ("model-name", body(model={"name": "iris_classifier.v2"})),
    (
        "quantities-as-numbers",
        body(resources={"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": "1500m"}}),
    ),
    ("server-settings", body(server={"threads": 4, "batching": {"maxBatchSize": 1, "maxDelayMs": 0}})),
    ("connection-limits", body(server={"connections": {"maxRequests": 0, "maxAge": "1m30s"}})),
    ("connection-limits-as-numbers", body(server={"connections": {"maxRequests": 10_000_000, "maxAge": 0}})),
    ("connection-age-in-milliseconds", body(server={"connections": {"maxAge": "500ms"}})),
    ("auth-secret-with-default-key", body(server={"authSecretRef": {"name": "iris-token"}})),
    (
        "user-env",
        body(env=[{"name": "HTTPS_PROXY", "value": "http://p:3128"}, {"name": "K", "valueFrom": {}}]),
    ),
    ("tolerations", body(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}])),
    ("recreate", body(rollout={"strategy": "Recreate"})),
    (
        "every-kind-of-step",
        canary(
            {"setWeight": 0},
            {"pause": {"duration": 0}},
            {"setWeight": 100},
            {"pause": {"duration": "1h30m"}},
            {"pause": {"duration": "250ms"}},
            {"analysis": {}},
            {"pause": {}},
            scaleDownDelaySeconds=0,
        ),
    ),
    (
        "analysis-settings",
        analysis(
            prometheus={"url": "http://prometheus.monitoring:9090"},
            interval=15,
            maxLatencyP99="250ms",
            successRate=1,
            queries=[{"name": "errors", "query": "sum(x)", "max": 0}],
        ),
    ),
    ("prediction-drift-with-defaults", analysis(predictionDrift={"max": 0.2})),
    ("prediction-drift", analysis(predictionDrift={"max": 1, "minRequests": 0, "output": "label"})),
    ("shadow-steps", canary({"shadow": {"percent": 20, "duration": "5m"}}, {"shadow": {"percent": 100}})),
    ("agreement-with-defaults", analysis(agreement={"min": 0.98})),
    ("agreement", analysis(agreement={"min": 1, "minRequests": 0})),
    ("gateway-route", canary({"setWeight": 10}, trafficRouting={"gatewayAPI": {"httpRoute": "iris"}})),
    ("longest-name", body("a" * 52)),
]


BAD: list[Any] = [
    # -- refused by both
    pytest.param(without("model"), "spec: 'model' is a required property", id="missing-model"),
    pytest.param(without("model.uri"), "'uri' is a required property", id="model-without-uri"),
    pytest.param(without("model.version"), "'version' is a required property", id="model-without-version"),
    pytest.param(
        body(model={"version": ""}), "spec.model.version: '' should be non-empty", id="empty-version"
    ),
    pytest.param(
        canary({}), "each step is exactly one of setWeight, pause, analysis or shadow", id="empty-step"
    ),
    pytest.param(canary({"pause": {"duration": "5x"}}), "a duration is", id="pause-with-an-unknown-unit"),
    pytest.param(canary({"pause": {"duration": -1}}), "a duration is", id="negative-pause"),
    pytest.param(canary({"pause": {"duration": "1.5s"}}), "a duration is", id="fractional-pause-text"),
    pytest.param(canary({"pause": {"duration": ""}}), "a duration is", id="empty-pause"),
    # -- refused by the CRD, and by validation.py since it checks the CRD's rules again
    pytest.param(
        body(model={"version": "three point one"}),
        "spec.model.version: 'three point one' does not match",
        id="version-with-spaces",
    ),
    pytest.param(
        body(model={"version": 3}),
        "spec.model.version: 3 is not of type 'string'",
        id="version-as-a-number",
    ),
    pytest.param(
        body(model={"name": "Iris Classifier"}),
        "spec.model.name: 'Iris Classifier' does not match",
        id="model-name-with-a-space",
    ),
    pytest.param(
        body(model={"uri": "gs://bucket/iris.onnx"}),
        "uri must start with one of https://, http://, s3://, file:// or pvc://",
        id="unknown-scheme",
    ),
    pytest.param(
        without("model.sha256", model={"uri": S3}),
        "sha256 is required for an s3 uri (an ETag is not a digest)",
        id="s3-without-sha",
    ),
    pytest.param(
        body(model={"uri": "s3://models/"}), "an s3 uri names a bucket and a key", id="s3-without-key"
    ),
    pytest.param(
        body(model={"uri": "s3://Models/iris.onnx"}), "an s3 uri names a bucket and a key", id="s3-bad-bucket"
    ),
    pytest.param(
        body(model={"s3": {"region": "eu-west-1"}}),
        "s3 settings apply only to an s3:// uri",
        id="s3-settings-for-https",
    ),
    pytest.param(
        body(model={"uri": S3, "s3": {"endpoint": "http://minio:9000/models"}}),
        "an s3 endpoint is a URL without a path",
        id="s3-endpoint-with-a-path",
    ),
    pytest.param(
        body(model={"uri": S3, "s3": {"endpoint": "http://10.0.0.7:9000", "addressing": "virtual"}}),
        "virtual-host addressing puts the bucket in the host name",
        id="s3-virtual-addressing-with-an-ip",
    ),
    pytest.param(
        body(model={"uri": S3, "s3": {"addressing": "dns"}}),
        "spec.model.s3.addressing: 'dns' is not one of",
        id="s3-unknown-addressing",
    ),
    pytest.param(
        body(model={"uri": S3, "s3": {"region": "EU West"}}),
        "spec.model.s3.region: 'EU West' does not match",
        id="s3-bad-region",
    ),
    pytest.param(
        body(model={"uri": S3, "s3": {"credentialsSecretRef": {}}}),
        "'name' is a required property",
        id="s3-secret-without-name",
    ),
    pytest.param(
        body(
            model={"uri": S3, "s3": {"credentialsSecretRef": {"name": "s3"}}},
            env=[{"name": "AWS_ACCESS_KEY_ID", "value": "x"}],
        ),
        "env must not set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_SESSION_TOKEN",
        id="s3-credentials-twice",
    ),
    pytest.param(
        without("model.sha256"),
        "sha256 is required for an http(s) uri",
        id="https-without-sha",
    ),
    pytest.param(
        body(model={"uri": "https://models.example.com"}),
        "an http(s) uri needs a host and a path",
        id="https-without-path",
    ),
    pytest.param(
        without("model.sha256", model={"uri": "pvc://models"}),
        "a pvc uri names a claim and a path inside it",
        id="pvc-without-path",
    ),
    pytest.param(
        without("model.sha256", model={"uri": "file://models/iris.onnx"}),
        "a file uri is an absolute path inside the pod",
        id="relative-file-uri",
    ),
    pytest.param(
        body(model={"sha256": SHA.upper()}),
        "sha256 must be 64 lowercase hexadecimal characters",
        id="uppercase-sha",
    ),
    pytest.param(
        body(model={"sha256": "abc123"}),
        "sha256 must be 64 lowercase hexadecimal characters",
        id="short-sha",
    ),
    pytest.param(
        body(replicas=-1),
        "spec.replicas: -1 is less than the minimum of 0",
        id="negative-replicas",
    ),
    pytest.param(
        body(replicas=1001),
        "spec.replicas: 1001 is greater than the maximum of 1000",
        id="too-many-replicas",
    ),
    pytest.param(
        body(replicas="3"),
        "spec.replicas: '3' is not of type 'integer'",
        id="replicas-as-text",
    ),
    pytest.param(
        body(replicas=2, autoscaling={"maxReplicas": 3}),
        "set either replicas (a fixed size) or autoscaling, not both",
        id="replicas-and-autoscaling",
    ),
    pytest.param(
        body(autoscaling={"minReplicas": 5, "maxReplicas": 3}),
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        id="min-above-max",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 0}),
        "spec.autoscaling.maxReplicas: 0 is less than the minimum of 1",
        id="zero-max-replicas",
    ),
    pytest.param(
        body(autoscaling={"minReplicas": 2}),
        "'maxReplicas' is a required property",
        id="autoscaling-without-max",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3}, resources={"requests": {"memory": "1Gi"}}),
        "autoscaling on CPU utilisation needs resources.requests.cpu",
        id="autoscaling-without-cpu-request",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "cpu"}, resources={"requests": {"memory": "1Gi"}}),
        "autoscaling on CPU utilisation needs resources.requests.cpu",
        id="cpu-metric-without-cpu-request",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "targetInflightRequests": 2}),
        "targetInflightRequests applies to metric: inflightRequests (metric defaults to cpu)",
        id="inflight-target-without-its-metric",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "cpu", "targetInflightRequests": 2}),
        "targetInflightRequests applies to metric: inflightRequests",
        id="inflight-target-with-cpu-metric",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "inflightRequests"}),
        "metric inflightRequests needs targetInflightRequests, the average in-flight requests per pod",
        id="inflight-metric-without-its-target",
    ),
    pytest.param(
        body(
            autoscaling={
                "maxReplicas": 3,
                "metric": "inflightRequests",
                "targetInflightRequests": 2,
                "targetCPUUtilization": 70,
            }
        ),
        "targetCPUUtilization applies to metric: cpu only",
        id="cpu-target-with-inflight-metric",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "memory"}),
        "'memory' is not one of ['cpu', 'inflightRequests']",
        id="unknown-metric",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "inflightRequests", "targetInflightRequests": 0}),
        "targetInflightRequests: 0 is less than or equal to the minimum of 0",
        id="zero-inflight-target",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "inflightRequests", "targetInflightRequests": 10001}),
        "targetInflightRequests: 10001 is greater than the maximum of 10000",
        id="too-high-inflight-target",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "metric": "inflightRequests", "targetInflightRequests": "2"}),
        "targetInflightRequests: '2' is not of type 'number'",
        id="inflight-target-as-text",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "behavior": {"scaleUp": {"selectPolicy": "Fastest"}}}),
        "'Fastest' is not one of ['Max', 'Min', 'Disabled']",
        id="unknown-select-policy",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 7200}}}),
        "stabilizationWindowSeconds: 7200 is greater than the maximum of 3600",
        id="long-stabilization-window",
    ),
    pytest.param(
        body(autoscaling={"maxReplicas": 3, "behavior": {"scaleDown": {"policies": []}}}),
        "policies: [] should be non-empty",
        id="no-policies",
    ),
    pytest.param(
        body(
            autoscaling={
                "maxReplicas": 3,
                "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1}]}},
            }
        ),
        "'periodSeconds' is a required property",
        id="policy-without-period",
    ),
    pytest.param(
        body(
            autoscaling={
                "maxReplicas": 3,
                "behavior": {
                    "scaleUp": {"policies": [{"type": "Replicas", "value": 1, "periodSeconds": 15}]}
                },
            }
        ),
        "'Replicas' is not one of ['Pods', 'Percent']",
        id="unknown-policy-type",
    ),
    pytest.param(
        body(
            autoscaling={
                "maxReplicas": 3,
                "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}},
            }
        ),
        "value: 0 is less than the minimum of 1",
        id="zero-policy-value",
    ),
    pytest.param(
        body(
            autoscaling={
                "maxReplicas": 3,
                "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 3600}]}},
            }
        ),
        "periodSeconds: 3600 is greater than the maximum of 1800",
        id="long-policy-period",
    ),
    pytest.param(
        body(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
        "every resource request must be less than or equal to its limit",
        id="request-above-limit",
    ),
    pytest.param(
        body(resources={"requests": {"cpu": "lots"}}),
        "must be a Kubernetes quantity",
        id="not-a-quantity",
    ),
    pytest.param(
        body(resources={"limits": {"memory": "a lot"}}),
        "must be a Kubernetes quantity",
        id="limit-not-a-quantity",
    ),
    pytest.param(
        body(server={"threads": 0}),
        "spec.server.threads: 0 is less than the minimum of 1",
        id="zero-threads",
    ),
    pytest.param(
        body(server={"batching": {"maxBatchSize": 0}}),
        "spec.server.batching.maxBatchSize: 0 is less than the minimum of 1",
        id="zero-batch",
    ),
    pytest.param(
        body(server={"batching": {"maxDelayMs": 5000}}),
        "spec.server.batching.maxDelayMs: 5000 is greater than the maximum of 1000",
        id="long-batch-delay",
    ),
    pytest.param(
        body(server={"connections": {"maxRequests": -1}}),
        "spec.server.connections.maxRequests: -1 is less than the minimum of 0",
        id="negative-connection-requests",
    ),
    pytest.param(
        body(server={"connections": {"maxRequests": 10_000_001}}),
        "spec.server.connections.maxRequests: 10000001 is greater than the maximum of 10000000",
        id="too-many-connection-requests",
    ),
    pytest.param(
        body(server={"connections": {"maxRequests": "1000"}}),
        "spec.server.connections.maxRequests: '1000' is not of type 'integer'",
        id="connection-requests-as-text",
    ),
    pytest.param(
        body(server={"connections": {"maxAge": -1}}),
        "a connection's maxAge is a number of seconds or text such as 10s",
        id="negative-connection-age",
    ),
    pytest.param(
        body(server={"connections": {"maxAge": "a while"}}),
        "a connection's maxAge is a number of seconds or text such as 10s",
        id="connection-age-not-a-duration",
    ),
    pytest.param(
        body(server={"connections": {"maxAge": 2.5}}),
        "2.5 is not valid under any of the given schemas",
        id="fractional-connection-age-number",
    ),
    pytest.param(
        body(server={"authSecretRef": {"key": "token"}}),
        "'name' is a required property",
        id="auth-secret-without-name",
    ),
    pytest.param(
        body(env=[{"name": "MODELSHIP_MODEL_URI", "value": "file:///x"}]),
        "environment variables starting with MODELSHIP_ are set by the operator",
        id="reserved-env",
    ),
    pytest.param(
        body(env=[{"value": "x"}]),
        "'name' is a required property",
        id="env-without-name",
    ),
    pytest.param(
        body(tolerations=[{"key": "gpu", "operator": "Maybe"}]),
        "'Maybe' is not one of ['Exists', 'Equal']",
        id="unknown-toleration-operator",
    ),
    pytest.param(
        body(rollout={"strategy": "BlueGreen"}),
        "'BlueGreen' is not one of ['Canary', 'Recreate']",
        id="unknown-strategy",
    ),
    pytest.param(
        body(rollout={"strategy": "Recreate", "canary": {"steps": [{"setWeight": 50}]}}),
        "canary settings need strategy Canary",
        id="recreate-with-canary",
    ),
    pytest.param(
        canary({"setWeight": 20, "pause": {}}),
        "each step is exactly one of setWeight, pause, analysis or shadow",
        id="step-of-two-kinds",
    ),
    pytest.param(
        canary({"setWeight": 150}),
        "setWeight: 150 is greater than the maximum of 100",
        id="weight-above-100",
    ),
    pytest.param(
        canary({"setWeight": "50"}),
        "setWeight: '50' is not of type 'integer'",
        id="weight-as-text",
    ),
    pytest.param(
        canary({"setWeight": "half"}),
        "setWeight: 'half' is not of type 'integer'",
        id="weight-not-a-number",
    ),
    pytest.param(
        canary({"pause": {"duration": "30"}}),
        "a duration is a number of seconds or text such as 30s",
        id="pause-digits-as-text",
    ),
    pytest.param(
        canary({"pause": {"duration": " 30s"}}),
        "a duration is a number of seconds or text such as 30s",
        id="padded-pause",
    ),
    pytest.param(
        canary({"pause": {"duration": 1.5}}),
        "1.5 is not valid under any of the given schemas",
        id="fractional-pause-number",
    ),
    pytest.param(
        canary({"setWeight": 10}, scaleDownDelaySeconds=-1),
        "scaleDownDelaySeconds: -1 is less than the minimum of 0",
        id="negative-scale-down-delay",
    ),
    pytest.param(
        canary({"setWeight": 10}, scaleDownDelaySeconds="soon"),
        "scaleDownDelaySeconds: 'soon' is not of type 'integer'",
        id="scale-down-delay-as-text",
    ),
    pytest.param(
        canary({"setWeight": 10}, trafficRouting={"gatewayAPI": {}}),
        "'httpRoute' is a required property",
        id="gateway-without-route",
    ),
    pytest.param(
        analysis(prometheus={"url": "prometheus:9090"}),
        "the Prometheus url must be http:// or https://",
        id="prometheus-url-without-scheme",
    ),
    pytest.param(
        analysis(interval="soon"),
        "a duration is a number of seconds or text such as 30s",
        id="analysis-interval-not-a-duration",
    ),
    pytest.param(
        analysis(maxLatencyP99="fast"),
        "a duration is a number of seconds or text such as 250ms",
        id="latency-not-a-duration",
    ),
    pytest.param(
        analysis(successRate=1.5),
        "successRate: 1.5 is greater than the maximum of 1",
        id="success-rate-above-1",
    ),
    pytest.param(
        analysis(queries=[{"name": "errors", "query": "sum(x)"}]),
        "a query needs min or max (or both)",
        id="query-without-bounds",
    ),
    pytest.param(
        analysis(predictionDrift={"minRequests": 10}),
        "'max' is a required property",
        id="prediction-drift-without-max",
    ),
    pytest.param(
        analysis(predictionDrift={"max": 1.5}),
        "predictionDrift.max: 1.5 is greater than the maximum of 1",
        id="prediction-drift-above-1",
    ),
    pytest.param(
        analysis(predictionDrift={"max": 0.2, "minRequests": -1}),
        "predictionDrift.minRequests: -1 is less than the minimum of 0",
        id="prediction-drift-negative-min-requests",
    ),
    pytest.param(
        analysis(predictionDrift={"max": 0.2, "output": ""}),
        "predictionDrift.output: '' should be non-empty",
        id="prediction-drift-empty-output",
    ),
    pytest.param(
        canary({"shadow": {"duration": "5m"}}),
        "'percent' is a required property",
        id="shadow-without-percent",
    ),
    pytest.param(
        canary({"shadow": {"percent": 0}}),
        "shadow.percent: 0 is less than the minimum of 1",
        id="shadow-of-nothing",
    ),
    pytest.param(
        canary({"shadow": {"percent": 101}}),
        "shadow.percent: 101 is greater than the maximum of 100",
        id="shadow-above-100",
    ),
    pytest.param(
        canary({"shadow": {"percent": 20, "duration": "5x"}}), "a duration is", id="shadow-bad-duration"
    ),
    pytest.param(
        canary({"shadow": {"percent": 20}, "setWeight": 20}),
        "each step is exactly one of setWeight, pause, analysis or shadow",
        id="shadow-and-weight",
    ),
    pytest.param(analysis(agreement={}), "'min' is a required property", id="agreement-without-min"),
    pytest.param(
        analysis(agreement={"min": 1.5}),
        "agreement.min: 1.5 is greater than the maximum of 1",
        id="agreement-above-1",
    ),
    pytest.param(
        analysis(agreement={"min": 0.9, "minRequests": -1}),
        "agreement.minRequests: -1 is less than the minimum of 0",
        id="agreement-negative-min-requests",
    ),
    pytest.param(
        body("a" * 53),
        "at most 52 characters",
        id="name-too-long",
    ),
    pytest.param(
        body("Iris"),
        "lowercase letters, digits and '-'",
        id="uppercase-name",
    ),
]


def _parse_outcome(stored: dict[str, Any]) -> str:
    try:
        spec.parse(stored)
    except spec.SpecError:
        return "refused"
    except Exception as exc:  # reported as the mismatch it is, not as a broken test
        return f"crashed with {type(exc).__name__}: {exc}"
    return "accepted"


@pytest.mark.parametrize(("case", "made"), GOOD, ids=[case for case, _ in GOOD])
def test_what_the_crd_accepts_spec_parse_accepts(case: str, made: dict[str, Any]) -> None:
    stored = defaulted(made)
    assert refusals(stored) == []
    assert _parse_outcome(stored) == "accepted"


# The same cases without their marks: the CRD's side of each mismatch holds.
@pytest.mark.parametrize(("made", "why"), [pytest.param(*p.values, id=p.id) for p in BAD])
def test_the_crd_refuses_each_bad_case_for_its_own_reason(made: dict[str, Any], why: str) -> None:
    found = refusals(defaulted(made))
    assert any(why in refusal for refusal in found), found


@pytest.mark.parametrize(("made", "why"), BAD)
def test_what_the_crd_refuses_spec_parse_refuses(made: dict[str, Any], why: str) -> None:
    assert _parse_outcome(defaulted(made)) == "refused"


def test_the_defaults_are_the_ones_spec_parse_would_otherwise_assume() -> None:
    """A sanity check of the emulation: an empty server and rollout get the CRD's nested defaults."""
    stored = defaulted(without("server", rollout={}))
    assert stored["spec"]["server"] == {"batching": {"maxBatchSize": 32, "maxDelayMs": 5}}
    assert stored["spec"]["rollout"] == {"strategy": "Canary"}
    parsed = spec.parse(defaulted(body(autoscaling={"maxReplicas": 4})))
    assert parsed.autoscaling == spec.Autoscaling(min_replicas=1, max_replicas=4, target_cpu_utilization=70)


def test_every_rule_of_the_crd_is_compared_here() -> None:
    """Each CEL rule refuses at least one case above; the one that runs only on update is the exception."""
    seen = [refusal for param in BAD for refusal in refusals(defaulted(param.values[0]))]
    untested = [
        rule["message"]
        for rule in rules()
        if "oldSelf" not in rule["rule"] and not any(rule["message"] in refusal for refusal in seen)
    ]
    assert untested == []
    assert [rule["message"] for rule in rules() if "oldSelf" in rule["rule"]] == [
        "a new model artifact needs a new version: change spec.model.version together with uri or sha256"
    ]
