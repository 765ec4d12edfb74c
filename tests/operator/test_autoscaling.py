"""The HPA's metric and behaviour, and status.autoscaling read from the HPA's own status."""

from __future__ import annotations

from typing import Any

import pytest
from modelship.operator import autoscaling, naming, spec

from tests.operator.factories import md_body


def scaling(**fields: Any) -> spec.Autoscaling:
    parsed = spec.parse(md_body(autoscaling={"maxReplicas": 6, **fields})).autoscaling
    assert parsed is not None
    return parsed


INFLIGHT = {"metric": "inflightRequests", "targetInflightRequests": 2}


# --- the HPA's spec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quantity"),
    [
        (2, "2"),
        (2.0, "2"),
        (1.5, "1500m"),
        (0.25, "250m"),
        (1.0004, "1"),  # rounded to the nearest thousandth
        (1.0006, "1001m"),
        (0.0001, "1m"),  # the smallest target the HPA can be given
        (1000, "1k"),  # as the API server writes it back, so that the live HPA compares equal
        (1500, "1500"),
        (10000, "10k"),
    ],
)
def test_a_target_is_written_as_an_exact_quantity(value: float, quantity: str) -> None:
    assert autoscaling.quantity(value) == quantity


def test_cpu_scaling_reads_the_cpu_utilisation_of_the_request() -> None:
    assert autoscaling.metrics(scaling(targetCPUUtilization=60)) == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
        }
    ]
    assert autoscaling.metrics(scaling())[0]["resource"]["target"]["averageUtilization"] == 70


def test_inflight_scaling_reads_the_per_pod_custom_metric() -> None:
    assert autoscaling.metrics(scaling(metric="inflightRequests", targetInflightRequests=1.5)) == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": naming.INFLIGHT_METRIC},
                "target": {"type": "AverageValue", "averageValue": "1500m"},
            },
        }
    ]


def test_the_default_behavior_scales_up_fast_and_down_slowly() -> None:
    behavior = autoscaling.behavior({})
    assert behavior["scaleUp"] == {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 15},
            {"type": "Pods", "value": 4, "periodSeconds": 15},
        ],
    }
    assert behavior["scaleDown"] == {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 25, "periodSeconds": 60},
            {"type": "Pods", "value": 1, "periodSeconds": 60},
        ],
    }


def test_a_user_setting_overrides_only_its_own_field() -> None:
    behavior = autoscaling.behavior({"scaleDown": {"stabilizationWindowSeconds": 600}})
    assert behavior["scaleDown"] == {**autoscaling.SCALE_DOWN, "stabilizationWindowSeconds": 600}
    assert behavior["scaleUp"] == autoscaling.SCALE_UP


def test_a_user_policies_list_replaces_the_default_list() -> None:
    mine = [{"type": "Pods", "value": 2, "periodSeconds": 30}]
    behavior = autoscaling.behavior({"scaleUp": {"policies": mine, "selectPolicy": "Min"}})
    assert behavior["scaleUp"] == {"stabilizationWindowSeconds": 0, "selectPolicy": "Min", "policies": mine}
    assert behavior["scaleDown"] == autoscaling.SCALE_DOWN


def test_the_defaults_are_not_shared_with_what_is_rendered() -> None:
    autoscaling.behavior({})["scaleUp"]["policies"].clear()
    assert len(autoscaling.SCALE_UP["policies"]) == 2


# --- status.autoscaling ---------------------------------------------------------------------


def condition(kind: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


HEALTHY_CONDITIONS = [
    condition("AbleToScale", "True", "ReadyForNewScale"),
    condition("ScalingActive", "True", "ValidMetricFound"),
    condition("ScalingLimited", "False", "DesiredWithinRange"),
]


def test_a_cpu_reading_is_shown_in_percent() -> None:
    hpa_status = {
        "currentReplicas": 2,
        "desiredReplicas": 3,
        "lastScaleTime": "2026-01-01T00:00:00Z",
        "currentMetrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "current": {"averageUtilization": 45, "averageValue": "45m"}},
            }
        ],
        "conditions": HEALTHY_CONDITIONS,
    }
    assert autoscaling.autoscaling_status(scaling(), hpa_status) == {
        "metric": "cpu",
        "target": "70%",
        "current": "45%",
        "load": "45%/70% cpu",
        "currentReplicas": 2,
        "desiredReplicas": 3,
        "lastScaleTime": "2026-01-01T00:00:00Z",
        "scalingActive": True,
        "scalingLimited": False,
    }


