"""What each route answers: the Open Inference Protocol (V2) REST endpoints, V1 `:predict`, health, metrics.

One `Endpoints` object per server holds its `ServerState`, and every route handler is one of its methods,
as KServe's `V2Endpoints` does it: the handlers share the state without closures, and app.py only maps
paths to them. Handlers take the raw request and parse the body themselves (protocol.py, v1.py): a pydantic
model per request would cost more than the rest of the hot path together. Every error is
`{"error": "..."}`, raised as a RequestError and answered by `error_response`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from modelship.server import compression, estimate, protocol
from modelship.server.batching import Results, Runner
from modelship.server.errors import CLIENT_CLOSED, RequestError
from modelship.server.memory import Reservation
from modelship.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelship.server.responses import encode_infer_response
from modelship.server.runtime import InferenceError, ModelRuntime
from modelship.server.state import Phase, ServerState
from modelship.server.v1 import decode_v1_request, encode_v1_response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

log = logging.getLogger("modelship.server.endpoints")

try:
    SERVER_VERSION = metadata.version("modelship")
except metadata.PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0"

_JSON = protocol.JSON_CONTENT_TYPE
T = TypeVar("T")
# Decoding or encoding this much holds the event loop for about a millisecond: past it, a codec thread.
OFFLOAD_BYTES = 64 << 10


class HeldResponse(Response):
    """A response that keeps its request's memory reservation until the client has taken it.

    uvicorn writes a body at once into the connection's buffer, where a client that reads slowly leaves it;
    before it takes the next message of a response it waits until that buffer has drained (below its
    low-water mark). So the body goes, then an empty last part, and the reservation ends after that.
    """

    def __init__(self, content: bytes, reservation: Reservation, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            await send({"type": "http.response.body", "body": self.body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.reservation.release()


def _held(payload: bytes, reservation: Reservation, **kwargs: Any) -> Response:
    """The response to an inference request, holding from now on only the memory of its encoded body."""
    reservation.keep(len(payload))
    if not reservation.size:
        return Response(payload, **kwargs)
    return HeldResponse(payload, reservation, **kwargs)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def error_response(status: int, message: str) -> Response:
    headers = None
    if status == 401:
        headers = {"www-authenticate": "Bearer"}
    elif status == 408:
        # The rest of the body may still come, or never: either way the connection is done with.
        headers = {"connection": "close"}
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
        self.mirror = state.mirror

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

    async def read_body(self, request: Request, reservation: Reservation) -> tuple[bytes, bytes]:
        """The body as it came (what a mirrored request forwards), and decompressed (the same object when
        it came uncompressed); within the size limit, the memory budget and the body timeout.

        A client that goes away mid-body is a 499 (nginx's code: the client's doing, not the server's),
        one too slow a 408. The timeout is a bare timer that cancels this task, not asyncio.timeout,
        which costs several times as much on every request (measured: 6-9 µs against under 2).
        """
        settings = self.settings
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(settings.body_timeout_seconds, expire)
        try:
            body = await self._receive_body(request, reservation)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            raise RequestError(
                408,
                f"the body did not arrive within {settings.body_timeout_seconds:g}s "
                "(MODELSHIP_BODY_TIMEOUT_SECONDS)",
            ) from None
        finally:
            timer.cancel()
        encoding = request.headers.get("content-encoding")
        if encoding is None or encoding.strip().lower() in ("", "identity"):
            return body, body
        encoding = encoding.strip().lower()
        if encoding not in compression.ENCODINGS:
            raise RequestError(
                415, f"Content-Encoding {encoding!r} is not supported; use {', '.join(compression.ENCODINGS)}"
            )
        # Inflated on a codec thread, which must not touch the budget: bounded by what is left of it.
        limit = min(settings.max_request_bytes, self.state.memory.per_request - reservation.size)
        data = await self.offload(len(body), compression.decompress, body, encoding, limit)
        reservation.need(len(body) + 2 * len(data), f"a body that inflates to {len(data)} bytes")
        return body, data

    async def _receive_body(self, request: Request, reservation: Reservation) -> bytes:
        max_body = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise RequestError(400, "Content-Length must be a number")
            length = int(declared)
            if length > max_body:
                raise RequestError(
                    413,
                    f"the body of {length} bytes is over the limit of {max_body} "
                    "(MODELSHIP_MAX_REQUEST_BYTES)",
                )
            # Chunks joined at the end: for a moment the body is there twice.
            reservation.need(2 * length, f"a body of {length} bytes")
        receive = request.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(CLIENT_CLOSED, "the client closed the connection before sending the body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if declared is None:
                    if size > max_body:
                        raise RequestError(
                            413,
                            f"the body is over the limit of {max_body} bytes (MODELSHIP_MAX_REQUEST_BYTES)",
                        )
                    reservation.need(2 * size, f"a body of over {size} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def offload(self, size: int, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on the codec threads when its input is large, so that the event loop (probes,
        metrics, other requests) never waits behind it; inline when small, where a thread hop would
        cost more than the work."""
        if size < OFFLOAD_BYTES:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self.state.codec, work, *args)

    # -----------------------------------------------------------------------------------------
    # inference (POST, served by app.InferenceFastPath)

    async def run_inference(self, request: Request, v1: bool) -> Response:
        # Served while draining too: a 503 would only fail a request that this pod can still answer.
        state = self.state
        runtime, runner = state.runtime, state.runner
        if runtime is None or runner is None:
            raise RequestError(503, "the model is loading")
        reservation = await state.memory.admit(
            estimate.admission_bytes(request.headers), "the request's body and its decoding"
        )
        try:
            return await self._infer_within(request, v1, runtime, runner, reservation)
        except BaseException:
            reservation.release()
            raise

    async def _infer_within(
        self, request: Request, v1: bool, runtime: ModelRuntime, runner: Runner, reservation: Reservation
    ) -> Response:
        received, body = await self.read_body(request, reservation)
        # Only a request the mirror samples keeps its body (as it came) past the decoding: a reference.
        mirror = self.mirror
        mirrored = received if mirror.target is not None and mirror.sample(request.headers) else None
        del received
        header_length = None if v1 else request.headers.get(protocol.HEADER_LENGTH)
        await reservation.grow(estimate.decoding_bytes(body, header_length, v1), "decoding the request")
        if v1:
            feeds, rows = await self.offload(len(body), decode_v1_request, body, runtime.signature)
            wanted: tuple[protocol.RequestedOutput, ...] | None = None
            request_id = None
        else:
            req = await self.offload(
                len(body), protocol.decode_infer_request, body, header_length, runtime.signature
            )
            feeds, rows, wanted, request_id = req.feeds, req.rows, req.outputs, req.id
        # A binary body stays alive under its inputs (they are views of it); a JSON one is done with,
        # unless the mirror keeps it.
        views = header_length is not None
        held = len(body) if views else 0
        if mirrored is not None and not (views and mirrored is body):
            held += len(mirrored)
        del body
        inputs = estimate.inputs_bytes(feeds, views=views, batched=self.state.batching)
        outputs = estimate.estimate_output_bytes(runtime.signature, feeds)
        if outputs is None:
            await reservation.grow(held + inputs, "the decoded inputs")
        else:
            await reservation.grow(
                held + inputs + estimate.outputs_and_response_bytes(outputs, wanted),
                f"running the model on these inputs (outputs of {outputs} bytes by the model's shapes)",
            )
        try:
            results = await runner.infer(feeds, rows)
        except InferenceError as exc:
            raise RequestError(exc.status, exc.message) from None
        self.state.metrics.predictions.observe(results)
        del feeds
        outputs_size = estimate.results_bytes(results)
        response_size = estimate.small_response_bytes(results, outputs_size)
        if response_size is None:
            response_size = (
                estimate.encoded_v1_response_bytes(results)
                if wanted is None
                else estimate.encoded_response_bytes(results, wanted, request_id)
            )
        reservation.need(held + outputs_size + response_size, "the response to this request")
        response = await self._encode(results, wanted, request_id, response_size, runtime, reservation)
        if mirrored is not None:
            self.mirror.offer(v1, mirrored, request.headers, results, runtime.signature.output_names)
        return response

    async def _encode(
        self,
        results: Results,
        wanted: tuple[protocol.RequestedOutput, ...] | None,
        request_id: str | None,
        response_size: int,
        runtime: ModelRuntime,
        reservation: Reservation,
    ) -> Response:
        """The response to a request that `results` answer: V1 when `wanted` is None, else V2."""
        settings = self.settings
        if wanted is None:
            payload = await self.offload(
                response_size, encode_v1_response, results, runtime.signature.output_names
            )
            return _held(payload, reservation, media_type=_JSON)
        payload, header = await self.offload(
            response_size,
            encode_infer_response,
            settings.model_name,
            settings.model_version,
            request_id,
            wanted,
            results,
        )
        if header is None:
            return _held(payload, reservation, media_type=_JSON)
        return _held(
            payload,
            reservation,
            media_type=protocol.BINARY_CONTENT_TYPE,
            headers={protocol.HEADER_LENGTH: str(header)},
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
            code = CLIENT_CLOSED  # cut off (shutdown past its grace period): not an error of the model
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

    # KServe's V1 protocol: what its SDK's `is_server_live` and `is_model_ready` ask for.
    async def v1_live(self) -> Response:
        return json_response({"status": "alive"})

    async def v1_models(self) -> Response:
        return json_response({"models": [self.settings.model_name]})

    async def v1_model_ready(self, request: Request) -> Response:
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
