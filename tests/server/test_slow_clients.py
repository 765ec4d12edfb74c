"""Clients too slow to send a request cannot hold a connection, nor a request in flight, for long: a real
server process with short timeouts, and clients on raw sockets that send exactly what each case needs
(an HTTP library would not send a request byte by byte, nor stop half-way through a body)."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.server import models
from tests.server.conftest import ServerProcess, Servers, StartServer
from tests.support import wait_until

IDLE = 1.5
HEADER = 2.0  # apart from IDLE, so that which timer closed a connection shows in when it was closed
BODY = 2.5
# How late a close may come on a busy test machine: under IDLE, so that a connection the idle timer
# closes after a 408 that forgot to close it does not pass for the 408's own close.
SLACK = 1.0
EARLY = 0.2  # how early: timers fire on time, the client's clock starts a little before the server's
PACE = 0.3  # seconds between two pieces a slow client sends

_MLP_BODY = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
)


def _env(model_dir: Path, tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "MODELSHIP_MODEL_NAME": "m",
        "MODELSHIP_MODEL_URI": str(model_dir / "mlp.onnx"),
        "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
        "MODELSHIP_IDLE_TIMEOUT_SECONDS": str(IDLE),
        "MODELSHIP_HEADER_TIMEOUT_SECONDS": str(HEADER),
        "MODELSHIP_BODY_TIMEOUT_SECONDS": str(BODY),
        # Not recycled (test_connections.py): every close here is a timeout's.
        "MODELSHIP_MAX_CONNECTION_REQUESTS": "0",
        "MODELSHIP_MAX_CONNECTION_AGE_SECONDS": "0",
        **more,
    }


@pytest.fixture
def server(start_server: StartServer, model_dir: Path, tmp_path: Path) -> ServerProcess:
    return start_server(_env(model_dir, tmp_path))


@contextlib.contextmanager
def _connected(server: ServerProcess) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        yield sock
    finally:
        sock.close()


def _open_for(sock: socket.socket, seconds: float) -> bool:
    """Whether the server leaves the connection open (and silent) for `seconds`."""
    sock.settimeout(seconds)
    try:
        return not sock.recv(1)
    except TimeoutError:
        return True


def _until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open at
    `deadline` (monotonic)."""
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; it sent {received!r}")


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, read off a connection that stays open."""
    sock.settimeout(30)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {raw!r}"
        raw += chunk
    status, headers, body = _response(raw)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {raw!r}"
        body += chunk
    return status, headers, body


def _inflight(server: ServerProcess) -> float | None:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("modelship_inflight_requests{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _infer_head(length: int) -> bytes:
    return (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(server: ServerProcess) -> None:
    with _connected(server) as sock:
        opened = time.monotonic()
        assert _open_for(sock, IDLE / 2), "closed long before the idle timeout"
        assert _until_closed(sock, deadline=opened + IDLE + SLACK) == b""
        closed_after = time.monotonic() - opened
    assert closed_after >= IDLE - EARLY, f"closed after {closed_after:.2f}s"


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(server: ServerProcess) -> None:
    with _connected(server) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = _read_response(sock)
        answered = time.monotonic()
        assert status == 200 and headers.get("connection") != "close"
        assert _open_for(sock, IDLE / 2), "closed long before the idle timeout"
        assert _until_closed(sock, deadline=answered + IDLE + SLACK) == b""
        closed_after = time.monotonic() - answered
    assert closed_after >= IDLE - EARLY, f"closed after {closed_after:.2f}s"


def test_headers_that_never_end_get_a_408_and_a_close_after_the_header_timeout(
    server: ServerProcess,
) -> None:
    with _connected(server) as sock:
        head = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        began = time.monotonic()
        deadline = began + HEADER + SLACK
        received = b""
        sock.settimeout(PACE)  # the read both paces the client and catches the answer at once
        for byte in head:
            sock.sendall(bytes([byte]))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                assert time.monotonic() < deadline, "no answer within the header timeout"
                continue
            received += chunk
            break
        received += _until_closed(sock, deadline)
        answered_after = time.monotonic() - began
    status, headers, body = _response(received)
    assert status == 408, received
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert f"{HEADER:g}s" in error and "MODELSHIP_HEADER_TIMEOUT_SECONDS" in error, error
    # Bytes kept coming all along: only the header timeout, never the idle one, can have ended this.
    assert answered_after >= HEADER - EARLY, f"answered after {answered_after:.2f}s"


def test_the_rest_of_a_body_sent_after_its_answer_does_not_keep_the_connection_open(
    server: ServerProcess,
) -> None:
    """uvicorn reads the rest of a body its response did not wait for, and each byte of it used to stop
    the idle timer for good: a client could trickle it and hold the connection for as long as it liked."""
    with _connected(server) as sock:
        sock.sendall(_infer_head(1000).replace(b"/models/m/", b"/models/nope/"))
        status, headers, _ = _read_response(sock)  # answered before its body: no such model
        answered = time.monotonic()
        assert status == 404 and headers.get("connection") != "close"
        deadline = answered + IDLE + SLACK
        sock.settimeout(PACE)  # the read both paces the client and sees the close at once
        for _ in range(1000):
            try:
                sock.sendall(b"x")
                assert sock.recv(1) == b"", "the server sent something unasked"
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the trickle kept the connection open"
            except ConnectionResetError:  # a byte sent just as the server closed: closed all the same
                break
        closed_after = time.monotonic() - answered
    assert closed_after >= IDLE - EARLY, f"closed after {closed_after:.2f}s"


def test_a_body_that_never_arrives_gets_a_408_and_the_request_leaves_the_gauge(
    server: ServerProcess,
) -> None:
    with _connected(server) as sock:
        sock.sendall(_infer_head(len(_MLP_BODY)) + _MLP_BODY[:10])
        sent = time.monotonic()
        wait_until(lambda: _inflight(server) == 1, timeout=10, interval=0.05, what="the request in flight")
        status, headers, body = _read_response(sock)
        answered = time.monotonic()
        assert status == 408, body
        assert "MODELSHIP_BODY_TIMEOUT_SECONDS" in orjson.loads(body)["error"]
        assert BODY - EARLY <= answered - sent <= BODY + SLACK, f"answered after {answered - sent:.2f}s"
        wait_until(lambda: _inflight(server) == 0, timeout=5, interval=0.05, what="no request in flight")
        # Else uvicorn reads on for the rest of the body, which this client never sends.
        assert headers.get("connection") == "close", headers
        assert _until_closed(sock, deadline=answered + SLACK) == b""


def test_sigterm_does_not_wait_for_a_body_that_never_arrives(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    # Only the drain can end this request: its body timeout is past the grace period.
    env = _env(model_dir, tmp_path, MODELSHIP_BODY_TIMEOUT_SECONDS="60", MODELSHIP_GRACE_PERIOD_SECONDS="20")
    server = start_server(env)
    assert server.proc is not None
    with _connected(server) as sock:
        sock.sendall(_infer_head(len(_MLP_BODY)) + _MLP_BODY[:10])
        wait_until(lambda: _inflight(server) == 1, timeout=10, interval=0.05, what="the request in flight")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # No answer: the client sent half a request. The connection is cut, and the handler sees it go.
        assert _until_closed(sock, deadline=signalled + 5) == b""
    assert server.wait_exit(timeout=8) == 0, server.log()
    exited_after = time.monotonic() - signalled
    assert exited_after < 8, f"exited {exited_after:.2f}s after SIGTERM"
    assert "still in flight" not in server.log()


def _pieces(data: bytes, count: int) -> list[bytes]:
    size = -(-len(data) // count)
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_slow_but_steady_client_is_served(server: ServerProcess) -> None:
    """Headers and body each within their own timeout, but the whole request takes longer than the idle
    and the header timeout: neither may end it, nor a second such request on the same connection."""
    head, body = _pieces(_infer_head(len(_MLP_BODY)), 4), _pieces(_MLP_BODY, 5)
    # From the first byte to the last of the headers; from the end of the headers to the end of the body.
    assert (len(head) - 1) * PACE <= HEADER - SLACK and len(body) * PACE <= BODY - SLACK
    assert (len(head) + len(body) - 1) * PACE > HEADER > IDLE
    with _connected(server) as sock:
        for _ in range(2):
            began = time.monotonic()
            for i, piece in enumerate([*head, *body]):
                if i:
                    time.sleep(PACE)  # a slow client, on purpose
                sock.sendall(piece)
            took = time.monotonic() - began
            status, headers, answer = _read_response(sock)
            assert status == 200, answer
            assert headers.get("connection") != "close"
            assert orjson.loads(answer)["outputs"]
            assert took > HEADER


_GOOD_HEAD = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (_GOOD_HEAD + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabc", "Duplicate Content-Length"),
        (
            _GOOD_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding can't be present with Content-Length",
        ),
        (_GOOD_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "Invalid character in chunk size"),
        (b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "Invalid header value char"),
        (b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid method"),
        (b"GET /v2/models/" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "url is too long"),
    ],
)
def test_malformed_http_gets_a_json_400_that_names_the_fault(
    servers: Servers, raw: bytes, fragment: str
) -> None:
    with _connected(servers.mlp) as sock:
        sock.sendall(raw)
        status, headers, body = _response(_until_closed(sock, time.monotonic() + 10))
    assert status == 400 and headers["content-type"] == "application/json", (status, headers, body)
    error = orjson.loads(body)["error"]
    assert error.startswith("malformed HTTP request: ") and fragment in error, error


def test_a_request_head_over_64_kib_gets_a_431_while_probes_answer(servers: Servers) -> None:
    # Under the bound, a large header (a token, cookies) is served.
    big = httpx.get(f"{servers.mlp.url}/v2/health/ready", headers={"X-Big": "a" * 60_000}, timeout=10)
    assert big.status_code == 200, big.text
    with _connected(servers.mlp) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent, reply = 0, b""
        sock.settimeout(5)
        for _ in range(64):  # at most 1 MiB: once refused, the server closes and sends fail
            try:
                sock.sendall(b"a" * 16384)
            except OSError:
                break
            sent += 16384
            probe = httpx.get(f"{servers.mlp.url}/v2/health/ready", timeout=2)
            assert probe.status_code == 200
            if select.select([sock], [], [], 0)[0]:
                break  # answered: stop writing what the server will not read
        with contextlib.suppress(OSError):
            reply = _until_closed(sock, time.monotonic() + 10)
    status, _, body = _response(reply)
    assert status == 431, reply[:200]
    assert "exceed 65536 bytes" in orjson.loads(body)["error"]
    assert 65536 <= sent <= 65536 + 2 * 16384 + 256 * 1024, sent


def test_a_response_its_client_does_not_take_holds_its_memory_until_the_write_timeout_cuts_it(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    """A client that does not read its 10 MiB answer keeps that answer's memory reserved (the next request,
    which needs 20 MiB of a 24 MiB budget, waits), until the server closes its connection after the
    body timeout; then the next one is served."""
    mib = 1 << 20
    path = models.save(models.outer(), tmp_path / "outer.onnx")
    env = _env(model_dir, tmp_path, MODELSHIP_MAX_REQUEST_MEMORY_BYTES=str(24 * mib))
    server = start_server(
        {**env, "MODELSHIP_MODEL_URI": str(path), "MODELSHIP_MAX_INFLIGHT_MEMORY_BYTES": str(24 * mib)}
    )
    n = 1600  # y is n x n FP32: 10.24 MB
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [n], "parameters": {"binary_data_size": 4 * n}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    body = header + np.ones(n, dtype="<f4").tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes next to nothing of the answer
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(body), len(header)) + body
        )
        started = time.monotonic()
        served = httpx.post(f"{server.url}/v2/models/m/infer", content=body, headers=headers, timeout=30)
        waited = time.monotonic() - started
        assert served.status_code == 200, served.text
        assert waited >= BODY - EARLY, f"served after {waited:.2f}s, while the first answer was still held"
        received = b""
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                received += chunk
        assert len(received) < 4 * n * n, "the untaken answer was cut off, not kept"
    finally:
        sock.close()


def test_a_head_split_over_reads_then_a_large_body_is_no_431(server: ServerProcess) -> None:
    """Only head bytes count toward the 64 KiB: the read that ends a head may carry much of the body."""
    rows = np.ones((20_000, 4), dtype="<f4")  # 312 KiB of body
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [20_000, 4],
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ]
        }
    )
    body = header + rows.tobytes()
    with _connected(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n")
        # Not a synchronisation: a pause that makes the server likely to read the head in two parts.
        time.sleep(PACE)
        sock.sendall(
            b"Content-Length: %d\r\nInference-Header-Content-Length: %d\r\n\r\n" % (len(body), len(header))
            + body
        )
        status, _, answer = _read_response(sock)
    assert status == 200, answer[:300]
