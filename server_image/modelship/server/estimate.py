"""How much memory a request holds at each stage, from what is known by then (memory.py reserves it),
and the sizes that go into it: its outputs' before the model runs, its response's before it is encoded.

The figures are bounds measured on the decoders (bench/server_limits.py checks them against the
process's peak RSS): simdjson keeps a copy of the document's strings (up to the body's size), 16 bytes of
tape and 8 of structural index for each number with its comma; the float64/int64 buffer it exports
takes 8 more and the cast to the input's datatype up to 8 more: 40 bytes a number besides the body and
its copy. Clients write a float in about 9 characters (`0.123456,`): 6.4 times the body in all, where
bench/server_limits.py measured 5.5 times (2026-12-07). Encoded as JSON, an element takes up to 9 times
its binary size (an FP16's `-0.0000011174898,`, a BOOL's `false,` 6).

The outputs' size comes from the model's shapes (estimate_output_bytes); a response's is a bound on what
responses.py and v1.py write (encoded_response_bytes, encoded_v1_response_bytes), from the widest text
of each datatype's elements (JSON_ELEMENT_CHARS) and the worst escaping of strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from modelship.server import protocol
from modelship.server.datatypes import DTYPES, datatype_of

JSON_VALUE_BYTES = 40
# A V1 instance given as an object is read as Python objects (a proxy per instance, a float and a list slot
# per value, the key set): 1e6 `{"a":1.5,"b":2.5}` took 242 MiB at peak, some 127 bytes a value.
V1_OBJECT_VALUE_BYTES = 160
TYPICAL_JSON_VALUE_CHARS = 9
JSON_PER_BINARY_BYTE = 9  # an FP16 takes up to 17 characters for its 2 bytes (JSON_ELEMENT_CHARS)
# Below this a response's size is bounded, not counted; the overhead covers names, shapes and the id.
SMALL_RESPONSE_BYTES = 64 << 10
SMALL_RESPONSE_OVERHEAD = 4096
# A Python str in a BYTES tensor's object array, beyond its pointer and its characters.
STRING_OVERHEAD_BYTES = 56

# The most characters orjson writes for one element of a datatype, its comma included: the widest
# values, found by encoding every FP16 and every FP32 exponent with random mantissas (`-0.0000011174898`),
# are wider than the largest magnitudes. The non-finite literals (`-Infinity`) are narrower.
JSON_ELEMENT_CHARS: Mapping[str, int] = {
    "BOOL": 6,
    "UINT8": 4,
    "UINT16": 6,
    "UINT32": 11,
    "UINT64": 21,
    "INT8": 5,
    "INT16": 7,
    "INT32": 12,
    "INT64": 21,
    "FP16": 17,
    "FP32": 17,
    "FP64": 25,
}
# A guess: the model's signature says nothing of its strings' lengths.
BYTES_ELEMENT_GUESS = 64
# Around the data: model name and version (Kubernetes names, at most 253 characters), braces and keys;
# an output's name, datatype, shape and parameters.
_RESPONSE_OVERHEAD = 1024
_OUTPUT_OVERHEAD = 128


def _declared_length(headers: Mapping[str, str]) -> int:
    declared = headers.get("content-length")
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return 0  # chunked: counted as it arrives
    return int(declared)


def admission_bytes(headers: Mapping[str, str]) -> int:
    """What a request will hold while its body is read and decoded, from its headers alone."""
    length = _declared_length(headers)
    if protocol.HEADER_LENGTH in headers:
        return 2 * length  # the body (twice while it is copied); binary tensors are views of it
    return 2 * length + length // TYPICAL_JSON_VALUE_CHARS * JSON_VALUE_BYTES


def decoding_bytes(body: bytes, header_length: str | None, v1: bool = False) -> int:
    """What decoding this body holds at its peak: the body, and for JSON, every number's tape and buffer
    (and its Python objects, for V1 instances given as objects)."""
    if header_length is not None:
        return 2 * len(body)
    # Every number but the last of an array is followed by a comma: an upper bound, counted at memchr speed.
    per_value = V1_OBJECT_VALUE_BYTES if v1 and body.count(b"{") > 1 else JSON_VALUE_BYTES
    return 2 * len(body) + (body.count(b",") + 1) * per_value


def _array_bytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return int(array.nbytes) + array.size * STRING_OVERHEAD_BYTES
    return int(array.nbytes)


def inputs_bytes(feeds: Mapping[str, np.ndarray], views: bool, batched: bool) -> int:
    """The decoded inputs, beyond the body when they are `views` of it (binary numbers), plus the copy
    batching makes when it concatenates them with other requests' into one run."""
    total = 0
    for array in feeds.values():
        size = _array_bytes(array)
        own = size - int(array.nbytes) if views and array.dtype != object else size
        total += own + (int(array.nbytes) if batched else 0)
    return total


