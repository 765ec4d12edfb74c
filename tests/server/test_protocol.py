"""The wire format alone: V2 JSON and binary tensors, V1 instances, and the 400s for bad requests.

Decoding tests take the `reader` fixture and run twice: small JSON parts become Python values at once,
large ones stay simdjson proxies whose numbers are read in C; both must answer alike.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from modelship.server import json_tensors
from modelship.server.datatypes import DTYPES
from modelship.server.errors import RequestError
from modelship.server.estimate import encoded_response_bytes, encoded_v1_response_bytes, estimate_output_bytes
from modelship.server.protocol import RequestedOutput, Signature, TensorSpec, decode_infer_request
from modelship.server.responses import encode_infer_response
from modelship.server.runtime import session_options, signature_of
from modelship.server.v1 import decode_v1_request, encode_v1_response
from onnx import TensorProto, helper

from tests.server import models

MLP = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),), outputs=(TensorSpec("y", "FP32", (-1, 3)),), batched=True
)
TWO_INPUTS = Signature(
    inputs=(TensorSpec("a", "INT64", (-1, 2)), TensorSpec("s", "BYTES", (-1,))),
    outputs=(TensorSpec("o", "INT64", (-1, 2)), TensorSpec("p", "BYTES", (-1,))),
    batched=True,
)
FIXED = Signature(
    inputs=(TensorSpec("x", "FP32", (2, 3)),), outputs=(TensorSpec("total", "FP32", ()),), batched=False
)


@pytest.fixture(params=["python", "simdjson", "saturated"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every JSON part read as a small one (Python values), or as a large one (simdjson proxies); and
    "saturated": as if every array of 3 items or more were past the 16M items where simdjson's length
    saturates (its exact-length checks, which the real case would need gigabytes to reach)."""
    if request.param != "python":
        monkeypatch.setattr(json_tensors, "_SMALL_JSON_BYTES", -1)
    if request.param == "saturated":
        monkeypatch.setattr(json_tensors, "_SATURATED", 3)
    yield request.param


def _request(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _x(shape: list[int], data: object, datatype: str = "FP32", **more: object) -> dict:
    return {"name": "x", "shape": shape, "datatype": datatype, "data": data, **more}


def _error(body: bytes, signature: Signature = MLP, header: str | None = None) -> str:
    with pytest.raises(RequestError) as caught:
        decode_infer_request(body, header, signature)
    assert caught.value.status == 400
    return caught.value.message


def test_json_input_flat_and_nested_decode_to_the_same_rows(reader: str) -> None:
    flat = decode_infer_request(_request(_x([2, 4], list(range(8)))), None, MLP)
    nested = decode_infer_request(_request(_x([2, 4], [[0, 1, 2, 3], [4, 5, 6, 7]])), None, MLP)
    assert flat.feeds["x"].dtype == np.float32
    assert flat.rows == 2
    np.testing.assert_array_equal(flat.feeds["x"], np.arange(8, dtype=np.float32).reshape(2, 4))
    np.testing.assert_array_equal(flat.feeds["x"], nested.feeds["x"])


def test_id_and_requested_outputs_are_kept(reader: str) -> None:
    req = decode_infer_request(
        _request(
            _x([1, 4], [1, 2, 3, 4]), id="req-7", outputs=[{"name": "y", "parameters": {"binary_data": True}}]
        ),
        None,
        MLP,
    )
    assert req.id == "req-7"
    assert req.outputs == (RequestedOutput("y", True),)


def test_binary_data_output_applies_to_outputs_that_do_not_say(reader: str) -> None:
    req = decode_infer_request(
        _request(_x([1, 4], [1, 2, 3, 4]), parameters={"binary_data_output": True}), None, MLP
    )
    assert req.outputs == (RequestedOutput("y", True),)


def test_binary_inputs_follow_the_json_header_in_order(reader: str) -> None:
    a = np.array([[1, -2], [3, 4]], dtype=np.int64)
    words = ["héllo", ""]
    raw_s = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "INT64", "parameters": {"binary_data_size": 32}},
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw_s)},
                },
            ]
        }
    )
    req = decode_infer_request(header + a.tobytes() + raw_s, str(len(header)), TWO_INPUTS)
    np.testing.assert_array_equal(req.feeds["a"], a)
    assert req.feeds["s"].tolist() == words


