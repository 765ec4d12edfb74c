"""Autoscaling a ModelDeployment: the HPA's metric and behaviour, and what its status tells. Pure.

Two metrics (`spec.autoscaling.metric`):
- `cpu`: CPU use in percent of the pods' request (metrics.k8s.io, from metrics-server).
- `inflightRequests`: the average number of inference requests in flight per pod, the custom
  metric `naming.INFLIGHT_METRIC` (custom.metrics.k8s.io, from an adapter such as
  prometheus-adapter). A batching server's CPU does not follow its load (a request waiting for
  its batch costs no CPU, a full batch costs less per request), while the requests in flight
  are what its latency grows with, so this metric is what an inference server should scale on.

The HPA always gets a `behavior`: defaults suited to model pods, which the user overrides
field by field (`spec.autoscaling.behavior`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from modelship.operator import bodies, naming
from modelship.operator.quantities import parse_quantity
from modelship.operator.reasons import Failure
from modelship.operator.spec import Autoscaling

# Scale up fast, as Kubernetes' own default does (double, or 4 pods more, every 15 s, with no
# stabilisation): a model pod takes long to become ready (it fetches and loads the model, and
# starts with cold caches), so pods asked for late arrive after the burst that needed them.
SCALE_UP: Final[Mapping[str, Any]] = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15},
        {"type": "Pods", "value": 4, "periodSeconds": 15},
    ],
}
# Scale down slowly: at most a quarter of the pods (at least one) a minute, once the load has
# been lower for 5 minutes. Kubernetes' default removes up to 100% every 15 s after those 5
# minutes: a pod removed is a slow, cold start when the load comes back, and the requests in
# flight are noisy enough that a fast scale-down flaps.
SCALE_DOWN: Final[Mapping[str, Any]] = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 25, "periodSeconds": 60},
        {"type": "Pods", "value": 1, "periodSeconds": 60},
    ],
}
DEFAULT_BEHAVIOR: Final[Mapping[str, Mapping[str, Any]]] = {"scaleUp": SCALE_UP, "scaleDown": SCALE_DOWN}

_MILLI = Decimal("0.001")
_CENTI = Decimal("0.01")


def behavior(override: Mapping[str, Any]) -> dict[str, Any]:
    """The HPA's `spec.behavior`: the defaults with the user's keys replacing theirs, per direction
    (a `policies` list given replaces the default list whole)."""
    return {
        direction: copy.deepcopy({**default, **(override.get(direction) or {})})
        for direction, default in DEFAULT_BEHAVIOR.items()
    }


def quantity(value: float) -> str:
    """A target as the API server stores a quantity, so that the live HPA compares equal to ours:
    whole numbers as "2" (and "1k" for 1000), fractions in milli-units ("1500m"), at least "1m"."""
    milli = max(1, int((Decimal(str(value)) / _MILLI).to_integral_value(ROUND_HALF_UP)))
    if milli % 1000:
        return f"{milli}m"
    whole, suffixes = milli // 1000, ["", "k", "M"]
    while whole % 1000 == 0 and len(suffixes) > 1:
        whole, suffixes = whole // 1000, suffixes[1:]
    return f"{whole}{suffixes[0]}"


def metrics(scaling: Autoscaling) -> list[dict[str, Any]]:
    """The HPA's `spec.metrics`: one metric, the one `spec.autoscaling.metric` names."""
    if scaling.on_cpu:
        target = {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}
        return [{"type": "Resource", "resource": {"name": "cpu", "target": target}}]
    assert scaling.target_inflight_requests is not None  # the CRD requires it with this metric
    target = {"type": "AverageValue", "averageValue": quantity(scaling.target_inflight_requests)}
    return [{"type": "Pods", "pods": {"metric": {"name": naming.INFLIGHT_METRIC}, "target": target}}]


def _number(value: Decimal, places: Decimal) -> str:
    """At most `places` decimals, without trailing zeros: 3.2, 2, 0.33."""
    return format(value.quantize(places, ROUND_HALF_UP).normalize(), "f")


