"""What the model predicts, counted per output and bin: `modelship_predictions_total`.

A canary that answers every request with 200 and the wrong class passes every check on codes and
latency; only the distribution of its answers, beside the stable revision's, shows it. So every server
counts, per predicted row, the bin each of its first few outputs falls in, and canary analysis compares
the revisions' shares of each bin.

What a bin is depends on the output, decided once from the model's signature (a float output whose
width is dynamic is read from each result's shape instead):
- a label (integers, booleans, strings; one value a row): the value as text;
- class scores (floats, [rows, K] with K >= 2: probabilities, logits): the argmax column;
- a regression (floats, one value a row): a fixed bucket of EDGES, not cumulative, so that two revisions'
  counts compare bucket by bucket whatever the model's range (the edges are compared in the output's
  own precision: a float32 0.001 is in the bucket 0.001).
Every other output (images, embeddings, integer matrices) has no bin that means anything across models,
and is not counted.

Bins are bounded, because every bin is a series in Prometheus for as long as the pod lives: at most
MAX_BINS per output, the rest in "other". String labels are first-come: a model with more than MAX_BINS
classes gets its first MAX_BINS as named bins on each pod, so pods may differ in which classes are
named, and only beyond MAX_BINS classes. Integer class indices past MAX_BINS - 1 share "other" alike on
every pod.

The counting runs on the event loop after each request's run, so it is one numpy call per output and a
cached counter child per bin (as Metrics.count_request does for codes), never a label string made twice:
measured alone, 2 µs for a row of 10 class scores, 8 µs for a row of four outputs, 70 µs for 32 rows of
four; in the server under load (bench/server.py's MLP, one row of 10 scores), 5 µs a request against
180-500 µs of the process's CPU a request.
"""

from __future__ import annotations

import collections
import enum
import functools
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
from modelship.server.protocol import Signature, TensorSpec
from prometheus_client import Counter

MAX_BINS = 64
OTHER = "other"
INF = "+Inf"
NAN = "NaN"
# How many distinct values of a label output are remembered on their way to a bin. Strings that differ
# only in bytes invalid in UTF-8 share a bin; this keeps their number from growing without end.
MAX_REMEMBERED_VALUES = 4 * MAX_BINS


def _edges() -> tuple[float, ...]:
    # 0.001, 0.002, 0.005, ..., 500000, 1e6, mirrored below 0, and 0 itself: 57 edges, each a decimal
    # written as one (float("2e-3"), never 2 * 0.001), so that a value on an edge falls in its bin.
    positive = [float(f"{mantissa}e{exponent}") for exponent in range(-3, 6) for mantissa in (1, 2, 5)]
    positive.append(1e6)
    return (*(-edge for edge in reversed(positive)), 0.0, *positive)


# Upper edges of the regression buckets: a value v is counted in the first bucket whose edge is >= v.
EDGES: tuple[float, ...] = _edges()


def _edges_in(kind: type[np.floating]) -> np.ndarray:
    """The edges in a float type's own precision, so that a float32 0.001 falls on the edge 0.001 rather
    than past it (float32(0.001) > 0.001). In float16 the edges from 1e5 up are inf: its every finite
    value is in the bucket of 100000 or below, as it should be, and regression_buckets tells +inf apart."""
    with np.errstate(over="ignore"):
        return np.array(EDGES, dtype=np.float64).astype(kind)


_EDGES_BY_DTYPE = {np.dtype(kind): _edges_in(kind) for kind in (np.float16, np.float32, np.float64)}
# The bin of each bucket index searchsorted gives, then the one past the last edge, then NaN's.
REGRESSION_BINS: tuple[str, ...] = (*(f"{edge:g}" for edge in EDGES), INF, NAN)
_INF_BUCKET = len(EDGES)
_NAN_BUCKET = len(EDGES) + 1

_LABEL_DATATYPES = frozenset(
    ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "BYTES")
)
_FLOAT_DATATYPES = frozenset(("FP16", "FP32", "FP64"))


class Kind(enum.Enum):
    LABEL = "label"
    # The argmax column; a result whose dynamic width turns out to be 1 is counted as a regression.
    SCORES = "scores"
    REGRESSION = "regression"


def kind_of(spec: TensorSpec, batched: bool) -> Kind | None:
    """How an output is counted, None if it is not; from its declared shape (-1: any size).

    Rows are the first dimension of a batched model; an unbatched model's result is one prediction, so
    it counts when it holds one value (or one row of scores).
    """
    shape = spec.shape
    if spec.datatype in _LABEL_DATATYPES:
        return Kind.LABEL if _one_value_per_row(shape, batched) else None
    if spec.datatype not in _FLOAT_DATATYPES:
        return None
    if len(shape) == 2 and (batched or shape[0] in (1, -1)) and (shape[1] >= 2 or shape[1] == -1):
        return Kind.SCORES
    return Kind.REGRESSION if _one_value_per_row(shape, batched) else None


def _one_value_per_row(shape: tuple[int, ...], batched: bool) -> bool:
    if batched and not shape:
        return False
    per_row = shape[1:] if batched else shape
    return len(per_row) <= (1 if batched else 2) and all(dim in (1, -1) for dim in per_row)


