"""Keep-alive connections are bounded: each draws its share of requests and its age, and the response
that uses the last of it carries `Connection: close` (the policy alone, then a real server over HTTP)."""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import orjson
import pytest
from modelship.server.connections import ConnectionBudget, ConnectionPolicy

from tests.keepalive_load import KeepAliveLoad
from tests.server.conftest import ServerProcess, StartServer
from tests.support import wait_until

# -- the policy


def _draws(policy: ConnectionPolicy, count: int = 2000) -> list[ConnectionBudget]:
    return [policy.draw(opened_at=100.0) for _ in range(count)]


def test_each_limit_is_drawn_between_half_the_setting_and_the_setting() -> None:
    budgets = _draws(ConnectionPolicy(20, 10.0, random.Random(1)))
    assert {b.requests for b in budgets} == set(range(10, 21))
    ages = [b.closes_at - 100.0 for b in budgets]
    assert min(ages) >= 5.0 and max(ages) <= 10.0


@pytest.mark.parametrize(("setting", "lowest"), [(1, 1), (2, 1), (3, 2), (25, 13), (1000, 500)])
def test_a_request_limit_never_drops_below_half_of_its_setting(setting: int, lowest: int) -> None:
    drawn = {b.requests for b in _draws(ConnectionPolicy(setting, 0.0, random.Random(2)))}
    assert min(drawn) == lowest and max(drawn) == setting


def test_the_drawn_limits_are_spread_so_that_connections_opened_together_do_not_close_together() -> None:
    budgets = _draws(ConnectionPolicy(1000, 10.0, random.Random(3)), count=200)
    requests = [b.requests for b in budgets]
    ages = [b.closes_at - 100.0 for b in budgets]
    assert len(set(requests)) > 150 and len(set(ages)) == len(ages)
    # Uniform over [500, 1000] and [5, 10], their standard deviations are width/sqrt(12): 144 and 1.4.
    assert statistics.stdev(requests) > 100 and statistics.stdev(ages) > 1.0
    eight = _draws(ConnectionPolicy(20, 0.0, random.Random(4)), count=8)
    assert len({b.requests for b in eight}) > 1


def test_the_same_seed_draws_the_same_budgets() -> None:
    assert _draws(ConnectionPolicy(20, 1.0, random.Random(5))) == _draws(
        ConnectionPolicy(20, 1.0, random.Random(5))
    )


def test_zero_is_no_limit() -> None:
    for budget in _draws(ConnectionPolicy(0, 0.0, random.Random(6)), count=10):
        assert not budget.spent(10**12, now=1e12)
    assert not ConnectionPolicy(0, 5.0).draw(0.0).spent(10**12, now=1.0)
    assert not ConnectionPolicy(5, 0.0).draw(0.0).spent(1, now=1e12)


def test_a_budget_is_spent_by_its_last_request_or_at_its_age() -> None:
    budget = ConnectionBudget(requests=20, closes_at=50.0)
    assert not budget.spent(19, now=49.9)
    assert budget.spent(20, now=0.0)
    assert budget.spent(1, now=50.0)


# -- a real server, over HTTP on 127.0.0.1

_MLP_REQUEST = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
_MLP_BODY = orjson.dumps(_MLP_REQUEST)
# Every kind of response: the inference fast path, and FastAPI's routes.
ROUTES = {
    "inference": ("POST", "/v2/models/m/infer", _MLP_BODY),
    "health": ("GET", "/v2/health/ready", None),
    "metrics": ("GET", "/metrics", None),
}


def _server(start_server: StartServer, model_dir: Path, tmp_path: Path, **env: str) -> ServerProcess:
    return start_server(
        {
            "MODELSHIP_MODEL_NAME": "m",
            "MODELSHIP_MODEL_URI": str(model_dir / "mlp.onnx"),
            "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
            **{f"MODELSHIP_{name.upper()}": value for name, value in env.items()},
        }
    )


