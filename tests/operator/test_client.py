"""The API client's errors over real HTTP: which class each refusal is, and Retry-After obeyed.

A small aiohttp server on loopback answers as the API server does (a Status body, a
Retry-After header), so the client's own retry loop, timing and parsing run unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port
from modelship.operator import client as kube
from modelship.operator import kinds, naming, spec
from modelship.operator.rollout import measuring

from tests.operator.factories import md_body

Handler = Callable[[web.Request], web.Response]


def status_body(code: int, reason: str, message: str, **details: object) -> dict[str, object]:
    body: dict[str, object] = {"kind": "Status", "code": code, "reason": reason, "message": message}
    if details:
        body["details"] = details
    return body


@dataclass
class FakeApi:
    url: str
    answers: list[web.Response] = field(default_factory=list)  # given out one per request, in order
    arrivals: list[float] = field(default_factory=list)
    requests: list[dict[str, object]] = field(default_factory=list)  # what each request sent

    def client(self) -> kube.KubeClient:
        return kube.KubeClient(lambda: kopf.ConnectionInfo(server=self.url), attempts=3, backoff=0.01)


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    """Answers with the queued responses, one each (then a Deployment); records when each arrived."""
    port = unused_port()
    fake = FakeApi(f"http://127.0.0.1:{port}")
    answers, arrivals, requests = fake.answers, fake.arrivals, fake.requests

    async def handle(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        sent = {"method": request.method, "path": request.path, "query": dict(request.query)}
        requests.append({**sent, "type": request.content_type, "body": await request.text()})
        return answers.pop(0) if answers else web.json_response({"kind": "Deployment"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake
    await runner.cleanup()


@pytest.mark.parametrize(
    ("code", "cls"),
    [(403, kube.ApiError), (422, kube.ApiError), (409, kube.Conflict), (503, kube.Transient)],
)
async def test_each_refusal_is_raised_as_the_class_that_says_what_to_do(
    api: FakeApi, code: int, cls: type[kube.ApiError]
) -> None:
    answers = api.answers
    answers.extend(web.json_response(status_body(code, "R", "no"), status=code) for _ in range(3))
    c = api.client()
    with pytest.raises(cls) as raised:
        await c.replace({"kind": "Deployment", "metadata": {"name": "x", "namespace": "ml"}})
    assert type(raised.value) is cls and raised.value.status == code
    await c.close()


async def test_a_404_where_an_object_is_needed_is_not_found(api: FakeApi) -> None:
    answers = api.answers
    answers.append(web.json_response(status_body(404, "NotFound", "gone"), status=404))
    c = api.client()
    with pytest.raises(kube.NotFound):
        await c.replace({"kind": "Deployment", "metadata": {"name": "x", "namespace": "ml"}})
    await c.close()


async def test_a_short_retry_after_is_waited_out_in_the_request(api: FakeApi) -> None:
    answers, arrivals = api.answers, api.arrivals
    answers.append(
        web.json_response(
            status_body(429, "TooManyRequests", "slow down"), status=429, headers={"Retry-After": "1"}
        )
    )
    c = api.client()
    assert await c.get(kinds.DEPLOYMENTS, "ml", "x") == {"kind": "Deployment"}
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 1.0
    await c.close()


async def test_a_long_retry_after_is_left_to_the_work_queue(api: FakeApi) -> None:
    answers, arrivals = api.answers, api.arrivals
    answers.append(
        web.json_response(status_body(503, "ServiceUnavailable", "later", retryAfterSeconds=45), status=503)
    )
    c = api.client()
    with pytest.raises(kube.Transient) as raised:
        await c.get(kinds.DEPLOYMENTS, "ml", "x")
    assert raised.value.retry_after == 45 and len(arrivals) == 1
    await c.close()


async def test_holding_replicas_applies_that_field_alone_under_the_handover_manager(api: FakeApi) -> None:
    c = api.client()
    await c.hold_replicas(kinds.DEPLOYMENTS, "ml", "iris-abc", 4)
    [sent] = api.requests
    assert (sent["method"], sent["path"]) == ("PATCH", "/apis/apps/v1/namespaces/ml/deployments/iris-abc")
    assert sent["query"] == {"fieldManager": naming.HANDOVER_FIELD_MANAGER, "force": "true"}
    assert sent["type"] == "application/apply-patch+yaml"
    assert json.loads(str(sent["body"])) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-abc", "namespace": "ml"},
        "spec": {"replicas": 4},
    }
    assert c.writes == {"hold": 1}
    await c.close()


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("", None), ("soon", None)])
def test_retry_after_in_seconds(header: str, seconds: float | None) -> None:
    assert kube.parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    waited = kube.parse_retry_after(in_a_minute)
    assert waited is not None and 55 <= waited <= 61


async def test_the_client_goes_direct_whatever_the_proxy_variables_say(
    api: FakeApi, bogus_proxy: str
) -> None:
    # The proxy is really there for a client that reads the environment: it cannot connect.
    async with aiohttp.ClientSession(trust_env=True) as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(api.url)
    assert api.arrivals == []
    # Even when Kopf's connection info would trust the environment.
    c = kube.KubeClient(lambda: kopf.ConnectionInfo(server=api.url, trust_env=True), attempts=1)
    assert await c.get(kinds.DEPLOYMENTS, "ml", "x") == {"kind": "Deployment"}
    assert len(api.arrivals) == 1
    await c.close()


async def test_the_measurer_reaches_prometheus_direct_whatever_the_proxy_variables_say(
    api: FakeApi, bogus_proxy: str
) -> None:
    vector = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [0, "100"]}]}}
    api.answers.extend(web.json_response(vector) for _ in range(8))
    measurer = measuring.Measurer(api.url)
    verdict = await measurer(spec.parse(md_body()), "9b1c")
    await measurer.close()
    assert api.arrivals, verdict.summary  # the queries reached the loopback "Prometheus"
    assert "unreachable" not in verdict.summary
