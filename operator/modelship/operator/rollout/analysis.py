"""Canary analysis: the checks of `spec.rollout.canary.analysis`, measured in Prometheus.

Everything but `measure` is pure: settings become PromQL queries (`plan`), and the numbers
Prometheus answers become results (`evaluate`). A measurement never raises and never passes on
doubt: too little traffic, no data, a failed query or an unreachable Prometheus make it
Inconclusive, which neither promotes nor aborts a rollout.

Prediction drift (`predictionDrift`) compares what the canary predicts with what the stable revision
predicts in the same window, from `modelship_predictions_total` by output and bin (a class label, an
argmax index, or a histogram bucket of a regressor's values). The measure is the Jensen-Shannon
distance between the two revisions' distributions over the bins of one output: the square root of
the Jensen-Shannon divergence with logarithms in base 2, JSD = (KL(P‖M) + KL(Q‖M)) / 2 with
M = (P + Q) / 2, where a bin that one revision never predicted counts 0 on its side. It lies in
[0, 1]: 0 for the same distribution, 1 for disjoint ones. Without an `output` every output that both
revisions counted is compared, and the largest distance counts. Chosen over PSI (the population
stability index) because it is symmetric (neither revision has to be the reference), bounded (one
`max` reads the same for every model) and defined when a bin is empty on one side, where PSI divides
by zero and needs a made-up floor; a canary that stops predicting a class is the very drift to catch.

Agreement (`agreement`) judges a shadow step, where the stable revision's pods copy a share of their
requests to the canary and compare each pair of answers themselves (`modelship_mirror_requests_total`
by result): the share of compared answers that agreed. Pair by pair, it sees a wrong model sooner
than a distance between distributions does (a permutation of two equally common classes keeps the
distribution and fails every pair).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
from modelship.operator.durations import format_duration, parse_duration
from modelship.operator.rollout.distributions import js_distance


class Result(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


# How bad each result is: a measurement is as bad as its worst check.
_SEVERITY = {Result.PASS: 0, Result.INCONCLUSIVE: 1, Result.FAIL: 2}

SUCCESS_RATE = "success-rate"
LATENCY_P99 = "latency-p99"
PREDICTION_DRIFT = "prediction-drift"
AGREEMENT = "agreement"
BUILT_IN = frozenset({SUCCESS_RATE, LATENCY_P99, PREDICTION_DRIFT, AGREEMENT})
PLACEHOLDERS = frozenset({"namespace", "name", "revision", "window"})

# rate() needs at least two samples in its window, so a window must span a few scrape intervals:
# 10s suits a Prometheus that scrapes every second or two; one that scrapes every 15s needs an
# analysis interval of a minute or more.
MIN_WINDOW_SECONDS = 10
DEFAULT_TIMEOUT = 5.0
NO_PROMETHEUS = "no Prometheus: set analysis.prometheus.url or the operator's MODELSHIP_PROMETHEUS_URL"
_MAX_ERROR = 300

_SELECTOR = 'namespace="{{namespace}}",revision="{{revision}}"'
# 499 is a request its client gave up on (the server's count, as nginx's): neither a success nor a
# failure of the revision, so impatient clients can neither roll a good version back nor make up the
# sample a verdict needs. 4xx are the clients' mistakes: answered, so successes of the server.
_ANSWERED = f'{_SELECTOR},code!="499"'
REQUESTS_QUERY = f"sum(increase(modelship_requests_total{{{_ANSWERED}}}[{{{{window}}}}]))"
# A revision that answered nothing but 5xx has no non-5xx series at all: `or vector(0)` makes that
# a success rate of 0 instead of no data (which would only ever be inconclusive).
SUCCESS_RATE_QUERY = (
    f'(sum(rate(modelship_requests_total{{{_SELECTOR},code!~"5..|499"}}[{{{{window}}}}])) or vector(0))'
    f" / sum(rate(modelship_requests_total{{{_ANSWERED}}}[{{{{window}}}}]))"
)
# Every request to either revision: what the canary's share of traffic is measured against.
TRAFFIC_QUERY = (
    'sum(increase(modelship_requests_total{{namespace="{namespace}",revision=~"{revisions}"}}[{window}]))'
)
LATENCY_P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) "
    f"(rate(modelship_request_duration_seconds_bucket{{{_SELECTOR}}}[{{{{window}}}}])))"
)
# One revision's predictions in the window by output and bin; asked once for each revision.
PREDICTIONS_QUERY = (
    f"sum by (output, bin) (increase(modelship_predictions_total{{{_SELECTOR}}}[{{{{window}}}}]))"
)

# Copies of the stable revision's requests that the canary answered (a shadow step), counted by the
# stable pods that sent them, which label them with the canary's revision as `target`.
_MIRRORED = 'namespace="{{namespace}}",target="{{revision}}"'
COMPARED_QUERY = (
    f'sum(increase(modelship_mirror_requests_total{{{_MIRRORED},result=~"agree|disagree"}}[{{{{window}}}}]))'
)
AGREED_QUERY = (
    f'sum(increase(modelship_mirror_requests_total{{{_MIRRORED},result="agree"}}[{{{{window}}}}]))'
    " or vector(0)"
)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


class AnalysisSpecError(ValueError):
    """`spec.rollout.canary.analysis` is malformed; the message names the field."""


class QueryError(Exception):
    """Prometheus refused a query or answered something other than the number or vector asked for."""


# ---------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Query:
    """A user's check: one PromQL expression (with placeholders) that passes when min <= value <= max."""

    name: str
    query: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class PredictionDrift:
    """`predictionDrift`: the canary's predictions against the stable revision's."""

    max: float  # the largest Jensen-Shannon distance that passes
    min_requests: int = 100  # predictions of the compared output each revision must make in a window
    output: str | None = None  # None: every output both revisions counted