@pytest.mark.parametrize(
    ("datatype", "values", "dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("INT8", [-128, 127], np.int8),
        ("UINT8", [0, 255], np.uint8),
        ("INT32", [-(2**31), 2**31 - 1], np.int32),
        ("INT64", [-(2**63), 2**63 - 1], np.int64),
        ("UINT64", [0, 2**64 - 1], np.uint64),
        ("FP16", [0.5, -2.0], np.float16),
        ("FP64", [1e300, -1.5], np.float64),
    ],
)
def test_every_datatype_decodes_from_json_and_from_binary(
    reader: str, datatype: str, values: list, dtype: type
) -> None:
    sig = Signature(inputs=(TensorSpec("x", datatype, (-1,)),), outputs=(), batched=True)
    from_json = decode_infer_request(_request(_x([2], values, datatype)), None, sig).feeds["x"]
    expected: np.ndarray = np.array(values, dtype=dtype)
    np.testing.assert_array_equal(from_json, expected)
    assert from_json.dtype == expected.dtype
    raw = expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    from_binary = decode_infer_request(header + raw, str(len(header)), sig).feeds["x"]
    np.testing.assert_array_equal(from_binary, expected)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "malformed JSON"),
        (b"[]", "JSON object"),
        (_request(), "non-empty list"),
        (_request(_x([1, 4], [1, 2, 3])), "needs 4 values, got 3"),
        (_request(_x([1, 3], [1, 2, 3])), "the model expects [-1, 4]"),
        (_request(_x([4], [1, 2, 3, 4])), "has shape [4]"),
        (_request(_x([1, 4], [1, 2, 3, 4], "FP64")), "the model expects FP32"),
        (_request(_x([1, 4], ["1", "2", "3", "4"])), "must hold numbers"),
        (_request(_x([1, 4], [[1, 2], [3]])), "not a regular array"),
        (_request(_x([1, 4], [1, 2, 3, None])), "must hold numbers"),
        (_request(_x([1, -4], [1, 2, 3, 4])), "non-negative integers"),
        (_request({"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}), "unknown input 'z'"),
        (_request(_x([1, 4], [1, 2, 3, 4]), _x([1, 4], [1, 2, 3, 4])), "given twice"),
        (_request(_x([1, 4], [1, 2, 3, 4]), outputs=[{"name": "nope"}]), "unknown output 'nope'"),
        (_request(_x([1, 4], [1, 2, 3, 4]), id=5), "id must be a string"),
        (_request(_x([1, 4], [1, 2, 3, 4]), parameters={"binary_data_output": "yes"}), "true or false"),
        (_request({"name": "x", "shape": [1, 4], "datatype": "FP32"}), "neither data nor"),
        (_request(_x([1, 4], 7)), "must be a JSON array"),
    ],
)
def test_bad_requests_are_400_with_a_message_that_says_why(reader: str, body: bytes, fragment: str) -> None:
    assert fragment in _error(body)


def test_integers_out_of_range_and_floats_for_integers_are_refused(reader: str) -> None:
    sig = Signature(inputs=(TensorSpec("x", "INT8", (-1,)),), outputs=(), batched=True)
    assert "out of range" in _error(_request(_x([1], [128], "INT8")), sig)
    assert "must hold integers" in _error(_request(_x([1], [1.5], "INT8")), sig)


def test_binary_sizes_must_add_up(reader: str) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
            ]
        }
    )
    assert "only 12 are left" in _error(header + bytes(12), header=str(len(header)))
    assert "add up to 16" in _error(header + bytes(20), header=str(len(header)))
    assert "only 50 bytes" in _error(b"x" * 50, header="100")
    wrong = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
            ]
        }
    )
    assert "needs 16 bytes" in _error(wrong + bytes(8), header=str(len(wrong)))


def test_binary_strings_must_be_complete_utf8(reader: str) -> None:
    sig = Signature(inputs=(TensorSpec("x", "BYTES", (-1,)),), outputs=(), batched=True)

    def body(raw: bytes, count: int) -> tuple[bytes, str]:
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [count],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        )
        return header + raw, str(len(header))

    cases = [
        (struct.pack("<I", 5) + b"abc", 1, "ends inside element 0"),
        (struct.pack("<I", 1) + b"abcd", 2, "ends before element 1"),
        (struct.pack("<I", 1) + b"\xff", 1, "not UTF-8"),
        (struct.pack("<I", 1) + b"ab", 1, "1 bytes after"),
        (b"", 10**12, "too few for 1000000000000 elements"),
    ]
    for raw, count, fragment in cases:
        data, header = body(raw, count)
        assert fragment in _error(data, sig, header)


