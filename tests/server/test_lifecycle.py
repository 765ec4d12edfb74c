"""The process as the kubelet sees it: load failures with a termination message, fetch mode, SIGTERM drain."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from modelship.server.serving import IDLE_CLOSE_SECONDS

from tests.server import models
from tests.server.conftest import ModelHost, StartServer
from tests.support import wait_until


def _env(uri: str, tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "MODELSHIP_MODEL_NAME": "m",
        "MODELSHIP_MODEL_URI": uri,
        "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
        "MODELSHIP_TERMINATION_LOG": str(tmp_path / "termination-log"),
        **more,
    }


def _fails_with(start_server: StartServer, env: dict[str, str], tmp_path: Path, *args: str) -> str:
    server = start_server(env, *args, wait=False)
    assert server.wait_exit(timeout=60) == 1, server.log()
    message = (tmp_path / "termination-log").read_text()
    assert message.endswith("\n") and message.count("\n") == 1, message
    return message.strip()


def test_wrong_checksum_stops_the_start_with_one_line(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    path = model_dir / "mlp.onnx"
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    env = _env(str(path), tmp_path, MODELSHIP_MODEL_SHA256="0" * 64)
    assert _fails_with(start_server, env, tmp_path) == (
        f"model load failed: sha256 mismatch for {path}: expected {'0' * 64}, got {actual}"
    )


def test_a_file_that_is_not_onnx_stops_the_start(start_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "not-a-model.onnx"
    path.write_bytes(b"this is not protobuf at all" * 10)
    message = _fails_with(start_server, _env(str(path), tmp_path), tmp_path)
    assert message.startswith(f"model load failed: {path} is not a loadable ONNX model: ")


def test_404_stops_the_start(start_server: StartServer, model_host: ModelHost, tmp_path: Path) -> None:
    url = model_host.url + "/gone.onnx"
    message = _fails_with(start_server, _env(url, tmp_path, MODELSHIP_MODEL_SHA256="1" * 64), tmp_path)
    assert message == f"model load failed: download of {url} failed: HTTP 404"


def test_truncated_download_stops_the_start(
    start_server: StartServer, model_host: ModelHost, tmp_path: Path
) -> None:
    model_host.truncated["/m.onnx"] = b"\x08" * 300
    url = model_host.url + "/m.onnx"
    env = _env(url, tmp_path, MODELSHIP_MODEL_SHA256="1" * 64, MODELSHIP_FETCH_ATTEMPTS="1")
    message = _fails_with(start_server, env, tmp_path)
    assert message.startswith(f"model load failed: download of {url} failed after 1 attempts: truncated")


def test_bad_settings_stop_the_start(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(_env("/x.onnx", tmp_path, MODELSHIP_THREADS="many"), wait=False)
    assert server.wait_exit(timeout=60) == 2
    assert (
        tmp_path / "termination-log"
    ).read_text() == "bad settings: threads must be an integer, got 'many'\n"


class _EveryWrite:
    """A FIFO in place of the termination log: it keeps every write, where a file opened with "w" keeps
    only the last, so a failure reported twice shows as two lines."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        # Open for reading first (without blocking): the server's open() for writing then succeeds at
        # once, and what it writes waits in the pipe until read.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def lines(self) -> list[str]:
        """What was written, once every writer is gone (read() returns b"" then, not EAGAIN)."""
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        os.close(self._fd)
        return b"".join(chunks).decode().splitlines()


def _token_file_missing(tmp_path: Path, model_dir: Path) -> tuple[dict[str, str], list[str], str]:
    token = tmp_path / "no-such-token"
    env = _env(str(model_dir / "mlp.onnx"), tmp_path, MODELSHIP_AUTH_TOKEN_FILE=str(token))
    return env, [], f"start failed: cannot read the auth token file {token}: No such file or directory"


def _broken_model(tmp_path: Path, model_dir: Path) -> tuple[dict[str, str], list[str], str]:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07" + b"not an onnx graph" * 8)
    return _env(str(path), tmp_path), [], f"model load failed: {path} is not a loadable ONNX model: "