@dataclass(frozen=True)
class Agreement:
    """`agreement`: during a shadow step, the share of copied requests the canary answered alike."""

    min: float  # the lowest share of agreeing answers that passes
    min_requests: int = 50  # compared answers needed in a window


@dataclass(frozen=True)
class AnalysisSettings:
    prometheus_url: str | None = None  # None: the operator's MODELSHIP_PROMETHEUS_URL
    interval: float = 30.0  # seconds between measurements
    failure_limit: int = 2
    inconclusive_limit: int = 3
    min_requests: int = 20
    success_rate: float = 0.99
    max_latency_p99: float | None = None  # seconds
    queries: tuple[Query, ...] = ()
    prediction_drift: PredictionDrift | None = None
    agreement: Agreement | None = None

    @property
    def window(self) -> str:
        """The range every query looks back over: the interval, at least 10s, in whole seconds."""
        return format_duration(max(math.ceil(self.interval), MIN_WINDOW_SECONDS))


def parse_settings(mapping: Mapping[str, Any] | None) -> AnalysisSettings:
    """The settings of `spec.rollout.canary.analysis` (None or {}: the defaults); AnalysisSpecError."""
    raw = mapping or {}
    defaults = AnalysisSettings()
    prometheus = raw.get("prometheus") or {}
    if not isinstance(prometheus, Mapping):
        raise AnalysisSpecError("prometheus must be an object with a url")
    url = prometheus.get("url") or None
    if url is not None and not re.match(r"^https?://[^/]+", str(url)):
        raise AnalysisSpecError(f"prometheus.url must be an http:// or https:// URL, got {url!r}")
    interval = _duration(raw, "interval", defaults.interval) or 0.0
    if interval <= 0:
        raise AnalysisSpecError("interval must be positive")
    latency = _duration(raw, "maxLatencyP99", None)
    failure_limit = _integer(raw, "failureLimit", defaults.failure_limit, minimum=1)
    inconclusive_limit = _integer(raw, "inconclusiveLimit", defaults.inconclusive_limit, minimum=1)
    min_requests = _integer(raw, "minRequests", defaults.min_requests, minimum=0)
    success_rate = _number(raw, "successRate", defaults.success_rate)
    if success_rate is None or not 0 <= success_rate <= 1:
        raise AnalysisSpecError(f"successRate must be between 0 and 1, got {raw.get('successRate')!r}")
    return AnalysisSettings(
        prometheus_url=str(url) if url else None,
        interval=interval,
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
        min_requests=min_requests,
        success_rate=success_rate,
        max_latency_p99=latency,
        queries=_queries(raw.get("queries")),
        prediction_drift=_prediction_drift(raw.get("predictionDrift")),
        agreement=_agreement(raw.get("agreement")),
    )


