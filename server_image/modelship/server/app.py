"""The ASGI app: which path goes to which `Endpoints` method, and the fast path uvicorn runs in front.

The handlers themselves are in endpoints.py; this module only assembles them, so that the server's URL
map reads as one table.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from modelship.server.endpoints import SERVER_VERSION, Endpoints, bug_response, error_response
from modelship.server.errors import RequestError
from modelship.server.state import ServerState
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send


class InferenceFastPath:
    """The ASGI app uvicorn runs: inference POSTs go straight to their handler, everything else to FastAPI.

    FastAPI's middleware stack and router cost tens of microseconds a request, a good part of what the
    server spends per inference, and the inference handlers need none of it: they take the raw request
    and answer their errors themselves.

    Once `draining()` is true, every response carries `Connection: close`: uvicorn (httptools or h11)
    then closes the connection after it, and the client reconnects to a pod that is not going away.
    A connection that has used up its budget (connections.py) gets the same header from the protocol
    (serving.py, `_DrainableHttp`), for every response whoever sends it, at no cost to this path.
    """

    def __init__(self, app: FastAPI, routes: list[Route], draining: Callable[[], bool]) -> None:
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
            return error_response(exc.status, exc.message)
        except Exception as exc:
            return bug_response(request, exc)
        return response


def create_app(state: ServerState) -> InferenceFastPath:
    endpoints = Endpoints(state)
    app = FastAPI(
        title="Modelship inference server",
        version=SERVER_VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Every error answers `{"error": ...}`, FastAPI's own (404, 405) included.
        exception_handlers={
            RequestError: endpoints.on_request_error,
            StarletteHTTPException: endpoints.on_http_error,
            RequestValidationError: endpoints.on_validation_error,
            Exception: endpoints.on_bug,
        },
    )
    inference = [
        Route("/v2/models/{name}/infer", endpoints.infer_v2, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", endpoints.infer_v2, methods=["POST"]),
        Route("/v1/models/{name}:predict", endpoints.predict_v1, methods=["POST"]),
    ]
    # Also in FastAPI's router, where a GET on them gets its 405; InferenceFastPath serves the POSTs.
    app.router.routes.extend(inference)
    reads: list[tuple[str, Callable[..., object]]] = [
        ("/v2/health/live", endpoints.live),
        ("/v2/health/ready", endpoints.ready),
        ("/v2", endpoints.server_metadata),
        # The published OpenAPI spec names it with the slash: served, not redirected to a Location
        # that names this pod's own address.
        ("/v2/", endpoints.server_metadata),
        ("/v2/models/{name}/versions/{version}/ready", endpoints.model_ready),
        ("/v2/models/{name}/ready", endpoints.model_ready),
        ("/v2/models/{name}/versions/{version}", endpoints.model_metadata),
        ("/v2/models/{name}", endpoints.model_metadata),
        ("/metrics", endpoints.metrics),
        ("/", endpoints.v1_live),
        ("/v1/models", endpoints.v1_models),
        ("/v1/models/{name}", endpoints.v1_model_ready),
    ]
    for path, handler in reads:
        # HEAD too: probes and load balancers that check health without a body (curl -I, some LBs).
        app.add_api_route(path, handler, methods=["GET", "HEAD"])
    return InferenceFastPath(app, inference, draining=endpoints.draining)