def _fetch_of_a_missing_file(tmp_path: Path, model_dir: Path) -> tuple[dict[str, str], list[str], str]:
    path = tmp_path / "missing.onnx"
    return _env(str(path), tmp_path), ["fetch"], f"model fetch failed: {path} does not exist"


def _bad_settings(tmp_path: Path, model_dir: Path) -> tuple[dict[str, str], list[str], str]:
    env = _env(str(model_dir / "mlp.onnx"), tmp_path, MODELSHIP_MAX_BATCH_SIZE="0")
    return env, [], "bad settings: max_batch_size must be at least 1, got 0"


@pytest.mark.parametrize(
    ("failure", "code"),
    [(_token_file_missing, 1), (_broken_model, 1), (_fetch_of_a_missing_file, 1), (_bad_settings, 2)],
    ids=lambda value: getattr(value, "__name__", str(value)).strip("_"),
)
def test_a_failed_start_writes_the_termination_log_once_with_its_own_reason(
    start_server: StartServer,
    model_dir: Path,
    tmp_path: Path,
    failure: Callable[[Path, Path], tuple[dict[str, str], list[str], str]],
    code: int,
) -> None:
    env, args, reason = failure(tmp_path, model_dir)
    log = _EveryWrite(tmp_path / "termination-log")
    server = start_server(env, *args, wait=False)
    assert server.wait_exit(timeout=60) == code, server.log()
    lines = log.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(reason), lines


def test_bad_settings_are_reported_where_the_flag_says(start_server: StartServer, tmp_path: Path) -> None:
    flagged = tmp_path / "flagged-termination-log"
    env = _env("/x.onnx", tmp_path, MODELSHIP_FETCH_ATTEMPTS="twice")
    server = start_server(env, "--termination-log", str(flagged), wait=False)
    assert server.wait_exit(timeout=60) == 2
    assert flagged.read_text() == "bad settings: fetch_attempts must be an integer, got 'twice'\n"
    assert not (tmp_path / "termination-log").exists()


def test_fetch_mode_fills_the_cache_that_serving_then_uses(
    start_server: StartServer, model_host: ModelHost, model_dir: Path, tmp_path: Path
) -> None:
    data = (model_dir / "mlp.onnx").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    model_host.files["/mlp.onnx"] = data
    env = _env(model_host.url + "/mlp.onnx", tmp_path, MODELSHIP_MODEL_SHA256=sha)

    fetch = start_server(env, "fetch", wait=False)
    assert fetch.wait_exit(timeout=60) == 0, fetch.log()
    assert (tmp_path / "cache" / f"{sha}.onnx").read_bytes() == data

    del model_host.files["/mlp.onnx"]  # the serving container must not need the network again
    server = start_server(env)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    response = httpx.post(f"{server.url}/v2/models/m/infer", content=orjson.dumps(body))
    assert response.status_code == 200
    assert model_host.hits["/mlp.onnx"] == 1
    assert f'sha256="{sha}"' in httpx.get(f"{server.url}/metrics").text


