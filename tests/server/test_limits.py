"""Requests that ask for more than a pod can give, and clients that leave or speak another dialect,
against real server processes on 127.0.0.1: what is refused, with which status, and what is counted."""

from __future__ import annotations

import gzip
import socket
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
import pytest

from tests.server import models
from tests.server.conftest import ServerProcess
from tests.support import proc_status_kib, wait_until

MIB = 1 << 20


@dataclass
class LimitServers:
    outer: ServerProcess
    zeros: ServerProcess
    wide: ServerProcess
    pair: ServerProcess


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitServers]:
    """One server per model, each with a small memory budget so that its limits are cheap to reach."""
    folder = tmp_path_factory.mktemp("limits")
    made = {
        "outer": models.outer(),
        "zeros": models.zeros(),
        "wide": models.wide(),
        "pair": models.pair(),
    }
    procs = {}
    for name, model in made.items():
        path = models.save(model, folder / f"{name}.onnx")
        procs[name] = ServerProcess(
            {
                "MODELSHIP_MODEL_NAME": name,
                "MODELSHIP_MODEL_URI": str(path),
                "MODELSHIP_TERMINATION_LOG": str(folder / f"{name}-termination-log"),
                "MODELSHIP_MAX_BATCH_SIZE": "1",
                "MODELSHIP_MAX_REQUEST_MEMORY_BYTES": str(16 * MIB if name == "wide" else 8 * MIB),
                "MODELSHIP_MAX_INFLIGHT_MEMORY_BYTES": str(32 * MIB),
            }
        )
    try:
        for proc in procs.values():
            proc.start(folder)
        for proc in procs.values():
            proc.wait_ready()
        yield LimitServers(**procs)
    finally:
        for proc in procs.values():
            proc.stop()


def _post(
    server: ServerProcess, body: bytes, headers: Mapping[str, str | bytes] | None = None
) -> httpx.Response:
    name = server.env["MODELSHIP_MODEL_NAME"]
    return httpx.post(f"{server.url}/v2/models/{name}/infer", content=body, headers=headers, timeout=30)


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _json_rows(rows: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel()}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _binary_rows(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = rows.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return header + raw, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def test_a_json_body_whose_decoding_would_exceed_the_budget_is_413_the_same_rows_in_binary_are_served(
    limited: LimitServers,
) -> None:
    rows = np.random.default_rng(0).random((640, 1024), dtype=np.float32)  # 2.5 MiB of float32
    body = _json_rows(rows)
    assert len(body) < 8 * MIB  # the body alone fits the budget of 16 MiB; decoding it would not
    refused = _post(limited.wide, body)
    assert refused.status_code == 413, refused.text
    assert "MODELSHIP_MAX_REQUEST_MEMORY_BYTES" in refused.json()["error"]
    binary, headers = _binary_rows(rows)
    served = _post(limited.wide, binary, headers)
    assert served.status_code == 200, served.text
    sums = np.array(served.json()["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(sums, rows.sum(axis=1), rtol=1e-4)


def test_outputs_the_shapes_make_too_large_are_413_before_the_model_runs(limited: LimitServers) -> None:
    server = limited.outer
    x = np.arange(3, dtype=np.float32)
    small = _post(server, _json_rows(x))
    assert small.status_code == 200, small.text
    assert small.json()["outputs"][0]["data"] == np.outer(x, x).ravel().tolist()
    runs = _metric(server, "modelship_inference_duration_seconds_count")
    # 40 KB asking for 4096 x 4096 float32 (64 MiB) and its JSON.
    big = _post(server, _json_rows(np.ones(4096, dtype=np.float32)))
    assert big.status_code == 413, big.text
    assert "MODELSHIP_MAX_REQUEST_MEMORY_BYTES" in big.json()["error"]
    assert _metric(server, "modelship_inference_duration_seconds_count") == runs


def _zeros_request(rows: int, cols: int, binary: bool = False) -> bytes:
    return orjson.dumps(
        {
            "inputs": [{"name": "shape", "datatype": "INT64", "shape": [2], "data": [rows, cols]}],
            "parameters": {"binary_data_output": binary},
        }
    )


def test_a_response_only_the_run_can_size_is_413_before_it_is_encoded(limited: LimitServers) -> None:
    server = limited.zeros
    ok = _post(server, _zeros_request(2, 3))
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [0.0] * 6
    # 1000 x 1000 float32 is 4 MB, its JSON about 4 times that: over the 8 MiB budget as JSON ...
    refused = _post(server, _zeros_request(1000, 1000))
    assert refused.status_code == 413, refused.text
    assert "response" in refused.json()["error"]
    # ... and within it in binary (the outputs and their bytes).
    binary = _post(server, _zeros_request(700, 700, binary=True))
    assert binary.status_code == 200, binary.text
    assert len(binary.content) - int(binary.headers["inference-header-content-length"]) == 700 * 700 * 4


def _rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    return proc_status_kib(server.proc.pid, "VmRSS") / 1024


def test_memory_the_run_made_for_a_refused_answer_goes_back(limited: LimitServers) -> None:
    """A 64 MiB output that only the run could size: refused (413), and its memory returned; onnxruntime's
    arena (off) would have kept it for good."""
    server = limited.zeros
    before = _rss_mib(server)
    refused = _post(server, _zeros_request(4096, 4096, binary=True))
    assert refused.status_code == 413, refused.text
    wait_until(
        lambda: _rss_mib(server) < before + 24,
        timeout=15,
        what=f"the server's RSS back near {before:.0f} MiB",
    )


def test_a_model_failing_on_input_its_signature_allows_is_500_with_onnxruntime_s_message(
    limited: LimitServers,
) -> None:
    server = limited.zeros
    before = _metric(server, "modelship_requests_total", code="500")
    failed = _post(server, _zeros_request(-1, 3))
    assert failed.status_code == 500, failed.text
    message = failed.json()["error"]
    assert message.startswith("the model failed on these inputs:") and "ConstantOfShape" in message
    assert _metric(server, "modelship_requests_total", code="500") == before + 1


def test_inputs_that_disagree_on_a_named_dimension_are_400_before_the_run(limited: LimitServers) -> None:
    server = limited.pair
    body = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]},
            {"name": "b", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]},
        ]
    }
    response = _post(server, orjson.dumps(body))
    assert response.status_code == 400, response.text
    assert "'n'" in response.json()["error"]
    body["inputs"][1] = {"name": "b", "datatype": "FP32", "shape": [3], "data": [1, 1, 1]}
    served = _post(server, orjson.dumps(body))
    assert served.status_code == 200 and served.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0]