def test_bool_bytes_other_than_0_and_1_are_refused(reader: str) -> None:
    sig = Signature(inputs=(TensorSpec("x", "BOOL", (-1,)),), outputs=(), batched=True)
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]}
    )
    assert "other than 0 and 1" in _error(header + b"\x01\x02", sig, str(len(header)))


def test_inputs_of_a_batched_model_must_agree_on_rows(reader: str) -> None:
    body = _request(
        {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]},
    )
    assert "disagree on the batch size" in _error(body, TWO_INPUTS)


def test_fixed_shapes_must_match_exactly(reader: str) -> None:
    assert "[2, 3]" in _error(_request(_x([3, 2], [1] * 6)), FIXED)
    req = decode_infer_request(_request(_x([2, 3], [1] * 6)), None, FIXED)
    assert req.feeds["x"].shape == (2, 3)


def test_json_response_echoes_id_and_lists_requested_outputs_only() -> None:
    results = {"o": np.array([[1, 2]], dtype=np.int64), "p": np.array(["é"], dtype=object)}
    body, header = encode_infer_response("m", "2", "abc", [RequestedOutput("p", False)], results)
    assert header is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "id": "abc",
        "outputs": [{"name": "p", "datatype": "BYTES", "shape": [1], "data": ["é"]}],
    }


def test_binary_response_puts_raw_tensors_after_the_header() -> None:
    results = {
        "o": np.array([[1, 2], [3, 4]], dtype=np.int64),
        "p": np.array(["ab", "ü"], dtype=object),
        "f": np.array([0.5, 2.0], dtype=np.float16),
    }
    wanted = [RequestedOutput("o", True), RequestedOutput("f", False), RequestedOutput("p", True)]
    body, header = encode_infer_response("m", "1", None, wanted, results)
    assert header is not None
    meta = orjson.loads(body[:header])
    assert "id" not in meta
    o, f, p = meta["outputs"]
    assert o["parameters"] == {"binary_data_size": 32} and "data" not in o
    assert f["data"] == [0.5, 2.0] and f["datatype"] == "FP16"
    rest = body[header:]
    np.testing.assert_array_equal(np.frombuffer(rest[:32], dtype="<i8").reshape(2, 2), results["o"])
    strings = rest[32:]
    assert len(strings) == p["parameters"]["binary_data_size"]
    assert strings == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "ü".encode()


def test_v1_instances_become_rows_and_predictions_rows(reader: str) -> None:
    feeds, rows = decode_v1_request(orjson.dumps({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}), MLP)
    assert rows == 2
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (2, 4)
    out = encode_v1_response({"y": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)}, ["y"])
    assert orjson.loads(out) == {"predictions": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}


def test_v1_with_several_inputs_takes_objects_per_instance(reader: str) -> None:
    body = orjson.dumps({"instances": [{"a": [1, 2], "s": "x"}, {"a": [3, 4], "s": "y"}]})
    feeds, rows = decode_v1_request(body, TWO_INPUTS)
    assert rows == 2
    np.testing.assert_array_equal(feeds["a"], [[1, 2], [3, 4]])
    assert feeds["s"].tolist() == ["x", "y"]
    results = {"o": feeds["a"] + 1, "p": feeds["s"]}
    assert orjson.loads(encode_v1_response(results, ["o", "p"])) == {
        "predictions": [{"o": [2, 3], "p": "x"}, {"o": [4, 5], "p": "y"}]
    }