@pytest.mark.parametrize(
    ("reading", "shown"), [("3200m", "3.2"), ("3", "3"), ("333m", "0.33"), ("12k", "12000")]
)
def test_an_inflight_reading_is_a_decimal_with_at_most_two_places(reading: str, shown: str) -> None:
    hpa_status = {
        "currentReplicas": 3,
        "desiredReplicas": 4,
        "currentMetrics": [
            {
                "type": "Pods",
                "pods": {"metric": {"name": naming.INFLIGHT_METRIC}, "current": {"averageValue": reading}},
            }
        ],
        "conditions": HEALTHY_CONDITIONS,
    }
    found = autoscaling.autoscaling_status(scaling(**INFLIGHT), hpa_status)
    assert (found["metric"], found["target"], found["current"]) == ("inflightRequests", "2", shown)
    assert found["load"] == f"{shown}/2 in-flight"


def test_a_fractional_target_is_shown_as_written() -> None:
    found = autoscaling.autoscaling_status(scaling(metric="inflightRequests", targetInflightRequests=1.5), {})
    assert (found["target"], found["load"]) == ("1.5", "?/1.5 in-flight")


def test_without_a_reading_the_load_has_a_question_mark() -> None:
    found = autoscaling.autoscaling_status(scaling(**INFLIGHT), {"currentReplicas": 1, "desiredReplicas": 1})
    assert "current" not in found
    assert found["load"] == "?/2 in-flight"
    assert "problem" not in found and "scalingActive" not in found


def test_a_reading_of_the_other_metric_is_not_taken_for_ours() -> None:
    # The HPA's status still tells of the cpu metric it had before the spec switched to in-flight.
    hpa_status = {
        "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 45}}}
        ]
    }
    assert autoscaling.autoscaling_status(scaling(**INFLIGHT), hpa_status)["load"] == "?/2 in-flight"


def test_a_metric_the_hpa_cannot_read_is_a_problem_that_names_it() -> None:
    message = (
        "the HPA was unable to compute the replica count: unable to get metric modelship_inflight_requests: "
        "unable to fetch metrics from custom metrics API: the server could not find the metric"
    )
    hpa_status = {
        "currentReplicas": 1,
        "desiredReplicas": 1,
        "currentMetrics": [{"type": ""}],  # what the HPA writes when it read nothing
        "conditions": [
            condition("AbleToScale", "True", "SucceededGetScale"),
            condition("ScalingActive", "False", "FailedGetPodsMetric", message),
        ],
    }
    found = autoscaling.autoscaling_status(scaling(**INFLIGHT), hpa_status)
    assert found["scalingActive"] is False
    assert found["problem"] == {
        "reason": "FailedGetPodsMetric",
        "message": f"the HPA cannot read {naming.INFLIGHT_METRIC}: {message}",
    }
    assert found["load"] == "?/2 in-flight"
    assert autoscaling.is_metric_failure("FailedGetPodsMetric")
    assert autoscaling.is_metric_failure("FailedGetResourceMetric")


def test_a_cpu_metric_problem_names_cpu() -> None:
    hpa_status = {
        "conditions": [condition("ScalingActive", "False", "FailedGetResourceMetric", "no metrics")]
    }
    problem = autoscaling.autoscaling_status(scaling(), hpa_status)["problem"]
    assert problem["message"] == "the HPA cannot read the pods' CPU utilisation: no metrics"


def test_an_hpa_that_cannot_scale_its_target_is_a_problem_too() -> None:
    hpa_status = {
        "conditions": [
            condition("AbleToScale", "False", "FailedGetScale", 'deployments/scale.apps "iris-x" not found'),
            condition("ScalingActive", "True", "ValidMetricFound"),
        ]
    }
    problem = autoscaling.autoscaling_status(scaling(), hpa_status)["problem"]
    assert problem["reason"] == "FailedGetScale"
    assert problem["message"].startswith("the HPA cannot scale its Deployment: ")
    assert not autoscaling.is_metric_failure("FailedGetScale")


def test_a_limit_reached_says_which() -> None:
    hpa_status = {
        "conditions": [
            condition("ScalingActive", "True", "ValidMetricFound"),
            condition(
                "ScalingLimited", "True", "TooManyReplicas", "the desired count is more than the maximum"
            ),
        ]
    }
    found = autoscaling.autoscaling_status(scaling(), hpa_status)
    assert (found["scalingLimited"], found["scalingLimitedReason"]) == (True, "TooManyReplicas")
    assert "problem" not in found


def test_a_new_hpa_with_no_size_chosen_yet_reports_no_replicas() -> None:
    scaling = spec.parse(md_body(autoscaling={"maxReplicas": 3})).autoscaling
    assert scaling is not None
    out = autoscaling.autoscaling_status(scaling, {"currentReplicas": 0, "desiredReplicas": 0})
    assert "desiredReplicas" not in out and "currentReplicas" not in out
    assert out["load"] == "?/70% cpu"