def test_a_client_that_leaves_mid_body_is_counted_499_not_500(limited: LimitServers) -> None:
    server = limited.outer
    gone = _metric(server, "modelship_requests_total", code="499")
    errors = _metric(server, "modelship_requests_total", code="500")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/outer/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'{"inputs": [' + b" " * 1000
        )
    wait_until(
        lambda: _metric(server, "modelship_requests_total", code="499") == gone + 1,
        timeout=10,
        what="the request cut off mid-body to be counted as 499",
    )
    assert _metric(server, "modelship_requests_total", code="500") == errors
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_bodies_are_served(limited: LimitServers, encoding: str) -> None:
    x = np.arange(4, dtype=np.float32)
    body = _json_rows(x)
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = _post(limited.outer, packed, {"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == np.outer(x, x).ravel().tolist()


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"definitely not gzip", "gzip", 400),
        (gzip.compress(b" " * (64 * MIB)), "gzip", 413),
        (b"{}", "br", 415),
    ],
)
def test_bad_compressed_bodies_are_4xx(
    limited: LimitServers, body: bytes, encoding: str, status: int
) -> None:
    response = _post(limited.outer, body, {"Content-Encoding": encoding})
    assert response.status_code == status, response.text
    assert response.json()["error"]


# b"\xb2" is "²" in latin-1, as HTTP headers are read: a digit to str.isdigit, not to int().
@pytest.mark.parametrize("header", [b"12x", b"\xb2", b"-5", b"9" * 40])
def test_malformed_binary_extension_headers_are_400(limited: LimitServers, header: bytes) -> None:
    response = _post(
        limited.outer, _json_rows(np.ones(2, np.float32)), {"Inference-Header-Content-Length": header}
    )
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_kserve_v1_health_and_model_readiness(limited: LimitServers) -> None:
    url = limited.outer.url
    assert httpx.get(url + "/").json() == {"status": "alive"}
    assert httpx.get(url + "/v1/models").json() == {"models": ["outer"]}
    assert httpx.get(url + "/v1/models/outer").json() == {"name": "outer", "ready": True}
    unknown = httpx.get(url + "/v1/models/other")
    assert unknown.status_code == 404 and "unknown model" in unknown.json()["error"]


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/models/outer/ready", "/"])
def test_head_on_health_answers_without_a_body(limited: LimitServers, path: str) -> None:
    response = httpx.head(limited.outer.url + path)
    assert response.status_code == 200 and response.content == b""


def test_v1_instances_as_objects_are_budgeted_as_python_objects(limited: LimitServers) -> None:
    """Each `{"a": .., "b": ..}` instance becomes Python objects (some 127 bytes a value, measured): 40,000
    of them (a 0.7 MiB body) need more than the 8 MiB budget; 10,000 fit."""
    url = f"{limited.pair.url}/v1/models/pair:predict"

    def body(count: int) -> bytes:
        return b'{"instances":[' + b",".join([b'{"a":1.5,"b":2.5}'] * count) + b"]}"

    refused = httpx.post(url, content=body(40_000), timeout=30)
    assert refused.status_code == 413, refused.text
    assert "decoding the request" in refused.json()["error"]
    served = httpx.post(url, content=body(10_000), timeout=30)
    assert served.status_code == 200, served.text
    assert served.json()["predictions"] == [4.0] * 10_000