def test_v1_a_classifiers_label_and_probabilities_are_one_object_per_row() -> None:
    # onnxruntime hands int64 outputs back as numpy.longlong, which orjson cannot encode as a scalar.
    label = np.array([2, 1], dtype=np.longlong)
    probabilities = np.array([[0.1, 0.2, 0.7], [0.0, 1.0, 0.0]], dtype=np.float32)
    out = encode_v1_response({"label": label, "probabilities": probabilities}, ["label", "probabilities"])
    assert orjson.loads(out) == {
        "predictions": [
            {"label": 2, "probabilities": pytest.approx([0.1, 0.2, 0.7])},
            {"label": 1, "probabilities": [0.0, 1.0, 0.0]},
        ]
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"instances": []}', "at least one instance"),
        (b'{"inputs": [[1]]}', "instances"),
        (b'{"instances": [[1, 2, 3]]}', "the model expects [-1, 4]"),
        (b'{"instances": [[1, 2, 3, 4], [1]]}', "not a regular array"),
    ],
)
def test_v1_bad_requests_are_400(reader: str, body: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_v1_request(body, MLP)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_v1_several_inputs_need_objects(reader: str) -> None:
    with pytest.raises(RequestError, match="each instance must map them"):
        decode_v1_request(b'{"instances": [[1, 2]]}', TWO_INPUTS)


# ---------------------------------------------------------------------------------------------
# shapes: flat, nested, ragged


def _one(datatype: str, shape: tuple[int, ...]) -> Signature:
    return Signature(inputs=(TensorSpec("x", datatype, shape),), outputs=(), batched=False)


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        ([2, 3], [1, 2, 3, 4, 5, 6]),
        ([2, 3], [[1, 2, 3], [4, 5, 6]]),
        ([2, 1, 3], [[[1, 2, 3]], [[4, 5, 6]]]),
        ([2, 1, 3], [1, 2, 3, 4, 5, 6]),
    ],
)
def test_flat_and_nested_data_give_the_same_tensor(reader: str, shape: list[int], data: list) -> None:
    sig = _one("INT32", tuple(shape))
    got = decode_infer_request(_request(_x(shape, data, "INT32")), None, sig).feeds["x"]
    np.testing.assert_array_equal(got, np.arange(1, 7, dtype=np.int32).reshape(shape))
    assert got.dtype == np.int32


def test_a_scalar_input_takes_a_one_value_list(reader: str) -> None:
    got = decode_infer_request(_request(_x([], [2.5], "FP64")), None, _one("FP64", ())).feeds["x"]
    assert got.shape == () and got == 2.5


@pytest.mark.parametrize(
    ("shape", "data", "fragment"),
    [
        ([2, 2], [[1, 2, 3], [4]], "not a regular array of shape [2, 2]"),  # the count is right
        ([2, 2], [[1, 2], [3, 4], []], "not a regular array"),
        ([1, 4], [[1, 2], [3, 4]], "not a regular array"),  # nesting must follow the shape
        ([2, 2], [[1, 2], 3, 4], "not a regular array"),
        ([2, 2], [1, 2, [3, 4]], "not a regular array"),  # lists in flat data
        ([4], [[1, 2, 3, 4]], "not a regular array"),
        ([2, 2], [[1, 2], [3, [4, 5]]], "not a regular array"),
        ([2, 2], [1, 2, 3], "needs 4 values, got 3"),
        ([2, 2], [[1, 2], ["3", 4]], "must hold numbers"),
        ([2, 2], [[1, 2], [{"a": 1}, 4]], "must hold numbers"),
        ([2, 2], [[1, 2], [True, 4]], "must hold numbers"),
    ],
)
def test_ragged_or_misshapen_data_is_refused(
    reader: str, shape: list[int], data: list, fragment: str
) -> None:
    assert fragment in _error(_request(_x(shape, data, "FP32")), _one("FP32", (-1, -1)[: len(shape)]))


def test_many_rows_are_each_checked(reader: str) -> None:
    rows = [[float(i), float(i)] for i in range(200_000)]
    sig = _one("FP32", (-1, 2))
    got = decode_infer_request(_request(_x([200_000, 2], rows)), None, sig).feeds["x"]
    assert got.shape == (200_000, 2) and got[-1, 0] == 199_999
    rows[150_000] = [1.0, 2.0, 3.0]
    rows[150_001] = [1.0]
    assert "not a regular array" in _error(_request(_x([200_000, 2], rows)), sig)


# ---------------------------------------------------------------------------------------------
# integers


@pytest.mark.parametrize(
    ("datatype", "values", "fragment"),
    [
        ("INT8", [-129], "out of range [-128, 127]"),
        ("INT8", [127, 128], "out of range [-128, 127]"),
        ("UINT8", [-1], "out of range [0, 255]"),
        ("UINT8", [256], "out of range [0, 255]"),
        ("INT32", [2**31], "out of range"),
        ("INT64", [2**63], "out of range"),
        ("UINT64", [-1], "out of range [0, 18446744073709551615]"),
        ("INT64", [1.0], "must hold integers"),
        ("UINT64", [0.5], "must hold integers"),
        ("INT16", ["1"], "must hold integers"),
        ("INT16", [None], "must hold integers"),
        ("INT16", [True], "must hold integers"),
        ("BOOL", [1], "must hold true or false"),
    ],
)
def test_integers_and_booleans_are_checked(reader: str, datatype: str, values: list, fragment: str) -> None:
    assert fragment in _error(_request(_x([len(values)], values, datatype)), _one(datatype, (-1,)))


