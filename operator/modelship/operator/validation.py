"""The CRD's rules, checked again by `spec.parse`: what the API server refuses, the operator refuses.

The CRD (schema and CEL) is the layer a user meets at `kubectl apply`; these are the same rules,
for a body that reached the operator without them (a CRD from an older chart, a test, a restore
that bypassed admission), so that such a body gets an InvalidSpec status that says what is wrong
instead of a reconcile that crashes or does something the CRD never allowed.
`tests/contract/test_spec_matches_crd.py` holds the two to the same cases. Rules that need the
old object (a new artifact needs a new version) stay with the API server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

from modelship.operator.naming import MAX_NAME_LENGTH
from modelship.operator.quantities import parse_quantity


class SpecError(ValueError):
    """A ModelDeployment whose spec the operator cannot act on; the message names the field."""


_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
# The keys of an s3 credentials Secret, and the variables the init container gets them as.
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_S3_ENDPOINT = re.compile(r"^https?://[^/?#@]+/?$")
_IP_ENDPOINT = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[0-9.]+)(:[0-9]+)?/?$")
_REGION = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_URIS = {
    "https://": re.compile(r"^https?://[^/?#]+/.+$"),
    "http://": re.compile(r"^https?://[^/?#]+/.+$"),
    "s3://": re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^/].*$"),
    "file://": re.compile(r"^file:///[^/].*$"),
    "pvc://": re.compile(r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^/].*$"),
}
_FORMS = {
    "https://": "https://<host>/<path>",
    "http://": "http://<host>/<path>",
    "s3://": "s3://<bucket>/<path/to/model.onnx>",
    "file://": "file:///<absolute path in the pod>",
    "pvc://": "pvc://<claim>/<path/to/model.onnx>",
}


def _fail(path: str, message: str) -> NoReturn:
    raise SpecError(f"{path}: {message}")


def _int(raw: Mapping[str, Any], key: str, path: str, low: int, high: int | None = None) -> None:
    if key not in raw:
        return
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{path}.{key}", f"{value!r} is not an integer")
    if value < low or (high is not None and value > high):
        _fail(
            f"{path}.{key}",
            f"{value} is not between {low} and {high}" if high is not None else f"{value} < {low}",
        )


def _duration(value: Any, path: str, *, minimum: int) -> None:
    if isinstance(value, bool):
        _fail(path, "a duration is a number of seconds or text such as 30s, 2m or 1h30m")
    if isinstance(value, int):
        if value < minimum:
            _fail(path, f"{value} < {minimum}")
        return
    if not isinstance(value, str) or not _DURATION.match(value):
        _fail(path, "a duration is a number of seconds or text such as 30s, 2m or 1h30m")


def _label_value(value: Any, path: str) -> None:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        _fail(path, f"{value!r} must be a label value (letters, digits, '-', '_', '.'; at most 63)")


def check_name(name: str) -> None:
    if not _NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        _fail("metadata.name", f"{name!r} must be a DNS label of at most {MAX_NAME_LENGTH} characters")


def check_model(model: Mapping[str, Any]) -> None:
    if not model.get("version") or not model.get("uri"):
        _fail("spec.model", "version and uri are required")
    _label_value(model["version"], "spec.model.version")
    if "name" in model:
        _label_value(model["name"], "spec.model.name")
    uri = model["uri"]
    if not isinstance(uri, str):
        _fail("spec.model.uri", "must be a string")
    scheme = next((s for s in _URIS if uri.startswith(s)), None)
    if scheme is None:
        _fail("spec.model.uri", "uri must start with one of https://, http://, s3://, file:// or pvc://")
    if not _URIS[scheme].match(uri):
        _fail("spec.model.uri", f"{uri!r}: expected {_FORMS[scheme]}")
    sha = model.get("sha256")
    if scheme in ("https://", "http://", "s3://") and not sha:
        _fail("spec.model.sha256", f"an {'s3' if scheme == 's3://' else 'http(s)'} model needs its sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        _fail("spec.model.sha256", "must be 64 lowercase hex characters")
    if "s3" in model:
        if scheme != "s3://":
            _fail("spec.model.s3", "s3 settings apply only to an s3:// uri")
        _check_s3(model["s3"])


def _check_s3(s3: Any) -> None:
    if not isinstance(s3, Mapping):
        _fail("spec.model.s3", "must be an object")
    endpoint = s3.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not _S3_ENDPOINT.match(endpoint)):
        _fail("spec.model.s3.endpoint", "an s3 endpoint is a URL without a path: http(s)://<host>[:port]")
    region = s3.get("region")
    if region is not None and (not isinstance(region, str) or len(region) > 64 or not _REGION.match(region)):
        _fail("spec.model.s3.region", f"{region!r} is not a region name such as eu-west-1")
    addressing = s3.get("addressing")
    if addressing is not None and addressing not in ("path", "virtual"):
        _fail("spec.model.s3.addressing", f"{addressing!r}: expected path or virtual")
    if addressing == "virtual" and endpoint is not None and _IP_ENDPOINT.match(endpoint):
        _fail(
            "spec.model.s3",
            "virtual-host addressing puts the bucket in the host name, which an IP address endpoint "
            "cannot have: use addressing: path",
        )
    ref = s3.get("credentialsSecretRef")
    if ref is not None:
        name = ref.get("name") if isinstance(ref, Mapping) else None
        if not isinstance(name, str) or len(name) > 253 or not _SECRET_NAME.match(name):
            _fail("spec.model.s3.credentialsSecretRef.name", f"{name!r} is not a Secret name")


def check_scaling(spec: Mapping[str, Any]) -> None:
    _int(spec, "replicas", "spec", 0, 1000)
    autoscaling = spec.get("autoscaling")
    if autoscaling is None:
        return
    if "replicas" in spec:
        _fail("spec", "replicas and autoscaling exclude each other")
    if not isinstance(autoscaling, Mapping) or "maxReplicas" not in autoscaling:
        _fail("spec.autoscaling.maxReplicas", "is required")
    for key in ("minReplicas", "maxReplicas", "targetCPUUtilization"):
        _int(autoscaling, key, "spec.autoscaling", 1, 1000)
    if int(autoscaling.get("minReplicas", 1)) > int(autoscaling["maxReplicas"]):
        _fail("spec.autoscaling", "minReplicas must not exceed maxReplicas")
    on_cpu = _check_metric(autoscaling)
    behavior = autoscaling.get("behavior") or {}
    for direction in ("scaleUp", "scaleDown"):
        if direction in behavior:
            _check_scaling_rules(behavior[direction], f"spec.autoscaling.behavior.{direction}")
    requests = (spec.get("resources") or {}).get("requests") or {}
    if on_cpu and "cpu" not in requests:
        _fail("spec.resources.requests.cpu", "autoscaling on CPU needs a CPU request")


def _check_metric(autoscaling: Mapping[str, Any]) -> bool:
    """The metric's own fields; whether the HPA scales on CPU."""
    path = "spec.autoscaling"
    metric = autoscaling.get("metric", "cpu")
    if metric not in ("cpu", "inflightRequests"):
        _fail(f"{path}.metric", f"{metric!r} must be cpu or inflightRequests")
    target = autoscaling.get("targetInflightRequests")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 10000
    ):
        _fail(f"{path}.targetInflightRequests", f"{target!r} is not above 0 and at most 10000")
    if metric == "inflightRequests" and target is None:
        _fail(f"{path}.targetInflightRequests", "metric inflightRequests needs targetInflightRequests")
    if metric != "inflightRequests" and target is not None:
        _fail(f"{path}.targetInflightRequests", "applies to metric: inflightRequests only")
    if metric != "cpu" and "targetCPUUtilization" in autoscaling:
        _fail(f"{path}.targetCPUUtilization", "applies to metric: cpu only")
    return bool(metric == "cpu")


