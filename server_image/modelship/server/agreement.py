"""Whether a canary answered a mirrored request as this server did: its answer read back into arrays,
and the two sets of outputs compared.

Pure functions, no I/O: mirror.py sends the request and hands the answer here.

The answer is read with the decoders the server reads requests with (json_tensors.py, binary_tensors.py,
protocol.split_body): a V2 response's outputs are tensors in the same JSON or binary form as a request's
inputs, NaN and Infinity literals included. A V1 answer, `{"predictions": [...]}`, names no outputs of a
one-output model and writes rows of several as objects: it is read in the layout v1.py writes for this
server's own results, which it is compared with.

Compared, output by output, on the names both sides have, by what the stable output holds:
- labels (integers, booleans, strings): equal, row by row;
- class scores (floats of shape [rows, K], K >= 2): the same argmax in every row, as canary analysis
  compares predictions (predictions.py), so a retrained model whose scores moved but whose classes held
  agrees;
- other floats: close, `abs(a - b) <= tolerance * max(1, abs(b))`, NaN equal to NaN, inf to itself.
A pair agrees when every compared output does on every row; no common output, or a shape that differs,
is a disagreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from modelship.server.binary_tensors import decode_binary_tensor
from modelship.server.datatypes import DTYPES
from modelship.server.errors import RequestError
from modelship.server.json_tensors import (
    ARRAYS,
    finish_tensor,
    json_object,
    load_json,
    python_value,
    read_json_tensor,
)
from modelship.server.protocol import split_body

Outputs = Mapping[str, np.ndarray]


class UnreadableAnswer(ValueError):
    """The canary's 200 answer is not a response of the protocol it was asked in."""


@dataclass(frozen=True)
class Verdict:
    """How a canary's answer compares with this server's; `reason` says where they first differ."""

    agree: bool
    reason: str = ""


AGREE = Verdict(True)


def compare(stable: Outputs, canary: Outputs, tolerance: float) -> Verdict:
    """Whether the canary's outputs agree with this server's on every row of every output both have."""
    common = [name for name in stable if name in canary]
    if not common:
        return Verdict(False, f"no output in common (ours: {sorted(stable)}, the canary's: {sorted(canary)})")
    for name in common:
        ours, theirs = stable[name], canary[name]
        if ours.shape != theirs.shape:
            return Verdict(False, f"output {name!r} has shape {list(theirs.shape)}, ours {list(ours.shape)}")
        if not _output_agrees(ours, theirs, tolerance):
            return Verdict(False, f"output {name!r} differs")
    return AGREE


def _output_agrees(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> bool:
    if ours.dtype.kind != "f":
        return _labels_equal(ours, theirs)
    if theirs.dtype.kind not in "fiub":
        return False
    if ours.ndim == 2 and ours.shape[1] >= 2:
        return bool((ours.argmax(axis=1) == theirs.argmax(axis=1)).all())
    return _close(ours, theirs, tolerance)


def _labels_equal(ours: np.ndarray, theirs: np.ndarray) -> bool:
    if ours.dtype.kind in "OUS" or theirs.dtype.kind in "OUS":
        # Strings: the same text either way (bytes from one side, str from the other).
        return [_text(v) for v in ours.ravel()] == [_text(v) for v in theirs.ravel()]
    return bool(np.array_equal(ours, theirs))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _close(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> bool:
    a = ours.astype(np.float64)
    b = theirs.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        # Finite on both sides: an infinite b would make any a close to it.
        close = (np.abs(a - b) <= tolerance * np.maximum(1.0, np.abs(b))) & np.isfinite(a) & np.isfinite(b)
    return bool((close | (a == b) | (np.isnan(a) & np.isnan(b))).all())


# ---------------------------------------------------------------------------------------------------
# reading the canary's answer


def v2_outputs(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """name -> array of a V2 infer response, each output in its JSON or binary form."""
    try:
        json_part, binary = split_body(body, header_length)
        obj = json_object(load_json(json_part))
        raw_outputs = obj.get("outputs") if obj is not None else None
        if not isinstance(raw_outputs, ARRAYS):
            raise UnreadableAnswer("the answer has no list of outputs")
        outputs: dict[str, np.ndarray] = {}
        offset = 0
        for raw in raw_outputs:
            name, array, used = _v2_output(raw, binary, offset)
            outputs[name] = array
            offset += used
        return outputs
    except RequestError as exc:
        raise UnreadableAnswer(exc.message) from None


def _v2_output(value: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    raw = json_object(value)
    if raw is None or not isinstance(raw.get("name"), str):
        raise UnreadableAnswer("an output is not an object with a name")
    name, datatype = raw["name"], raw.get("datatype")
    shape_value = python_value(raw.get("shape"))
    if not isinstance(datatype, str) or datatype not in DTYPES or not isinstance(shape_value, list):
        raise UnreadableAnswer(f"output {name!r} has no known datatype or no shape")
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape_value):
        raise UnreadableAnswer(f"output {name!r} has a shape that is not sizes")
    shape = tuple(shape_value)
    params = json_object(raw.get("parameters")) or {}
    size = params.get("binary_data_size")
    if size is None:
        return name, finish_tensor(read_json_tensor(raw.get("data"), datatype, shape, name)), 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise UnreadableAnswer(f"output {name!r} has a binary_data_size past the answer's end")
    return name, decode_binary_tensor(binary[offset : offset + size], datatype, shape, name), size


def v1_outputs(body: bytes, template: Outputs, names: Sequence[str]) -> dict[str, np.ndarray]:
    """name -> array of a V1 `{"predictions": [...]}` answer, read in the layout v1.py gives `template`
    (this server's results, outputs in the model's order `names`): one output's rows as they are;
    several outputs of as many rows an object per row; else one object of whole outputs."""
    try:
        obj = json_object(load_json(body))
    except RequestError as exc:
        raise UnreadableAnswer(exc.message) from None
    predictions = python_value(obj.get("predictions")) if obj is not None else None
    if not isinstance(predictions, list):
        raise UnreadableAnswer('the answer is not {"predictions": [...]}')
    arrays = [template[name] for name in names]
    try:
        if len(arrays) == 1:
            whole = predictions[0] if arrays[0].ndim == 0 and len(predictions) == 1 else predictions
            return {names[0]: _array(whole)}
        if all(a.ndim >= 1 and a.shape[0] == arrays[0].shape[0] for a in arrays):
            if not all(isinstance(row, dict) for row in predictions):
                raise UnreadableAnswer("the predictions of several outputs are not objects")
            present = [name for name in names if all(name in row for row in predictions)]
            return {name: _array([row[name] for row in predictions]) for name in present}
        if len(predictions) != 1 or not isinstance(predictions[0], dict):
            raise UnreadableAnswer("the predictions are not one object of whole outputs")
        return {name: _array(value) for name, value in predictions[0].items() if name in template}
    except UnreadableAnswer:
        raise
    except ValueError as exc:  # numpy: rows of different lengths
        raise UnreadableAnswer(f"the predictions are not arrays: {exc}") from None


def _array(value: Any) -> np.ndarray:
    array = np.array(value)
    if array.dtype.kind == "U":
        return array.astype(object)
    return array