def test_the_extremes_of_64_bit_integers_are_exact(reader: str) -> None:
    u64 = decode_infer_request(_request(_x([3], [0, 2**64 - 1, 2**63], "UINT64")), None, _one("UINT64", (3,)))
    assert u64.feeds["x"].tolist() == [0, 2**64 - 1, 2**63]
    i64 = decode_infer_request(_request(_x([2], [-(2**63), 2**63 - 1], "INT64")), None, _one("INT64", (2,)))
    assert i64.feeds["x"].tolist() == [-(2**63), 2**63 - 1]


def test_int8_takes_its_whole_range(reader: str) -> None:
    values = list(range(-128, 128))
    got = decode_infer_request(_request(_x([256], values, "INT8")), None, _one("INT8", (256,)))
    assert got.feeds["x"].dtype == np.int8 and got.feeds["x"].tolist() == values


# ---------------------------------------------------------------------------------------------
# the JSON itself


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "malformed JSON"),
        (b"{not json", "malformed JSON"),
        (b'{"inputs": [1]}x', "malformed JSON"),
        (b'{"id": "\xff"}', "malformed JSON: UTF8_ERROR"),
        (b'{"id": "\\ud800"}', "malformed JSON"),
        (b"[" * 2000 + b"]" * 2000, "malformed JSON: DEPTH_ERROR"),
        (b'{"inputs": [{"name": "x", "data": [1e400]}]}', "numbers must fit a 64-bit integer or a double"),
        (b'{"inputs": [{"name": "x", "data": [18446744073709551616]}]}', "malformed JSON: NUMBER_ERROR"),
        (b'{"inputs": [{"name": "x", "data": [-9223372036854775809]}]}', "malformed JSON: BIGINT_ERROR"),
        # NaN, but malformed anyway: Python's json module says where.
        (b'{"inputs": [NaN, ]}', "malformed JSON: "),
        # Too deep for simdjson, so never handed to Python's json, whatever the recursion limit.
        (b'{"i": ' + b"[" * 2000 + b"NaN" + b"]" * 2000 + b"}", "malformed JSON: DEPTH_ERROR"),
    ],
)
def test_json_the_parsers_refuse_is_400(reader: str, body: bytes, fragment: str) -> None:
    assert fragment in _error(body)
    with pytest.raises(RequestError) as caught:
        decode_v1_request(body, MLP)
    assert caught.value.status == 400 and "malformed JSON" in caught.value.message


def test_objects_with_many_keys_are_read(reader: str) -> None:
    params = {f"k{i}": i for i in range(100)} | {"binary_data_output": True}
    req = decode_infer_request(_request(_x([1, 4], [1, 2, 3, 4]), parameters=params), None, MLP)
    assert req.outputs == (RequestedOutput("y", True),)
    assert "true or false" in _error(
        _request(_x([1, 4], [1, 2, 3, 4]), parameters={**params, "binary_data_output": 1})
    )
    del params["binary_data_output"]  # absent from a large object: simdjson's own (slow) lookup
    req = decode_infer_request(_request(_x([1, 4], [1, 2, 3, 4]), parameters=params), None, MLP)
    assert req.outputs == (RequestedOutput("y", False),)


def test_an_empty_outputs_list_asks_for_every_output(reader: str) -> None:
    req = decode_infer_request(
        _request(
            {"name": "a", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]},
            outputs=[],
            parameters={"binary_data_output": True},
        ),
        None,
        TWO_INPUTS,
    )
    assert req.outputs == (RequestedOutput("o", True), RequestedOutput("p", True))
    req = decode_infer_request(_request(_x([1, 4], [1, 2, 3, 4]), outputs=[]), None, MLP)
    assert req.outputs == (RequestedOutput("y", False),)


# ---------------------------------------------------------------------------------------------
# NaN and Infinity: accepted for floats in both forms, written back with the same literals

