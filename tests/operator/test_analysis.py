"""Canary analysis without Prometheus: settings, queries, and how numbers become results."""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.operator.rollout import analysis
from modelship.operator.rollout.analysis import (
    Agreement,
    AnalysisSettings,
    AnalysisSpecError,
    Check,
    CheckResult,
    Compared,
    DriftCheck,
    Measurement,
    PredictionDrift,
    Predictions,
    Query,
    QueryError,
    Result,
    Sample,
    Series,
    VectorSample,
    evaluate,
    parse_response,
    parse_settings,
    parse_vector,
    plan,
    render,
    worst,
)
from modelship.operator.rollout.distributions import js_distance

# ---------------------------------------------------------------------------------------------
# settings


def test_no_settings_are_the_designs_defaults() -> None:
    assert parse_settings(None) == parse_settings({}) == AnalysisSettings()
    defaults = AnalysisSettings()
    assert (defaults.interval, defaults.failure_limit, defaults.min_requests) == (30.0, 2, 20)
    assert defaults.success_rate == 0.99
    assert defaults.max_latency_p99 is None and defaults.prometheus_url is None and defaults.queries == ()


def test_every_field_is_read() -> None:
    settings = parse_settings(
        {
            "prometheus": {"url": "http://prometheus.monitoring:9090"},
            "interval": "1m30s",
            "failureLimit": 3,
            "minRequests": 0,
            "successRate": 0.95,
            "maxLatencyP99": "250ms",
            "queries": [
                {"name": "error-budget", "query": 'sum(x{revision="{{revision}}"})', "min": 0, "max": 5},
                {"name": "floor", "query": "vector(1)", "min": 0.5},
            ],
        }
    )
    assert settings == AnalysisSettings(
        prometheus_url="http://prometheus.monitoring:9090",
        interval=90.0,
        failure_limit=3,
        min_requests=0,
        success_rate=0.95,
        max_latency_p99=0.25,
        queries=(
            Query("error-budget", 'sum(x{revision="{{revision}}"})', 0.0, 5.0),
            Query("floor", "vector(1)", 0.5, None),
        ),
    )


def test_durations_may_be_integers_of_seconds() -> None:
    settings = parse_settings({"interval": 45, "maxLatencyP99": 1})
    assert (settings.interval, settings.max_latency_p99) == (45.0, 1.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prometheus": {"url": "prometheus:9090"}}, "prometheus.url"),
        ({"prometheus": "http://p:9090"}, "prometheus must be an object"),
        ({"interval": "soon"}, "interval"),
        ({"interval": 0}, "interval must be positive"),
        ({"maxLatencyP99": "fast"}, "maxLatencyP99"),
        ({"failureLimit": 0}, "failureLimit"),
        ({"failureLimit": "2"}, "failureLimit"),
        ({"minRequests": -1}, "minRequests"),
        ({"minRequests": True}, "minRequests"),
        ({"successRate": 1.5}, "successRate"),
        ({"successRate": "high"}, "successRate"),
        ({"queries": ["up"]}, r"queries\[0\] must be an object"),
        ({"queries": [{"query": "up", "min": 1}]}, r"queries\[0\].name"),
        ({"queries": [{"name": "q", "min": 1}]}, r"queries\[0\].query"),
        ({"queries": [{"name": "q", "query": "up"}]}, r"queries\[0\] needs min or max"),
        ({"queries": [{"name": "q", "query": "up", "min": 2, "max": 1}]}, "min 2 is above max 1"),
        ({"queries": [{"name": "success-rate", "query": "up", "min": 1}]}, "is taken"),
        (
            {"queries": [{"name": "q", "query": "up", "min": 1}, {"name": "q", "query": "up", "max": 2}]},
            r"queries\[1\].name 'q' is taken",
        ),
        (
            {"queries": [{"name": "q", "query": "x{pod='{{pod}}'}", "min": 1}]},
            r"unknown placeholders \['pod'\]",
        ),
        ({"queries": [{"name": "q", "query": "up", "min": "1"}]}, "min must be a number"),
        ({"queries": [{"name": "prediction-drift", "query": "up", "max": 1}]}, "is taken"),
        ({"predictionDrift": 0.2}, "predictionDrift must be an object with max"),
        ({"predictionDrift": {}}, "predictionDrift.max must be between 0 and 1, got None"),
        ({"predictionDrift": {"max": 1.5}}, "predictionDrift.max must be between 0 and 1"),
        ({"predictionDrift": {"max": -0.1}}, "predictionDrift.max must be between 0 and 1"),
        ({"predictionDrift": {"max": "low"}}, "predictionDrift.max must be a number"),
        ({"predictionDrift": {"max": 0.2, "minRequests": -1}}, "predictionDrift.minRequests must be"),
        ({"predictionDrift": {"max": 0.2, "minRequests": 1.5}}, "predictionDrift.minRequests must be"),
        ({"predictionDrift": {"max": 0.2, "output": ""}}, "predictionDrift.output must be the name"),
        ({"predictionDrift": {"max": 0.2, "output": 3}}, "predictionDrift.output must be the name"),
    ],
)
def test_malformed_settings_are_refused_naming_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(AnalysisSpecError, match=message):
        parse_settings(raw)


def test_a_refusal_is_a_value_error_for_the_reconciler() -> None:
    assert issubclass(AnalysisSpecError, ValueError)