def _check_scaling_rules(rules: Any, path: str) -> None:
    """One direction of an HPA's behavior (autoscaling/v2 HPAScalingRules)."""
    if not isinstance(rules, Mapping):
        _fail(path, "must be an object")
    _int(rules, "stabilizationWindowSeconds", path, 0, 3600)
    if rules.get("selectPolicy", "Max") not in ("Max", "Min", "Disabled"):
        _fail(f"{path}.selectPolicy", "must be Max, Min or Disabled")
    policies = rules.get("policies")
    if policies is None:
        return
    if not isinstance(policies, list) or not 1 <= len(policies) <= 10:
        _fail(f"{path}.policies", "is a list of 1 to 10 policies")
    for index, policy in enumerate(policies):
        where = f"{path}.policies[{index}]"
        if not isinstance(policy, Mapping) or not {"type", "value", "periodSeconds"} <= set(policy):
            _fail(where, "needs type, value and periodSeconds")
        if policy["type"] not in ("Pods", "Percent"):
            _fail(f"{where}.type", "must be Pods or Percent")
        _int(policy, "value", where, 1)
        _int(policy, "periodSeconds", where, 1, 1800)


def check_resources(resources: Mapping[str, Any]) -> None:
    parsed: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        for key, value in (resources.get(kind) or {}).items():
            try:
                parsed.setdefault(kind, {})[key] = parse_quantity(value)
            except (ValueError, TypeError):
                _fail(f"spec.resources.{kind}.{key}", f"{value!r} is not a quantity")
    for key, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(key)
        if limit is not None and request > limit:
            _fail(
                f"spec.resources.requests.{key}",
                "every resource request must be less than or equal to its limit",
            )