NONFINITE = [math.nan, math.inf, -math.inf, 1.5]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_nan_and_infinity_are_floats_in_json_and_in_binary(reader: str, datatype: str) -> None:
    sig = _one(datatype, (4,))
    # Python's json module writes what tritonclient and KServe's SDK send: NaN, Infinity, -Infinity.
    body = json.dumps({"inputs": [_x([4], NONFINITE, datatype)]}).encode()
    assert b"NaN" in body and b"-Infinity" in body
    from_json = decode_infer_request(body, None, sig).feeds["x"]
    raw = np.array(NONFINITE, dtype=DTYPES[datatype]).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [4],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    from_binary = decode_infer_request(header + raw, str(len(header)), sig).feeds["x"]
    for got in (from_json, from_binary):
        assert got.dtype == DTYPES[datatype]
        np.testing.assert_array_equal(got, np.array(NONFINITE, dtype=got.dtype))
    out, _ = encode_infer_response("m", "1", None, [RequestedOutput("x", False)], {"x": from_json})
    assert b'"data":[NaN,Infinity,-Infinity,1.5]' in out
    np.testing.assert_array_equal(json.loads(out)["outputs"][0]["data"], NONFINITE)


@pytest.mark.parametrize("datatype", ["INT32", "INT64", "UINT8", "BOOL"])
def test_nan_and_infinity_are_refused_for_integers_and_booleans(reader: str, datatype: str) -> None:
    for value in (math.nan, math.inf):
        body = json.dumps({"inputs": [_x([2], [1, value], datatype)]}).encode()
        assert "must hold" in _error(body, _one(datatype, (2,)))


def test_nan_is_read_only_in_json_parts_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"inputs": [_x([1, 4], [math.nan, 1, 2, 3])]}).encode()
    assert decode_infer_request(body, None, MLP).rows == 1
    monkeypatch.setattr(json_tensors, "MAX_NONFINITE_JSON_BYTES", len(body) - 1)
    message = _error(body)
    assert f"at most {len(body) - 1} bytes" in message and "binary" in message


def test_nan_in_v1_instances_and_predictions() -> None:
    feeds, rows = decode_v1_request(b'{"instances": [[NaN, 1, Infinity, -Infinity]]}', MLP)
    assert rows == 1 and np.isnan(feeds["x"][0, 0]) and feeds["x"][0, 2] == np.inf
    single = encode_v1_response({"y": np.array([[math.nan, 1.0], [math.inf, 2.0]], np.float32)}, ["y"])
    assert single == b'{"predictions":[[NaN,1.0],[Infinity,2.0]]}'
    several = encode_v1_response(
        {"label": np.array([-math.inf, 1.0]), "p": np.array([[0.5, math.nan], [1.0, 0.0]], np.float32)},
        ["label", "p"],
    )
    assert several == (b'{"predictions":[{"label":-Infinity,"p":[0.5,NaN]},{"label":1.0,"p":[1.0,0.0]}]}')
    assert encode_v1_response({"t": np.array(math.nan)}, ["t"]) == b'{"predictions":[NaN]}'


def test_a_response_with_null_in_a_string_but_finite_floats_is_unchanged() -> None:
    results = {"o": np.array([1.0, 2.0], np.float32), "p": np.array(["null"], dtype=object)}
    wanted = [RequestedOutput("o", False), RequestedOutput("p", False)]
    body, _ = encode_infer_response("m", "1", "null", wanted, results)
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0, 2.0]
    assert body.count(b"null") == 2


# ---------------------------------------------------------------------------------------------
# large outputs: encoded a slice at a time, the same text as one orjson call would write


