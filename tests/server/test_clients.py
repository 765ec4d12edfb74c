"""Clients nobody here wrote, in both their modes, against a real server process on loopback:
tritonclient's HTTP client (JSON and binary tensors, plain, gzip and deflate requests) and KServe's Python
SDK (V2 JSON and binary, V1). Each runs in its own venv (`make clients`) through
tests/server/clients/drive.py; what they get back is compared here with in-process onnxruntime."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.server.conftest import ROOT, Servers
from tests.server.wire import NUMPY

CLIENTS_PYTHON = ROOT / ".build" / "clients-venv" / "bin" / "python"
DRIVE = Path(__file__).parent / "clients" / "drive.py"
NAN, INF = math.nan, math.inf


def every_inputs(non_finite: bool) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (datatype, array): each datatype's extremes, in shapes of their own."""
    floats = [0.5, -0.0, 1e-3, -2.25, *([NAN, INF, -INF] if non_finite else [1.0, 7.0, -7.5])]
    values: dict[str, list[Any]] = {
        "BOOL": [True, False, False, True],
        "UINT8": [0, 1, 254, 255],
        "UINT16": [0, 1, 65535],
        "UINT32": [0, 7, 2**32 - 1, 2**31],
        "UINT64": [0, 2**64 - 1, 2**63, 5],
        "INT8": [-128, 127, 0, -1],
        "INT16": [-(2**15), 2**15 - 1],
        "INT32": [-(2**31), 2**31 - 1, 0, 12],
        "INT64": [-(2**63), 2**63 - 1, 0, -7, 2**53 + 1, 3],
        "FP16": [*floats, 65504.0],
        "FP32": [*floats, 3.4028234663852886e38],
        "FP64": [*floats, 1e-308],
        "BYTES": ["alpha", "", "βeta ✓", 'a\tb "quoted"'],
    }
    inputs = {}
    for datatype, data in values.items():
        array = np.array(data, dtype=NUMPY[datatype])
        rows = 2 if len(data) % 2 == 0 else 1
        inputs[datatype.lower()] = (datatype, array.reshape(rows, -1))
    return inputs


def _drive(job: dict[str, Any]) -> dict[str, Any]:
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: `make clients` installs the client libraries")
    done = subprocess.run(
        [str(CLIENTS_PYTHON), str(DRIVE)], input=json.dumps(job), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _job(
    suite: str, url: str, model: str, inputs: dict[str, tuple[str, np.ndarray]], outputs: list[str]
) -> dict:
    return {
        "suite": suite,
        "url": url,
        "model": model,
        "version": "3",
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
            for name, (datatype, array) in inputs.items()
        ],
        "outputs": outputs,
    }


def _expected(
    session: ort.InferenceSession, inputs: dict[str, tuple[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    feeds = {
        name: array.astype(object) if datatype == "BYTES" else array
        for name, (datatype, array) in inputs.items()
    }
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _assert_outputs(got: Any, expected: dict[str, np.ndarray]) -> None:
    assert isinstance(got, dict) and "error" not in got, got
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        out = got[name]
        datatype = name.removesuffix("_out").upper()
        assert out["datatype"] == datatype, (name, out["datatype"])
        array = np.array(out["data"], dtype=NUMPY[datatype]).reshape(out["shape"])
        assert array.shape == want.shape, (name, array.shape, want.shape)
        if datatype == "BYTES":
            assert array.tolist() == want.tolist(), name
        elif want.dtype.kind == "f":
            np.testing.assert_array_equal(array, want, err_msg=name)  # NaN matches NaN
            assert np.array_equal(np.signbit(array), np.signbit(want)), f"{name}: the sign of a zero was lost"
        else:
            assert np.array_equal(array, want), (name, array, want)


@pytest.fixture(scope="module")
def every_session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "every.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("suite", ["triton-json", "triton-binary"])
def test_tritonclient_health_metadata_and_every_datatype(
    servers: Servers, every_session: ort.InferenceSession, suite: str
) -> None:
    # tritonclient writes NaN and infinities in JSON as the literals NaN and Infinity, as the server does.
    inputs = every_inputs(non_finite=True)
    outputs = [f"{name}_out" for name in inputs]
    result = _drive(_job(suite, servers.every.url, "every", inputs, outputs))

    assert result["live"] is True and result["ready"] is True and result["model_ready"] is True, result
    assert {"name", "version", "extensions"} <= set(result["server_metadata"]), result["server_metadata"]
    metadata = result["model_metadata"]
    assert metadata["name"] == "every" and "3" in metadata["versions"], metadata
    assert {(t["name"], t["datatype"]) for t in metadata["inputs"]} == {
        (n, d) for n, (d, _) in inputs.items()
    }
    expected = _expected(every_session, inputs)
    for compression in ("plain", "gzip", "deflate"):
        _assert_outputs(result[f"outputs/{compression}"], expected)


@pytest.mark.parametrize("suite", ["kserve-v2-json", "kserve-v2-binary"])
def test_kserve_sdk_v2_health_and_every_datatype(
    servers: Servers, every_session: ort.InferenceSession, suite: str
) -> None:
    # KServe's client writes JSON with orjson, which turns NaN into null; the binary form carries it.
    inputs = every_inputs(non_finite=suite == "kserve-v2-binary")
    outputs = [f"{name}_out" for name in inputs]
    result = _drive(_job(suite, servers.every.url, "every", inputs, outputs))

    assert result["live"] is True and result["ready"] is True and result["model_ready"] is True, result
    _assert_outputs(result["outputs/plain"], _expected(every_session, inputs))
    if suite == "kserve-v2-json":
        # A NaN it writes as null: the server says which input, with a 400, and the client raises it.
        refused = _drive(_job(suite, servers.every.url, "every", every_inputs(non_finite=True), outputs))
        error = refused["outputs/plain"]["error"]
        assert "400" in error and "'fp32' must hold numbers (NaN and infinities as the literals" in error, (
            error
        )


def test_kserve_sdk_v1_health_and_predictions(servers: Servers, model_dir: Path) -> None:
    rows = np.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    result = _drive(_job("kserve-v1", servers.mlp.url, "mlp", {"x": ("FP32", rows)}, ["y"]))

    assert result["live"] is True and result["model_ready"] is True, result
    session = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": rows})
    predictions = result["predictions"]
    assert isinstance(predictions, dict) and "predictions" in predictions, predictions
    np.testing.assert_array_equal(np.array(predictions["predictions"], dtype=np.float32), want)
