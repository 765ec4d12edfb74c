"""The Open Inference Protocol (V2): its types, and an infer request checked against the model.

The model's signature (TensorSpec, Signature), what a request asks for (RequestedOutput, InferRequest),
the protocol's content types and header, error bodies, and decode_infer_request: the body split at
`Inference-Header-Content-Length`, its inputs read by json_tensors.py or binary_tensors.py, and the
request's checks against the model's signature (parameters, shapes, rows, named dimensions, requested
outputs).

The wire format is pure functions between bytes and numpy arrays, in this module and those beside it:
datatypes.py (the V2 datatypes), json_tensors.py (JSON documents and tensors), binary_tensors.py
(Triton's binary tensor data extension), responses.py (V2 responses), v1.py (the simple V1 `:predict`
form); estimate.py sizes outputs and responses before they exist. Every client mistake becomes a
RequestError(400) in them, the earliest layer, with a message that names the input and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from modelship.server.binary_tensors import decode_binary_tensor
from modelship.server.datatypes import MAX_RANK
from modelship.server.errors import bad_request
from modelship.server.json_tensors import (
    ARRAYS,
    OBJECTS,
    Numbers,
    finish_tensor,
    json_object,
    load_json,
    read_json_tensor,
)

BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the model declares it; -1 stands for a dimension of any size.

    `symbols` are the ONNX names of symbolic dimensions (None for a fixed or anonymous one): an output
    dimension named like an input's has that input's size, which sizes outputs before the model runs.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    symbols: tuple[str | None, ...] = ()

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


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request, as `Inference-Header-Content-Length` splits them."""
    if header_length is None:
        return body, memoryview(b"")
    # isascii too: "²" is a digit to isdigit() but not to int().
    if not (header_length.isascii() and header_length.isdigit()):
        raise bad_request(f"Inference-Header-Content-Length must be a number of bytes, got {header_length!r}")
    length = int(header_length)
    if length > len(body):
        raise bad_request(
            f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
        )
    return body[:length], memoryview(body)[length:]


def decode_infer_request(body: bytes, header_length: str | None, signature: Signature) -> InferRequest:
    """A V2 infer request checked against the model: its inputs as arrays, and the outputs it wants."""
    json_part, binary = split_body(body, header_length)
    # The parser and its tape are gone when _read_request returns: the casts to the inputs' datatypes
    # come after, so that the two never take memory at the same time.
    request_id, tensors, outputs = _read_request(json_part, binary, signature)
    feeds = {name: finish_tensor(tensor) for name, tensor in tensors.items()}
    rows = rows_of(feeds, signature)
    return InferRequest(id=request_id, feeds=feeds, outputs=outputs, rows=rows)


def _read_request(
    json_part: bytes, binary: memoryview, signature: Signature
) -> tuple[str | None, dict[str, np.ndarray | Numbers], tuple[RequestedOutput, ...]]:
    obj = json_object(load_json(json_part))
    if obj is None:
        raise bad_request("the request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("id must be a string")
    params = _parameters(obj.get("parameters"), "request")
    if "classification" in params:
        raise bad_request("the classification extension is not supported")
    binary_default = _flag(params, "binary_data_output", "request")

    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, ARRAYS) or not len(raw_inputs):
        raise bad_request("inputs must be a non-empty list")
    tensors: dict[str, np.ndarray | Numbers] = {}
    offset = 0
    # Each name is known and given once, so a list of a million inputs stops at the first repeat.
    for raw in raw_inputs:
        name, tensor, used = _decode_input(raw, binary, offset, signature)
        if name in tensors:
            raise bad_request(f"input {name!r} is given twice")
        tensors[name] = tensor
        offset += used
    if offset != len(binary):
        raise bad_request(
            f"the body's binary part has {len(binary)} bytes; the inputs' binary_data_size add up to {offset}"
        )
    missing = [spec.name for spec in signature.inputs if spec.name not in tensors]
    if missing:
        raise bad_request(
            f"missing input(s) {', '.join(missing)}; the model needs {names_of(signature.inputs)}"
        )
    outputs = _requested_outputs(obj.get("outputs"), binary_default, signature)
    return request_id, tensors, outputs


