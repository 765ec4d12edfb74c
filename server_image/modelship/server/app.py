"""HTTP routes: the Open Inference Protocol (V2) REST endpoints, V1 `:predict`, health and metrics.

Handlers take the raw request and parse the body themselves (protocol.py): a pydantic model per request
would cost more than the rest of the hot path together. Every error is `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from modelship.server import protocol
from modelship.server.errors import RequestError
from modelship.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelship.server.runtime import InferenceError
from modelship.server.state import Phase, ServerState
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("modelship.server.app")

try:
    SERVER_VERSION = metadata.version("modelship")
except metadata.PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0"

_JSON = protocol.JSON_CONTENT_TYPE


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def _error(status: int, message: str) -> Response:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return Response(protocol.error_body(message), status_code=status, media_type=_JSON, headers=headers)


def _bug(request: Request, exc: Exception) -> Response:
    """A 500: only ever our mistake (the fuzz tests hold every client mistake to a 4xx)."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal server error: {type(exc).__name__}")


def _never() -> bool:
    return False


class InferenceFastPath:
    """The ASGI app uvicorn runs: inference POSTs go straight to their handler, everything else to FastAPI.

    FastAPI's middleware stack and router cost tens of microseconds a request, a good part of what the
    server spends per inference, and the inference handlers need none of it: they take the raw request
    and answer their errors themselves.

    Once `draining()` is true, every response carries `Connection: close`: uvicorn (httptools or h11)
    then closes the connection after it, and the client reconnects to a pod that is not going away.
    """

    def __init__(self, app: FastAPI, routes: list[Route], draining: Callable[[], bool] = _never) -> None:
        self.app = app
        self.routes = routes
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    response = await self._respond(route, Request(scope, receive))
                    # Asked once the answer is ready, so that a request in flight when the drain began
                    # closes its connection too; the wrapper costs a little, hence not in every request.
                    await response(scope, receive, self._closing(send) if self.draining() else send)
                    return
        await self.app(scope, receive, self._closing(send) if scope["type"] == "http" else send)

    def _closing(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        return send_closing

    @staticmethod
    async def _respond(route: Route, request: Request) -> Response:
        try:
            response: Response = await route.endpoint(request)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        except Exception as exc:
            return _bug(request, exc)
        return response


def create_app(state: ServerState) -> InferenceFastPath:
    settings = state.settings
    app = FastAPI(
        title="Modelship inference server",
        version=SERVER_VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = state
    max_body = settings.max_request_bytes

    def authorize(request: Request) -> None:
        if state.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), state.token):
            raise RequestError(401, "a valid bearer token is required (Authorization: Bearer <token>)")

    def find_model(request: Request) -> None:
        params = request.path_params
        name = params["name"]
        if name != settings.model_name:
            raise RequestError(404, f"unknown model {name!r}; this server serves {settings.model_name!r}")
        version = params.get("version")
        if version is not None and version != settings.model_version:
            raise RequestError(
                404,
                f"unknown version {version!r} of model {name!r}; it is served as {settings.model_version!r}",
            )

    def not_ready_reason() -> str | None:
        if state.phase is Phase.READY:
            return None
        if state.phase is Phase.DRAINING:
            return "the server is shutting down"
        return "the model is loading"

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, "Content-Length must be a number")
            if int(declared) > max_body:
                raise RequestError(413, f"the body of {declared} bytes is over the limit of {max_body}")
            return await request.body()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise RequestError(413, f"the body is over the limit of {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def run_inference(request: Request, v1: bool) -> Response:
        # Served while draining too: a 503 would only fail a request that this pod can still answer.
        runtime, runner = state.runtime, state.runner
        if runtime is None or runner is None:
            raise RequestError(503, "the model is loading")
        body = await read_body(request)
        if v1:
            feeds, rows = protocol.decode_v1_request(body, runtime.signature)
        else:
            req = protocol.decode_infer_request(
                body, request.headers.get(protocol.HEADER_LENGTH), runtime.signature
            )
            feeds, rows = req.feeds, req.rows
        try:
            results = await runner.infer(feeds, rows)
        except InferenceError as exc:
            raise RequestError(400, f"the model cannot run on these inputs: {exc}") from None
        if v1:
            return Response(
                protocol.encode_v1_response(results, runtime.signature.output_names), media_type=_JSON
            )
        payload, header_length = protocol.encode_infer_response(
            settings.model_name, settings.model_version, req.id, req.outputs, results
        )
        if header_length is None:
            return Response(payload, media_type=_JSON)
        return Response(
            payload,
            media_type=protocol.BINARY_CONTENT_TYPE,
            headers={protocol.HEADER_LENGTH: str(header_length)},
        )

    async def infer(request: Request, v1: bool) -> Response:
        authorize(request)
        find_model(request)
        started = time.perf_counter()
        state.request_started()
        code = 500
        try:
            response = await run_inference(request, v1)
            code = 200
            return response
        except RequestError as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:
            code = 499  # cut off (shutdown past its grace period): not an error of the model
            raise
        finally:
            state.request_finished()
            metrics = state.metrics
            metrics.count_request(code)
            metrics.request_duration.observe(time.perf_counter() - started)

    async def infer_v2(request: Request) -> Response:
        return await infer(request, v1=False)

    async def predict_v1(request: Request) -> Response:
        return await infer(request, v1=True)

    inference_routes = [
        Route("/v2/models/{name}/infer", infer_v2, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer_v2, methods=["POST"]),
        Route("/v1/models/{name}:predict", predict_v1, methods=["POST"]),
    ]
    # Also in FastAPI's router, where a GET on them gets its 405; InferenceFastPath serves the POSTs.
    app.router.routes.extend(inference_routes)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        reason = not_ready_reason()
        return _json({"ready": True}) if reason is None else _error(503, reason)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json({"name": "modelship", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request) -> Response:
        find_model(request)
        reason = not_ready_reason()
        if reason is not None:
            return _error(503, reason)
        return _json({"name": settings.model_name, "ready": True})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request) -> Response:
        authorize(request)
        find_model(request)
        runtime = state.runtime
        if runtime is None:
            raise RequestError(503, "the model is loading")
        sig = runtime.signature
        return _json(
            {
                "name": settings.model_name,
                "versions": [settings.model_version],
                "platform": "onnxruntime_onnx",
                "inputs": [spec.metadata() for spec in sig.inputs],
                "outputs": [spec.metadata() for spec in sig.outputs],
                "parameters": {
                    "sha256": runtime.sha256,
                    "revision": settings.revision,
                    "max_batch_size": settings.max_batch_size if state.batching else 0,
                },
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> Response:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> Response:
        return _bug(request, exc)

    return InferenceFastPath(app, inference_routes, draining=lambda: state.phase is Phase.DRAINING)