def outputs_and_response_bytes(outputs: int, wanted: Sequence[protocol.RequestedOutput] | None) -> int:
    """Outputs of `outputs` bytes, and their encoding (all of it JSON for V1, where `wanted` is None)."""
    if wanted is not None and all(out.binary for out in wanted):
        return 2 * outputs
    return outputs * (1 + JSON_PER_BINARY_BYTE)


def small_response_bytes(results: Mapping[str, np.ndarray], outputs: int) -> int | None:
    """A bound of the response to small numeric outputs, cheaper than counting it (most requests); None
    when the outputs are large or hold strings, whose JSON only counting can bound."""
    if outputs * JSON_PER_BINARY_BYTE > SMALL_RESPONSE_BYTES:
        return None
    if any(array.dtype == object for array in results.values()):
        return None
    return outputs * JSON_PER_BINARY_BYTE + SMALL_RESPONSE_OVERHEAD


def results_bytes(results: Mapping[str, np.ndarray]) -> int:
    return sum(_array_bytes(array) for array in results.values())


# ---------------------------------------------------------------------------------------------
# sizes, before the model runs and before a response is encoded


def estimate_output_bytes(signature: protocol.Signature, feeds: Mapping[str, np.ndarray]) -> int | None:
    """The bytes of the outputs the model will return for `feeds`, or None where its shapes do not say.

    A fixed dimension is its size; a symbolic one named like a dimension of an input has that input's
    size in `feeds`; the first dimension of a batched model is the rows. Any other leaves it unknown.
    """
    sizes: dict[str, int] = {}
    for spec in signature.inputs:
        array = feeds.get(spec.name)
        if array is not None:
            for symbol, size in zip(spec.symbols, array.shape, strict=False):
                if symbol is not None:
                    sizes.setdefault(symbol, size)
    rows = next(iter(feeds.values())).shape[0] if signature.batched and feeds else None
    total = 0
    for spec in signature.outputs:
        symbols = spec.symbols or (None,) * len(spec.shape)
        elements = 1
        for i, (dim, symbol) in enumerate(zip(spec.shape, symbols, strict=True)):
            if dim >= 0:
                elements *= dim
            elif symbol is not None and symbol in sizes:
                elements *= sizes[symbol]
            elif i == 0 and rows is not None:
                elements *= rows
            else:
                return None
        itemsize = BYTES_ELEMENT_GUESS if spec.datatype == "BYTES" else DTYPES[spec.datatype].itemsize
        total += elements * itemsize
    return total


def _json_string_bytes(value: Any) -> int:
    # orjson writes a control character as \u00XX: 6 bytes for one; a replaced byte is 3 (U+FFFD).
    return 6 * len(value if isinstance(value, (str, bytes)) else str(value)) + 3


def _binary_string_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return 4 + len(value)
    text = value if isinstance(value, str) else str(value)
    return 4 + (len(text) if text.isascii() else 4 * len(text))


def _json_data_bytes(array: np.ndarray, doubles: bool = False) -> int:
    if array.dtype == object:
        return sum(map(_json_string_bytes, array.flat)) + 2
    # `doubles`: V1 writes a 1-D output of a multi-output model as Python floats, float64's text.
    datatype = "FP64" if doubles and array.dtype.kind == "f" else datatype_of(array)
    return array.size * JSON_ELEMENT_CHARS[datatype] + 2


def encoded_response_bytes(
    results: Mapping[str, np.ndarray],
    wanted: Sequence[protocol.RequestedOutput],
    request_id: str | None = None,
) -> int:
    """At least the size of encode_infer_response's body for these outputs (with this request id)."""
    total = _RESPONSE_OVERHEAD + (6 * len(request_id) if request_id else 0)
    for out in wanted:
        array = results[out.name]
        total += _OUTPUT_OVERHEAD + 6 * len(out.name) + 21 * array.ndim
        if not out.binary:
            total += _json_data_bytes(array)
        elif array.dtype == object:
            total += sum(map(_binary_string_bytes, array.flat))
        else:
            total += array.nbytes
    return total


def encoded_v1_response_bytes(results: Mapping[str, np.ndarray]) -> int:
    """At least the size of encode_v1_response's body for these outputs (V1 answers with all of them)."""
    total = _RESPONSE_OVERHEAD
    rows = max((array.shape[0] for array in results.values() if array.ndim), default=1)
    # A row of a model with several outputs is an object naming each.
    total += rows * (2 + sum(6 * len(name) + 4 for name in results))
    for array in results.values():
        # Brackets and a comma for every list the nesting makes.
        lists = sum(math.prod(array.shape[:k]) for k in range(array.ndim))
        total += _json_data_bytes(array, doubles=True) + 3 * lists
    return total
