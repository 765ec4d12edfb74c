"""The simple V1 `:predict` form: `{"instances": [...]}` in, `{"predictions": [...]}` out.

Instances are read as V2 inputs are (json_tensors.py) and checked against the same signature (protocol.py);
predictions are written with the JSON text of V2 responses (responses.py), NaN and Inf as the same literals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import simdjson
from modelship.server.datatypes import MAX_RANK
from modelship.server.errors import bad_request
from modelship.server.json_tensors import (
    ARRAYS,
    OBJECTS,
    Numbers,
    array_length,
    decode_json_tensor,
    finish_tensor,
    irregular,
    json_object,
    load_json,
    python_value,
    read_json_tensor,
)
from modelship.server.protocol import Signature, TensorSpec, check_shape, names_of, rows_of
from modelship.server.responses import (
    SLICE,
    array_parts,
    as_strings,
    json_text,
    list_parts,
    nonfinite_literal,
)

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def decode_v1_request(body: bytes, signature: Signature) -> tuple[dict[str, np.ndarray], int]:
    """`{"instances": [...]}` as feeds: instances are stacked along a new first axis, one per row.

    A single-input model takes its rows directly; a model with several inputs takes one object per
    instance mapping input names to that row's values.
    """
    # As for V2, the casts wait until the parser is gone.
    tensors = _read_v1_request(body, signature)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        array = finish_tensor(tensors[spec.name])
        check_shape(spec.name, array.shape, spec)
        feeds[spec.name] = array
    return feeds, rows_of(feeds, signature)


def _read_v1_request(body: bytes, signature: Signature) -> dict[str, np.ndarray | Numbers]:
    obj = json_object(load_json(body))
    instances = obj.get("instances") if obj is not None else None
    if not isinstance(instances, ARRAYS) or not len(instances):
        raise bad_request('the request must be {"instances": [...]} with at least one instance')
    if isinstance(instances[0], OBJECTS):
        names = {spec.name for spec in signature.inputs}
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for item in instances:
            if not isinstance(item, OBJECTS) or set(item) != names:
                raise bad_request(f"each instance must have exactly the inputs {names_of(signature.inputs)}")
            for name in names:
                columns[name].append(item[name])
        return {spec.name: _v1_column(columns[spec.name], spec) for spec in signature.inputs}
    if len(signature.inputs) == 1:
        spec = signature.inputs[0]
        return {spec.name: read_json_tensor(instances, spec.datatype, _nested_shape(instances), spec.name)}
    raise bad_request(
        f"the model has several inputs ({names_of(signature.inputs)}): each instance must map them"
    )


def _v1_column(values: list[Any], spec: TensorSpec) -> np.ndarray:
    """One input's values from every instance, stacked: each instance's array is read on its own."""
    if not any(isinstance(value, simdjson.Array) for value in values):
        # Scalars, one per instance (an object among them is refused as a value of the wrong kind).
        scalars = [python_value(value) for value in values]
        return decode_json_tensor(scalars, spec.datatype, _nested_shape(scalars), spec.name)
    rows: list[np.ndarray] = []
    for value in values:
        if not isinstance(value, simdjson.Array):
            raise irregular(spec.name, (len(values), *_nested_shape(values[0])))
        rows.append(decode_json_tensor(value, spec.datatype, _nested_shape(value), spec.name))
    if len({row.shape for row in rows}) != 1:
        raise irregular(spec.name, (len(values), *rows[0].shape))
    return np.stack(rows)


def _nested_shape(values: Any) -> tuple[int, ...]:
    """The shape nested lists claim by their first elements; decode_json_tensor checks the rest."""
    shape: list[int] = []
    probe: Any = values
    while isinstance(probe, ARRAYS):
        shape.append(array_length(probe))
        if not shape[-1] or len(shape) > MAX_RANK:
            break
        probe = probe[0]
    return tuple(shape)


def encode_v1_response(results: Mapping[str, np.ndarray], names: Sequence[str]) -> bytes:
    """`{"predictions": [...]}`: one entry per row; a row of a multi-output model maps names to values."""
    arrays = [results[name] for name in names]
    if len(arrays) == 1:
        array = arrays[0]
        if array.dtype == object:
            strings = np.array(as_strings(array), dtype=object).reshape(array.shape).tolist()
            predictions: Any = [strings] if array.ndim == 0 else strings
        else:
            parts = array_parts(array)
            if array.ndim == 0:
                parts = [b"[", *parts, b"]"]
            return b"".join([b'{"predictions":', *parts, b"}"])
        return orjson.dumps({"predictions": predictions})
    if all(a.ndim >= 1 and a.shape[0] == arrays[0].shape[0] for a in arrays):
        elements = sum([a.size for a in arrays])
        if elements <= SLICE:
            predictions = _v1_objects(names, [_v1_values(a, exact=False) for a in arrays])
            text = orjson.dumps({"predictions": predictions}, option=_NUMPY)
            if b"null" not in text or not any(a.dtype.kind == "f" for a in arrays):
                return text
            return b"".join((b'{"predictions":', _v1_rows(names, arrays), b"}"))
        rows = arrays[0].shape[0]
        step = max(1, SLICE * rows // elements)
        parts = list_parts(
            [_v1_rows(names, [a[i : i + step] for a in arrays])[1:-1]] for i in range(0, rows, step)
        )
        return b"".join([b'{"predictions":', *parts, b"}"])
    whole = {name: _v1_whole(array) for name, array in zip(names, arrays, strict=True)}
    return orjson.dumps({"predictions": [whole]})


def _v1_rows(names: Sequence[str], arrays: Sequence[np.ndarray]) -> bytes:
    """JSON text of the rows of a model with several outputs, one object per row."""
    text = orjson.dumps(_v1_objects(names, [_v1_values(a, exact=False) for a in arrays]), option=_NUMPY)
    if b"null" in text and any(a.dtype.kind == "f" for a in arrays):
        text = orjson.dumps(_v1_objects(names, [_v1_values(a, exact=True) for a in arrays]), option=_NUMPY)
    return text


def _v1_objects(names: Sequence[str], columns: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    # Not strict: the columns have the rows' length by construction, and strict zips cost a µs here.
    return [dict(zip(names, row, strict=False)) for row in zip(*columns, strict=False)]


def _v1_values(array: np.ndarray, exact: bool) -> Sequence[Any]:
    """The array's rows as orjson takes them; `exact`: non-finite floats as JSON literals, not null."""
    kind = array.dtype.kind
    if kind == "O":
        return np.array(as_strings(array), dtype=object).reshape(array.shape).tolist()
    if array.ndim == 1:
        # Indexing a 1-D array gives numpy scalars, and orjson refuses some of them (onnxruntime's int64
        # is numpy.longlong): Python values instead.
        values: list[Any] = array.tolist()
        if exact and kind == "f":
            values = [v if math.isfinite(v) else orjson.Fragment(nonfinite_literal(v)) for v in values]
        return values
    if exact and kind == "f" and not np.isfinite(array).all():
        return [orjson.Fragment(json_text(row)) for row in array]
    return array  # type: ignore[return-value]


def _v1_whole(array: np.ndarray) -> Any:
    if array.dtype == object:
        return np.array(as_strings(array), dtype=object).reshape(array.shape).tolist()
    return orjson.Fragment(json_text(array))
