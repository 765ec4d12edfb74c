"""The Open Inference Protocol (V2) on the wire, and the simple V1 `:predict` form.

Pure functions between bytes and numpy arrays: JSON tensors, Triton's binary tensor data extension
(`Inference-Header-Content-Length`, `binary_data_size`, length-prefixed BYTES), and the checks of a
request against the model's signature. Every client mistake becomes a RequestError(400) here, the
earliest layer, with a message that names the input and what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from modelship.server.errors import bad_request

# V2 datatype -> numpy dtype (little-endian, as the binary extension defines). BF16 has no numpy type.
DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# onnxruntime's type strings -> V2 datatypes.
ORT_DATATYPES: Mapping[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_DATATYPE_OF_DTYPE = {dtype.str: name for name, dtype in DTYPES.items()}
_MAX_RANK = 32
_LENGTH_PREFIX = struct.Struct("<I")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the model declares it; -1 stands for a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Every input and output has a first dimension of any size: requests can be merged along it.
    batched: bool

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    rows: int


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of an array onnxruntime returned (native byte order, which is little-endian)."""
    datatype = _DATATYPE_OF_DTYPE.get(array.dtype.str)
    if datatype is None:
        raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}")
    return datatype


# ---------------------------------------------------------------------------------------------
# decoding


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request, as `Inference-Header-Content-Length` splits them."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit():
        raise bad_request(f"Inference-Header-Content-Length must be a number of bytes, got {header_length!r}")
    length = int(header_length)
    if length > len(body):
        raise bad_request(
            f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
        )
    return body[:length], memoryview(body)[length:]


def load_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}") from None


def decode_infer_request(body: bytes, header_length: str | None, signature: Signature) -> InferRequest:
    """A V2 infer request checked against the model: its inputs as arrays, and the outputs it wants."""
    json_part, binary = split_body(body, header_length)
    obj = load_json(json_part)
    if not isinstance(obj, dict):
        raise bad_request("the request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("id must be a string")
    params = _parameters(obj.get("parameters"), "request")
    if "classification" in params:
        raise bad_request("the classification extension is not supported")
    binary_default = _flag(params, "binary_data_output", "request")

    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request("inputs must be a non-empty list")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        name, array, used = _decode_input(raw, binary, offset, signature)
        if name in feeds:
            raise bad_request(f"input {name!r} is given twice")
        feeds[name] = array
        offset += used
    if offset != len(binary):
        raise bad_request(
            f"the body's binary part has {len(binary)} bytes; the inputs' binary_data_size add up to {offset}"
        )
    missing = [spec.name for spec in signature.inputs if spec.name not in feeds]
    if missing:
        raise bad_request(
            f"missing input(s) {', '.join(missing)}; the model needs {_names(signature.inputs)}"
        )
    rows = _rows(feeds, signature)
    outputs = _requested_outputs(obj.get("outputs"), binary_default, signature)
    return InferRequest(id=request_id, feeds=feeds, outputs=outputs, rows=rows)


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(spec.name for spec in specs)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"parameters of the {where} must be a JSON object")
    return value


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"parameter {key} of the {where} must be true or false")
    return value