def counted_outputs(signature: Signature, limit: int) -> list[tuple[TensorSpec, Kind]]:
    """The first `limit` outputs that can be counted, in the signature's order."""
    counted: list[tuple[TensorSpec, Kind]] = []
    for spec in signature.outputs:
        if len(counted) >= limit:
            break
        kind = kind_of(spec, signature.batched)
        if kind is not None:
            counted.append((spec, kind))
    return counted


def label_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def regression_buckets(values: np.ndarray) -> np.ndarray:
    """Each value's index into REGRESSION_BINS."""
    edges = _EDGES_BY_DTYPE.get(values.dtype)
    if edges is None:
        values = values.astype(np.float64)
        edges = _EDGES_BY_DTYPE[values.dtype]
    buckets = np.searchsorted(edges, values, side="left")
    if not np.isfinite(values).all():
        buckets[np.isnan(values)] = _NAN_BUCKET
        buckets[np.isposinf(values)] = _INF_BUCKET
    return buckets


class OutputCounter:
    """The counter children of one output, by bin; at most MAX_BINS + 1 of them ("other" included)."""

    def __init__(self, name: str, kind: Kind, batched: bool, child: Callable[[str], Counter]) -> None:
        self.name = name
        self.kind = kind
        self._batched = batched
        self._child = child
        # Bin -> child, for every bin made; value (label, column or bucket index) -> its bin's child.
        self._bins: dict[str, Counter] = {}
        self._by_value: dict[Hashable, Counter] = {}

    def observe(self, array: np.ndarray) -> None:
        """Count the rows of one request's result (a result of another shape than declared: nothing)."""
        if self._batched:
            if array.ndim == 0:
                return
            rows = array.shape[0]
        else:
            rows = 1
        if rows == 0:
            return
        if self.kind is Kind.SCORES and array.ndim == 2 and array.shape[0] == rows and array.shape[1] >= 2:
            self._count_scores(array, rows)
        elif array.size != rows:
            return
        elif self.kind is Kind.LABEL:
            self._count_labels(array, rows)
        else:
            self._count_regression(array, rows)

    def _count_labels(self, array: np.ndarray, rows: int) -> None:
        if rows == 1:
            self._label_child(array.item()).inc()
            return
        values = array.reshape(-1)
        if values.dtype == object:
            counts: Sequence[tuple[Hashable, int]] = list(collections.Counter(values.tolist()).items())
        else:
            unique, n = np.unique(values, return_counts=True)
            counts = list(zip(unique.tolist(), n.tolist(), strict=True))
        for value, count in counts:
            self._label_child(value).inc(count)

    def _label_child(self, value: Hashable) -> Counter:
        child = self._by_value.get(value)
        if child is not None:
            return child
        text = label_text(value)
        child = self._bins.get(text)
        if child is None:
            if len(self._bins) >= MAX_BINS:
                # Not remembered: a label of unbounded values (an id) must not grow this cache.
                return self._bin(OTHER)
            child = self._bin(text)
        if len(self._by_value) < MAX_REMEMBERED_VALUES:
            self._by_value[value] = child
        return child

    def _count_scores(self, array: np.ndarray, rows: int) -> None:
        if rows == 1:
            self._column_child(int(array.argmax())).inc()
            return
        columns, n = np.unique(array.argmax(axis=1), return_counts=True)
        for column, count in zip(columns.tolist(), n.tolist(), strict=True):
            self._column_child(column).inc(count)

    def _column_child(self, column: int) -> Counter:
        child = self._by_value.get(column)
        if child is None:
            if column >= MAX_BINS - 1:
                # Not remembered: a vocabulary's logits have tens of thousands of columns.
                return self._bin(OTHER)
            child = self._by_value[column] = self._bin(str(column))
        return child

    def _count_regression(self, array: np.ndarray, rows: int) -> None:
        if rows == 1:
            self._bucket_child(int(regression_buckets(array.reshape(1))[0])).inc()
            return
        buckets, n = np.unique(regression_buckets(array.reshape(-1)), return_counts=True)
        for bucket, count in zip(buckets.tolist(), n.tolist(), strict=True):
            self._bucket_child(bucket).inc(count)

    def _bucket_child(self, bucket: int) -> Counter:
        child = self._by_value.get(bucket)
        if child is None:
            child = self._by_value[bucket] = self._bin(REGRESSION_BINS[bucket])
        return child

    def _bin(self, text: str) -> Counter:
        child = self._bins.get(text)
        if child is None:
            child = self._bins[text] = self._child(text)
        return child


class Predictions:
    """The counted outputs of the served model; counts nothing until `watch` is given its signature."""

    def __init__(self, child: Callable[[str, str], Counter]) -> None:
        # (output, bin) -> a new counter child of the family, labelled with the server's labels too.
        self._child = child
        self.outputs: tuple[OutputCounter, ...] = ()

    def watch(self, signature: Signature, limit: int) -> None:
        self.outputs = tuple(
            OutputCounter(spec.name, kind, signature.batched, functools.partial(self._child, spec.name))
            for spec, kind in counted_outputs(signature, limit)
        )

    def observe(self, results: Mapping[str, np.ndarray]) -> None:
        """Count one request's results (output name -> its rows)."""
        for output in self.outputs:
            array = results.get(output.name)
            if array is not None:
                output.observe(array)
