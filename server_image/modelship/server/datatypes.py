"""The V2 datatypes: the numpy dtype of each, onnxruntime's names for them, and the most dimensions a
tensor may have."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

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

# The most dimensions a shape may have, and the deepest nesting of a tensor's JSON data.
MAX_RANK = 32


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of an array onnxruntime returned (native byte order, which is little-endian)."""
    datatype = _DATATYPE_OF_DTYPE.get(array.dtype.str)
    if datatype is None:
        raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}")
    return datatype
