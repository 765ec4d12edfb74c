"""JSON documents and the tensors in them: the parse, the checks of nesting and shape, the casts.

Decoding JSON: pysimdjson, not orjson. orjson.loads builds a Python float (24 bytes, and 8 more for
its list slot) per number and np.array() walks those objects again: a 48 MiB body of FP32 numbers (11
characters each) peaked 288 MiB, 6.0 times the body, above what the process held before. simdjson parses
into a tape, and `Array.as_buffer` copies a tensor's numbers from it into one float64, int64 or uint64
buffer in C: 16 bytes a number on the tape, 8 in simdjson's structural indexes (the number and its
comma), 8 in the buffer, and simdjson's padded copy of the JSON part; the parser is gone before the cast
to the input's datatype. The same body now peaks at 3.9 times its size (nested rows of 4: 4.3 against
7.7), in a third of the time (nested: a half). The cost is per number, not per byte: for `0,1,0,...`
it is 17 times the body (orjson's, which shares Python's small ints, 13), so budget twice the JSON part
and 32 bytes a number. JSON parts up to _SMALL_JSON_BYTES become Python values at once (simdjson's
proxies cost more than a few numbers' objects), and so do BOOL and BYTES data (strings are objects
anyway): those go through numpy from Python lists, with the same checks and messages as the buffers.

The GIL: simdjson parses a document in one call (48 MiB: some 150 ms; orjson held it 250 ms), and
as_buffer exports a tensor in one (25 ms there); the rest is Python, which lets other threads in.

Shapes: data may be flat (row-major) or nested; nested data must follow the declared shape at every
level above the innermost, where each list is checked (a slice of them at a time, in C); the numbers
are only seen by as_buffer, whose count must then be the shape's. One leniency of the buffers: a number
wrapped in its own brackets at the innermost level (`[1, [2], 3]`) reads as the number, which only a
Python look at every element would see (Python lists refuse it).

Inf and NaN, one rule for both forms: FP16, FP32 and FP64 tensors may hold them. In binary form they
are IEEE bit patterns; in JSON the literals `NaN`, `Infinity` and `-Infinity`, which is what Python's
json module (so tritonclient and KServe's SDK) writes for numpy's nan and inf. simdjson refuses those
literals, so a JSON part that holds them is parsed again by Python's json module, only up to
MAX_NONFINITE_JSON_BYTES (above it: a 400 pointing to the binary form). Integer and BOOL inputs refuse
them. Responses write non-finite values with the same literals, in V2 and in V1 (orjson writes null).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import count, islice
from typing import Any, Literal

import numpy as np
import simdjson
from modelship.server.datatypes import DTYPES, MAX_RANK
from modelship.server.errors import RequestError, bad_request

# Python's json module and numpy take 6 times the JSON part (simdjson: 4) and hold the GIL through the
# whole parse (100 ms for this much): NaN and Infinity in larger JSON parts are refused.
MAX_NONFINITE_JSON_BYTES = 8 * 2**20

# JSON parts up to this size become Python values at once (as with orjson): a 1-row request decodes
# in 17.5 µs so, 19.4 through simdjson's proxies; the memory of a few numbers' objects does not matter.
_SMALL_JSON_BYTES = 4096

# Lists per C-level check of nested lists, and the most numbers cast at once (larger tensors wait for
# the parser to go): about 2 ms of GIL for FP32 data.
_SLICE = 65536

# What the parsers hand over: Python values, or for simdjson, proxies of its arrays and objects.
ARRAYS = (list, simdjson.Array)
OBJECTS = (dict, simdjson.Object)
_ARRAY_TYPES = frozenset(ARRAYS)

# The buffer type of simdjson's Array.as_buffer each numeric datatype is read through.
_BUFFER_KIND: Mapping[str, Literal["d", "i", "u"]] = {
    **dict.fromkeys(("FP16", "FP32", "FP64"), "d"),
    **dict.fromkeys(("INT8", "INT16", "INT32", "INT64"), "i"),
    **dict.fromkeys(("UINT8", "UINT16", "UINT32", "UINT64"), "u"),
}
_BUFFER_DTYPE = {"d": np.dtype(np.float64), "i": np.dtype(np.int64), "u": np.dtype(np.uint64)}


def load_json(data: bytes) -> Any:
    """The document: its arrays and objects as simdjson proxies, or as Python lists and dicts for a
    small one or one with NaN or Infinity. A fresh parser per call: decoding runs in worker threads,
    and a parser cannot parse again while proxies of its last document live."""
    parser = simdjson.Parser()
    try:
        return parser.parse(data, True) if len(data) <= _SMALL_JSON_BYTES else parser.parse(data)
    except MemoryError:
        raise RequestError(413, "the JSON part is too large to parse in the memory available") from None
    except (ValueError, RuntimeError, TypeError, LookupError, OSError) as exc:
        # simdjson's error codes arrive as ValueError (UnicodeDecodeError among them), RuntimeError
        # (DEPTH_ERROR, BIGINT_ERROR), and for codes it does not expect at parse time, the others.
        problem = _simdjson_message(exc)
    # Nesting deeper than simdjson takes is refused whatever else the body holds: Python's json module
    # would go as deep as the interpreter's recursion limit lets it, which is not ours to rely on.
    if (b"NaN" not in data and b"Infinity" not in data) or problem.startswith("DEPTH_ERROR"):
        raise bad_request(f"malformed JSON: {problem}")
    if len(data) > MAX_NONFINITE_JSON_BYTES:
        raise bad_request(
            f"malformed JSON: {problem}. NaN and Infinity are read only in a JSON part of at most "
            f"{MAX_NONFINITE_JSON_BYTES} bytes (this one has {len(data)}): send tensors with non-finite "
            "values in the binary form (binary_data_size)"
        )
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from None


def _simdjson_message(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return exc.reason  # the rest is a position simdjson does not know
    text = str(exc).replace("  This is a fatal and unrecoverable error.", "").strip() or type(exc).__name__
    if text.startswith(("NUMBER_ERROR", "BIGINT_ERROR")):
        text += " (numbers must fit a 64-bit integer or a double)"
    return text


class _Fields(Mapping[str, Any]):
    """A simdjson Object read by key. simdjson answers an absent key with a C++ exception turned into a
    KeyError, 5 µs each (the time of the whole parse of a small request); its key set answers in ns."""

    __slots__ = ("_keys", "_object")

    def __init__(self, obj: simdjson.Object) -> None:
        self._object = obj
        # Listing the keys of a huge object would cost what orjson did: it is asked the slow way.
        self._keys = frozenset(obj) if len(obj) <= 64 else None

    def __getitem__(self, key: str) -> Any:
        if self._keys is not None and key not in self._keys:
            raise KeyError(key)
        return self._object[key]

    def get(self, key: str, default: Any = None) -> Any:
        if self._keys is None:
            return self._object.get(key, default)
        return self._object[key] if key in self._keys else default

    def __contains__(self, key: object) -> bool:
        return key in (self._object if self._keys is None else self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._object)

    def __len__(self) -> int:
        return len(self._object)


def json_object(value: Any) -> Mapping[str, Any] | None:
    """A JSON object's fields, or None if `value` is not an object."""
    if type(value) is dict:
        return value
    return _Fields(value) if isinstance(value, simdjson.Object) else None