@contextlib.contextmanager
def _watched(server: ServerProcess) -> Iterator[tuple[http.client.HTTPConnection, socket.socket]]:
    """A connected HTTPConnection, and a second descriptor of its socket: http.client drops its own once
    it reads `Connection: close`, the second one still sees whether the server then closes the socket."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.connect()
    assert conn.sock is not None
    watch = conn.sock.dup()
    try:
        yield conn, watch
    finally:
        watch.close()
        conn.close()


def _closed_by_server(watch: socket.socket, timeout: float = 10) -> bool:
    """Whether the server closes the connection within `timeout` (it sends nothing unasked)."""
    watch.settimeout(timeout)
    try:
        return watch.recv(1) == b""
    except TimeoutError:
        return False


def _ask(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None
) -> tuple[int, str | None]:
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("connection")


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_a_connection_is_asked_to_close_after_its_share_of_requests_and_then_closed(
    start_server: StartServer, model_dir: Path, tmp_path: Path, route: tuple[str, str, bytes | None]
) -> None:
    server = _server(
        start_server, model_dir, tmp_path, max_connection_requests="20", max_connection_age_seconds="0"
    )
    shares: list[int] = []
    for _ in range(6):
        with _watched(server) as (conn, watch):
            answers = [_ask(conn, *route)]
            while answers[-1] == (200, None) and len(answers) < 20:
                answers.append(_ask(conn, *route))
            assert answers[-1] == (200, "close"), answers
            assert set(answers[:-1]) <= {(200, None)}, answers
            assert 10 <= len(answers) <= 20
            assert conn.sock is None, "http.client should have let the connection go"
            assert _closed_by_server(watch)
            shares.append(len(answers))
    assert len(set(shares)) > 1, f"every connection drew the same share {shares}: they would close together"


def test_a_connection_is_asked_to_close_on_its_first_request_past_its_age(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    server = _server(
        start_server, model_dir, tmp_path, max_connection_requests="0", max_connection_age_seconds="1"
    )
    answers: list[tuple[float, int, str | None]] = []
    opened = time.monotonic()  # before the server's own clock for the connection starts
    with _watched(server) as (conn, watch):

        def closing() -> bool:
            sent = time.monotonic() - opened
            status, connection = _ask(conn, *ROUTES["inference"])
            answers.append((sent, status, connection))
            return (status, connection) != (200, None)

        wait_until(closing, timeout=10, interval=0.05, what="a response with Connection: close")
        *kept, (sent, status, connection) = answers
        assert (status, connection) == (200, "close"), answers
        assert kept and {(s, c) for _, s, c in kept} == {(200, None)}, answers
        # The age drawn is between 0.5 s and 1 s; the server's clock started a little after ours, so a
        # request sent a second past 1 s must have been past it (a bound no slower machine should reach).
        assert sent >= 0.5, answers
        assert kept[-1][0] < 2.0, answers
        assert _closed_by_server(watch)


def _read_response(reader: BinaryIO) -> tuple[int, str | None, bytes] | None:
    """One response off a stream of pipelined ones (status, Connection header, body); None at the end."""
    line = reader.readline()
    if not line:
        return None
    headers = http.client.parse_headers(reader)
    body = reader.read(int(headers["content-length"]))
    return int(line.split()[1]), headers.get("connection"), body


def test_pipelined_requests_past_the_share_are_all_answered_in_order_and_the_last_closes(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    server = _server(
        start_server, model_dir, tmp_path, max_connection_requests="20", max_connection_age_seconds="0"
    )
    requests = []
    for index in range(30):
        body = orjson.dumps({"id": f"r{index}", **_MLP_REQUEST})
        requests.append(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        # One write: the server reads all 30 before it answers the first, so the close moves to the last.
        sock.sendall(b"".join(requests))
        with sock.makefile("rb") as reader:
            responses = []
            while (response := _read_response(reader)) is not None:
                responses.append(response)
    assert [orjson.loads(body)["id"] for _, _, body in responses] == [f"r{i}" for i in range(30)]
    assert {status for status, _, _ in responses} == {200}
    assert [i for i, (_, connection, _) in enumerate(responses) if connection == "close"] == [29]


def _counter(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_keep_alive_clients_reconnect_many_times_under_load_and_see_no_error(
    start_server: StartServer, model_dir: Path, tmp_path: Path
) -> None:
    server = _server(
        start_server, model_dir, tmp_path, max_connection_requests="25", max_connection_age_seconds="0"
    )
    load = KeepAliveLoad(f"{server.url}/v2/models/m/infer", _MLP_REQUEST, connections=4, pooled=4)
    with load:
        wait_until(
            lambda: load.result.sent >= 2000 or load.result.failed,
            timeout=120,
            interval=0.05,
            what="2000 requests",
        )
    result = load.result
    assert result.failed == 0 and result.ok == result.sent >= 2000, str(result)
    assert result.reconnects > 0, str(result)
    connections = _counter(server, "modelship_connections_total")
    recycled = _counter(server, "modelship_connections_recycled_total")
    # No connection answers more than 25 requests; all but the 8 the clients held at the end were recycled.
    assert connections > result.sent / 25, (connections, str(result))
    assert recycled >= result.sent / 25 - 8 > 0, (recycled, str(result))