def _duration(raw: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = raw.get(key)
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise AnalysisSpecError(f"{key}: {exc}") from None


def _integer(raw: Mapping[str, Any], key: str, default: int, *, minimum: int, where: str = "") -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AnalysisSpecError(f"{where}{key} must be an integer of at least {minimum}, got {value!r}")
    return value


def _number(raw: Mapping[str, Any], key: str, default: float | None, *, where: str = "") -> float | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnalysisSpecError(f"{where}{key} must be a number, got {value!r}")
    return float(value)


def _prediction_drift(raw: Any) -> PredictionDrift | None:
    if raw is None:
        return None
    where = "predictionDrift."
    if not isinstance(raw, Mapping):
        raise AnalysisSpecError("predictionDrift must be an object with max")
    high = _number(raw, "max", None, where=where)
    if high is None or not 0 <= high <= 1:
        raise AnalysisSpecError(f"{where}max must be between 0 and 1, got {raw.get('max')!r}")
    output = raw.get("output")
    if output is not None and (not isinstance(output, str) or not output):
        raise AnalysisSpecError(f"{where}output must be the name of an output, got {output!r}")
    return PredictionDrift(
        max=high,
        min_requests=_integer(raw, "minRequests", PredictionDrift.min_requests, minimum=0, where=where),
        output=output,
    )


def _agreement(raw: Any) -> Agreement | None:
    if raw is None:
        return None
    where = "agreement."
    if not isinstance(raw, Mapping):
        raise AnalysisSpecError("agreement must be an object with min")
    low = _number(raw, "min", None, where=where)
    if low is None or not 0 <= low <= 1:
        raise AnalysisSpecError(f"{where}min must be between 0 and 1, got {raw.get('min')!r}")
    return Agreement(
        min=low, min_requests=_integer(raw, "minRequests", Agreement.min_requests, minimum=0, where=where)
    )


def _queries(raw: Any) -> tuple[Query, ...]:
    queries: list[Query] = []
    for index, item in enumerate(raw or ()):
        where = f"queries[{index}]"
        if not isinstance(item, Mapping):
            raise AnalysisSpecError(f"{where} must be an object with name and query")
        name, text = item.get("name"), item.get("query")
        if not isinstance(name, str) or not name:
            raise AnalysisSpecError(f"{where}.name must be a non-empty string")
        if name in BUILT_IN or name in (q.name for q in queries):
            raise AnalysisSpecError(f"{where}.name {name!r} is taken (by a built-in check or another query)")
        if not isinstance(text, str) or not text.strip():
            raise AnalysisSpecError(f"{where}.query must be a PromQL expression")
        unknown = sorted(set(_PLACEHOLDER.findall(text)) - PLACEHOLDERS)
        if unknown:
            raise AnalysisSpecError(
                f"{where}.query uses unknown placeholders {unknown}; "
                f"known are {{{{namespace}}}}, {{{{name}}}}, {{{{revision}}}} and {{{{window}}}}"
            )
        low, high = _number(item, "min", None), _number(item, "max", None)
        if low is None and high is None:
            raise AnalysisSpecError(f"{where} needs min or max (or both)")
        if low is not None and high is not None and low > high:
            raise AnalysisSpecError(f"{where}: min {low:g} is above max {high:g}")
        queries.append(Query(name=name, query=text, min=low, max=high))
    return tuple(queries)


# ---------------------------------------------------------------------------------------------
# the checks of one measurement


def render(template: str, *, namespace: str, name: str, revision: str, window: str) -> str:
    """The template with its `{{placeholder}}`s replaced (unknown ones are left as they are)."""
    values = {"namespace": namespace, "name": name, "revision": revision, "window": window}
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


@dataclass(frozen=True)
class Check(Query):
    """One query with its placeholders filled in, and the unit its numbers are shown in."""

    unit: str = ""  # shown after numbers: "s" for latencies

    @property
    def threshold(self) -> str:
        """The pass condition as people read it: `>= 0.99`, `<= 0.5s`, `>= 0 and <= 5`."""
        parts = []
        if self.min is not None:
            parts.append(f">= {self.format(self.min)}")
        if self.max is not None:
            parts.append(f"<= {self.format(self.max)}")
        return " and ".join(parts) or "any value"

    def judge(self, value: float | None) -> Result:
        if value is None or math.isnan(value):
            return Result.INCONCLUSIVE
        if self.min is not None and value < self.min:
            return Result.FAIL
        if self.max is not None and value > self.max:
            return Result.FAIL
        return Result.PASS

    def format(self, value: float) -> str:
        return _format_number(value) + self.unit

    def explain(self, value: float | None) -> str:
        """`success-rate 0.42 < 0.99`: the value against the bound it misses (or meets)."""
        if value is None or math.isnan(value):
            return f"{self.name} has no data"
        if self.min is not None and value < self.min:
            return f"{self.name} {self._distinct(value, self.min)} < {self.format(self.min)}"
        if self.max is not None and value > self.max:
            return f"{self.name} {self._distinct(value, self.max)} > {self.format(self.max)}"
        return f"{self.name} {self.format(value)} {self.threshold}"

    def _distinct(self, value: float, bound: float) -> str:
        """The value with enough digits that it does not read as equal to the bound it misses."""
        for digits in (4, 6, 10):
            text = _format_number(value, digits)
            if text != _format_number(bound, digits):
                return text + self.unit
        return repr(value) + self.unit


def _format_number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


@dataclass(frozen=True)
class DriftCheck:
    """The prediction-drift check of one measurement: one query per revision, compared here."""

    canary: str  # the query of the canary's predictions by output and bin
    stable: str  # the same query of the stable revision
    max: float
    min_predictions: int
    output: str | None = None  # None: every output both revisions counted

    @property
    def bound(self) -> Check:
        """Its pass condition as the other checks state theirs (`<= 0.2`)."""
        return Check(PREDICTION_DRIFT, self.canary, max=self.max)


@dataclass(frozen=True)
class AgreementCheck:
    """The agreement check of one measurement: the answers compared, and those that agreed."""

    compared: str  # the query of the copied requests the canary answered and the stable pods compared
    agreed: str  # the query of those that agreed
    min: float
    min_compared: int

    @property
    def bound(self) -> Check:
        return Check(AGREEMENT, self.agreed, min=self.min)


@dataclass(frozen=True)
class Plan:
    """Every query of one measurement of one revision."""

    revision: str
    window: str
    min_requests: int
    requests: str  # the query of the request count in the window
    checks: tuple[Check, ...]
    traffic: str | None = None  # the query of the requests to both revisions; None: no stable one
    drift: DriftCheck | None = None  # None: not asked for, or no stable revision to compare with
    agreement: AgreementCheck | None = None  # None: not asked for, or no shadow step copies requests
    mirrored: bool = False  # the revision's requests are copies of the stable revision's (a shadow step)


def plan(
    settings: AnalysisSettings,
    *,
    namespace: str,
    name: str,
    revision: str,
    stable: str | None = None,
    mirrored: bool = False,
) -> Plan:
    """`mirrored`: the stable revision's pods copy requests to this one now (a shadow step)."""
    window = settings.window

    def fill(template: str) -> str:
        return render(template, namespace=namespace, name=name, revision=revision, window=window)

    checks = [Check(SUCCESS_RATE, fill(SUCCESS_RATE_QUERY), min=settings.success_rate)]
    if settings.max_latency_p99 is not None:
        checks.append(Check(LATENCY_P99, fill(LATENCY_P99_QUERY), max=settings.max_latency_p99, unit="s"))
    checks += [Check(q.name, fill(q.query), min=q.min, max=q.max) for q in settings.queries]
    drift = settings.prediction_drift
    agreement = settings.agreement
    return Plan(
        revision=revision,
        window=window,
        min_requests=settings.min_requests,
        requests=fill(REQUESTS_QUERY),
        checks=tuple(checks),
        traffic=TRAFFIC_QUERY.format(namespace=namespace, revisions=f"{revision}|{stable}", window=window)
        if stable
        else None,
        drift=DriftCheck(
            canary=fill(PREDICTIONS_QUERY),
            stable=render(PREDICTIONS_QUERY, namespace=namespace, name=name, revision=stable, window=window),
            max=drift.max,
            min_predictions=drift.min_requests,
            output=drift.output,
        )
        if drift is not None and stable
        else None,
        agreement=AgreementCheck(
            compared=fill(COMPARED_QUERY),
            agreed=fill(AGREED_QUERY),
            min=agreement.min,
            min_compared=agreement.min_requests,
        )
        if agreement is not None and stable and mirrored
        else None,
        mirrored=bool(stable and mirrored),
    )


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Sample:
    """What one query gave: a number, no data (None), or why there is no answer."""

    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Series:
    """One series of a vector answer."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class VectorSample:
    """What one vector query gave: its series (none: no data), or why there is no answer."""

    series: tuple[Series, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Predictions:
    """The answers to the two queries of a DriftCheck."""

    canary: VectorSample
    stable: VectorSample


@dataclass(frozen=True)
class Compared:
    """The answers to the two queries of an AgreementCheck."""

    compared: Sample
    agreed: Sample


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float | None
    threshold: str
    result: Result

    def to_status(self) -> dict[str, Any]:
        """Its entry in `status.rollout.analysis.results`; JSON has no NaN nor infinity: left out."""
        out: dict[str, Any] = {"name": self.name}
        if self.value is not None and math.isfinite(self.value):
            out["value"] = float(f"{self.value:.6g}")
        out["threshold"] = self.threshold
        out["result"] = str(self.result)
        return out


@dataclass(frozen=True)
class Measurement:
    results: tuple[CheckResult, ...]
    requests: float | None  # requests to the revision in the window; None: unknown
    summary: str  # one line for a condition or an event
    total: float | None = None  # requests to the canary and the stable revision; None: unknown

    @property
    def share(self) -> float | None:
        """The canary's share of the requests in the window (0 to 1); None: not measured."""
        return share_of(self.requests, self.total)

    @property
    def verdict(self) -> Result:
        return worst(r.result for r in self.results)

    def status_results(self) -> list[dict[str, Any]]:
        return [r.to_status() for r in self.results]


def share_of(requests: float | None, total: float | None) -> float | None:
    if requests is None or not total or total <= 0:
        return None
    # increase() extrapolates each series on its own, so the parts can exceed the whole a little.
    return min(1.0, max(0.0, requests / total))


def format_share(share: float) -> str:
    """`25%`, or `<1%` for a share that rounds to 0 without being 0."""
    percent = round(100 * share)
    return "<1%" if percent == 0 and share > 0 else f"{percent}%"


def worst(results: Iterable[Result]) -> Result:
    """Fail over Inconclusive over Pass; nothing measured is Inconclusive, never a pass."""
    return max(results, key=_SEVERITY.__getitem__, default=Result.INCONCLUSIVE)


@dataclass(frozen=True)
class _Judged:
    """One check's result, with what a headline says of it."""

    result: CheckResult
    explanation: str | None  # None: a query of the check failed
    errors: tuple[str, ...] = ()  # why its queries failed


def evaluate(
    plan: Plan,
    requests: Sample,
    samples: Sequence[Sample],
    traffic: Sample | None = None,
    predictions: Predictions | None = None,
    compared: Compared | None = None,
) -> Measurement:
    """Judge one measurement: `samples` are the values of `plan.checks`, in order; `traffic` the
    answer to `plan.traffic` (requests to both revisions), which only informs, never judges;
    `predictions` the answers to `plan.drift` and `compared` those to `plan.agreement`, each given
    when the plan has its check and only then."""
    if len(samples) != len(plan.checks):
        raise ValueError(f"{len(plan.checks)} checks but {len(samples)} samples")
    if (plan.drift is None) != (predictions is None):
        raise ValueError("predictions go with a plan's prediction-drift check, and only with one")
    if (plan.agreement is None) != (compared is None):
        raise ValueError("compared answers go with a plan's agreement check, and only with one")
    count = None if requests.error else (requests.value or 0.0)
    total = None if traffic is None or traffic.error else (traffic.value or 0.0)
    enough = count is not None and count >= plan.min_requests
    judged = [_judge(check, sample, enough) for check, sample in zip(plan.checks, samples, strict=True)]
    if plan.drift is not None and predictions is not None:
        judged.append(_judge_drift(plan.drift, predictions, plan.window, enough))
    if plan.agreement is not None and compared is not None:
        judged.append(_judge_agreement(plan.agreement, compared, plan.window, enough))
    context = f"revision {plan.revision}"
    share = share_of(count, total)
    if plan.mirrored and count is not None and total is not None:
        # No user request reaches it: its requests are the copies, the rest are the stable revision's.
        served = max(0.0, total - count)
        context += f", {_format_count(count)} copies of {_format_count(served)} requests in {plan.window}"
    elif count is not None and share is not None and total is not None:
        counted = f"{_format_count(count)} of {_format_count(total)}"
        context += f", {counted} requests in {plan.window}: {format_share(share)}"
    elif count is not None:
        context += f", {_format_count(count)} requests in {plan.window}"
    headline = _headline(plan, judged, requests, total)
    return Measurement(tuple(j.result for j in judged), count, f"{headline} ({context})", total)


def _judge(check: Check, sample: Sample, enough: bool) -> _Judged:
    result = check.judge(sample.value) if enough and not sample.error else Result.INCONCLUSIVE
    judged = CheckResult(check.name, sample.value, check.threshold, result)
    if sample.error:
        return _Judged(judged, None, (sample.error,))
    return _Judged(judged, check.explain(sample.value))


def _judge_drift(check: DriftCheck, predictions: Predictions, window: str, enough: bool) -> _Judged:
    threshold = check.bound.threshold
    # Both queries failing alike (Prometheus down) is one error.
    errors = tuple(dict.fromkeys(e for e in (predictions.canary.error, predictions.stable.error) if e))
    if errors:
        return _Judged(CheckResult(PREDICTION_DRIFT, None, threshold, Result.INCONCLUSIVE), None, errors)
    drift = compare_predictions(check, predictions.canary.series, predictions.stable.series, window)
    result = drift.result if enough else Result.INCONCLUSIVE
    return _Judged(CheckResult(PREDICTION_DRIFT, drift.value, threshold, result), drift.explanation)


def _judge_agreement(check: AgreementCheck, compared: Compared, window: str, enough: bool) -> _Judged:
    """Agreed over compared; too few compared answers (the canary's errors and timeouts are not
    compared: success rate judges those) are inconclusive, whatever the share."""
    bound = check.bound
    errors = tuple(dict.fromkeys(e for e in (compared.compared.error, compared.agreed.error) if e))
    if errors:
        return _Judged(CheckResult(AGREEMENT, None, bound.threshold, Result.INCONCLUSIVE), None, errors)
    count, agreed = compared.compared.value or 0.0, compared.agreed.value or 0.0
    if count <= 0 or count < check.min_compared:
        said = "no answers compared" if count <= 0 else f"{_format_count(count)} answers compared"
        floor = f", fewer than minRequests {check.min_compared}" if count > 0 else ""
        explanation = f"{AGREEMENT}: {said} in {window}{floor}"
        return _Judged(CheckResult(AGREEMENT, None, bound.threshold, Result.INCONCLUSIVE), explanation)
    # increase() extrapolates each series on its own: the part can exceed the whole a little.
    share = min(1.0, agreed / count)
    result = bound.judge(share) if enough else Result.INCONCLUSIVE
    explanation = f"{bound.explain(share)} ({_format_count(agreed)} of {_format_count(count)} answers alike)"
    return _Judged(CheckResult(AGREEMENT, share, bound.threshold, result), explanation)


def _headline(plan: Plan, judged: Sequence[_Judged], requests: Sample, total: float | None) -> str:
    verdict = worst(j.result.result for j in judged)
    explained = [j.explanation for j in judged if j.result.result == verdict and j.explanation is not None]
    if verdict == Result.FAIL:
        return ", ".join(explained)
    if verdict == Result.PASS:
        return "pass: " + ", ".join(explained)
    # Too little traffic makes every check inconclusive; otherwise the ones without data are.
    if requests.error:
        reasons = []
    elif (requests.value or 0.0) < plan.min_requests:
        reasons = [f"fewer requests than minRequests {plan.min_requests}"]
        if total is not None and total >= plan.min_requests:
            # The model has traffic, the canary does not: the clients hold their connections to
            # the stable pods (a Service balances connections, not requests).
            reasons.append("the model's traffic does not reach the canary")
    else:
        reasons = explained
    errors = _errors(requests, judged)
    return "inconclusive: " + "; ".join([*reasons, errors] if errors else reasons)


def _errors(requests: Sample, judged: Sequence[_Judged]) -> str:
    """The failed queries' errors; one error that every query shares (no Prometheus) is said once."""
    named = [("requests", requests.error)] + [
        (j.result.name, error) for j in judged for error in (j.errors or (None,))
    ]
    failed = [(name, _shorten(error)) for name, error in named if error]
    if not failed:
        return ""
    texts = {error for _, error in failed}
    if len(failed) == len(named) and len(texts) == 1:
        return failed[0][1]
    return "; ".join(f"{name}: {error}" for name, error in failed)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def _format_count(count: float) -> str:
    # increase() extrapolates to the window's edges, so counts come back fractional.
    return str(round(count))


# ---------------------------------------------------------------------------------------------
# prediction drift


@dataclass(frozen=True)
class Drift:
    """Two revisions' predictions compared: the distance (None: not comparable) and its reading."""

    value: float | None
    result: Result
    explanation: str  # what a headline says of it


def compare_predictions(
    check: DriftCheck, canary: Iterable[Series], stable: Iterable[Series], window: str
) -> Drift:
    """The canary's predictions (by output and bin) against the stable revision's, in `window`."""
    sides = {"canary": by_output(canary), "stable": by_output(stable)}
    outputs = [check.output] if check.output else sorted(sides["canary"].keys() & sides["stable"].keys())
    if not outputs:
        made = {side: _total(*counts.values()) for side, counts in sides.items()}
        return Drift(None, Result.INCONCLUSIVE, _shortfall(check, made, window) or _disjoint(sides))
    # Each predicted row counts once per output, so the outputs' totals differ only by the scrape.
    made = {side: min(_total(counts.get(o, {})) for o in outputs) for side, counts in sides.items()}
    short = _shortfall(check, made, window)
    if short:
        return Drift(None, Result.INCONCLUSIVE, short)
    distance, output = max((js_distance(sides["canary"][o], sides["stable"][o]), o) for o in outputs)
    return Drift(distance, check.bound.judge(distance), f"{check.bound.explain(distance)} (output {output})")


def by_output(series: Iterable[Series]) -> dict[str, dict[str, float]]:
    """Predictions by output and bin; bins and outputs that counted none in the window are left out."""
    counts: dict[str, dict[str, float]] = {}
    for one in series:
        if one.value > 0:  # NaN too is left out
            bins = counts.setdefault(one.labels.get("output", ""), {})
            label = one.labels.get("bin", "")
            bins[label] = bins.get(label, 0.0) + one.value
    return counts


def _total(*counts: Mapping[str, float]) -> float:
    return math.fsum(value for bins in counts for value in bins.values())


def _shortfall(check: DriftCheck, made: Mapping[str, float], window: str) -> str | None:
    """Why `made` (predictions by side) are too few to compare, or None when they are enough."""
    short = {side: n for side, n in made.items() if n <= 0 or n < check.min_predictions}
    if not short:
        return None
    of = f" of output {check.output}" if check.output else ""
    said = " and ".join(f"the {side} revision made {_predictions(n)}{of}" for side, n in short.items())
    # No predictions at all say enough; a few need the bound they miss.
    floor = f", fewer than minRequests {check.min_predictions}" if any(n > 0 for n in short.values()) else ""
    return f"{PREDICTION_DRIFT}: {said} in {window}{floor}"


def _predictions(count: float) -> str:
    if count <= 0:
        return "no predictions"
    text = _format_count(count)
    return f"{text} prediction" if text == "1" else f"{text} predictions"


def _disjoint(sides: Mapping[str, Mapping[str, object]]) -> str:
    counted = "; ".join(f"{side}: {', '.join(sorted(outputs))}" for side, outputs in sides.items())
    return f"{PREDICTION_DRIFT}: no output counted by both revisions ({counted})"


# ---------------------------------------------------------------------------------------------
# Prometheus


def _result(body: Any) -> tuple[Any, Any]:
    """The resultType and result of an /api/v1/query answer; QueryError for an error answer."""
    if not isinstance(body, Mapping):
        raise QueryError("Prometheus answered something that is not a JSON object")
    if body.get("status") != "success":
        kind = body.get("errorType") or "error"
        raise QueryError(f"{kind}: {body.get('error') or 'no error message'}")
    data = body.get("data") or {}
    return data.get("resultType"), data.get("result")


def parse_response(body: Any) -> float | None:
    """The one number of an /api/v1/query answer; None when it has no data (no series, or NaN)."""
    kind, result = _result(body)
    if kind not in ("scalar", "vector"):
        raise QueryError(f"the query returned a {kind}; a check needs one number")
    if kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise QueryError(
                f"the query returned {len(result)} series; a check needs one number "
                "(aggregate it, e.g. with sum)"
            )
    try:
        value = float(result[1] if kind == "scalar" else result[0]["value"][1])
    except (TypeError, KeyError, IndexError, ValueError):  # not the shape its resultType promises
        raise QueryError(f"Prometheus answered a malformed {kind}") from None
    return None if math.isnan(value) else value


def parse_vector(body: Any) -> tuple[Series, ...]:
    """The series of an /api/v1/query answer that is a vector; those whose value is NaN (no data)
    are left out."""
    kind, result = _result(body)
    if kind != "vector":
        raise QueryError(f"the query returned a {kind}; a comparison of predictions needs a vector")
    try:
        series = tuple(
            Series({str(k): str(v) for k, v in item["metric"].items()}, float(item["value"][1]))
            for item in result
        )
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):  # not a vector's shape
        raise QueryError("Prometheus answered a malformed vector") from None
    return tuple(one for one in series if not math.isnan(one.value))