def _decode_input(
    raw: Any, binary: memoryview, offset: int, signature: Signature
) -> tuple[str, np.ndarray, int]:
    if not isinstance(raw, dict):
        raise bad_request("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise bad_request("each input needs a string name")
    spec = signature.input(name)
    if spec is None:
        raise bad_request(f"unknown input {name!r}; the model's inputs are {_names(signature.inputs)}")
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise bad_request(f"input {name!r} has datatype {datatype!r}; the model expects {spec.datatype}")
    shape = _shape(raw.get("shape"), name)
    check_shape(name, shape, spec)
    params = _parameters(raw.get("parameters"), f"input {name!r}")
    size = params.get("binary_data_size")
    data = raw.get("data")
    if size is None:
        if data is None:
            raise bad_request(f"input {name!r} has neither data nor a binary_data_size parameter")
        return name, decode_json_tensor(data, datatype, shape, name), 0
    if data is not None:
        raise bad_request(f"input {name!r} has both data and a binary_data_size parameter")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad_request(f"binary_data_size of input {name!r} must be a non-negative integer")
    if offset + size > len(binary):
        raise bad_request(
            f"input {name!r} needs {size} bytes of binary data but only {len(binary) - offset} are left"
        )
    return name, decode_binary_tensor(binary[offset : offset + size], datatype, shape, name), size


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > _MAX_RANK:
        raise bad_request(f"shape of input {name!r} must be a list of at most {_MAX_RANK} sizes")
    for dim in value:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise bad_request(f"shape of input {name!r} must hold non-negative integers, got {value}")
    return tuple(value)


def check_shape(name: str, shape: Sequence[int], spec: TensorSpec) -> None:
    if len(shape) != len(spec.shape) or any(
        want >= 0 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise bad_request(f"input {name!r} has shape {list(shape)}; the model expects {list(spec.shape)}")


def _rows(feeds: Mapping[str, np.ndarray], signature: Signature) -> int:
    if not signature.batched:
        return 1
    sizes = {array.shape[0] for array in feeds.values()}
    if len(sizes) != 1:
        raise bad_request(f"the inputs disagree on the batch size (first dimension): {sorted(sizes)}")
    return sizes.pop()


def _requested_outputs(value: Any, binary_default: bool, signature: Signature) -> tuple[RequestedOutput, ...]:
    if value is None:
        return tuple(RequestedOutput(name, binary_default) for name in signature.output_names)
    if not isinstance(value, list):
        raise bad_request("outputs must be a list")
    wanted: list[RequestedOutput] = []
    for raw in value:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise bad_request("each requested output must be an object with a string name")
        name = raw["name"]
        if name not in signature.output_names:
            raise bad_request(f"unknown output {name!r}; the model's outputs are {_names(signature.outputs)}")
        if any(out.name == name for out in wanted):
            raise bad_request(f"output {name!r} is requested twice")
        params = _parameters(raw.get("parameters"), f"output {name!r}")
        if "classification" in params:
            raise bad_request("the classification extension is not supported")
        binary = (
            _flag(params, "binary_data", f"output {name!r}") if "binary_data" in params else binary_default
        )
        wanted.append(RequestedOutput(name, binary))
    return tuple(wanted)


def decode_json_tensor(data: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """A tensor from JSON `data` (flat row-major, or nested), checked against datatype and shape."""
    if not isinstance(data, list):
        raise bad_request(f"data of input {name!r} must be a JSON array")
    expected = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten_strings(data, name)
        if len(flat) != expected:
            raise bad_request(
                f"input {name!r} of shape {list(shape)} needs {expected} values, got {len(flat)}"
            )
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        parsed = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise bad_request(f"data of input {name!r} is not a regular array of numbers") from None
    if parsed.size != expected:
        raise bad_request(f"input {name!r} of shape {list(shape)} needs {expected} values, got {parsed.size}")
    return _cast(parsed, data, datatype, name).reshape(shape)


def _flatten_strings(data: list[Any], name: str) -> list[str]:
    flat: list[str] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                flat.append(item)
            elif isinstance(item, list):
                if len(stack) > _MAX_RANK:
                    raise bad_request(f"data of input {name!r} is nested too deeply")
                stack.append(iter(item))
                break
            else:
                raise bad_request(f"data of BYTES input {name!r} must hold strings")
        else:
            stack.pop()
    return flat


def _cast(parsed: np.ndarray, data: Any, datatype: str, name: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    kind = parsed.dtype.kind
    if parsed.size == 0:
        return parsed.astype(dtype)
    if datatype == "BOOL":
        if kind != "b":
            raise bad_request(f"data of BOOL input {name!r} must hold true or false")
        return parsed
    if dtype.kind in "iu":
        if kind == "f" or kind == "O":
            # numpy turns int64 and uint64 values mixed in one list into floats: look at the originals.
            parsed = _exact_integers(data, datatype, name)
        elif kind not in "iu":
            raise bad_request(f"data of {datatype} input {name!r} must hold integers")
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise bad_request(f"data of {datatype} input {name!r} is out of range [{info.min}, {info.max}]")
        return parsed.astype(dtype)
    if kind not in "iuf":
        raise bad_request(f"data of {datatype} input {name!r} must hold numbers")
    with np.errstate(over="ignore"):
        return parsed.astype(dtype)


def _exact_integers(data: Any, datatype: str, name: str) -> np.ndarray:
    """The integers of `data` as Python ints (no float rounding), or a 400 if any value is not one."""
    try:
        values = np.array(data, dtype=object)
    except ValueError:
        raise bad_request(f"data of input {name!r} is not a regular array of numbers") from None
    if not all(type(v) is int for v in values.flat):
        raise bad_request(f"data of {datatype} input {name!r} must hold integers")
    return values


def decode_binary_tensor(buffer: memoryview, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """A tensor from its raw bytes: little-endian row-major, BOOL one byte, BYTES length-prefixed."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_binary_strings(buffer, count, name).reshape(shape)
    dtype = DTYPES[datatype]
    if len(buffer) != count * dtype.itemsize:
        raise bad_request(
            f"input {name!r} of shape {list(shape)} and datatype {datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size is {len(buffer)}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(buffer, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise bad_request(f"BOOL input {name!r} holds bytes other than 0 and 1")
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _decode_binary_strings(buffer: memoryview, count: int, name: str) -> np.ndarray:
    if count * _LENGTH_PREFIX.size > len(buffer):
        # Checked before allocating: the shape is the client's word, the buffer is what it sent.
        raise bad_request(
            f"binary data of BYTES input {name!r} has {len(buffer)} bytes, too few for {count} elements"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    end = len(buffer)
    for i in range(count):
        if pos + 4 > end:
            raise bad_request(f"binary data of BYTES input {name!r} ends before element {i} of {count}")
        (length,) = _LENGTH_PREFIX.unpack_from(buffer, pos)
        pos += 4
        if pos + length > end:
            raise bad_request(f"binary data of BYTES input {name!r} ends inside element {i}")
        try:
            out[i] = str(buffer[pos : pos + length], "utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"element {i} of BYTES input {name!r} is not UTF-8 text") from None
        pos += length
    if pos != end:
        raise bad_request(
            f"binary data of BYTES input {name!r} has {end - pos} bytes after its {count} elements"
        )
    return out


# ---------------------------------------------------------------------------------------------
# encoding


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    wanted: Sequence[RequestedOutput],
    results: Mapping[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in wanted:
        array = results[out.name]
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": list(array.shape)}
        if out.binary:
            raw = encode_binary_tensor(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(array, datatype)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = outputs
    header = orjson.dumps(body, option=_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _json_data(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return np.ascontiguousarray(array).reshape(-1)


def encode_binary_tensor(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH_PREFIX.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


# ---------------------------------------------------------------------------------------------
# V1 `:predict`


def decode_v1_request(body: bytes, signature: Signature) -> tuple[dict[str, np.ndarray], int]:
    """`{"instances": [...]}` as feeds: instances are stacked along a new first axis, one per row.

    A single-input model takes its rows directly; a model with several inputs takes one object per
    instance mapping input names to that row's values.
    """
    obj = load_json(body)
    if not isinstance(obj, dict) or not isinstance(obj.get("instances"), list) or not obj["instances"]:
        raise bad_request('the request must be {"instances": [...]} with at least one instance')
    instances: list[Any] = obj["instances"]
    columns: dict[str, list[Any]]
    if all(isinstance(item, dict) for item in instances):
        names = {spec.name for spec in signature.inputs}
        columns = {name: [] for name in names}
        for item in instances:
            if set(item) != names:
                raise bad_request(f"each instance must have exactly the inputs {_names(signature.inputs)}")
            for key, value in item.items():
                columns[key].append(value)
    elif len(signature.inputs) == 1:
        columns = {signature.inputs[0].name: instances}
    else:
        raise bad_request(
            f"the model has several inputs ({_names(signature.inputs)}): each instance must map them"
        )
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        values = columns[spec.name]
        if spec.datatype == "BYTES":
            shape = _nested_shape(values)
            array = decode_json_tensor(values, "BYTES", shape, spec.name)
        else:
            try:
                parsed = np.array(values)
            except (ValueError, TypeError, OverflowError):
                raise bad_request(
                    f"instances of input {spec.name!r} are not a regular array of numbers"
                ) from None
            array = _cast(parsed, values, spec.datatype, spec.name)
        check_shape(spec.name, array.shape, spec)
        feeds[spec.name] = array
    return feeds, _rows(feeds, signature)


def _nested_shape(values: list[Any]) -> tuple[int, ...]:
    """The shape nested lists claim by their first elements; decode_json_tensor checks the rest."""
    shape: list[int] = []
    probe: Any = values
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe or len(shape) > _MAX_RANK:
            break
        probe = probe[0]
    return tuple(shape)


def encode_v1_response(results: Mapping[str, np.ndarray], names: Sequence[str]) -> bytes:
    """`{"predictions": [...]}`: one entry per row; a row of a multi-output model maps names to values."""
    arrays = [results[name] for name in names]
    # One value per row (a label) becomes a list: indexing a 1-D array gives numpy scalars, and orjson
    # refuses some of them (onnxruntime's int64 is numpy.longlong).
    jsonable = [a.tolist() if a.dtype == object or a.ndim <= 1 else a for a in arrays]
    if len(arrays) == 1:
        single = jsonable[0]
        predictions: Any = [single] if arrays[0].ndim == 0 else single
    elif all(a.ndim >= 1 and a.shape[0] == arrays[0].shape[0] for a in arrays):
        predictions = [
            {name: value[i] for name, value in zip(names, jsonable, strict=True)}
            for i in range(arrays[0].shape[0])
        ]
    else:
        predictions = [dict(zip(names, jsonable, strict=True))]
    return orjson.dumps({"predictions": predictions}, option=_NUMPY)
