"""V2 infer responses: outputs as JSON, or as binary tensors after the JSON header; and the JSON text of
arrays, which V1's responses (v1.py) are written with too.

Encoding JSON: orjson, with large outputs a slice of SLICE elements per call, their text joined into
the body by one bytes.join, which lets the GIL go (a 6M-element FP32 output held it 230 ms in one
orjson call here, 6 to 12 ms at most now). Small outputs stay in the one orjson call of the body.

NaN and Inf: orjson writes them as null; they go out as the literals `NaN`, `Infinity` and
`-Infinity`, which json_tensors.py reads (as Python's json module writes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from modelship.server.binary_tensors import encode_binary_tensor
from modelship.server.datatypes import datatype_of
from modelship.server.protocol import RequestedOutput

_NUMPY = orjson.OPT_SERIALIZE_NUMPY

# Elements per orjson call: about 2 ms of GIL for FP32 data.
SLICE = 65536

# Where a large output's text goes into the response: orjson writes a NUL in no string (it escapes it).
_MARK_BYTES = b"\x00"
_MARK = orjson.Fragment(_MARK_BYTES)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    wanted: Sequence[RequestedOutput],
    results: Mapping[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    large: list[list[bytes]] = []  # the JSON text of large outputs, in pieces
    floats = False  # small float outputs left to orjson
    for out in wanted:
        array = results[out.name]
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": list(array.shape)}
        if out.binary:
            raw = encode_binary_tensor(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif array.size > SLICE:
            entry["data"] = _MARK
            large.append(_string_parts(array) if datatype == "BYTES" else array_parts(array.reshape(-1)))
        elif datatype == "BYTES":
            entry["data"] = as_strings(array)
        else:
            # Small outputs go to orjson as they are, in the one call of the whole body.
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
            floats = floats or datatype[0] == "F"
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = outputs
    if floats and large:
        # Scanning this large a body for null (below) would hold the GIL as long as one orjson call did.
        _nonfinite_as_literals(outputs)
    header = orjson.dumps(body, option=_NUMPY)
    # orjson writes NaN and inf as null, and nothing else of a response is null but a string's text:
    # the rare body with one is written again, its small float outputs with the JSON literals.
    if floats and not large and b"null" in header and _nonfinite_as_literals(outputs):
        header = orjson.dumps(body, option=_NUMPY)
    if large:
        # The large outputs' text goes in at the marks in the one join below, which copies it once and
        # without the GIL (bytes.join lets it go for a result of 1 MiB or more made of bytes only).
        segments = header.split(_MARK_BYTES)
        pieces = [segments[0]]
        for parts, segment in zip(large, segments[1:], strict=True):
            pieces += parts
            pieces.append(segment)
        if not chunks:
            return b"".join(pieces), None
        return b"".join([*pieces, *chunks]), sum(map(len, pieces))
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _nonfinite_as_literals(outputs: list[dict[str, Any]]) -> bool:
    """Turn the small float outputs that orjson would get into JSON text with NaN and inf literals."""
    changed = False
    for entry in outputs:
        data = entry.get("data")
        if isinstance(data, np.ndarray) and data.dtype.kind == "f":
            entry["data"] = orjson.Fragment(_dump_numbers(data))
            changed = True
    return changed


def _string(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def as_strings(array: np.ndarray) -> list[str]:
    return [_string(v) for v in array.ravel()]


def _string_parts(array: np.ndarray) -> list[bytes]:
    """JSON text of a large BYTES output, flat, in pieces: a slice of it per orjson call."""
    flat = array.ravel()
    return list_parts(
        [orjson.dumps(as_strings(flat[i : i + SLICE]))[1:-1]] for i in range(0, flat.size, SLICE)
    )


def list_parts(items: Iterable[list[bytes]]) -> list[bytes]:
    """Pieces of a JSON list whose items, or runs of items, come in pieces."""
    pieces = [b"["]
    for item in items:
        pieces += item
        pieces.append(b",")
    if len(pieces) > 1:
        pieces.pop()
    pieces.append(b"]")
    return pieces


def _dump_numbers(array: np.ndarray) -> bytes:
    """JSON text of a small C-contiguous numeric array (at least 1-D), floats' NaN and inf as literals."""
    text = orjson.dumps(array, option=_NUMPY)
    if array.dtype.kind == "f" and b"null" in text:
        # A numeric array has no other null: the nulls are its non-finite values, in row-major order.
        pieces = text.split(b"null")
        literals = [nonfinite_literal(v) for v in array[~np.isfinite(array)].tolist()]
        text = b"".join([pieces[0], *(p for pair in zip(literals, pieces[1:], strict=True) for p in pair)])
    return text


def nonfinite_literal(value: float) -> bytes:
    if value != value:
        return b"NaN"
    return b"Infinity" if value > 0 else b"-Infinity"


def array_parts(array: np.ndarray) -> list[bytes]:
    """JSON text of a numeric array nested as its shape, in pieces: a large one a slice of about SLICE
    elements per orjson call (one call for a 6M-element FP32 array holds the GIL about 200 ms)."""
    if array.ndim == 0:
        return [_dump_numbers(array.reshape(1))[1:-1]]  # orjson takes no 0-d array
    array = np.ascontiguousarray(array)
    if array.size <= SLICE:
        return [_dump_numbers(array)]
    row = array[0].size
    if row > SLICE:
        return list_parts(array_parts(sub) for sub in array)
    step = SLICE // row
    return list_parts([_dump_numbers(array[i : i + step])[1:-1]] for i in range(0, len(array), step))


def json_text(array: np.ndarray) -> bytes:
    return b"".join(array_parts(array))