def test_large_json_outputs_are_the_text_of_one_call() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((70_000, 3)).astype(np.float32)
    labels = rng.integers(0, 9, 70_000)
    words = np.array([f"w{i}\n" for i in range(70_000)], dtype=object)
    results = {"y": y, "label": labels, "words": words, "small": np.array([0.25], np.float32)}
    wanted = [RequestedOutput(name, False) for name in results]
    body, header = encode_infer_response("m", "1", "id", wanted, results)
    assert header is None
    expected = {
        "model_name": "m",
        "model_version": "1",
        "id": "id",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [70_000, 3], "data": y.reshape(-1)},
            {"name": "label", "datatype": "INT64", "shape": [70_000], "data": labels},
            {"name": "words", "datatype": "BYTES", "shape": [70_000], "data": words.tolist()},
            {"name": "small", "datatype": "FP32", "shape": [1], "data": results["small"]},
        ],
    }
    assert body == orjson.dumps(expected, option=orjson.OPT_SERIALIZE_NUMPY)
    v1 = encode_v1_response({"y": y}, ["y"])
    assert v1 == orjson.dumps({"predictions": y}, option=orjson.OPT_SERIALIZE_NUMPY)
    both = encode_v1_response({"label": labels, "y": y}, ["label", "y"])
    last = orjson.loads(both)["predictions"][69_999]
    assert last["label"] == labels[-1]
    np.testing.assert_array_equal(np.array(last["y"], np.float32), y[-1])
    wide = rng.standard_normal((2, 100_000))
    assert encode_v1_response({"w": wide}, ["w"]) == orjson.dumps(
        {"predictions": wide}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def test_large_outputs_with_nan_at_slice_edges_and_binary_parts() -> None:
    y = np.arange(200_000, dtype=np.float64)
    y[[0, 65_535, 65_536, 131_072, 199_999]] = [math.nan, math.inf, -math.inf, math.nan, math.inf]
    small = np.array([math.nan, 1.0], np.float32)
    raw = np.arange(4, dtype=np.int64)
    wanted = [RequestedOutput("y", False), RequestedOutput("small", False), RequestedOutput("raw", True)]
    body, header = encode_infer_response("m", "1", None, wanted, {"y": y, "small": small, "raw": raw})
    assert header is not None and body[header:] == raw.tobytes()
    meta = json.loads(body[:header])
    np.testing.assert_array_equal(meta["outputs"][0]["data"], y)
    np.testing.assert_array_equal(meta["outputs"][1]["data"], small)
    assert meta["outputs"][2]["parameters"] == {"binary_data_size": 32}
    v1 = json.loads(encode_v1_response({"y": y.reshape(-1, 2), "l": np.zeros(100_000)}, ["y", "l"]))
    np.testing.assert_array_equal([row["y"] for row in v1["predictions"]], y.reshape(-1, 2))


# ---------------------------------------------------------------------------------------------
# sizes: the outputs before the model runs, the response before it is encoded


def _model_signature(model: onnx.ModelProto) -> Signature:
    """The signature onnxruntime gives the model, as the server reads it."""
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options(1), providers=["CPUExecutionProvider"]
    )
    return signature_of(session)


def _signature(graph: onnx.GraphProto) -> Signature:
    return _model_signature(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_output_sizes_of_fixed_shapes() -> None:
    sig = _model_signature(models.fixed())
    assert estimate_output_bytes(sig, {"x": np.zeros((2, 3), np.float32)}) == 6 * 4 + 4


def test_output_sizes_follow_the_batch_and_symbols_shared_with_inputs() -> None:
    mlp = _model_signature(models.mlp())
    assert mlp.batched
    assert estimate_output_bytes(mlp, {"x": np.zeros((5, 4), np.float32)}) == 5 * 3 * 4
    strings = _model_signature(models.strings())
    assert estimate_output_bytes(strings, {"text": np.zeros((7, 2), object)}) == 7 * 2 * 64
    # Not batched (k has a fixed first dimension), but y's "n" is x's.
    linked = _signature(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["k"], ["z"])],
            "linked",
            [
                helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 3]),
                helper.make_tensor_value_info("k", TensorProto.INT32, [4]),
            ],
            [
                helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n", 3]),
                helper.make_tensor_value_info("z", TensorProto.INT32, [4]),
            ],
        )
    )
    assert not linked.batched
    assert linked.outputs[0].symbols == ("n", None)
    feeds = {"x": np.zeros((9, 3)), "k": np.zeros(4, np.int32)}
    assert estimate_output_bytes(linked, feeds) == 9 * 3 * 8 + 4 * 4


def test_output_sizes_the_shapes_do_not_give_are_unknown() -> None:
    nonzero = _signature(
        helper.make_graph(
            [helper.make_node("NonZero", ["x"], ["idx"])],
            "nonzero",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
            [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, "nz"])],
        )
    )
    assert estimate_output_bytes(nonzero, {"x": np.zeros(5, np.float32)}) is None
    # An anonymous dimension past the first of a batched model is unknown too.
    anonymous = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 4), ("b", None)),),
        outputs=(TensorSpec("y", "FP32", (-1, -1), (None, None)),),
        batched=True,
    )
    assert estimate_output_bytes(anonymous, {"x": np.zeros((2, 4), np.float32)}) is None
    # Specs built without symbols: the batch rule still applies.
    assert estimate_output_bytes(MLP, {"x": np.zeros((3, 4), np.float32)}) == 3 * 3 * 4