async def _ask(
    session: aiohttp.ClientSession, prometheus_url: str, promql: str, timeout: float
) -> tuple[Any, str | None]:
    """The JSON answer to one instant query, or None and why there is none."""
    url = prometheus_url.rstrip("/") + "/api/v1/query"
    params = {"query": promql, "timeout": f"{timeout:g}s"}
    try:
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            try:
                return json.loads(text), None
            except ValueError:
                return None, f"{url} answered HTTP {response.status}: {_shorten(text) or 'no body'}"
    except TimeoutError:
        return None, f"Prometheus at {prometheus_url} did not answer within {timeout:g}s"
    except (aiohttp.ClientError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        return None, f"Prometheus at {prometheus_url} is unreachable: {reason}"


async def query(
    session: aiohttp.ClientSession, prometheus_url: str, promql: str, *, timeout: float = DEFAULT_TIMEOUT
) -> Sample:
    """One instant query of one number; every failure is a Sample with an error, never an exception."""
    body, error = await _ask(session, prometheus_url, promql, timeout)
    if error is not None:
        return Sample(error=error)
    try:
        return Sample(value=parse_response(body))
    except QueryError as exc:
        return Sample(error=str(exc))


async def query_vector(
    session: aiohttp.ClientSession, prometheus_url: str, promql: str, *, timeout: float = DEFAULT_TIMEOUT
) -> VectorSample:
    """One instant query of a vector; every failure is a VectorSample with an error, never an exception."""
    body, error = await _ask(session, prometheus_url, promql, timeout)
    if error is not None:
        return VectorSample(error=error)
    try:
        return VectorSample(series=parse_vector(body))
    except QueryError as exc:
        return VectorSample(error=str(exc))


async def measure(
    session: aiohttp.ClientSession,
    prometheus_url: str | None,
    settings: AnalysisSettings,
    namespace: str,
    name: str,
    revision: str,
    *,
    stable: str | None = None,
    mirrored: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Measurement:
    """Measure one revision now (and, with `stable`, its share of the model's requests and its
    predictions against the stable revision's; `mirrored`, its answers to copied requests against
    the stable revision's): every query at once, judged by `evaluate`. Never raises."""
    planned = plan(
        settings, namespace=namespace, name=name, revision=revision, stable=stable, mirrored=mirrored
    )
    if not prometheus_url:
        missing, nothing = Sample(error=NO_PROMETHEUS), VectorSample(error=NO_PROMETHEUS)
        predictions = Predictions(nothing, nothing) if planned.drift is not None else None
        compared = Compared(missing, missing) if planned.agreement is not None else None
        return evaluate(
            planned, missing, [missing] * len(planned.checks), predictions=predictions, compared=compared
        )
    numbers = [planned.requests, *(check.query for check in planned.checks)]
    if planned.agreement is not None:
        numbers += [planned.agreement.compared, planned.agreement.agreed]
    if planned.traffic is not None:
        numbers.append(planned.traffic)
    vectors = [planned.drift.canary, planned.drift.stable] if planned.drift is not None else []
    samples, answers = await asyncio.gather(
        asyncio.gather(*(query(session, prometheus_url, q, timeout=timeout) for q in numbers)),
        asyncio.gather(*(query_vector(session, prometheus_url, q, timeout=timeout) for q in vectors)),
    )
    end = 1 + len(planned.checks)
    checks = samples[1:end]
    compared = Compared(samples[end], samples[end + 1]) if planned.agreement is not None else None
    traffic = samples[-1] if planned.traffic is not None else None
    predictions = Predictions(*answers) if planned.drift is not None else None
    return evaluate(planned, samples[0], checks, traffic, predictions, compared)