@pytest.mark.parametrize(
    ("interval", "window"),
    [(30, "30s"), (10, "10s"), (5, "10s"), (0.5, "10s"), (10.5, "11s"), (90, "1m30s"), (3600, "1h")],
)
def test_the_window_is_the_interval_but_at_least_ten_seconds(interval: float, window: str) -> None:
    assert AnalysisSettings(interval=interval).window == window


# ---------------------------------------------------------------------------------------------
# queries


def test_render_fills_every_placeholder_wherever_it_is() -> None:
    template = 'f{ns="{{namespace}}",md="{{ name }}",rev="{{revision}}"}[{{window}}] + g[{{window}}]'
    assert (
        render(template, namespace="prod", name="iris", revision="9b1c2d3e4f", window="30s")
        == 'f{ns="prod",md="iris",rev="9b1c2d3e4f"}[30s] + g[30s]'
    )


def test_render_leaves_unknown_placeholders_and_plain_braces_alone() -> None:
    template = 'x{a="{{other}}"} or label_replace(y, "b", "{}", "", "")'
    assert render(template, namespace="n", name="m", revision="r", window="10s") == template


def test_the_built_in_checks_select_the_revisions_own_series() -> None:
    planned = plan(
        AnalysisSettings(interval=30, max_latency_p99=0.5), namespace="prod", name="iris", revision="9b1c"
    )
    selector = 'namespace="prod",revision="9b1c"'
    answered = selector + ',code!="499"'
    assert planned.requests == f"sum(increase(modelship_requests_total{{{answered}}}[30s]))"
    success, latency = planned.checks
    assert success == Check(
        "success-rate",
        f'(sum(rate(modelship_requests_total{{{selector},code!~"5..|499"}}[30s])) or vector(0))'
        f" / sum(rate(modelship_requests_total{{{answered}}}[30s]))",
        min=0.99,
    )
    assert latency == Check(
        "latency-p99",
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(modelship_request_duration_seconds_bucket{{{selector}}}[30s])))",
        max=0.5,
        unit="s",
    )
    assert (planned.revision, planned.window, planned.min_requests) == ("9b1c", "30s", 20)


def test_latency_is_checked_only_with_a_maximum() -> None:
    planned = plan(AnalysisSettings(), namespace="n", name="m", revision="r")
    assert [c.name for c in planned.checks] == ["success-rate"]


def test_user_queries_follow_the_built_in_checks_rendered() -> None:
    settings = AnalysisSettings(
        interval=60, queries=(Query("budget", 'sum(e{md="{{name}}"}[{{window}}])', max=5.0),)
    )
    planned = plan(settings, namespace="n", name="iris", revision="r")
    assert planned.checks[-1] == Check("budget", 'sum(e{md="iris"}[1m])', max=5.0)


def test_the_queries_name_what_the_server_exports() -> None:
    """The metric names and labels are an interface with the server (its metrics module says so)."""
    from modelship.server.metrics import Metrics

    metrics = Metrics(model="iris", version="2", revision="9b1c")
    metrics.count_request(200)
    metrics.count_request(503)
    metrics.request_duration.observe(0.01)
    exported = metrics.render().decode()
    assert 'modelship_requests_total{code="200",model="iris",revision="9b1c",version="2"} 1.0' in exported
    assert 'modelship_requests_total{code="503",model="iris",revision="9b1c",version="2"} 1.0' in exported
    assert 'modelship_request_duration_seconds_bucket{le="0.01",model="iris",revision="9b1c"' in exported
    planned = plan(AnalysisSettings(max_latency_p99=1), namespace="n", name="iris", revision="9b1c")
    assert "modelship_requests_total{" in planned.requests
    assert all("modelship_request" in check.query for check in planned.checks)


# ---------------------------------------------------------------------------------------------
# one check


@pytest.mark.parametrize(
    ("check", "threshold"),
    [
        (Check("success-rate", "q", min=0.99), ">= 0.99"),
        (Check("latency-p99", "q", max=0.5, unit="s"), "<= 0.5s"),
        (Check("budget", "q", min=0, max=5), ">= 0 and <= 5"),
        (Check("anything", "q"), "any value"),
    ],
)
def test_thresholds_read_as_a_person_writes_them(check: Check, threshold: str) -> None:
    assert check.threshold == threshold


@pytest.mark.parametrize(
    ("value", "result"),
    [
        (0.99, Result.PASS),  # the bounds themselves pass
        (5.0, Result.PASS),
        (0.989, Result.FAIL),
        (5.01, Result.FAIL),
        (math.inf, Result.FAIL),
        (-math.inf, Result.FAIL),
        (None, Result.INCONCLUSIVE),
        (math.nan, Result.INCONCLUSIVE),
    ],
)
def test_a_check_passes_within_its_bounds_only(value: float | None, result: Result) -> None:
    assert Check("c", "q", min=0.99, max=5).judge(value) == result


def test_a_missed_bound_is_shown_with_enough_digits_to_differ() -> None:
    check = Check("success-rate", "q", min=0.99)
    assert check.explain(0.42) == "success-rate 0.42 < 0.99"
    assert check.explain(0.98999) == "success-rate 0.98999 < 0.99"
    assert check.explain(0.9899999999999) == "success-rate 0.9899999999999 < 0.99"
    assert Check("latency-p99", "q", max=0.5, unit="s").explain(0.8) == "latency-p99 0.8s > 0.5s"
    assert check.explain(None) == "success-rate has no data"


# ---------------------------------------------------------------------------------------------
# a measurement

SETTINGS = AnalysisSettings(interval=30, max_latency_p99=0.5)
PLAN = plan(SETTINGS, namespace="prod", name="iris", revision="9b1c")


