"""The V2 protocol as a client writes and reads it, written from the protocol's text (not from the
server's codecs, which it checks): JSON tensors, the binary tensor extension, and answers of both."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from modelship.server.datatypes import DTYPES

# The server's own map: the clients' suites (test_clients.py), with maps of their own, check it.
NUMPY = DTYPES
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's bytes in the binary extension: BYTES elements each after a 4-byte little-endian length."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(len(data).to_bytes(4, "little") + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=NUMPY[datatype]).tobytes()


def from_raw(data: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(data, dtype=NUMPY[datatype]).reshape(shape)
    items, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        items.append(data[pos + 4 : pos + 4 + length].decode("utf-8"))
        pos += 4 + length
    return np.array(items, dtype=object).reshape(shape)


def _json_data(array: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    return list(array.reshape(-1).tolist())


def request_body(
    tensors: Sequence[Tensor], outputs: Sequence[Mapping[str, Any]] | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an inference request: JSON alone, or a JSON header followed by the raw
    tensors of the inputs marked binary. Non-finite floats go as NaN/Infinity literals."""
    inputs, raw = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.array.shape),
            "datatype": tensor.datatype,
        }
        if tensor.binary:
            data = raw_bytes(tensor.array, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            entry["data"] = _json_data(tensor.array, tensor.datatype)
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs, **extra}
    if outputs is not None:
        body["outputs"] = list(outputs)
    header = json.dumps(body, allow_nan=True).encode()
    if not raw:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(raw), {
        HEADER_LENGTH: str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def outputs_of(response: httpx.Response) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (datatype, array) of an inference answer, in whichever form each output came."""
    length = int(response.headers.get(HEADER_LENGTH, len(response.content)))
    header = json.loads(response.content[:length])
    pos = length
    result = {}
    for out in header["outputs"]:
        datatype, shape = out["datatype"], out["shape"]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = from_raw(response.content[pos : pos + size], datatype, shape)
            pos += size
        else:
            array = np.array(out["data"], dtype=NUMPY[datatype]).reshape(shape)
        result[out["name"]] = (datatype, array)
    assert pos == len(response.content), f"{len(response.content) - pos} bytes after the last output"
    return result