EXTREMES = {
    "BOOL": [True, False],
    "UINT8": [0, 255],
    "UINT16": [0, 65535],
    "UINT32": [0, 2**32 - 1],
    "UINT64": [0, 2**64 - 1],
    "INT8": [-128, 127],
    "INT16": [-(2**15), 2**15 - 1],
    "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "FP16": [-6.1e-05, -1.0728836e-06, -65504.0, math.nan, -math.inf],
    "FP32": [-1.1174898e-06, -3.4028235e38, -1.1754944e-38, math.nan, -math.inf],
    "FP64": [-1.7084675212601566e-308, -1.7976931348623157e308, math.nan, -math.inf],
}


@pytest.mark.parametrize("datatype", sorted(EXTREMES))
def test_response_size_bounds_hold_for_the_widest_values(datatype: str) -> None:
    values = np.array(EXTREMES[datatype] * 50, dtype=DTYPES[datatype]).reshape(-1, 1)
    results = {"out": values, "label": np.arange(len(values))}
    for binary in (False, True):
        wanted = [RequestedOutput("out", binary), RequestedOutput("label", False)]
        body, _ = encode_infer_response("m", "1", "req", wanted, results)
        assert len(body) <= encoded_response_bytes(results, wanted, "req")
    assert len(encode_v1_response(results, ["out", "label"])) <= encoded_v1_response_bytes(results)
    # A 1-D output next to another goes out as Python values: float32 written as float64.
    flat = {"out": values.ravel(), "label": results["label"]}
    assert len(encode_v1_response(flat, ["out", "label"])) <= encoded_v1_response_bytes(flat)
    single = {"out": values}
    assert len(encode_v1_response(single, ["out"])) <= encoded_v1_response_bytes(single)


def test_response_size_bounds_hold_for_strings() -> None:
    words = np.array(['\x01\x02"', "é" * 10, b"\xff\xfe", "", 7], dtype=object)
    results = {"w": words}
    for binary in (False, True):
        wanted = [RequestedOutput("w", binary)]
        body, _ = encode_infer_response("m", "1", None, wanted, results)
        assert len(body) <= encoded_response_bytes(results, wanted)
    assert len(encode_v1_response(results, ["w"])) <= encoded_v1_response_bytes(results)


# ---------------------------------------------------------------------------------------------
# memory: decoding a large JSON tensor takes a small multiple of the body

_PEAK = textwrap.dedent(
    """
    import io, os
    import numpy as np
    from modelship.server import protocol as p

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def peak():
        # VmHWM, not getrusage's ru_maxrss: that one starts at the RSS of the process that forked this
        # one (pytest's, a few hundred MiB), which exec keeps as a floor.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    n = 2_000_000
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    # Text a row at a time (numpy formats one row per call), not a Python float per element.
    out = io.BytesIO()
    out.write(b'{"inputs":[{"name":"x","shape":[%d,4],"datatype":"FP32","data":[' % (n // 4))
    np.savetxt(out, x.reshape(-1, 4), fmt="%.9g", delimiter=",", newline=",")
    out.seek(-1, io.SEEK_END)
    out.write(b"]}]}")
    body = out.getvalue()
    del out, x
    sig = p.Signature(inputs=(p.TensorSpec("x", "FP32", (-1, 4)),), outputs=(), batched=True)
    try:  # the peak so far is the body's building: forget it where Linux lets us
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = rss()
    req = p.decode_infer_request(body, None, sig)
    assert req.feeds["x"].shape == (n // 4, 4) and req.feeds["x"].dtype == np.float32
    print(len(body), peak() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_a_large_json_tensor_decodes_in_a_small_multiple_of_its_body() -> None:
    done = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, check=True)
    size, increase = map(int, done.stdout.split())
    assert size > 20 * 2**20
    # At most simdjson's padded copy of the body and 32 bytes a number (tape, structural indexes, float64
    # buffer): 3.6 times at these 12 characters a number; measured 3.0. Through orjson and Python floats
    # (HEAD before pysimdjson) it was 6 times.
    assert increase < 4 * size, f"decoding took {increase / size:.2f} times the body"