def test_good_numbers_pass() -> None:
    m = evaluate(PLAN, Sample(50), [Sample(1.0), Sample(0.012)])
    assert m.verdict == Result.PASS
    assert m.requests == 50
    assert m.results == (
        CheckResult("success-rate", 1.0, ">= 0.99", Result.PASS),
        CheckResult("latency-p99", 0.012, "<= 0.5s", Result.PASS),
    )
    assert (
        m.summary
        == "pass: success-rate 1 >= 0.99, latency-p99 0.012s <= 0.5s (revision 9b1c, 50 requests in 30s)"
    )


def test_a_low_success_rate_fails_and_the_summary_says_why() -> None:
    m = evaluate(PLAN, Sample(50.4), [Sample(0.42), Sample(0.012)])
    assert m.verdict == Result.FAIL
    assert [r.result for r in m.results] == [Result.FAIL, Result.PASS]
    assert m.summary == "success-rate 0.42 < 0.99 (revision 9b1c, 50 requests in 30s)"


def test_every_failed_check_is_named() -> None:
    m = evaluate(PLAN, Sample(50), [Sample(0.5), Sample(0.8)])
    assert m.summary == "success-rate 0.5 < 0.99, latency-p99 0.8s > 0.5s (revision 9b1c, 50 requests in 30s)"


def test_too_few_requests_are_inconclusive_whatever_the_numbers() -> None:
    for values in ([1.0, 0.01], [0.0, 9.0]):
        m = evaluate(PLAN, Sample(19), [Sample(v) for v in values])
        assert m.verdict == Result.INCONCLUSIVE
        assert {r.result for r in m.results} == {Result.INCONCLUSIVE}
        assert [r.value for r in m.results] == values  # still reported
        assert m.summary == (
            "inconclusive: fewer requests than minRequests 20 (revision 9b1c, 19 requests in 30s)"
        )


def test_no_request_series_is_no_traffic() -> None:
    m = evaluate(PLAN, Sample(None), [Sample(None), Sample(None)])
    assert m.verdict == Result.INCONCLUSIVE
    assert m.requests == 0
    assert m.summary == "inconclusive: fewer requests than minRequests 20 (revision 9b1c, 0 requests in 30s)"


def test_without_min_requests_a_check_without_data_is_still_inconclusive() -> None:
    planned = plan(AnalysisSettings(min_requests=0), namespace="n", name="m", revision="r")
    m = evaluate(planned, Sample(None), [Sample(math.nan)])
    assert m.verdict == Result.INCONCLUSIVE
    assert m.summary == "inconclusive: success-rate has no data (revision r, 0 requests in 30s)"


def test_a_check_without_data_is_inconclusive_but_a_failure_still_fails() -> None:
    m = evaluate(PLAN, Sample(80), [Sample(1.0), Sample(None)])
    assert m.verdict == Result.INCONCLUSIVE
    assert m.summary == "inconclusive: latency-p99 has no data (revision 9b1c, 80 requests in 30s)"
    m = evaluate(PLAN, Sample(80), [Sample(0.1), Sample(None)])
    assert m.verdict == Result.FAIL
    assert m.summary == "success-rate 0.1 < 0.99 (revision 9b1c, 80 requests in 30s)"


def test_an_unreachable_prometheus_is_said_once() -> None:
    down = Sample(error="Prometheus at http://p:9090 is unreachable: connection refused")
    m = evaluate(PLAN, down, [down, down])
    assert m.verdict == Result.INCONCLUSIVE and m.requests is None
    assert m.summary == (
        "inconclusive: Prometheus at http://p:9090 is unreachable: connection refused (revision 9b1c)"
    )


def test_an_unknown_request_count_makes_every_check_inconclusive() -> None:
    m = evaluate(PLAN, Sample(error="timeout"), [Sample(0.1), Sample(9.0)])
    assert {r.result for r in m.results} == {Result.INCONCLUSIVE}
    assert m.summary == "inconclusive: requests: timeout (revision 9b1c)"


def test_a_failed_query_makes_only_its_check_inconclusive() -> None:
    settings = AnalysisSettings(queries=(Query("budget", "sum(", max=1),))
    planned = plan(settings, namespace="n", name="m", revision="r")
    m = evaluate(planned, Sample(100), [Sample(1.0), Sample(error="bad_data: parse error")])
    assert [r.result for r in m.results] == [Result.PASS, Result.INCONCLUSIVE]
    assert m.summary == "inconclusive: budget: bad_data: parse error (revision r, 100 requests in 30s)"


def test_long_errors_are_cut_to_one_short_line() -> None:
    error = Sample(error="bad\n" + "x" * 1000)
    m = evaluate(PLAN, error, [error, error])
    assert len(m.summary) < 400 and "\n" not in m.summary and "..." in m.summary


def test_evaluate_needs_one_sample_per_check() -> None:
    with pytest.raises(ValueError, match="2 checks but 1 samples"):
        evaluate(PLAN, Sample(50), [Sample(1.0)])


def test_the_worst_result_is_the_verdict() -> None:
    assert worst([Result.PASS, Result.INCONCLUSIVE]) == Result.INCONCLUSIVE
    assert worst([Result.INCONCLUSIVE, Result.FAIL, Result.PASS]) == Result.FAIL
    assert worst([Result.PASS]) == Result.PASS
    assert worst([]) == Result.INCONCLUSIVE
    assert Measurement((), 100, "").verdict == Result.INCONCLUSIVE