def check_server(server: Mapping[str, Any]) -> None:
    _int(server, "threads", "spec.server", 1, 256)
    batching = server.get("batching") or {}
    _int(batching, "maxBatchSize", "spec.server.batching", 1, 4096)
    _int(batching, "maxDelayMs", "spec.server.batching", 0, 1000)
    connections = server.get("connections") or {}
    _int(connections, "maxRequests", "spec.server.connections", 0, 10_000_000)
    if "maxAge" in connections:
        _duration(connections["maxAge"], "spec.server.connections.maxAge", minimum=0)
    auth = server.get("authSecretRef")
    if auth is not None and not (isinstance(auth, Mapping) and auth.get("name")):
        _fail("spec.server.authSecretRef.name", "is required")


def _s3_secret(spec: Mapping[str, Any]) -> bool:
    s3 = (spec.get("model") or {}).get("s3")
    return isinstance(s3, Mapping) and "credentialsSecretRef" in s3


def check_pod(spec: Mapping[str, Any]) -> None:
    for index, item in enumerate(spec.get("env") or ()):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not name:
            _fail(f"spec.env[{index}].name", "is required")
        if str(name).startswith("MODELSHIP_"):
            _fail(f"spec.env[{index}].name", "MODELSHIP_ variables are the operator's")
        if str(name) in S3_CREDENTIAL_KEYS and _s3_secret(spec):
            _fail(f"spec.env[{index}].name", f"{name} comes from spec.model.s3.credentialsSecretRef")
    for index, toleration in enumerate(spec.get("tolerations") or ()):
        if toleration.get("operator", "Equal") not in ("Exists", "Equal"):
            _fail(f"spec.tolerations[{index}].operator", "must be Exists or Equal")
        if toleration.get("effect") not in (None, "", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            _fail(f"spec.tolerations[{index}].effect", "must be NoSchedule, PreferNoSchedule or NoExecute")


def check_rollout(rollout: Mapping[str, Any]) -> None:
    strategy = rollout.get("strategy", "Canary")
    if strategy not in ("Canary", "Recreate"):
        _fail("spec.rollout.strategy", f"{strategy!r} must be Canary or Recreate")
    canary = rollout.get("canary")
    if canary is None:
        return
    if strategy == "Recreate":
        _fail("spec.rollout", "Recreate takes no canary")
    _int(canary, "scaleDownDelaySeconds", "spec.rollout.canary", 0, 86400)
    for index, step in enumerate(canary.get("steps") or ()):
        path = f"spec.rollout.canary.steps[{index}]"
        step = step if isinstance(step, Mapping) else {}
        if sum(key in step for key in ("setWeight", "pause", "analysis", "shadow")) != 1:
            _fail(path, "each step is exactly one of setWeight, pause, analysis or shadow")
        _int(step, "setWeight", path, 0, 100)
        for key in ("pause", "shadow"):
            timed = step.get(key)
            if isinstance(timed, Mapping) and timed.get("duration") is not None:
                _duration(timed["duration"], f"{path}.{key}.duration", minimum=0)
        shadow = step.get("shadow")
        if shadow is not None:
            if not isinstance(shadow, Mapping) or "percent" not in shadow:
                _fail(f"{path}.shadow.percent", "is required")
            _int(shadow, "percent", f"{path}.shadow", 1, 100)
    gateway = (canary.get("trafficRouting") or {}).get("gatewayAPI")
    if gateway is not None and not (isinstance(gateway, Mapping) and gateway.get("httpRoute")):
        _fail("spec.rollout.canary.trafficRouting.gatewayAPI.httpRoute", "is required")
    analysis = canary.get("analysis")
    if isinstance(analysis, Mapping):
        _check_analysis(analysis)


def _check_analysis(analysis: Mapping[str, Any]) -> None:
    path = "spec.rollout.canary.analysis"
    url = (analysis.get("prometheus") or {}).get("url")
    if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^/]+", url)):
        _fail(f"{path}.prometheus.url", "the Prometheus url must be http:// or https://")
    if "interval" in analysis:
        _duration(analysis["interval"], f"{path}.interval", minimum=1)
    if "maxLatencyP99" in analysis:
        _duration(analysis["maxLatencyP99"], f"{path}.maxLatencyP99", minimum=0)
    _int(analysis, "failureLimit", path, 1, 100)
    _int(analysis, "minRequests", path, 0)
    rate = analysis.get("successRate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1
    ):
        _fail(f"{path}.successRate", f"{rate!r} is not between 0 and 1")
    for index, query in enumerate(analysis.get("queries") or ()):
        if not isinstance(query, Mapping) or ("min" not in query and "max" not in query):
            _fail(f"{path}.queries[{index}]", "a query needs min or max")
    drift = analysis.get("predictionDrift")
    if drift is not None:
        _check_prediction_drift(drift, f"{path}.predictionDrift")
    agreement = analysis.get("agreement")
    if agreement is not None:
        _check_agreement(agreement, f"{path}.agreement")


