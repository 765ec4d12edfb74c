"""Canary analysis against a real Prometheus scraping real inference servers under real traffic.

Each test serves one revision of a model in a namespace of its own (target labels, as a cluster's
Prometheus adds them), sends it inference requests and measures it as the operator does.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from modelship.operator.rollout import analysis
from modelship.operator.rollout.analysis import AnalysisSettings, Measurement, Result

from tests.operator import canary_models
from tests.support import wait_until

if TYPE_CHECKING:
    from tests.prometheus_support import Prometheus, ScrapedServer, ScrapedServers

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.prometheus_support"]

# The shortest window: a measurement sees the last 10 s of traffic.
FAST = {"interval": "10s", "minRequests": 20}


def _measure(url: str, settings: AnalysisSettings, namespace: str, revision: str, **kw: Any) -> Measurement:
    """One measurement as the operator takes it, of the ModelDeployment "canary"."""

    async def run() -> Measurement:
        async with aiohttp.ClientSession() as session:
            return await analysis.measure(session, url, settings, namespace, "canary", revision, **kw)

    return asyncio.run(run())


def _conclusive(prometheus: Prometheus, settings: AnalysisSettings, server: ScrapedServer) -> Measurement:
    """Measure until Prometheus has seen enough requests for a verdict, and return that measurement."""

    def measured() -> Measurement | None:
        m = _measure(prometheus.url, settings, server.namespace, server.revision)
        return m if m.verdict != Result.INCONCLUSIVE else None

    return wait_until(measured, timeout=60, interval=0.5, what=f"a conclusive measurement of {server.pod}")


def _serve(servers: ScrapedServers, tmp_path: Path, model: canary_models.CanaryModel) -> ScrapedServer:
    revision = uuid.uuid4().hex[:10]
    return servers.start(model.save(tmp_path), namespace=f"analysis-{revision}", revision=revision)


def _result(m: Measurement, name: str) -> analysis.CheckResult:
    return next(r for r in m.results if r.name == name)


def test_a_healthy_revision_passes(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.healthy()
    server = _serve(scraped_servers, tmp_path, model)
    user_check = {
        # Every placeholder rendered: the pods of this revision scraped in the window, exactly one.
        "name": "pods",
        "query": "count(max_over_time("
        'up{namespace="{{namespace}}",pod=~"{{name}}-{{revision}}-.*"}[{{window}}]))',
        "min": 1,
        "max": 1,
    }
    settings = analysis.parse_settings({**FAST, "maxLatencyP99": "1s", "queries": [user_check]})
    with server.traffic([model.request]) as traffic:
        m = _conclusive(prometheus, settings, server)
    assert m.verdict == Result.PASS, m.summary
    assert [r.name for r in m.results] == ["success-rate", "latency-p99", "pods"]
    assert _result(m, "success-rate").value == 1.0
    assert _result(m, "pods").value == 1.0
    assert m.requests is not None and m.requests >= 20
    assert set(traffic.statuses) == {200}
    assert m.summary.startswith("pass: success-rate 1 >= 0.99, latency-p99 ")
    assert m.summary.endswith(f"(revision {server.revision}, {round(m.requests)} requests in 10s)")


@pytest.mark.parametrize("failing_share", [0.25, 1.0])
def test_a_revision_that_answers_5xx_fails_on_success_rate(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path, failing_share: float
) -> None:
    model = canary_models.broken_labels()
    assert model.failing_request is not None
    server = _serve(scraped_servers, tmp_path, model)
    assert server.infer(model.request) == 200
    assert server.infer(model.failing_request) == 500
    requests = (
        [model.failing_request] if failing_share == 1.0 else [model.request] * 3 + [model.failing_request]
    )
    settings = analysis.parse_settings(FAST)
    with server.traffic(requests) as traffic:
        m = _conclusive(prometheus, settings, server)
    assert m.verdict == Result.FAIL, m.summary
    success = _result(m, "success-rate")
    assert success.result == Result.FAIL and success.value is not None
    # rate() extrapolates to the window's edges, so the share is close to, not exactly, the sent one.
    assert success.value == pytest.approx(1 - failing_share, abs=0.1)
    assert m.summary.startswith("success-rate 0") and " < 0.99 (revision " in m.summary
    assert set(traffic.statuses) <= {200, 500}


def test_clients_that_give_up_mid_request_neither_fail_a_revision_nor_make_its_sample(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.healthy()
    server = _serve(scraped_servers, tmp_path, model)
    cut_off = (
        f"POST /v2/models/{server.model_name}/infer HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n{"
    ).encode()
    stop = threading.Event()

    def impatient() -> None:
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(cut_off)
            stop.wait(0.01)

    settings = analysis.parse_settings(FAST)
    leaving = threading.Thread(target=impatient, daemon=True)
    leaving.start()
    try:
        with server.traffic([model.request]) as traffic:
            m = _conclusive(prometheus, settings, server)
    finally:
        stop.set()
        leaving.join(timeout=10)
    assert set(traffic.statuses) == {200}
    gave_up = prometheus.query(f'sum(modelship_requests_total{{namespace="{server.namespace}",code="499"}})')
    assert gave_up and float(gave_up[0]["value"][1]) > 0, "no request was counted as given up (499)"
    assert m.verdict == Result.PASS, m.summary
    assert _result(m, "success-rate").value == pytest.approx(1.0)


def test_a_slow_revision_fails_on_latency(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.slow()
    server = _serve(scraped_servers, tmp_path, model)
    settings = analysis.parse_settings({**FAST, "minRequests": 5, "maxLatencyP99": "10ms"})
    with server.traffic([model.request], pause=0):
        m = _conclusive(prometheus, settings, server)
    assert m.verdict == Result.FAIL, m.summary
    assert _result(m, "success-rate").result == Result.PASS
    latency = _result(m, "latency-p99")
    assert latency.result == Result.FAIL and latency.value is not None and latency.value > 0.01
    assert m.summary.startswith("latency-p99 ") and m.summary.split(" (")[0].endswith("s > 0.01s")


def test_too_few_requests_are_inconclusive(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.broken_labels()
    assert model.failing_request is not None
    server = _serve(scraped_servers, tmp_path, model)
    for _ in range(5):
        assert server.infer(model.failing_request) == 500  # bad, but too few to judge
    prometheus.wait_scraped(
        f'modelship_requests_total{{namespace="{server.namespace}",revision="{server.revision}"}} == 5'
    )
    m = _measure(prometheus.url, analysis.parse_settings(FAST), server.namespace, server.revision)
    assert m.verdict == Result.INCONCLUSIVE
    assert {r.result for r in m.results} == {Result.INCONCLUSIVE}
    assert m.requests is not None and m.requests < 20
    assert m.summary.startswith("inconclusive: fewer requests than minRequests 20 (revision ")


def test_a_query_prometheus_refuses_is_inconclusive(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.healthy()
    server = _serve(scraped_servers, tmp_path, model)
    broken = {"name": "broken", "query": 'sum(rate(up{namespace="{{namespace}}"}[{{window}}])', "max": 1}
    settings = analysis.parse_settings({**FAST, "queries": [broken]})
    with server.traffic([model.request]):
        m = wait_until(
            lambda: (
                (m := _measure(prometheus.url, settings, server.namespace, server.revision)).requests
                and m.requests >= 20
                and m
            ),
            timeout=60,
            interval=0.5,
            what="enough requests",
        )
    assert m.verdict == Result.INCONCLUSIVE
    assert [r.result for r in m.results] == [Result.PASS, Result.INCONCLUSIVE]
    assert m.summary.startswith("inconclusive: broken: bad_data: ") and "parse error" in m.summary


# ---- prediction drift: a canary and a stable revision of one model, in one namespace

DRIFT = {**FAST, "predictionDrift": {"max": 0.2, "minRequests": 20}}
# The healthy MLP's scores for its own request put class 2 first; for this one, class 0 (by 0.48).
OTHER_CLASS = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-3.3, 0.5, 2.4, -0.6]}]}


def _serve_two(
    servers: ScrapedServers, tmp_path: Path, model: canary_models.CanaryModel
) -> tuple[ScrapedServer, ScrapedServer]:
    """The stable and the canary revision of one model, both serving it, in a namespace of their own."""
    namespace = f"drift-{uuid.uuid4().hex[:10]}"
    path = model.save(tmp_path)
    stable, canary = (servers.start(path, namespace=namespace, revision=uuid.uuid4().hex[:10]) for _ in "sc")
    return stable, canary


def _compared(prometheus: Prometheus, stable: ScrapedServer, canary: ScrapedServer) -> Measurement:
    """Measure the canary against the stable revision until there is a verdict."""
    settings = analysis.parse_settings(DRIFT)

    def measured() -> Measurement | None:
        m = _measure(prometheus.url, settings, canary.namespace, canary.revision, stable=stable.revision)
        return m if m.verdict != Result.INCONCLUSIVE else None

    return wait_until(measured, timeout=60, interval=0.5, what=f"a conclusive comparison of {canary.pod}")


def test_a_canary_that_predicts_what_the_stable_revision_predicts_passes(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.healthy()
    stable, canary = _serve_two(scraped_servers, tmp_path, model)
    with stable.traffic([model.request]), canary.traffic([model.request]):
        m = _compared(prometheus, stable, canary)
    assert m.verdict == Result.PASS, m.summary
    assert [r.name for r in m.results] == ["success-rate", "prediction-drift"]
    assert _result(m, "prediction-drift") == analysis.CheckResult(
        "prediction-drift", 0.0, "<= 0.2", Result.PASS
    )
    assert "prediction-drift 0 <= 0.2 (output y)" in m.summary


def test_a_canary_that_predicts_another_class_fails_on_prediction_drift(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.healthy()
    stable, canary = _serve_two(scraped_servers, tmp_path, model)
    with stable.traffic([model.request]), canary.traffic([OTHER_CLASS]) as traffic:
        m = _compared(prometheus, stable, canary)
    assert set(traffic.statuses) == {200}
    assert m.verdict == Result.FAIL, m.summary
    assert _result(m, "success-rate").result == Result.PASS  # every answer a 200: only its classes differ
    assert _result(m, "prediction-drift") == analysis.CheckResult(
        "prediction-drift", 1.0, "<= 0.2", Result.FAIL
    )
    assert m.summary.startswith(f"prediction-drift 1 > 0.2 (output y) (revision {canary.revision}, ")
    selector = f'namespace="{canary.namespace}",output="y"'
    by_bin = prometheus.query(f"sum by (revision, bin) (modelship_predictions_total{{{selector}}} > 0)")
    # The warm-up's row of zeros may add a class of its own to each revision.
    assert {(s["metric"]["revision"], s["metric"]["bin"]) for s in by_bin} >= {
        (stable.revision, "2"),
        (canary.revision, "0"),
    }


def test_a_stable_revision_without_traffic_makes_the_drift_inconclusive(
    prometheus: Prometheus, scraped_servers: ScrapedServers, tmp_path: Path
) -> None:
    model = canary_models.healthy()
    stable, canary = _serve_two(scraped_servers, tmp_path, model)
    settings = analysis.parse_settings(DRIFT)

    def judged_on_its_own() -> Measurement | None:
        m = _measure(prometheus.url, settings, canary.namespace, canary.revision, stable=stable.revision)
        return m if _result(m, "success-rate").result == Result.PASS else None

    with canary.traffic([model.request]):
        m = wait_until(judged_on_its_own, timeout=60, interval=0.5, what=f"enough requests to {canary.pod}")
    assert m.verdict == Result.INCONCLUSIVE, m.summary
    assert _result(m, "prediction-drift").result == Result.INCONCLUSIVE
    assert m.summary.startswith(
        "inconclusive: prediction-drift: the stable revision made no predictions in 10s ("
    )


def test_an_unreachable_prometheus_is_inconclusive() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens there
    m = _measure(url, analysis.parse_settings(FAST), "prod", "9b1c2d3e4f")
    assert m.verdict == Result.INCONCLUSIVE and m.requests is None
    assert {r.result for r in m.results} == {Result.INCONCLUSIVE}
    assert m.summary.startswith(f"inconclusive: Prometheus at {url} is unreachable: ")
    assert m.summary.endswith("(revision 9b1c2d3e4f)")


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_prometheus_that_does_not_answer_is_inconclusive_after_the_timeout(silent_listener: str) -> None:
    m = _measure(silent_listener, analysis.parse_settings(FAST), "prod", "9b1c2d3e4f", timeout=0.5)
    assert m.verdict == Result.INCONCLUSIVE
    assert m.summary == (
        f"inconclusive: Prometheus at {silent_listener} did not answer within 0.5s (revision 9b1c2d3e4f)"
    )