def test_results_for_status_are_plain_json() -> None:
    m = evaluate(PLAN, Sample(50), [Sample(0.123456789), Sample(math.inf)])
    assert m.status_results() == [
        {"name": "success-rate", "value": 0.123457, "threshold": ">= 0.99", "result": "Fail"},
        {"name": "latency-p99", "threshold": "<= 0.5s", "result": "Fail"},
    ]
    assert type(m.status_results()[0]["result"]) is str
    assert Result.PASS == "Pass"  # the step function compares verdicts to plain strings


maybe_value = st.one_of(st.none(), st.just(math.nan), st.floats(allow_nan=False))


@given(
    requests=st.one_of(st.none(), st.floats(0, 1000)),
    values=st.tuples(maybe_value, maybe_value),
    min_requests=st.integers(0, 100),
)
def test_a_pass_needs_enough_requests_and_every_value_within_bounds(
    requests: float | None, values: tuple[float | None, float | None], min_requests: int
) -> None:
    settings = AnalysisSettings(min_requests=min_requests, max_latency_p99=0.5)
    planned = plan(settings, namespace="n", name="m", revision="r")
    m = evaluate(planned, Sample(requests), [Sample(v) for v in values])
    success_rate, latency = (math.nan if v is None else v for v in values)
    enough = (requests or 0) >= min_requests
    within = success_rate >= 0.99 and latency <= 0.5  # False for NaN
    assert (m.verdict == Result.PASS) == (enough and within)
    if not enough:
        assert m.verdict == Result.INCONCLUSIVE
    assert m.summary.endswith(")") and "\n" not in m.summary
    assert m.summary.startswith("pass: ") == (m.verdict == Result.PASS)
    assert m.summary.startswith("inconclusive: ") == (m.verdict == Result.INCONCLUSIVE)


@given(errors=st.lists(st.booleans(), min_size=3, max_size=3), value=st.floats(0, 1))
def test_a_failed_query_never_passes(errors: list[bool], value: float) -> None:
    samples = [
        Sample(error="boom") if failed else Sample(v)
        for failed, v in zip(errors, [100, value, 0.1], strict=True)
    ]
    m = evaluate(PLAN, samples[0], samples[1:])
    if any(errors):
        assert m.verdict != Result.PASS
        assert "boom" in m.summary or m.verdict == Result.FAIL


# ---------------------------------------------------------------------------------------------
# Prometheus answers


