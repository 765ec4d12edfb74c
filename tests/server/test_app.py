"""The ASGI layer in-process: the fast path for inference POSTs, its errors, and the app over a state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI, Request, Response
from modelship.server.app import InferenceFastPath, create_app
from modelship.server.config import Settings
from modelship.server.errors import RequestError
from modelship.server.fetch import read_verified
from modelship.server.runtime import ModelRuntime
from modelship.server.state import ServerState
from starlette.routing import Route


async def _ok(request: Request) -> Response:
    return Response(b'{"name": "%s"}' % request.path_params["name"].encode(), media_type="application/json")


async def _refuse(request: Request) -> Response:
    raise RequestError(413, "too big")


async def _bug(request: Request) -> Response:
    raise RuntimeError("a bug")


def _client(draining: Callable[[], bool] = lambda: False) -> httpx.AsyncClient:
    fallback = FastAPI()

    @fallback.get("/other")
    async def other() -> dict[str, bool]:
        return {"fastapi": True}

    app = InferenceFastPath(
        fallback,
        [
            Route("/m/{name}/ok", _ok, methods=["POST"]),
            Route("/refuse", _refuse, methods=["POST"]),
            Route("/bug", _bug, methods=["POST"]),
        ],
        draining=draining,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_posts_reach_their_handler_with_path_params_and_the_rest_goes_to_fastapi() -> None:
    async with _client() as client:
        assert (await client.post("/m/abc/ok")).json() == {"name": "abc"}
        assert (await client.get("/other")).json() == {"fastapi": True}
        assert (await client.post("/nowhere")).status_code == 404


async def test_request_errors_and_bugs_answer_json() -> None:
    async with _client() as client:
        refused = await client.post("/refuse")
        assert refused.status_code == 413 and refused.json() == {"error": "too big"}
        bug = await client.post("/bug")
        assert bug.status_code == 500 and bug.json() == {"error": "internal server error: RuntimeError"}


async def test_once_draining_every_answer_closes_its_connection() -> None:
    draining = False
    async with _client(lambda: draining) as client:
        assert "connection" not in (await client.post("/m/abc/ok")).headers
        assert "connection" not in (await client.get("/other")).headers
        draining = True
        for response in (
            await client.post("/m/abc/ok"),
            await client.post("/refuse"),
            await client.get("/other"),
            await client.post("/nowhere"),
        ):
            assert response.headers.get_list("connection") == ["close"], response.request.url
        assert (await client.post("/m/abc/ok")).json() == {"name": "abc"}


def _state(model_dir: Path) -> ServerState:
    return ServerState(
        Settings(model_name="mlp", model_uri=str(model_dir / "mlp.onnx"), model_version="3", threads=1)
    )


_ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


async def test_the_endpoints_follow_the_phase_of_their_state(model_dir: Path) -> None:
    state = _state(model_dir)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(state)), base_url="http://test"
    ) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        for path in ("/v2/health/ready", "/v2/models/mlp/ready", "/v2/models/mlp"):
            loading = await client.get(path)
            assert (loading.status_code, loading.json()) == (503, {"error": "the model is loading"}), path
        assert (await client.post("/v2/models/mlp/infer", json=_ROW)).status_code == 503

        model = read_verified(model_dir / "mlp.onnx", None, 1 << 20, "mlp.onnx")
        state.attach(ModelRuntime.load(model, threads=1), 0.1)
        try:
            assert (await client.get("/v2/models/mlp/versions/3/ready")).json() == {
                "name": "mlp",
                "ready": True,
            }
            assert (await client.get("/v2/models/mlp")).json()["parameters"]["sha256"] == model.sha256
            served = await client.post("/v2/models/mlp/versions/3/infer", json=_ROW)
            assert served.status_code == 200 and "connection" not in served.headers
            assert served.json()["outputs"][0]["shape"] == [1, 3]

            state.begin_drain()
            draining = await client.get("/v2/health/ready")
            assert (draining.status_code, draining.json()) == (503, {"error": "the server is shutting down"})
            still = await client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]})
            assert still.status_code == 200 and still.headers["connection"] == "close"
            assert len(still.json()["predictions"][0]) == 3
        finally:
            await state.close()
        metrics = (await client.get("/metrics")).text
        assert 'modelship_requests_total{code="503",model="mlp",revision="",version="3"} 1.0' in metrics
        assert 'modelship_requests_total{code="200",model="mlp",revision="",version="3"} 2.0' in metrics
