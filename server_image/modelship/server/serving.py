"""The `serve` command: listen, load the model in the background, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httptools
import orjson
import uvicorn
from modelship.server.app import create_app
from modelship.server.config import Settings
from modelship.server.connections import ConnectionPolicy
from modelship.server.errors import ModelLoadError
from modelship.server.fetch_command import fetch, report_failure
from modelship.server.metrics import Metrics
from modelship.server.runtime import ModelRuntime
from modelship.server.state import ServerState
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger("modelship.server")


def load_runtime(settings: Settings) -> ModelRuntime:
    runtime = ModelRuntime.load(fetch(settings), settings.threads)
    runtime.warm_up(settings.max_batch_size)
    return runtime


# How long a keep-alive connection must sit idle before the drain closes it. Closing one the moment it goes
# idle races the client, which may be writing its next request on it right then (and gets a reset instead
# of an answer); one idle this long most likely sits unused in a client's pool. A second is far above the
# gap between the requests of a client under load, whose connection gets `Connection: close` on its next
# response instead.
IDLE_CLOSE_SECONDS = 1.0
_DRAIN_TICK_SECONDS = 0.05


# The most a request's line and headers may take (nginx allows 32 KiB, Node 16 KiB): beyond it a 431 and a
# close. httptools sets no bound; a client streaming one endless header held the event loop for seconds.
MAX_HEAD_BYTES = 64 * 1024


def _error_tail(message: str) -> bytes:
    """An error response from its headers on (uvicorn's own, `date` and `server`, go before), JSON like every
    other error; the connection closes after it."""
    body = orjson.dumps({"error": message})
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return head + body


def _header_timeout_tail(seconds: float) -> bytes:
    """The 408 a request whose headers ran out of time gets: made once per server, it costs a timeout
    nothing but the write."""
    return _error_tail(
        f"the request's headers did not arrive within {seconds:g}s (MODELSHIP_HEADER_TIMEOUT_SECONDS)"
    )


_HEAD_TOO_LARGE_TAIL = _error_tail(f"the request's line and headers exceed {MAX_HEAD_BYTES} bytes")


class _ReasonKeepingParser:
    """httptools' parser, keeping why it last refused a request: uvicorn's 400 says only "Invalid HTTP
    request received." (in plain text), where ours names the fault (llhttp's reason) in JSON."""

    def __init__(self, parser: httptools.HttpRequestParser) -> None:
        self._parser = parser
        self.reason = ""
        # What uvicorn calls on every request, bound here rather than found by __getattr__ each time.
        self.get_http_version = parser.get_http_version
        self.get_method = parser.get_method
        self.should_upgrade = parser.should_upgrade
        self.should_keep_alive = parser.should_keep_alive

    def feed_data(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's own refusal (uvicorn parsing an over-long URL) hides behind "User callback error".
            cause = exc.__cause__ or exc.__context__
            shown = cause if isinstance(cause, httptools.HttpParserError) else exc
            self.reason = str(shown) or type(shown).__name__
            raise

    def __getattr__(self, name: str) -> object:
        return getattr(self._parser, name)


class _DrainableHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus what uvicorn does not do: it bounds every keep-alive connection
    (connections.py), times out clients too slow to send a request, and keeps how long a connection has
    been idle, for the drain.

    The timeouts, against slow clients that would otherwise hold a connection (and a request in flight)
    for good:
    - idle: a connection that sends no byte of a request for `timeout_keep_alive` seconds is closed.
      uvicorn arms that timer only after a response; here it is armed on a new connection too, in the
      same slot (`timeout_keep_alive_task`), so that uvicorn's own code cancels it on the first byte
      and when the connection is lost. uvicorn also cancels it on bytes that begin no request (the rest
      of a body its response did not wait for, blank lines) and never arms it again: here it is, still
      counting from when the connection went idle, so that such bytes cannot hold it open for good.
    - headers: from the first byte of a request, its headers have `header_timeout` seconds to be complete,
      else a 408 and a close. The timer is armed only when a read ends with headers still incomplete: a
      request whose headers come in one read, nearly all of them, never arms or cancels one.
    - body: endpoints.py's `read_body` times it. A drain cannot wait for that, so `stalled_for` tells it
      which request waits on a client that sends nothing.
    - head size: a request line and headers over MAX_HEAD_BYTES get a 431 and a close.
    - response: a client that takes nothing of what it is sent (the write buffer stays over its high-water
      mark) for `write_timeout` seconds is disconnected; its response holds memory until then
      (endpoints.HeldResponse).

    The uvicorn internals this relies on are all here: `cycle` (the request being read or answered, None
    before the first; one pipelined behind it waits in `pipeline`), the cycle's `keep_alive` (read when its
    response starts: False adds `Connection: close` to the response and closes the connection once the
    response is written, whatever sent it: our routes, FastAPI's or uvicorn's own 500), its
    `response_started`, `more_body` (the body is not all in) and `waiting_for_100_continue`, `flow`'s
    `read_paused`, the `on_message_begin`, `on_headers_complete` and `on_response_complete` callbacks,
    `timeout_keep_alive(_task)` with its handler, `server_state.default_headers`, and `shutdown()` (close
    now if idle, else right after the response).
    """

    accepted = 0  # connections this process has accepted: one server a process
    # Bound for each server by `_http_protocol`: uvicorn makes each connection from the class alone.
    policy: ClassVar[ConnectionPolicy]
    metrics: ClassVar[Metrics]
    header_timeout: ClassVar[float]
    header_timeout_tail: ClassVar[bytes]
    write_timeout: ClassVar[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _ReasonKeepingParser(self.parser)  # type: ignore[assignment]
        self._head_bytes = 0
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _DrainableHttp.accepted += 1
        self._active_at = time.monotonic()
        self._budget = self.policy.draw(self._active_at)
        self._requests = 0
        self._last: RequestResponseCycle | None = None  # the request whose response closes the connection
        self._idle_from = self._active_at  # when the connection last went idle: accepted, or answered
        # When the first byte of a request whose headers are not complete yet came; None between them.
        self._headers_from: float | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self.metrics.connections.inc()
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The write buffer is over its high-water mark: the client is not taking what it is sent. One that
        # takes nothing for `write_timeout` seconds would hold its response (and its memory) for good.
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout, self._on_write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        log.debug("%s: the client took nothing for %gs, closing", self.client, self.write_timeout)
        # abort(), not close(): close() would wait for the buffer to drain, which is what never happens.
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._active_at = time.monotonic()
        began = self._headers_from
        super().data_received(data)
        if self._headers_from is not None:
            if self._headers_from == began:
                # More of a head begun in an earlier read, still not complete: all of this read is head.
                # (The read that begins a head is not counted: it is bounded, and may end the body before.)
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    log.debug("%s: request head over %d bytes, answering 431", self.client, MAX_HEAD_BYTES)
                    self._refuse(b"HTTP/1.1 431 Request Header Fields Too Large\r\n", _HEAD_TOO_LARGE_TAIL)
                    return
            if self._header_timer is None:
                # Counted from the request's first byte, which may have come in an earlier read.
                left = self.header_timeout - (self._active_at - self._headers_from)
                self._header_timer = self.loop.call_later(left, self._on_header_timeout)
        elif (
            self.timeout_keep_alive_task is None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        ):
            # Idle still, yet uvicorn has just cancelled the idle timer (see the class).
            left = self.timeout_keep_alive - (self._active_at - self._idle_from)
            self.timeout_keep_alive_task = self.loop.call_later(left, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        # Called from within data_received, which has just set `_active_at`: the time of this first byte.
        self._headers_from = self._active_at
        self._head_bytes = 0
        super().on_message_begin()

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._headers_from is None or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # Paused by uvicorn (a pipelined request waits for the one before it): the rest of the headers
            # may be sitting unread in the socket. The wait is ours, so it starts again.
            self._headers_from = time.monotonic()
            self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Pipelined behind a request still being answered: a 408 now would cut into that response.
            # It goes out whole, then the connection closes; the unfinished request gets no answer.
            cycle.keep_alive = False
            return
        log.debug("%s: request headers incomplete after %gs, answering 408", self.client, self.header_timeout)
        self._refuse(b"HTTP/1.1 408 Request Timeout\r\n", self.header_timeout_tail)

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request httptools cannot parse, in JSON and with the parser's reason."""
        reason = getattr(self.parser, "reason", "") or msg
        self._refuse(b"HTTP/1.1 400 Bad Request\r\n", _error_tail(f"malformed HTTP request: {reason}"))

    def _refuse(self, status_line: bytes, tail: bytes) -> None:
        head = [status_line]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(tail)
        self.transport.write(b"".join(head))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._headers_from = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        # The decision is made when a request starts, never on an idle connection: the response to it is
        # how the client learns of the close, before it sends anything else on the connection.
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is previous:  # an upgrade: no request of ours
            return
        self._requests += 1
        if self._budget.spent(self._requests, time.monotonic()):
            self._close_after(self.cycle)

    def _close_after(self, cycle: RequestResponseCycle) -> None:
        """Make the response to `cycle` the connection's last (uvicorn adds `Connection: close` to it)."""
        last = self._last
        if last is not None:
            if last.response_started:
                # Pipelined behind a response that said close: the client sends it again, as HTTP/1.1
                # asks of a client whose pipelined requests a close left unanswered.
                return
            # Pipelined behind the request that was to be the last, whose response has not started:
            # that one is answered and keeps the connection open, this one closes it.
            last.keep_alive = True
        elif not cycle.keep_alive:
            return  # the client closes the connection after this request itself
        else:
            self.metrics.connections_recycled.inc()
        cycle.keep_alive = False
        self._last = cycle

    def on_response_complete(self) -> None:
        self._idle_from = self._active_at = time.monotonic()
        super().on_response_complete()

    def idle_for(self, now: float) -> float:
        """Seconds since the last byte came in or the last response went out; 0 while a request is open."""
        if self.cycle is not None and not self.cycle.response_complete:
            return 0.0
        return now - self._active_at

    def stalled_for(self, now: float) -> float:
        """Seconds the request being read has waited on its client: its body is not all in, no byte of it
        came for that long, and its response has not started. 0 for any other request, and while the
        client waits on us instead: uvicorn has paused reading (a body the handler has not asked for yet
        past 64 KiB, a pipelined request), or owes it a `100 Continue`."""
        cycle = self.cycle
        if cycle is None or cycle.response_started or not cycle.more_body:
            return 0.0
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            # What comes once reading resumes may take a moment: the silence counts from then at most.
            self._active_at = now
            return 0.0
        return now - self._active_at


def _http_protocol(
    policy: ConnectionPolicy, metrics: Metrics, header_timeout: float, write_timeout: float
) -> type[_DrainableHttp]:
    """The protocol class of one server's connections, with what they share bound to it."""

    class Http(_DrainableHttp):
        pass

    Http.policy, Http.metrics = policy, metrics
    Http.header_timeout, Http.header_timeout_tail = header_timeout, _header_timeout_tail(header_timeout)
    Http.write_timeout = write_timeout
    return Http


class _DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM or SIGINT drains the connections instead of cutting them.

    Readiness fails at once, but every request is still served and the listener stays open: the Service
    stops sending new connections only after a while, and conntrack keeps the ones clients hold pinned to
    this pod. Each response from then on carries `Connection: close` (app.py), so its client reconnects, and
    the Service sends it to a pod that stays. An idle keep-alive connection has no response to carry that,
    so it is closed once it has been idle for IDLE_CLOSE_SECONDS (why not at once: see there). So is one
    whose request waits for a body its client has not sent a byte of for as long: its handler sees the
    client leave (a 499), where the body timeout, far longer, would hold the drain (and the gauge of
    requests in flight) for most of the grace period, or all of it. The process
    exits when no request is in flight and no connection has been open for as long (a connection still
    arriving means something still routes here), or when the grace period is over; a second signal exits
    at once.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self._drain_task: asyncio.Task[None] | None = None
        # Set when the process stops with inference still running (grace period over, or a second signal).
        self.abandoned_work = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self._drain_task is not None:
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            self.force_exit = self.should_exit = self.abandoned_work = True
            return
        log.info(
            "%s: draining (grace period %.1fs)",
            signal.Signals(sig).name,
            self._state.settings.grace_period_seconds,
        )
        self._state.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        connections = self.server_state.connections
        started = busy_at = time.monotonic()
        deadline = started + self._state.settings.grace_period_seconds
        accepted_before = _DrainableHttp.accepted - len(connections)
        answered_before = self.server_state.total_requests
        seen = _DrainableHttp.accepted
        while (now := time.monotonic()) < deadline:
            if connections or self._state.inflight or _DrainableHttp.accepted != seen:
                busy_at, seen = now, _DrainableHttp.accepted
            elif now - busy_at >= IDLE_CLOSE_SECONDS:
                break
            for connection in list(connections):
                if not isinstance(connection, _DrainableHttp):
                    continue
                if connection.idle_for(now) >= IDLE_CLOSE_SECONDS:
                    connection.shutdown()
                elif connection.stalled_for(now) >= IDLE_CLOSE_SECONDS:
                    connection.transport.close()  # not shutdown(): that waits for the response
            await asyncio.sleep(min(_DRAIN_TICK_SECONDS, deadline - now))
        log.info(
            "drained %d connection(s) and %d request(s) in %.1fs",
            _DrainableHttp.accepted - accepted_before,
            self.server_state.total_requests - answered_before,
            time.monotonic() - started,
        )
        if self._state.inflight:
            log.warning("grace period over with %d request(s) still in flight", self._state.inflight)
            self.abandoned_work = True
            self.force_exit = True  # uvicorn must not wait for them either
        self.config.timeout_graceful_shutdown = max(1, int(deadline - time.monotonic()) + 1)
        self.should_exit = True

    def stop(self) -> None:
        self.should_exit = True


async def serve(settings: Settings) -> tuple[int, bool]:
    """Serve until drained; returns the exit code, and whether inference was still running at the end."""
    try:
        state = ServerState(settings)
    except ModelLoadError as exc:
        report_failure(settings.termination_log, f"start failed: {exc}")
        return 1, False
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        http=_http_protocol(
            ConnectionPolicy(settings.max_connection_requests, settings.max_connection_age_seconds),
            state.metrics,
            settings.header_timeout_seconds,
            # A response's body has as long to be taken as a request's body has to arrive.
            settings.body_timeout_seconds,
        ),
        lifespan="off",
        # No route takes one, and an upgraded connection would leave this protocol, its bounds and timeouts.
        ws="none",
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.grace_period_seconds) + 1,
        # Typed int, but uvicorn only hands it to call_later, which takes any seconds: 1.5 stays 1.5.
        timeout_keep_alive=settings.idle_timeout_seconds,  # type: ignore[arg-type]
    )
    server = _DrainingServer(config, state)
    loop = asyncio.get_running_loop()
    exit_code = 0

    def on_loaded(runtime: ModelRuntime | None, seconds: float, error: str | None) -> None:
        nonlocal exit_code
        if runtime is None:
            report_failure(settings.termination_log, f"model load failed: {error}")
            exit_code = 1
            server.stop()
            return
        state.attach(runtime, seconds)
        # What start-up made (modules, the app, the session) lives as long as the process: keep it out
        # of the collector's full passes, which would otherwise show up as pauses in the latency tail.
        gc.freeze()
        sig = runtime.signature
        log.info(
            "model %s version %s ready in %.2fs (sha256 %s, %d threads, batching %s)",
            settings.model_name,
            settings.model_version,
            seconds,
            runtime.sha256,
            settings.threads,
            f"up to {settings.max_batch_size} rows, {settings.max_delay_ms} ms"
            if state.batching
            else "off"
            if sig.batched
            else "off (the model has no batch dimension)",
        )

    def load() -> None:
        # A thread of its own, not the default executor: the process must be able to exit (SIGTERM)
        # while a large download is still going.
        started = time.perf_counter()
        try:
            runtime = load_runtime(settings)
        except ModelLoadError as exc:
            loop.call_soon_threadsafe(on_loaded, None, 0.0, str(exc))
            return
        except Exception as exc:
            log.exception("unexpected error while loading the model")
            loop.call_soon_threadsafe(on_loaded, None, 0.0, f"unexpected {type(exc).__name__}: {exc}")
            return
        loop.call_soon_threadsafe(on_loaded, runtime, time.perf_counter() - started, None)

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    try:
        # Mirrors nothing until the model serves requests; follows its file from now on.
        state.mirror.start()
        # A port it cannot listen on makes uvicorn leave with SystemExit(3) from in here: that failure has
        # no termination message of ours, the kubelet shows the log's last lines (FallbackToLogsOnError).
        await server.serve()
    finally:
        await state.close()
    return exit_code, server.abandoned_work


def run(settings: Settings) -> int:
    """`serve`: until SIGTERM and the drain; the exit code."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop only makes the event loop faster
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        code, abandoned = runner.run(serve(settings))
    if abandoned:
        # An onnxruntime run cannot be interrupted, and the interpreter would wait for its thread at exit:
        # leave now, the grace period is over.
        logging.shutdown()
        os._exit(code)
    return code