def _vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"i": str(i)}, "value": [1700000000.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (_vector("0.42"), 0.42),
        (_vector("+Inf"), math.inf),
        (_vector("NaN"), None),
        (_vector(), None),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1700000000.0, "3"]}}, 3.0),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1700000000.0, "NaN"]}}, None),
    ],
)
def test_an_answer_is_one_number_or_no_data(body: dict[str, Any], value: float | None) -> None:
    assert parse_response(body) == value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_vector("1", "2"), "returned 2 series; a check needs one number"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "returned a matrix"),
        ({"status": "success", "data": {"resultType": "string", "result": [0, "x"]}}, "returned a string"),
        (
            {"status": "error", "errorType": "bad_data", "error": "1:5: parse error"},
            "^bad_data: 1:5: parse error$",
        ),
        ({"status": "error"}, "^error: no error message$"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": []}]}}, "malformed"),
        ({"status": "success", "data": {"resultType": "scalar", "result": [0, "many"]}}, "malformed"),
        ([], "not a JSON object"),
    ],
)
def test_answers_that_are_not_one_number_are_errors(body: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_response(body)


async def test_without_a_prometheus_url_the_measurement_says_so() -> None:
    async with aiohttp.ClientSession() as session:
        m = await analysis.measure(session, None, SETTINGS, "prod", "iris", "9b1c")
    assert m.verdict == Result.INCONCLUSIVE
    assert m.summary == f"inconclusive: {analysis.NO_PROMETHEUS} (revision 9b1c)"


# ---- the canary's measured share of the model's traffic (issue #29)

SHARED = plan(SETTINGS, namespace="prod", name="iris", revision="9b1c", stable="0ab7")


def test_with_a_stable_revision_the_traffic_of_both_is_queried() -> None:
    assert SHARED.traffic == (
        'sum(increase(modelship_requests_total{namespace="prod",revision=~"9b1c|0ab7"}[30s]))'
    )
    assert PLAN.traffic is None  # a first revision has nothing to share with


def test_the_canarys_share_is_its_requests_over_both_revisions() -> None:
    m = evaluate(SHARED, Sample(250), [Sample(1.0), Sample(0.01)], Sample(1000))
    assert (m.requests, m.total, m.share) == (250, 1000, 0.25)
    assert m.verdict == Result.PASS
    assert m.summary.endswith("(revision 9b1c, 250 of 1000 requests in 30s: 25%)")


def test_a_starved_canary_is_inconclusive_and_the_summary_says_the_traffic_misses_it() -> None:
    m = evaluate(SHARED, Sample(None), [Sample(None), Sample(None)], Sample(63596))
    assert m.verdict == Result.INCONCLUSIVE
    assert m.share == 0.0
    assert m.summary == (
        "inconclusive: fewer requests than minRequests 20; the model's traffic does not reach the canary "
        "(revision 9b1c, 0 of 63596 requests in 30s: 0%)"
    )


def test_a_quiet_model_is_not_called_a_starved_canary() -> None:
    m = evaluate(SHARED, Sample(3), [Sample(1.0), Sample(0.01)], Sample(12))
    assert "does not reach the canary" not in m.summary
    assert m.summary.endswith("(revision 9b1c, 3 of 12 requests in 30s: 25%)")


def test_an_unknown_total_measures_no_share_and_judges_as_before() -> None:
    m = evaluate(SHARED, Sample(50), [Sample(1.0), Sample(0.01)], Sample(error="timeout"))
    assert m.share is None and m.total is None
    assert m.verdict == Result.PASS
    assert m.summary.endswith("(revision 9b1c, 50 requests in 30s)")


@pytest.mark.parametrize(
    ("requests", "total", "share"),
    [(0, 0, None), (None, 10, None), (5, None, None), (11, 10, 1.0), (1, 1000, 0.001)],
)
def test_share_of_is_a_fraction_or_nothing(
    requests: float | None, total: float | None, share: float | None
) -> None:
    assert analysis.share_of(requests, total) == share


def test_a_share_below_half_a_percent_does_not_read_as_none() -> None:
    assert analysis.format_share(0.001) == "<1%"
    assert analysis.format_share(0.0) == "0%"
    assert analysis.format_share(0.254) == "25%"


def test_inconclusive_limit_is_read_and_checked() -> None:
    assert AnalysisSettings().inconclusive_limit == 3
    assert parse_settings({"inconclusiveLimit": 5}).inconclusive_limit == 5
    with pytest.raises(analysis.AnalysisSpecError, match="inconclusiveLimit"):
        parse_settings({"inconclusiveLimit": 0})


# ---- prediction drift: the canary's predictions against the stable revision's


def test_prediction_drift_is_off_unless_asked_for_and_defaults_to_100_predictions() -> None:
    assert AnalysisSettings().prediction_drift is None
    assert parse_settings({"predictionDrift": None}).prediction_drift is None
    assert parse_settings({"predictionDrift": {"max": 0.2}}).prediction_drift == PredictionDrift(
        0.2, 100, None
    )
    drift = {"max": 1, "minRequests": 0, "output": "label"}
    assert parse_settings({"predictionDrift": drift}).prediction_drift == PredictionDrift(1.0, 0, "label")


@pytest.mark.parametrize(
    ("p", "q"),
    [
        ({"a": 3, "b": 1}, {"a": 3, "b": 1}),
        ({"a": 3, "b": 1}, {"a": 300, "b": 100}),  # counts, not shares: the same distribution
        ({"a": 1}, {"a": 1, "b": 0}),  # a bin counted 0 is a bin missing
    ],
)
def test_the_same_distribution_is_at_distance_0(p: dict[str, float], q: dict[str, float]) -> None:
    assert js_distance(p, q) == 0.0


def test_disjoint_distributions_are_at_distance_1() -> None:
    assert js_distance({"0": 10}, {"2": 10}) == 1.0
    assert js_distance({"a": 1, "b": 2}, {"c": 5, "d": 1}) == pytest.approx(1.0)


def test_a_distance_between_worked_out_by_hand() -> None:
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4): KL(P|M) = log2(4/3), KL(Q|M) = (log2(2/3) + 1) / 2;
    # JSD = (0.415037 + 0.207519) / 2 = 0.311278, and the distance is its square root.
    assert js_distance({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(0.557923, abs=1e-6)


def test_a_distribution_needs_something_counted() -> None:
    with pytest.raises(ValueError, match="positive count"):
        js_distance({}, {"a": 1})
    with pytest.raises(ValueError, match="positive count"):
        js_distance({"a": 1}, {"a": 0.0, "b": math.nan})


counts = st.dictionaries(st.sampled_from("abcde"), st.floats(0, 1e6), min_size=1).filter(
    lambda d: sum(d.values()) > 0
)


@given(p=counts, q=counts)
def test_the_distance_is_symmetric_and_between_0_and_1(p: dict[str, float], q: dict[str, float]) -> None:
    distance = js_distance(p, q)
    assert 0.0 <= distance <= 1.0
    assert distance == pytest.approx(js_distance(q, p), abs=1e-12)


DRIFT = AnalysisSettings(prediction_drift=PredictionDrift(max=0.2))
COMPARED = plan(DRIFT, namespace="prod", name="iris", revision="9b1c", stable="0ab7")


def test_prediction_drift_asks_each_revision_for_its_predictions_by_output_and_bin() -> None:
    query = (
        'sum by (output, bin) (increase(modelship_predictions_total{{namespace="prod",revision="{}"}}[30s]))'
    )
    assert COMPARED.drift == DriftCheck(
        canary=query.format("9b1c"),
        stable=query.format("0ab7"),
        max=0.2,
        min_predictions=100,
    )
    assert [c.name for c in COMPARED.checks] == ["success-rate"]  # the drift has no one-number query


def test_without_a_stable_revision_there_is_nothing_to_compare_with() -> None:
    assert plan(DRIFT, namespace="prod", name="iris", revision="9b1c").drift is None


def _predicted(*rows: tuple[str, str, float]) -> VectorSample:
    return VectorSample(tuple(Series({"output": output, "bin": bin}, n) for output, bin, n in rows))


def _drift(
    canary: VectorSample, stable: VectorSample, plan_: analysis.Plan = COMPARED, requests: float = 300
) -> Measurement:
    return evaluate(plan_, Sample(requests), [Sample(1.0)], Sample(600), Predictions(canary, stable))


LIKE_STABLE = _predicted(("y", "0", 100), ("y", "1", 50), ("y", "2", 150))
STABLE = _predicted(("y", "0", 200), ("y", "1", 100), ("y", "2", 300))


def test_predictions_distributed_as_the_stable_revisions_pass() -> None:
    m = _drift(LIKE_STABLE, STABLE)
    assert m.verdict == Result.PASS
    assert m.results[-1] == CheckResult("prediction-drift", 0.0, "<= 0.2", Result.PASS)
    assert m.summary == (
        "pass: success-rate 1 >= 0.99, prediction-drift 0 <= 0.2 (output y) "
        "(revision 9b1c, 300 of 600 requests in 30s: 50%)"
    )


def test_predictions_unlike_the_stable_revisions_fail_and_the_summary_names_the_output() -> None:
    m = _drift(_predicted(("y", "0", 300)), _predicted(("y", "2", 600)))
    assert m.verdict == Result.FAIL
    assert m.status_results()[-1] == {
        "name": "prediction-drift",
        "value": 1.0,
        "threshold": "<= 0.2",
        "result": "Fail",
    }
    assert m.summary == "prediction-drift 1 > 0.2 (output y) (revision 9b1c, 300 of 600 requests in 30s: 50%)"


def test_a_partial_drift_is_the_distance_worked_out_by_hand() -> None:
    m = _drift(_predicted(("y", "a", 200)), _predicted(("y", "a", 100), ("y", "b", 100)))
    assert m.verdict == Result.FAIL
    assert m.summary.startswith("prediction-drift 0.5579 > 0.2 (output y) (revision 9b1c")


def test_the_output_that_drifts_most_decides() -> None:
    canary = _predicted(("label", "cat", 150), ("label", "dog", 150), ("score", "0.5", 300))
    stable = _predicted(("label", "cat", 300), ("label", "dog", 300), ("score", "1", 600))
    m = _drift(canary, stable)
    assert m.verdict == Result.FAIL
    assert m.results[-1].value == 1.0
    assert m.summary.startswith("prediction-drift 1 > 0.2 (output score) (")


def test_a_named_output_is_the_only_one_compared() -> None:
    canary = _predicted(("label", "cat", 150), ("label", "dog", 150), ("score", "0.5", 300))
    stable = _predicted(("label", "cat", 300), ("label", "dog", 300), ("score", "1", 600))
    named = plan(
        AnalysisSettings(prediction_drift=PredictionDrift(max=0.2, output="label")),
        namespace="prod",
        name="iris",
        revision="9b1c",
        stable="0ab7",
    )
    m = _drift(canary, stable, named)
    assert m.verdict == Result.PASS
    assert "prediction-drift 0 <= 0.2 (output label)" in m.summary


def test_outputs_only_one_revision_has_are_not_compared() -> None:
    canary = _predicted(("y", "0", 300), ("new", "0", 300))
    m = _drift(canary, _predicted(("y", "0", 600)))
    assert m.verdict == Result.PASS
    assert "prediction-drift 0 <= 0.2 (output y)" in m.summary


@pytest.mark.parametrize(
    ("canary", "stable", "output", "reason"),
    [
        (
            LIKE_STABLE,
            _predicted(("y", "0", 7), ("y", "1", 5)),
            None,
            "prediction-drift: the stable revision made 12 predictions in 30s, fewer than minRequests 100",
        ),
        (
            _predicted(("y", "0", 1)),
            _predicted(("y", "0", 7), ("y", "1", 5)),
            None,
            "prediction-drift: the canary revision made 1 prediction and the stable revision made 12 "
            "predictions in 30s, fewer than minRequests 100",
        ),
        (
            LIKE_STABLE,
            VectorSample(),
            None,
            "prediction-drift: the stable revision made no predictions in 30s",
        ),
        (
            LIKE_STABLE,
            _predicted(("y", "0", 0), ("y", "1", math.nan)),
            None,
            "prediction-drift: the stable revision made no predictions in 30s",
        ),
        (
            _predicted(("a", "0", 300)),
            _predicted(("b", "0", 300), ("c", "1", 300)),
            None,
            "prediction-drift: no output counted by both revisions (canary: a; stable: b, c)",
        ),
        (
            LIKE_STABLE,
            STABLE,
            "label",
            "prediction-drift: the canary revision made no predictions of output label and the stable "
            "revision made no predictions of output label in 30s",
        ),
        (
            _predicted(("label", "cat", 300)),
            _predicted(("label", "cat", 50), ("y", "1", 500)),
            "label",
            "prediction-drift: the stable revision made 50 predictions of output label in 30s, "
            "fewer than minRequests 100",
        ),
    ],
)
def test_too_few_predictions_to_compare_are_inconclusive_and_say_why(
    canary: VectorSample, stable: VectorSample, output: str | None, reason: str
) -> None:
    settings = AnalysisSettings(prediction_drift=PredictionDrift(max=0.2, output=output))
    planned = plan(settings, namespace="prod", name="iris", revision="9b1c", stable="0ab7")
    m = _drift(canary, stable, planned)
    assert m.verdict == Result.INCONCLUSIVE
    assert m.results[-1] == CheckResult("prediction-drift", None, "<= 0.2", Result.INCONCLUSIVE)
    assert m.summary == f"inconclusive: {reason} (revision 9b1c, 300 of 600 requests in 30s: 50%)"


def test_min_requests_0_compares_whatever_was_predicted() -> None:
    settings = AnalysisSettings(prediction_drift=PredictionDrift(max=0.2, min_requests=0))
    planned = plan(settings, namespace="prod", name="iris", revision="9b1c", stable="0ab7")
    m = _drift(_predicted(("y", "0", 1)), _predicted(("y", "0", 2)), planned)
    assert m.verdict == Result.PASS


def test_too_few_requests_make_the_drift_inconclusive_too_but_it_is_reported() -> None:
    m = _drift(_predicted(("y", "0", 300)), _predicted(("y", "2", 600)), requests=10)
    assert m.verdict == Result.INCONCLUSIVE
    assert m.results[-1] == CheckResult("prediction-drift", 1.0, "<= 0.2", Result.INCONCLUSIVE)
    assert m.summary.startswith("inconclusive: fewer requests than minRequests 20; ")


def test_a_failed_predictions_query_is_inconclusive_and_named() -> None:
    m = _drift(LIKE_STABLE, VectorSample(error="bad_data: parse error"))
    assert m.verdict == Result.INCONCLUSIVE
    assert m.results[-1] == CheckResult("prediction-drift", None, "<= 0.2", Result.INCONCLUSIVE)
    assert m.summary == (
        "inconclusive: prediction-drift: bad_data: parse error "
        "(revision 9b1c, 300 of 600 requests in 30s: 50%)"
    )


def test_a_drift_fails_the_measurement_whatever_else_is_inconclusive() -> None:
    settings = AnalysisSettings(max_latency_p99=0.5, prediction_drift=PredictionDrift(max=0.2))
    planned = plan(settings, namespace="prod", name="iris", revision="9b1c", stable="0ab7")
    predictions = Predictions(_predicted(("y", "0", 300)), _predicted(("y", "2", 600)))
    m = evaluate(planned, Sample(300), [Sample(1.0), Sample(None)], None, predictions)
    assert [r.result for r in m.results] == [Result.PASS, Result.INCONCLUSIVE, Result.FAIL]
    assert m.verdict == Result.FAIL
    assert m.summary == "prediction-drift 1 > 0.2 (output y) (revision 9b1c, 300 requests in 30s)"


bins = st.lists(st.tuples(st.sampled_from(["y", "z"]), st.sampled_from("012"), st.floats(0, 400)), max_size=6)


@given(canary=bins, stable=bins, min_predictions=st.integers(0, 200))
def test_a_drift_passes_only_on_enough_predictions_of_each_revision_close_enough(
    canary: list[tuple[str, str, float]], stable: list[tuple[str, str, float]], min_predictions: int
) -> None:
    settings = AnalysisSettings(prediction_drift=PredictionDrift(max=0.2, min_requests=min_predictions))
    planned = plan(settings, namespace="prod", name="iris", revision="9b1c", stable="0ab7")
    m = _drift(_predicted(*canary), _predicted(*stable), planned)
    drift = m.results[-1]
    assert (drift.value is None) == (drift.result == Result.INCONCLUSIVE)
    if drift.result != Result.INCONCLUSIVE:
        assert drift.value is not None and 0 <= drift.value <= 1
        assert (drift.result == Result.PASS) == (drift.value <= 0.2)
        outputs = {o for o, _, n in canary if n > 0} & {o for o, _, n in stable if n > 0}
        assert outputs
        for rows in (canary, stable):
            for output in outputs:
                made = sum(n for o, _, n in rows if o == output)
                assert made > 0 and made >= min_predictions
    assert m.summary.startswith("inconclusive: ") == (m.verdict == Result.INCONCLUSIVE)


def test_predictions_come_with_a_drift_check_and_only_with_one() -> None:
    with pytest.raises(ValueError, match="predictions go with"):
        evaluate(COMPARED, Sample(300), [Sample(1.0)])
    with pytest.raises(ValueError, match="predictions go with"):
        evaluate(SHARED, Sample(300), [Sample(1.0), Sample(0.1)], None, Predictions(STABLE, STABLE))


async def test_without_a_prometheus_url_the_drift_too_is_inconclusive_said_once() -> None:
    async with aiohttp.ClientSession() as session:
        m = await analysis.measure(session, None, DRIFT, "prod", "iris", "9b1c", stable="0ab7")
    assert [r.name for r in m.results] == ["success-rate", "prediction-drift"]
    assert m.verdict == Result.INCONCLUSIVE
    assert m.summary == f"inconclusive: {analysis.NO_PROMETHEUS} (revision 9b1c)"


def test_a_vector_answer_is_its_series_without_nan() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"output": "y", "bin": "0"}, "value": [1700000000.0, "12.5"]},
                {"metric": {"output": "y", "bin": "1"}, "value": [1700000000.0, "NaN"]},
                {"metric": {}, "value": [1700000000.0, "3"]},
            ],
        },
    }
    assert parse_vector(body) == (Series({"output": "y", "bin": "0"}, 12.5), Series({}, 3.0))
    assert parse_vector(_vector()) == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}, "returned a scalar"),
        (
            {"status": "success", "data": {"resultType": "vector", "result": [{"value": [0, "1"]}]}},
            "malformed",
        ),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}, "malformed"),
        ({"status": "success", "data": {"resultType": "vector", "result": ["x"]}}, "malformed"),
        (
            {"status": "error", "errorType": "timeout", "error": "query timed out"},
            "^timeout: query timed out$",
        ),
        ("no", "not a JSON object"),
    ],
)
def test_vector_answers_of_another_shape_are_errors(body: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_vector(body)


# ---------------------------------------------------------------------------------------------
# agreement of copied requests (a shadow step)

AGREEING = AnalysisSettings(agreement=Agreement(min=0.98))
SHADOWED = plan(AGREEING, namespace="prod", name="iris", revision="9b1c", stable="0ab7", mirrored=True)


def test_agreement_is_off_unless_asked_for_and_defaults_to_50_compared_answers() -> None:
    assert parse_settings({}).agreement is None
    assert parse_settings({"agreement": {"min": 0.98}}).agreement == Agreement(min=0.98, min_requests=50)
    assert parse_settings({"agreement": {"min": 1, "minRequests": 0}}).agreement == Agreement(1.0, 0)
    for raw, message in (
        ({"agreement": {}}, "agreement.min must be between 0 and 1"),
        ({"agreement": {"min": 1.5}}, "agreement.min must be between 0 and 1"),
        ({"agreement": {"min": 0.9, "minRequests": -1}}, "agreement.minRequests must be an integer"),
        ({"agreement": 0.9}, "agreement must be an object with min"),
    ):
        with pytest.raises(AnalysisSpecError, match=message):
            parse_settings(raw)


def test_agreement_is_checked_only_while_the_stable_pods_copy_requests_to_the_canary() -> None:
    assert plan(AGREEING, namespace="prod", name="iris", revision="9b1c", stable="0ab7").agreement is None
    assert plan(AGREEING, namespace="prod", name="iris", revision="9b1c", mirrored=True).agreement is None
    check = SHADOWED.agreement
    assert check is not None
    # Counted by the stable pods, which label each copy with the canary's revision as its target.
    assert check.compared == (
        'sum(increase(modelship_mirror_requests_total{namespace="prod",target="9b1c",'
        'result=~"agree|disagree"}[30s]))'
    )
    assert 'result="agree"' in check.agreed and check.agreed.endswith(" or vector(0)")


def test_the_agreement_queries_name_what_the_server_exports() -> None:
    from modelship.server.metrics import Metrics, MirrorResult

    metrics = Metrics(model="iris", version="2", revision="0ab7")
    metrics.mirror_series("9b1c").count(MirrorResult.AGREE)
    exported = metrics.render().decode()
    labels = 'model="iris",result="{}",revision="0ab7",target="9b1c",version="2"'
    assert f"modelship_mirror_requests_total{{{labels.format('agree')}}} 1.0" in exported
    assert f"modelship_mirror_requests_total{{{labels.format('disagree')}}} 0.0" in exported
    check = SHADOWED.agreement
    assert check is not None and "modelship_mirror_requests_total{" in check.compared


def _agreement(compared: float | None, agreed: float | None, requests: float = 300) -> Measurement:
    return evaluate(
        SHADOWED,
        Sample(requests),
        [Sample(1.0)],
        Sample(600),
        compared=Compared(Sample(compared), Sample(agreed)),
    )


def test_answers_alike_pass_and_the_summary_counts_them() -> None:
    m = _agreement(200, 199)
    assert m.verdict == Result.PASS
    assert m.results[-1] == CheckResult("agreement", 0.995, ">= 0.98", Result.PASS)
    assert "agreement 0.995 >= 0.98 (199 of 200 answers alike)" in m.summary


def test_a_canary_that_answers_otherwise_fails_whatever_its_success_rate() -> None:
    m = _agreement(200, 0)
    assert m.verdict == Result.FAIL
    assert (
        m.summary
        == "agreement 0 < 0.98 (0 of 200 answers alike) (revision 9b1c, 300 copies of 300 requests in 30s)"
    )


def test_too_few_compared_answers_are_inconclusive_and_say_why() -> None:
    m = _agreement(12, 0)
    assert m.verdict == Result.INCONCLUSIVE
    assert m.results[-1] == CheckResult("agreement", None, ">= 0.98", Result.INCONCLUSIVE)
    assert "agreement: 12 answers compared in 30s, fewer than minRequests 50" in m.summary
    assert "agreement: no answers compared in 30s" in _agreement(None, None).summary


def test_a_failed_agreement_query_is_inconclusive_and_named() -> None:
    m = evaluate(
        SHADOWED, Sample(300), [Sample(1.0)], Sample(600), compared=Compared(Sample(error="boom"), Sample(3))
    )
    assert m.verdict == Result.INCONCLUSIVE and "agreement: boom" in m.summary


def test_extrapolated_counts_never_make_a_share_above_1() -> None:
    assert _agreement(100, 100.4).results[-1].value == 1.0


def test_compared_answers_come_with_an_agreement_check_and_only_with_one() -> None:
    with pytest.raises(ValueError, match="compared answers go with"):
        evaluate(SHADOWED, Sample(300), [Sample(1.0)])
    with pytest.raises(ValueError, match="compared answers go with"):
        evaluate(PLAN, Sample(300), [Sample(1.0), Sample(0.1)], compared=Compared(Sample(1), Sample(1)))


@given(compared=st.floats(0, 400), agreed=st.floats(0, 400), low=st.integers(0, 200))
def test_an_agreement_passes_only_on_enough_compared_answers_alike_enough(
    compared: float, agreed: float, low: int
) -> None:
    settings = AnalysisSettings(agreement=Agreement(min=0.9, min_requests=low))
    planned = plan(settings, namespace="prod", name="iris", revision="9b1c", stable="0ab7", mirrored=True)
    m = evaluate(
        planned, Sample(300), [Sample(1.0)], None, compared=Compared(Sample(compared), Sample(agreed))
    )
    result = m.results[-1]
    if result.result == Result.INCONCLUSIVE:
        assert compared <= 0 or compared < low
    else:
        assert compared > 0 and compared >= low and result.value is not None
        assert (result.result == Result.PASS) == (min(1.0, agreed / compared) >= 0.9)


def test_in_a_shadow_step_the_canarys_requests_are_called_copies() -> None:
    m = _agreement(200, 199, requests=150)
    assert m.summary.endswith("(revision 9b1c, 150 copies of 450 requests in 30s)")