def target_text(scaling: Autoscaling) -> str:
    if scaling.on_cpu:
        return f"{scaling.target_cpu_utilization}%"
    return _number(parse_quantity(quantity(scaling.target_inflight_requests or 0)), _MILLI)


def current_text(scaling: Autoscaling, current_metrics: Sequence[Any]) -> str | None:
    """The HPA's last reading of our metric, or None (not read yet, or it cannot read it)."""
    for entry in current_metrics:
        if not isinstance(entry, Mapping):
            continue
        if scaling.on_cpu and entry.get("type") == "Resource":
            resource = entry.get("resource") or {}
            value = (resource.get("current") or {}).get("averageUtilization")
            if resource.get("name") == "cpu" and value is not None:
                return f"{value}%"
        if not scaling.on_cpu and entry.get("type") == "Pods":
            pods = entry.get("pods") or {}
            value = (pods.get("current") or {}).get("averageValue")
            if (pods.get("metric") or {}).get("name") == naming.INFLIGHT_METRIC and value is not None:
                try:
                    return _number(parse_quantity(value), _CENTI)
                except ValueError:
                    return None
    return None


def metric_subject(scaling: Autoscaling) -> str:
    """What the HPA reads, as a problem message names it."""
    return "the pods' CPU utilisation" if scaling.on_cpu else naming.INFLIGHT_METRIC


def is_metric_failure(reason: str) -> bool:
    """An HPA reason that says it could not read its metric (FailedGetPodsMetric, FailedGetResourceMetric)."""
    return reason.startswith("FailedGet") and reason.endswith("Metric")


def problem(scaling: Autoscaling, hpa_status: Mapping[str, Any]) -> Failure | None:
    """Why the HPA does not scale, from its ScalingActive or AbleToScale condition, or None."""
    active = bodies.condition(hpa_status, "ScalingActive") or {}
    able = bodies.condition(hpa_status, "AbleToScale") or {}
    if active.get("status") == "False":
        reason, message = str(active.get("reason") or "ScalingInactive"), str(active.get("message") or "")
        if is_metric_failure(reason):
            return Failure(reason, f"the HPA cannot read {metric_subject(scaling)}: {message}")
        return Failure(reason, f"the HPA is not scaling: {message}")
    if able.get("status") == "False":
        reason, message = str(able.get("reason") or "UnableToScale"), str(able.get("message") or "")
        return Failure(reason, f"the HPA cannot scale its Deployment: {message}")
    return None


def autoscaling_status(scaling: Autoscaling, hpa_status: Mapping[str, Any]) -> dict[str, Any]:
    """`status.autoscaling`: the HPA's metric, its target and last reading, its size and its trouble."""
    target = target_text(scaling)
    current = current_text(scaling, hpa_status.get("currentMetrics") or ())
    unit = "cpu" if scaling.on_cpu else "in-flight"
    out: dict[str, Any] = {"metric": scaling.metric, "target": target}
    if current is not None:
        out["current"] = current
    out["load"] = f"{current or '?'}/{target} {unit}"
    # A new HPA's status says 0 and 0 until its first sync: no size has been chosen yet, and
    # minReplicas is at least 1, so 0 would be a false reading.
    if hpa_status.get("desiredReplicas"):
        out["currentReplicas"] = hpa_status.get("currentReplicas") or 0
        out["desiredReplicas"] = hpa_status["desiredReplicas"]
    if hpa_status.get("lastScaleTime") is not None:
        out["lastScaleTime"] = hpa_status["lastScaleTime"]
    active = bodies.condition(hpa_status, "ScalingActive")
    if active is not None:
        out["scalingActive"] = active.get("status") == "True"
    limited = bodies.condition(hpa_status, "ScalingLimited")
    if limited is not None:
        out["scalingLimited"] = limited.get("status") == "True"
        if out["scalingLimited"] and limited.get("reason"):
            out["scalingLimitedReason"] = str(limited["reason"])
    found = problem(scaling, hpa_status)
    if found is not None:
        out["problem"] = found.to_status()
    return out
