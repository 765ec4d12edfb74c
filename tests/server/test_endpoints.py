"""Every endpoint of a real server process, over real HTTP, with real onnxruntime models."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import orjson
import pytest

from tests.server import models
from tests.server.conftest import Servers


def _infer(url: str, body: dict, model: str = "mlp") -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", content=orjson.dumps(body), timeout=10)


def _x(rows: np.ndarray) -> dict:
    return {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}


def test_health_server_metadata_and_model_metadata(servers: Servers) -> None:
    url = servers.mlp.url
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2").json()
    assert meta["name"] == "modelship" and "binary_tensor_data" in meta["extensions"]
    # The published OpenAPI spec writes it `/v2/`: answered there, not redirected.
    assert httpx.get(f"{url}/v2/", follow_redirects=False).json() == meta
    model = httpx.get(f"{url}/v2/models/mlp").json()
    assert model["name"] == "mlp" and model["versions"] == ["3"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert model["parameters"]["max_batch_size"] == 8
    assert httpx.get(f"{url}/v2/models/mlp/versions/3").json() == model
    assert httpx.get(f"{url}/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
    assert httpx.get(f"{url}/v2/models/mlp/versions/3/ready").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/other",
        "/v2/models/mlp/versions/4",
        "/v2/models/other/ready",
        "/v2/models/mlp/versions/9/ready",
    ],
)
def test_unknown_model_or_version_is_404(servers: Servers, path: str) -> None:
    response = httpx.get(servers.mlp.url + path)
    assert response.status_code == 404
    assert "unknown" in response.json()["error"]


def test_unknown_model_or_version_on_infer_is_404(servers: Servers) -> None:
    body = {"inputs": [_x(np.ones((1, 4), np.float32))]}
    assert _infer(servers.mlp.url, body, model="other").status_code == 404
    response = httpx.post(f"{servers.mlp.url}/v2/models/mlp/versions/2/infer", content=orjson.dumps(body))
    assert response.status_code == 404 and "version" in response.json()["error"]
    assert (
        httpx.post(
            f"{servers.mlp.url}/v1/models/other:predict", json={"instances": [[1, 2, 3, 4]]}
        ).status_code
        == 404
    )


def test_unknown_route_and_wrong_method_answer_json_errors(servers: Servers) -> None:
    missing = httpx.get(servers.mlp.url + "/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(servers.mlp.url + "/v2/models/mlp/infer")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_json_infer_matches_the_reference_and_echoes_id(servers: Servers) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/3/infer"):
        response = httpx.post(servers.mlp.url + path, content=orjson.dumps({"id": "r1", "inputs": [_x(x)]}))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        out = response.json()
        assert out["id"] == "r1" and out["model_name"] == "mlp" and out["model_version"] == "3"
        (y,) = out["outputs"]
        assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [3, 3]
        np.testing.assert_allclose(
            np.array(y["data"]).reshape(3, 3), models.mlp_reference(x), rtol=1e-5, atol=1e-6
        )


def test_binary_request_and_binary_response(servers: Servers) -> None:
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    response = httpx.post(
        f"{servers.mlp.url}/v2/models/mlp/infer",
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = orjson.loads(response.content[:length])
    (y,) = meta["outputs"]
    assert y["parameters"] == {"binary_data_size": 24} and "data" not in y
    got = np.frombuffer(response.content[length:], dtype="<f4").reshape(y["shape"])
    np.testing.assert_allclose(got, models.mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_binary_data_output_parameter_makes_all_outputs_binary(servers: Servers) -> None:
    x = np.ones((1, 4), np.float32)
    response = _infer(servers.mlp.url, {"inputs": [_x(x)], "parameters": {"binary_data_output": True}})
    length = int(response.headers["inference-header-content-length"])
    assert len(response.content) == length + 12


def test_v1_predict(servers: Servers) -> None:
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], dtype=np.float32)
    response = httpx.post(f"{servers.mlp.url}/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        np.array(response.json()["predictions"]), models.mlp_reference(x), rtol=1e-5, atol=1e-6
    )


def test_every_dtype_round_trips_in_json_and_binary(servers: Servers) -> None:
    rng = np.random.default_rng(3)
    values: dict[str, np.ndarray] = {
        "i64": np.array([[2**40, -5], [7, 0]], dtype=np.int64),
        "i32": np.array([[-(2**31), 12], [3, 4]], dtype=np.int32),
        "i8": np.array([[-128, 127], [0, 1]], dtype=np.int8),
        "u8": np.array([[0, 255], [9, 8]], dtype=np.uint8),
        "b": np.array([[True, False], [False, False]]),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
    }
    datatypes = {
        "i64": "INT64",
        "i32": "INT32",
        "i8": "INT8",
        "u8": "UINT8",
        "b": "BOOL",
        "f16": "FP16",
        "f64": "FP64",
    }
    one = {k: v.dtype.type(1) for k, v in values.items()}
    expected = {
        "i64_out": values["i64"] + one["i64"],
        "i32_out": values["i32"] + one["i32"],
        "i8_out": values["i8"],
        "u8_out": values["u8"],
        "b_out": ~values["b"],
        "f16_out": values["f16"] + one["f16"],
        "f64_out": values["f64"] + 1,
    }
    json_body = {
        "inputs": [
            {"name": k, "shape": [2, 2], "datatype": datatypes[k], "data": v.ravel().tolist()}
            for k, v in values.items()
        ]
    }
    response = _infer(servers.dtypes.url, json_body, model="dtypes")
    assert response.status_code == 200, response.text
    for out in response.json()["outputs"]:
        want = expected[out["name"]]
        assert out["datatype"] == datatypes[out["name"].removesuffix("_out")]
        np.testing.assert_array_equal(np.array(out["data"], dtype=want.dtype).reshape(out["shape"]), want)

    raw = [v.astype(v.dtype.newbyteorder("<")).tobytes() for v in values.values()]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": k,
                    "shape": [2, 2],
                    "datatype": datatypes[k],
                    "parameters": {"binary_data_size": len(r)},
                }
                for (k, _), r in zip(values.items(), raw, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    response = httpx.post(
        f"{servers.dtypes.url}/v2/models/dtypes/infer",
        content=header + b"".join(raw),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    offset = length
    for out in orjson.loads(response.content[:length])["outputs"]:
        want = expected[out["name"]]
        size = out["parameters"]["binary_data_size"]
        got = np.frombuffer(response.content[offset : offset + size], dtype=want.dtype).reshape(out["shape"])
        np.testing.assert_array_equal(got, want)
        offset += size
    assert offset == len(response.content)


def test_bytes_tensors_in_json_and_binary(servers: Servers) -> None:
    texts = [["alpha", "βeta"], ["", "gamma delta"]]
    response = _infer(
        servers.strings.url,
        {"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES", "data": texts}]},
        model="strings",
    )
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["datatype"] == "BYTES" and out["data"] == ["βeta", "alpha", "gamma delta", ""]

    flat = [t.encode() for row in texts for t in row]
    raw = b"".join(struct.pack("<I", len(t)) + t for t in flat)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [2, 2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "swapped", "parameters": {"binary_data": True}}],
        }
    )
    response = httpx.post(
        f"{servers.strings.url}/v2/models/strings/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    rest, got = response.content[length:], []
    while rest:
        (n,) = struct.unpack_from("<I", rest)
        got.append(rest[4 : 4 + n].decode())
        rest = rest[4 + n :]
    assert got == ["βeta", "alpha", "gamma delta", ""]


def test_model_without_batch_dimension(servers: Servers) -> None:
    url = servers.fixed.url
    meta = httpx.get(f"{url}/v2/models/fixed").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 3]}]
    assert meta["parameters"]["max_batch_size"] == 0
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    outputs = {o["name"]: o for o in _infer(url, body, model="fixed").json()["outputs"]}
    assert outputs["total"] == {"name": "total", "datatype": "FP32", "shape": [], "data": [21.0]}
    assert outputs["doubled"]["data"] == [2, 4, 6, 8, 10, 12]
    wrong = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = _infer(url, wrong, model="fixed")
    assert response.status_code == 400 and "[2, 3]" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "malformed JSON"),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]}),
            400,
            "shape",
        ),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [1] * 4}]}),
            400,
            "FP32",
        ),
        (
            orjson.dumps({"inputs": [{"name": "q", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}),
            400,
            "'q'",
        ),
    ],
)
def test_client_mistakes_are_400(servers: Servers, body: bytes, status: int, fragment: str) -> None:
    response = httpx.post(f"{servers.mlp.url}/v2/models/mlp/infer", content=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_body_over_the_limit_is_413(servers: Servers) -> None:
    big = b"[" + b"0," * (40 << 20) + b"0]"
    response = httpx.post(f"{servers.mlp.url}/v2/models/mlp/infer", content=big, timeout=30)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(80):
            yield b" " * (1 << 20)

    response = httpx.post(f"{servers.mlp.url}/v2/models/mlp/infer", content=chunks(), timeout=30)
    assert response.status_code == 413


def test_bearer_token_is_required_when_configured(servers: Servers) -> None:
    url = servers.auth.url
    body = orjson.dumps({"inputs": [_x(np.ones((1, 4), np.float32))]})
    missing = httpx.post(f"{url}/v2/models/mlp/infer", content=body)
    assert missing.status_code == 401 and "token" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{url}/v2/models/mlp/infer", content=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(f"{url}/v2/models/mlp").status_code == 401
    assert httpx.post(f"{url}/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 401
    good = {"Authorization": f"Bearer {servers.token}"}
    assert httpx.post(f"{url}/v2/models/mlp/infer", content=body, headers=good).status_code == 200
    assert httpx.get(f"{url}/v2/models/mlp", headers=good).status_code == 200
    # Probes and scrapes carry no token.
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/mlp/ready").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_metrics_name_the_model_version_revision_and_code(servers: Servers) -> None:
    url = servers.fixed.url
    good = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [0] * 6}]}
    _infer(url, good, model="fixed")
    _infer(url, {"inputs": []}, model="fixed")
    text = httpx.get(f"{url}/metrics").text
    labels = 'model="fixed",revision="rev-a",version="3"'
    assert f'modelship_requests_total{{code="200",{labels}}}' in text
    assert f'modelship_requests_total{{code="400",{labels}}}' in text
    for family in (
        "modelship_request_duration_seconds_count",
        "modelship_inference_duration_seconds_count",
        "modelship_batch_size_count",
        "modelship_queue_duration_seconds_count",
        "modelship_inflight_requests",
        "modelship_model_load_seconds",
    ):
        assert f"{family}{{{labels}}}" in text, family
    assert 'modelship_model_info{model="fixed",revision="rev-a",sha256="' in text
    assert "_created" not in text