def _check_agreement(agreement: Any, path: str) -> None:
    if not isinstance(agreement, Mapping):
        _fail(path, "must be an object with min")
    low = agreement.get("min")
    if isinstance(low, bool) or not isinstance(low, int | float) or not 0 <= low <= 1:
        _fail(f"{path}.min", f"{low!r} is not a share between 0 and 1")
    _int(agreement, "minRequests", path, 0)


def _check_prediction_drift(drift: Any, path: str) -> None:
    if not isinstance(drift, Mapping):
        _fail(path, "must be an object with max")
    high = drift.get("max")
    if isinstance(high, bool) or not isinstance(high, int | float) or not 0 <= high <= 1:
        _fail(f"{path}.max", f"{high!r} is not a number between 0 and 1 (the Jensen-Shannon distance)")
    _int(drift, "minRequests", path, 0)
    output = drift.get("output")
    if output is not None and not (isinstance(output, str) and 1 <= len(output) <= 253):
        _fail(f"{path}.output", f"{output!r} is not the name of an output (1 to 253 characters)")


def check(name: str, spec: Mapping[str, Any]) -> None:
    """SpecError for the first CRD rule the spec breaks."""
    check_name(name)
    check_model(spec.get("model") or {})
    check_scaling(spec)
    check_resources(spec.get("resources") or {})
    check_server(spec.get("server") or {})
    check_pod(spec)
    check_rollout(spec.get("rollout") or {})
