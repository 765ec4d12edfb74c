"""Triton's binary tensor data extension: tensors as raw bytes after the JSON part of a request or a
response, which `Inference-Header-Content-Length` ends (protocol.split_body) and each tensor's
`binary_data_size` parameter measures.

Little-endian and row-major; BOOL one byte (0 or 1); BYTES each element's length as a 4-byte
little-endian integer, then its UTF-8 text. FP16, FP32 and FP64 tensors may hold NaN and Inf (their IEEE
bit patterns).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from modelship.server.datatypes import DTYPES
from modelship.server.errors import bad_request

_LENGTH_PREFIX = struct.Struct("<I")


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


def encode_binary_tensor(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """A tensor's raw bytes; numbers as a view of the array, which the response's one join copies: a
    `tobytes()` first would hold a third copy of a large output at the peak (array, bytes, body)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH_PREFIX.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if not array.size:
        return b""  # a view of no elements cannot be cast to bytes
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).data.cast("B")