@dataclass(frozen=True)
class Numbers:
    """A JSON tensor's numbers as simdjson exported them (float64, int64 or uint64), before the cast."""

    raw: np.ndarray
    datatype: str
    shape: tuple[int, ...]
    name: str


def decode_json_tensor(data: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """A tensor from JSON `data` (flat row-major, or nested), checked against datatype and shape.

    `data` is a simdjson Array (numbers are read in C) or a Python list (small requests, Python's json).
    """
    return finish_tensor(read_json_tensor(data, datatype, tuple(shape), name))


def read_json_tensor(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray | Numbers:
    if not isinstance(data, ARRAYS):
        raise bad_request(f"data of input {name!r} must be a JSON array")
    nested = _check_layout(data, shape, name)
    if datatype == "BYTES":
        flat = _flatten_strings(python_value(data), name)
        _check_count(len(flat), data, nested, shape, name)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if datatype == "BOOL" or not isinstance(data, simdjson.Array):
        return _python_tensor(python_value(data), datatype, shape, name, nested)
    kind = _BUFFER_KIND[datatype]
    try:
        buffer = data.as_buffer(of_type=kind)
    except TypeError:  # INCORRECT_TYPE: a value of another kind (a float for an integer, a string, null)
        raise _wrong_kind(datatype, name) from None
    except ValueError:  # NUMBER_OUT_OF_RANGE: beyond int64, or negative for unsigned
        raise _out_of_range(datatype, name) from None
    raw = np.frombuffer(buffer, dtype=_BUFFER_DTYPE[kind])
    _check_count(raw.size, data, nested, shape, name)
    if raw.size <= _SLICE:
        return _cast_numbers(raw, datatype, shape, name)  # nothing to gain from waiting
    return Numbers(raw, datatype, shape, name)


def _check_count(values: int, data: Any, nested: bool, shape: tuple[int, ...], name: str) -> None:
    """`values` flattened out of `data`: the shape's number, and only where values belong."""
    expected = math.prod(shape)
    if nested:
        if values != expected:
            # Every list above the innermost has its length: lists sit where values should.
            raise irregular(name, shape)
    elif not _has_length(data, values):
        raise irregular(name, shape)  # lists in flat data
    elif values != expected:
        raise bad_request(f"input {name!r} of shape {list(shape)} needs {expected} values, got {values}")


def python_value(data: Any) -> Any:
    if isinstance(data, simdjson.Array):
        return data.as_list()
    if isinstance(data, simdjson.Object):
        return data.as_dict()
    return data


# simdjson's array length saturates here (its tape keeps 24 bits of it): past it, len() says this much.
_SATURATED = 0xFFFFFF


def _has_length(value: Any, n: int) -> bool:
    """Whether the list or simdjson Array `value` has n items."""
    length = len(value)
    if length < _SATURATED or not isinstance(value, simdjson.Array):
        return length == n
    if n < _SATURATED:
        return False
    # An item at n - 1 and none at n: two walks of the tape in C (some 50 ms for 16M items).
    try:
        value[n - 1]
    except IndexError:
        return False
    try:
        value[n]
    except IndexError:
        return True
    return False


def array_length(value: Any) -> int:
    """The number of items of a list or simdjson Array."""
    length = len(value)
    if length < _SATURATED or not isinstance(value, simdjson.Array):
        return length
    counter = count()
    # Counted in C, if through a Python value per item; the counter is one behind when value ends.
    deque(zip(value, counter, strict=False), maxlen=0)
    return next(counter)


def _wrong_kind(datatype: str, name: str) -> RequestError:
    what = "true or false" if datatype == "BOOL" else "numbers" if datatype.startswith("FP") else "integers"
    if datatype.startswith("FP"):
        # orjson (KServe's SDK) writes NaN as null: say how a NaN goes.
        what += " (NaN and infinities as the literals NaN, Infinity, -Infinity; null is none)"
    return bad_request(f"data of {datatype} input {name!r} must hold {what}")


def irregular(name: str, shape: Sequence[int]) -> RequestError:
    return bad_request(
        f"data of input {name!r} is not a regular array of shape {list(shape)}: nested lists must "
        "follow the shape at every level, or the values be given flat in row-major order"
    )


def _out_of_range(datatype: str, name: str) -> RequestError:
    info = np.iinfo(DTYPES[datatype])
    return bad_request(f"data of {datatype} input {name!r} is out of range [{info.min}, {info.max}]")


def _check_layout(data: Any, shape: tuple[int, ...], name: str) -> bool:
    """Whether `data` is nested; nested data must have the shape's length at every level.

    The lists are looked at (a slice at a time, in C), never the elements of the innermost ones: the
    count of numbers that simdjson exports, checked after, finds any surplus or lack there.
    """
    if len(shape) < 2 or not len(data) or not isinstance(data[0], ARRAYS):
        return False
    if not _has_length(data, shape[0]):
        raise irregular(name, shape)
    _check_nested(data, shape, 0, name)
    return True


def _check_nested(lists: Any, shape: tuple[int, ...], depth: int, name: str) -> None:
    """The lists at `depth + 1` under `lists` (which has shape[depth] of them) and below."""
    inner = depth + 1
    innermost = inner == len(shape) - 1
    width = shape[inner]
    if len(lists) <= 8 or width >= _SATURATED:  # a few rows: a loop costs less than the slices' set-up
        for sub in lists:
            if type(sub) not in _ARRAY_TYPES or not _has_length(sub, width):
                raise irregular(name, shape)
            if not innermost:
                _check_nested(sub, shape, inner, name)
        return
    iterator: Iterator[Any] = iter(lists)
    while chunk := list(islice(iterator, _SLICE)):
        if not set(map(type, chunk)) <= _ARRAY_TYPES or set(map(len, chunk)) != {width}:
            raise irregular(name, shape)
        if not innermost:
            for sub in chunk:
                _check_nested(sub, shape, inner, name)


# The Python types of the values each datatype takes: what simdjson's as_buffer takes for its kind.
_PYTHON_TYPES: Mapping[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    **dict.fromkeys(("FP16", "FP32", "FP64"), frozenset({int, float})),
    **dict.fromkeys(
        ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"), frozenset({int})
    ),
}


def _python_tensor(
    data: list[Any], datatype: str, shape: tuple[int, ...], name: str, nested: bool
) -> np.ndarray:
    """Data as Python values (small requests, BOOL, Python's json module): the checks of the buffer path."""
    if not nested:
        types = set(map(type, data))
        values = len(data)
    else:
        types = set()
        values = 0
        for row in data if len(shape) == 2 else _innermost(data, len(shape) - 1):
            types.update(map(type, row))
            values += len(row)
    if not types <= _PYTHON_TYPES[datatype]:
        if list in types:
            raise irregular(name, shape)
        raise _wrong_kind(datatype, name)
    _check_count(values, data, nested, shape, name)
    if datatype == "BOOL":
        return np.array(data, dtype=np.bool_).reshape(shape)
    try:
        raw = np.array(data, dtype=_BUFFER_DTYPE[_BUFFER_KIND[datatype]])
    except OverflowError:  # an integer beyond 64 bits, or negative for unsigned, from Python's json module
        if datatype.startswith("FP"):
            raise bad_request(f"data of {datatype} input {name!r} holds a number beyond a double") from None
        raise _out_of_range(datatype, name) from None
    return _cast_numbers(raw, datatype, shape, name)


def _innermost(data: list[Any], depth: int) -> Iterator[list[Any]]:
    """The lists `depth` levels down (_check_layout has seen that they are lists)."""
    if depth == 0:
        yield data
        return
    for sub in data:
        yield from _innermost(sub, depth - 1)


def finish_tensor(tensor: np.ndarray | Numbers) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    return _cast_numbers(tensor.raw, tensor.datatype, tensor.shape, tensor.name)


def _cast_numbers(raw: np.ndarray, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The array of the input's datatype, from the 64-bit numbers simdjson exported."""
    dtype = DTYPES[datatype]
    if dtype.itemsize == 8:
        return raw.reshape(shape)  # already FP64, INT64 or UINT64
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # values beyond FP32 or FP16 become inf, as numpy casts them
            return raw.astype(dtype).reshape(shape)
    if raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise _out_of_range(datatype, name)
    return raw.astype(dtype).reshape(shape)


def _flatten_strings(data: list[Any], name: str) -> list[str]:
    flat: list[str] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                flat.append(item)
            elif isinstance(item, list):
                if len(stack) > MAX_RANK:
                    raise bad_request(f"data of input {name!r} is nested too deeply")
                stack.append(iter(item))
                break
            else:
                raise bad_request(f"data of BYTES input {name!r} must hold strings")
        else:
            stack.pop()
    return flat