def names_of(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(spec.name for spec in specs)


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    """A parameters object, left as it came: only the keys asked for are ever converted."""
    if value is None:
        return {}
    fields = json_object(value)
    if fields is None:
        raise bad_request(f"parameters of the {where} must be a JSON object")
    return fields


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"parameter {key} of the {where} must be true or false")
    return value


def _decode_input(
    value: Any, binary: memoryview, offset: int, signature: Signature
) -> tuple[str, np.ndarray | Numbers, int]:
    raw = json_object(value)
    if raw is None:
        raise bad_request("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise bad_request("each input needs a string name")
    spec = signature.input(name)
    if spec is None:
        raise bad_request(f"unknown input {name!r}; the model's inputs are {names_of(signature.inputs)}")
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        shown = datatype if datatype is None or isinstance(datatype, (str, int, float)) else "a JSON value"
        raise bad_request(f"input {name!r} has datatype {shown!r}; the model expects {spec.datatype}")
    shape = _shape(raw.get("shape"), name)
    check_shape(name, shape, spec)
    params = _parameters(raw.get("parameters"), f"input {name!r}")
    size = params.get("binary_data_size")
    data = raw.get("data")
    if size is None:
        if data is None:
            raise bad_request(f"input {name!r} has neither data nor a binary_data_size parameter")
        return name, read_json_tensor(data, datatype, shape, name), 0
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
    if not isinstance(value, ARRAYS) or len(value) > MAX_RANK:
        raise bad_request(f"shape of input {name!r} must be a list of at most {MAX_RANK} sizes")
    dims = list(value)
    for dim in dims:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise bad_request(f"shape of input {name!r} must hold non-negative integers, got {_show(dims)}")
    return tuple(dims)


def _show(values: list[Any]) -> str:
    """For a message: the values, lists and objects among them named only (they may be huge)."""
    shown = (
        "<list>" if isinstance(v, ARRAYS) else "<object>" if isinstance(v, OBJECTS) else repr(v)
        for v in values
    )
    return f"[{', '.join(shown)}]"


def check_shape(name: str, shape: Sequence[int], spec: TensorSpec) -> None:
    if len(shape) != len(spec.shape) or any(
        want >= 0 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise bad_request(f"input {name!r} has shape {list(shape)}; the model expects {list(spec.shape)}")


def rows_of(feeds: Mapping[str, np.ndarray], signature: Signature) -> int:
    _check_named_dimensions(feeds, signature)
    if not signature.batched:
        return 1
    sizes = {array.shape[0] for array in feeds.values()}
    if len(sizes) != 1:
        raise bad_request(f"the inputs disagree on the batch size (first dimension): {sorted(sizes)}")
    return sizes.pop()


def _check_named_dimensions(feeds: Mapping[str, np.ndarray], signature: Signature) -> None:
    """Inputs whose dimensions the model names alike must agree on them: onnxruntime would fail the run
    (a 500, the model's fault by its signature) on what is the client's mistake, visible before it."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in signature.inputs:
        array = feeds.get(spec.name)
        if array is None:
            continue
        for symbol, size in zip(spec.symbols, array.shape, strict=False):
            if symbol is None:
                continue
            first = seen.setdefault(symbol, (spec.name, size))
            if first[1] != size:
                raise bad_request(
                    f"inputs {first[0]!r} and {spec.name!r} disagree on dimension {symbol!r} "
                    f"({first[1]} and {size}), which the model names alike"
                )


def _requested_outputs(value: Any, binary_default: bool, signature: Signature) -> tuple[RequestedOutput, ...]:
    if value is not None and not isinstance(value, ARRAYS):
        raise bad_request("outputs must be a list")
    if value is None or not len(value):
        # No list, or an empty one, asks for every output (as Triton and KServe read it).
        return tuple(RequestedOutput(name, binary_default) for name in signature.output_names)
    wanted: list[RequestedOutput] = []
    for item in value:
        raw = json_object(item)
        if raw is None or not isinstance(raw.get("name"), str):
            raise bad_request("each requested output must be an object with a string name")
        name = raw["name"]
        if name not in signature.output_names:
            raise bad_request(
                f"unknown output {name!r}; the model's outputs are {names_of(signature.outputs)}"
            )
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


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
