"""What each route answers: the Open Inference Protocol (V2) REST endpoints, V1 `:predict`, health, metrics.

One `Endpoints` object per server holds its `ServerState`, and every route handler is one of its methods,
as KServe's `V2Endpoints` does it: the handlers share the state without closures, and app.py only maps
paths to them. Handlers take the raw request and parse the body themselves (protocol.py): a pydantic
model per request would cost more than the rest of the hot path together. Every error is
`{"error": "..."}`, raised as a RequestError and answered by `error_response`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from importlib import metadata
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from modelship.server import protocol
from modelship.server.errors import RequestError
from modelship.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelship.server.runtime import InferenceError
from modelship.server.state import Phase, ServerState
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("modelship.server.endpoints")

try:
    SERVER_VERSION = metadata.version("modelship")
except metadata.PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0"

_JSON = protocol.JSON_CONTENT_TYPE


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def error_response(status: int, message: str) -> Response:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return Response(protocol.error_body(message), status_code=status, media_type=_JSON, headers=headers)


def bug_response(request: Request, exc: Exception) -> Response:
    """A 500: only ever our mistake (the fuzz tests hold every client mistake to a 4xx)."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error: {type(exc).__name__}")


class Endpoints:
    """The route handlers of one server, over its state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.settings = state.settings

    # -----------------------------------------------------------------------------------------
    # what several routes check

    def authorize(self, request: Request) -> None:
        token = self.state.token
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            raise RequestError(401, "a valid bearer token is required (Authorization: Bearer <token>)")

    def find_model(self, request: Request) -> None:
        settings = self.settings
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

    def not_ready_reason(self) -> str | None:
        phase = self.state.phase
        if phase is Phase.READY:
            return None
        if phase is Phase.DRAINING:
            return "the server is shutting down"
        return "the model is loading"

    def draining(self) -> bool:
        return self.state.phase is Phase.DRAINING

    async def read_body(self, request: Request) -> bytes:
        max_body = self.settings.max_request_bytes
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

    # -----------------------------------------------------------------------------------------
    # inference (POST, served by app.InferenceFastPath)

    async def run_inference(self, request: Request, v1: bool) -> Response:
        # Served while draining too: a 503 would only fail a request that this pod can still answer.
        state, settings = self.state, self.settings
        runtime, runner = state.runtime, state.runner
        if runtime is None or runner is None:
            raise RequestError(503, "the model is loading")
        body = await self.read_body(request)
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

    async def infer(self, request: Request, v1: bool) -> Response:
        self.authorize(request)
        self.find_model(request)
        state = self.state
        started = time.perf_counter()
        state.request_started()
        code = 500
        try:
            response = await self.run_inference(request, v1)
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

    async def infer_v2(self, request: Request) -> Response:
        return await self.infer(request, v1=False)

    async def predict_v1(self, request: Request) -> Response:
        return await self.infer(request, v1=True)

    # -----------------------------------------------------------------------------------------
    # health, metadata and metrics (GET, through FastAPI)

    async def live(self) -> Response:
        return json_response({"live": True})

    async def ready(self) -> Response:
        reason = self.not_ready_reason()
        return json_response({"ready": True}) if reason is None else error_response(503, reason)

    async def server_metadata(self) -> Response:
        return json_response(
            {"name": "modelship", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
        )

    async def model_ready(self, request: Request) -> Response:
        self.find_model(request)
        reason = self.not_ready_reason()
        if reason is not None:
            return error_response(503, reason)
        return json_response({"name": self.settings.model_name, "ready": True})

    async def model_metadata(self, request: Request) -> Response:
        self.authorize(request)
        self.find_model(request)
        state, settings = self.state, self.settings
        runtime = state.runtime
        if runtime is None:
            raise RequestError(503, "the model is loading")
        sig = runtime.signature
        return json_response(
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

    async def metrics(self) -> Response:
        return Response(self.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # -----------------------------------------------------------------------------------------
    # FastAPI's exception handlers: its own errors get our `{"error": ...}` body too

    async def on_request_error(self, request: Request, exc: RequestError) -> Response:
        return error_response(exc.status, exc.message)

    async def on_http_error(self, request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    async def on_validation_error(self, request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, f"invalid request: {exc.errors()}")

    async def on_bug(self, request: Request, exc: Exception) -> Response:
        return bug_response(request, exc)
