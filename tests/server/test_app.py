"""The ASGI layer in-process: the fast path for inference POSTs and its error answers."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI, Request, Response
from modelship.server.app import InferenceFastPath
from modelship.server.errors import RequestError
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