def test_fetch_mode_failure_writes_the_termination_log(
    start_server: StartServer, model_host: ModelHost, tmp_path: Path
) -> None:
    url = model_host.url + "/missing.onnx"
    message = _fails_with(
        start_server, _env(url, tmp_path, MODELSHIP_MODEL_SHA256="2" * 64), tmp_path, "fetch"
    )
    assert message == f"model fetch failed: download of {url} failed: HTTP 404"


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose every request takes about a second (more on a busy machine)."""
    return models.save(models.slow(iterations=300_000), tmp_path_factory.mktemp("slow") / "slow.onnx")


def _slow_request(url: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}
    return httpx.post(f"{url}/v2/models/m/infer", content=orjson.dumps(body), timeout=60)


def _not_ready(url: str) -> httpx.Response | None:
    response = httpx.get(f"{url}/v2/health/ready")
    return response if response.status_code == 503 else None


def _inflight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("modelship_inflight_requests{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_fails_readiness_at_once_and_still_serves_every_request(
    start_server: StartServer, slow_model: Path, tmp_path: Path
) -> None:
    server = start_server(
        _env(str(slow_model), tmp_path, MODELSHIP_THREADS="1", MODELSHIP_MAX_BATCH_SIZE="1")
    )
    assert server.proc is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_slow_request, server.url)
        wait_until(
            lambda: _inflight(server.url) == 1, timeout=30, interval=0.02, what="the request in flight"
        )
        server.proc.send_signal(signal.SIGTERM)
        ready = wait_until(
            lambda: _not_ready(server.url),
            timeout=5,
            interval=0.02,
            what="readiness to fail",
        )
        assert not slow.done(), "the slow request should still be running"
        assert ready.json() == {"error": "the server is shutting down"}
        served = _slow_request(server.url)
        assert served.status_code == 200 and served.headers["connection"] == "close"
        finished = slow.result(timeout=60)
        assert finished.status_code == 200 and finished.headers["connection"] == "close"
    assert server.wait_exit(timeout=30) == 0


_MLP_BODY = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
)


class _Connection:
    """One keep-alive HTTP/1.1 connection on a plain socket: unlike a client library's pool, it shows
    whether the server closed it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def infer(self) -> http.client.HTTPResponse:
        self.sock.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(_MLP_BODY), _MLP_BODY)
        )
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        response.read()
        return response

    def closed_by_server(self, timeout: float) -> bool:
        """Whether the server closes the connection within `timeout` (it sends nothing unasked)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def _mlp_env(model_dir: Path, tmp_path: Path) -> dict[str, str]:
    # Connections are not recycled (test_connections.py): every `Connection: close` here is the drain's.
    return _env(
        str(model_dir / "mlp.onnx"),
        tmp_path,
        MODELSHIP_GRACE_PERIOD_SECONDS="30",
        MODELSHIP_MAX_CONNECTION_REQUESTS="0",
        MODELSHIP_MAX_CONNECTION_AGE_SECONDS="0",
    )


def test_after_sigterm_each_connection_gets_its_answer_and_is_then_closed(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    server = start_server(_mlp_env(model_dir, tmp_path))
    assert server.proc is not None
    with contextlib.closing(_Connection(server.port)) as kept:
        first = kept.infer()
        assert first.status == 200 and first.getheader("connection") is None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        statuses: list[int] = []
        failures: list[str] = []

        def closing() -> bool:
            # Never idle for long, the connection is not closed under a request, only after a response.
            # A failed request ends the wait at once (it must not be retried past) and is asserted on.
            try:
                response = kept.infer()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                return True
            statuses.append(response.status)
            return response.status != 200 or response.getheader("connection") == "close"

        wait_until(closing, timeout=10, interval=0.02, what="a response with Connection: close")
        assert failures == [], "a request on the kept-alive connection failed after SIGTERM"
        assert set(statuses) == {200}
        assert kept.closed_by_server(timeout=10)
    ready = httpx.get(f"{server.url}/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"error": "the server is shutting down"}
    with contextlib.closing(_Connection(server.port)) as new:
        response = new.infer()
        assert response.status == 200 and response.getheader("connection") == "close"
        assert new.closed_by_server(timeout=10)
    assert server.wait_exit(timeout=30) == 0
    assert time.monotonic() - signalled < 10, "the process should exit once its connections are gone"


def test_after_sigterm_an_idle_connection_is_closed_and_the_process_exits(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    server = start_server(_mlp_env(model_dir, tmp_path))
    assert server.proc is not None
    with contextlib.closing(_Connection(server.port)) as idle:
        sent = time.monotonic()
        assert idle.infer().status == 200
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert idle.closed_by_server(timeout=10)
        idle_for = time.monotonic() - sent
    assert server.wait_exit(timeout=30) == 0
    assert time.monotonic() - signalled < 10, "the process should exit well before its grace period"
    assert idle_for >= IDLE_CLOSE_SECONDS, "closed the moment it went idle: a client could be sending on it"
    drained = re.search(r"drained (\d+) connection\(s\) and 0 request\(s\)", server.log())
    assert drained and int(drained[1]) >= 1, server.log()


def test_steady_keep_alive_load_across_sigterm_sees_no_error(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    server = start_server(_mlp_env(model_dir, tmp_path))
    assert server.proc is not None
    workers = 4
    answered = [0] * workers
    closing = [0] * workers  # answers with `Connection: close`, each followed by a new connection
    failures: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post("/v2/models/m/infer", content=_MLP_BODY)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    return
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    return
                answered[worker] += 1
                closing[worker] += response.headers.get("connection") == "close"

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        running = [pool.submit(load, worker) for worker in range(workers)]
        try:
            wait_until(lambda: min(answered) >= 20 or failures, timeout=30, interval=0.02, what="the load")
            assert sum(closing) == 0, "before SIGTERM the connections should be kept alive"
            server.proc.send_signal(signal.SIGTERM)
            wait_until(
                lambda: min(closing) >= 20 or failures,
                timeout=30,
                interval=0.02,
                what="every client to be answered and reconnect many times",
            )
        finally:
            stop.set()
        for future in running:
            future.result(timeout=60)
    stopped = time.monotonic()
    assert failures == []
    assert server.wait_exit(timeout=30) == 0
    exited_after = time.monotonic() - stopped
    assert exited_after < 5, f"exited {exited_after:.2f}s after the load stopped"
    assert re.search(r"drained \d+ connection\(s\) and \d+ request\(s\)", server.log())


def test_the_process_exits_when_the_grace_period_is_over(
    start_server: StartServer, slow_model: Path, tmp_path: Path
) -> None:
    env = _env(
        str(slow_model),
        tmp_path,
        MODELSHIP_THREADS="1",
        MODELSHIP_MAX_BATCH_SIZE="1",
        MODELSHIP_GRACE_PERIOD_SECONDS="0.2",
    )
    server = start_server(env)
    assert server.proc is not None
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        # Three requests queue behind each other on one thread: several seconds of work in all.
        pending = [pool.submit(_slow_request, server.url) for _ in range(3)]
        wait_until(lambda: _inflight(server.url) == 3, timeout=30, interval=0.02, what="requests in flight")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_exit(timeout=30)
        exited_after = time.monotonic() - signalled
        for future in pending:
            with contextlib.suppress(httpx.HTTPError):
                future.result(timeout=30)
    assert exited_after < 0.2 + 1.0, f"exited {exited_after:.2f}s after SIGTERM"
    assert re.search(r"grace period over with [1-3] request\(s\) still in flight", server.log())


def test_model_is_not_ready_and_infer_is_503_while_loading(
    start_server: StartServer, model_host: ModelHost, model_dir: Path, tmp_path: Path
) -> None:
    data = (model_dir / "mlp.onnx").read_bytes()
    model_host.files["/mlp.onnx"] = data
    release = model_host.gates["/mlp.onnx"] = threading.Event()
    env = _env(
        model_host.url + "/mlp.onnx", tmp_path, MODELSHIP_MODEL_SHA256=hashlib.sha256(data).hexdigest()
    )
    server = start_server(env, wait=False)
    try:
        wait_until(lambda: model_host.hits.get("/mlp.onnx"), timeout=60, interval=0.02, what="the download")
        wait_until(
            lambda: _answers(f"{server.url}/v2/health/live"), timeout=30, interval=0.02, what="a listener"
        )
        assert httpx.get(f"{server.url}/v2/health/ready").json() == {"error": "the model is loading"}
        assert httpx.get(f"{server.url}/v2/models/m/ready").status_code == 503
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        response = httpx.post(f"{server.url}/v2/models/m/infer", content=orjson.dumps(body))
        assert response.status_code == 503 and response.json() == {"error": "the model is loading"}
    finally:
        release.set()
    server.wait_ready()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False
