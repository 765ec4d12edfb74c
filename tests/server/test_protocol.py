"""The wire format alone: V2 JSON and binary tensors, V1 instances, and the 400s for bad requests."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from modelship.server.errors import RequestError
from modelship.server.protocol import (
    RequestedOutput,
    Signature,
    TensorSpec,
    decode_infer_request,
    decode_v1_request,
    encode_infer_response,
    encode_v1_response,
)

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


def _request(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _x(shape: list[int], data: object, datatype: str = "FP32", **more: object) -> dict:
    return {"name": "x", "shape": shape, "datatype": datatype, "data": data, **more}


def _error(body: bytes, signature: Signature = MLP, header: str | None = None) -> str:
    with pytest.raises(RequestError) as caught:
        decode_infer_request(body, header, signature)
    assert caught.value.status == 400
    return caught.value.message


def test_json_input_flat_and_nested_decode_to_the_same_rows() -> None:
    flat = decode_infer_request(_request(_x([2, 4], list(range(8)))), None, MLP)
    nested = decode_infer_request(_request(_x([2, 4], [[0, 1, 2, 3], [4, 5, 6, 7]])), None, MLP)
    assert flat.feeds["x"].dtype == np.float32
    assert flat.rows == 2
    np.testing.assert_array_equal(flat.feeds["x"], np.arange(8, dtype=np.float32).reshape(2, 4))
    np.testing.assert_array_equal(flat.feeds["x"], nested.feeds["x"])


def test_id_and_requested_outputs_are_kept() -> None:
    req = decode_infer_request(
        _request(
            _x([1, 4], [1, 2, 3, 4]), id="req-7", outputs=[{"name": "y", "parameters": {"binary_data": True}}]
        ),
        None,
        MLP,
    )
    assert req.id == "req-7"
    assert req.outputs == (RequestedOutput("y", True),)


def test_binary_data_output_applies_to_outputs_that_do_not_say() -> None:
    req = decode_infer_request(
        _request(_x([1, 4], [1, 2, 3, 4]), parameters={"binary_data_output": True}), None, MLP
    )
    assert req.outputs == (RequestedOutput("y", True),)


def test_binary_inputs_follow_the_json_header_in_order() -> None:
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
def test_every_datatype_decodes_from_json_and_from_binary(datatype: str, values: list, dtype: type) -> None:
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
def test_bad_requests_are_400_with_a_message_that_says_why(body: bytes, fragment: str) -> None:
    assert fragment in _error(body)


def test_integers_out_of_range_and_floats_for_integers_are_refused() -> None:
    sig = Signature(inputs=(TensorSpec("x", "INT8", (-1,)),), outputs=(), batched=True)
    assert "out of range" in _error(_request(_x([1], [128], "INT8")), sig)
    assert "must hold integers" in _error(_request(_x([1], [1.5], "INT8")), sig)


def test_binary_sizes_must_add_up() -> None:
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


def test_binary_strings_must_be_complete_utf8() -> None:
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


def test_bool_bytes_other_than_0_and_1_are_refused() -> None:
    sig = Signature(inputs=(TensorSpec("x", "BOOL", (-1,)),), outputs=(), batched=True)
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]}
    )
    assert "other than 0 and 1" in _error(header + b"\x01\x02", sig, str(len(header)))


def test_inputs_of_a_batched_model_must_agree_on_rows() -> None:
    body = _request(
        {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]},
    )
    assert "disagree on the batch size" in _error(body, TWO_INPUTS)


def test_fixed_shapes_must_match_exactly() -> None:
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


def test_v1_instances_become_rows_and_predictions_rows() -> None:
    feeds, rows = decode_v1_request(orjson.dumps({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}), MLP)
    assert rows == 2
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (2, 4)
    out = encode_v1_response({"y": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)}, ["y"])
    assert orjson.loads(out) == {"predictions": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}


def test_v1_with_several_inputs_takes_objects_per_instance() -> None:
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
def test_v1_bad_requests_are_400(body: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_v1_request(body, MLP)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_v1_several_inputs_need_objects() -> None:
    with pytest.raises(RequestError, match="each instance must map them"):
        decode_v1_request(b'{"instances": [[1, 2]]}', TWO_INPUTS)
