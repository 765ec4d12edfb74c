"""Prediction metrics: which outputs are counted, in which bins, bounded; over real HTTP and alone."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from modelship.server import predictions
from modelship.server.config import ConfigError, load_settings
from modelship.server.metrics import Metrics
from modelship.server.predictions import (
    EDGES,
    MAX_BINS,
    OTHER,
    REGRESSION_BINS,
    Kind,
    counted_outputs,
    kind_of,
    label_text,
    regression_buckets,
)
from modelship.server.protocol import Signature, TensorSpec
from prometheus_client.parser import text_string_to_metric_families

from tests.server import models
from tests.server.conftest import ServerProcess
from tests.server.wire import Tensor, request_body

Counts = dict[tuple[str, str], float]
LABELS = {"model": "outputs", "version": "3", "revision": "rev-p"}


@dataclass
class PredictionServers:
    outputs: ServerProcess  # the default: the first 4 outputs that have bins
    first_two: ServerProcess  # MODELSHIP_PREDICTION_OUTPUTS=2
    off: ServerProcess  # MODELSHIP_PREDICTION_OUTPUTS=0
    cap: ServerProcess  # its own, so that no other test has used up bins
    mlp: ServerProcess
    fixed: ServerProcess


@pytest.fixture(scope="module")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServers]:
    folder = tmp_path_factory.mktemp("predictions")
    models.save(models.outputs(), folder / "outputs.onnx")

    def env(name: str, uri: Path, **more: str) -> dict[str, str]:
        return {
            "MODELSHIP_MODEL_NAME": name,
            "MODELSHIP_MODEL_VERSION": "3",
            "MODELSHIP_MODEL_URI": str(uri),
            "MODELSHIP_TERMINATION_LOG": str(folder / f"{name}-termination-log"),
            "MODELSHIP_REVISION": "rev-p",
            **more,
        }

    outputs = folder / "outputs.onnx"
    procs = {
        "outputs": ServerProcess(env("outputs", outputs)),
        "first_two": ServerProcess(env("outputs", outputs, MODELSHIP_PREDICTION_OUTPUTS="2")),
        "off": ServerProcess(env("outputs", outputs, MODELSHIP_PREDICTION_OUTPUTS="0")),
        "cap": ServerProcess(env("outputs", outputs)),
        "mlp": ServerProcess(
            env("mlp", model_dir / "mlp.onnx", MODELSHIP_MAX_BATCH_SIZE="8", MODELSHIP_MAX_DELAY_MS="5")
        ),
        "fixed": ServerProcess(env("fixed", model_dir / "fixed.onnx")),
    }
    try:
        for proc in procs.values():
            proc.start(folder)
        for proc in procs.values():
            proc.wait_ready()
        yield PredictionServers(**procs)
    finally:
        for proc in procs.values():
            proc.stop()


def counted(server: ServerProcess, model: str = "outputs") -> Counts:
    """(output, bin) -> count, from the server's /metrics as Prometheus parses it."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    counts: Counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "modelship_predictions_total":
                continue
            labels = dict(sample.labels)
            assert set(labels) == {"model", "version", "revision", "output", "bin"}, labels
            assert (labels["model"], labels["version"], labels["revision"]) == (model, "3", "rev-p")
            counts[labels["output"], labels["bin"]] = sample.value
    return counts


def added(before: Counts, after: Counts) -> Counts:
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def rows(
    codes: Sequence[int],
    texts: Sequence[str] | None = None,
    values: Sequence[float] | None = None,
    flags: Sequence[bool] | None = None,
) -> list[Tensor]:
    """The outputs model's inputs for len(codes) rows; `value` travels binary, so NaN and inf can too."""
    n = len(codes)
    return [
        Tensor("grid", "FP32", np.zeros((n, 2, 2), np.float32)),
        Tensor("code", "INT64", np.array(codes, np.int64)),
        Tensor("text", "BYTES", np.array([[t] for t in (texts or ["a"] * n)], dtype=object)),
        Tensor("value", "FP32", np.array(values or [0.0] * n, np.float32), binary=True),
        Tensor("flag", "BOOL", np.array(flags or [False] * n, np.bool_)),
    ]


def infer(server: ServerProcess, tensors: Sequence[Tensor], model: str = "outputs") -> httpx.Response:
    body, headers = request_body(tensors)
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=10)


def counting(server: ServerProcess, tensors: Sequence[Tensor], model: str = "outputs") -> Counts:
    """What one successful request adds to the server's counts."""
    before = counted(server, model)
    response = infer(server, tensors, model)
    assert response.status_code == 200, response.text
    return added(before, counted(server, model))


# ---------------------------------------------------------------------------------------------
# over HTTP


def test_labels_are_counted_once_per_row_by_their_value(servers: PredictionServers) -> None:
    got = counting(
        servers.outputs,
        rows([3, 3, 7], texts=["cat", "dög", "cat"], values=[0.5, 0.5, 0.5], flags=[True, False, True]),
    )
    assert got == {
        ("label", "3"): 2,
        ("label", "7"): 1,
        ("name", "cat"): 2,
        ("name", "dög"): 1,
        ("value_out", "0.5"): 3,
        ("flag_out", "true"): 2,
        ("flag_out", "false"): 1,
    }


def test_a_request_of_one_row_counts_one_in_each_output(servers: PredictionServers) -> None:
    got = counting(servers.outputs, rows([-12], texts=["bird"], values=[-3.0], flags=[True]))
    assert got == {("label", "-12"): 1, ("name", "bird"): 1, ("value_out", "-2"): 1, ("flag_out", "true"): 1}


def test_regression_values_fall_in_fixed_buckets_by_their_upper_edge(servers: PredictionServers) -> None:
    values = [0.001, 0.0015, -0.0015, 0.0, -0.0004, 1e6, 2e6, -5e6, math.inf, -math.inf, math.nan, 42.0]
    got = counting(servers.outputs, rows([0] * len(values), values=values))
    assert {key[1]: value for key, value in got.items() if key[0] == "value_out"} == {
        "0.001": 1,  # on its edge (a float32 0.001, compared in float32)
        "0.002": 1,
        "-0.001": 1,
        "0": 2,  # 0, and -0.0004 (above -0.001, at most 0)
        "1e+06": 1,
        "+Inf": 2,
        "-1e+06": 2,  # -5e6 and -inf: at most the lowest edge
        "NaN": 1,
        "50": 1,
    }


def test_class_scores_count_the_argmax_column_of_each_row(servers: PredictionServers) -> None:
    x = np.random.default_rng(3).standard_normal((9, 4)).astype(np.float32)
    expected: Counts = {}
    for column in models.mlp_reference(x).argmax(axis=1).tolist():
        expected["y", str(column)] = expected.get(("y", str(column)), 0) + 1
    assert len(expected) > 1  # the rows do not all agree
    got = counting(servers.mlp, [Tensor("x", "FP32", x)], model="mlp")
    assert got == expected
    # V1 :predict is counted alike.
    before = counted(servers.mlp, "mlp")
    response = httpx.post(f"{servers.mlp.url}/v1/models/mlp:predict", json={"instances": x[:2].tolist()})
    assert response.status_code == 200, response.text
    assert sum(added(before, counted(servers.mlp, "mlp")).values()) == 2


def test_an_unbatched_model_counts_one_prediction_of_its_one_value_outputs(
    servers: PredictionServers,
) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)  # total: 15; doubled [2, 3] has no bins
    got = counting(servers.fixed, [Tensor("x", "FP32", x)], model="fixed")
    assert got == {("total", "20"): 1}


def test_only_the_first_outputs_with_bins_are_counted(servers: PredictionServers) -> None:
    got = counting(servers.first_two, rows([1], texts=["x"], values=[1.0], flags=[True]))
    assert got == {("label", "1"): 1, ("name", "x"): 1}


def test_zero_prediction_outputs_exports_no_prediction_series(servers: PredictionServers) -> None:
    assert infer(servers.off, rows([1, 2], values=[1.0, 2.0])).status_code == 200
    assert counted(servers.off) == {}
    assert "modelship_requests_total{" in httpx.get(f"{servers.off.url}/metrics").text


def test_a_failed_request_counts_no_prediction(servers: PredictionServers) -> None:
    before = counted(servers.outputs)
    tensors = rows([1, 2])
    tensors[1] = Tensor("code", "INT64", np.array([1, 2, 3], np.int64))  # 3 rows against 2
    assert infer(servers.outputs, tensors).status_code == 400
    assert infer(servers.outputs, rows([1]), model="unknown").status_code == 404
    wrong_type = orjson.dumps({"inputs": [{"name": "code", "shape": [1], "datatype": "FP32", "data": [1]}]})
    response = httpx.post(f"{servers.outputs.url}/v2/models/outputs/infer", content=wrong_type)
    assert response.status_code == 400
    assert counted(servers.outputs) == before


def test_labels_past_the_64th_share_the_bin_other(servers: PredictionServers) -> None:
    first = counting(servers.cap, rows(list(range(70))))
    labels = {key[1]: value for key, value in first.items() if key[0] == "label"}
    # np.unique sorts: 0..63 are the first 64 seen.
    assert labels == {**{str(i): 1 for i in range(MAX_BINS)}, OTHER: 6}
    second = counting(servers.cap, rows([5, 100, 64, 64]))
    assert {key[1]: value for key, value in second.items() if key[0] == "label"} == {"5": 1, OTHER: 3}
    assert len([key for key in counted(servers.cap) if key[0] == "label"]) == MAX_BINS + 1


# ---------------------------------------------------------------------------------------------
# the pieces alone


def test_edges_are_a_symmetric_1_2_5_series_from_a_thousandth_to_a_million() -> None:
    positive = [edge for edge in EDGES if edge > 0]
    assert positive[:4] == [0.001, 0.002, 0.005, 0.01] and positive[-3:] == [200000.0, 500000.0, 1e6]
    assert len(positive) == 28 and list(EDGES) == sorted(EDGES)
    assert [-edge for edge in reversed(positive)] + [0.0] + positive == list(EDGES)
    assert REGRESSION_BINS[:2] == ("-1e+06", "-500000") and REGRESSION_BINS[len(EDGES) // 2] == "0"
    assert REGRESSION_BINS[-4:] == ("500000", "1e+06", "+Inf", "NaN")
    assert len(set(REGRESSION_BINS)) == len(REGRESSION_BINS) <= MAX_BINS


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_regression_buckets_compare_in_the_values_own_precision(dtype: type[np.floating]) -> None:
    values = np.array([0.001, 0.0011, -0.001, -0.0011, 0.0, -0.0, 0.2, 0.3, 40000, np.inf, -np.inf, np.nan])
    assert [REGRESSION_BINS[i] for i in regression_buckets(values.astype(dtype)).tolist()] == [
        "0.001",
        "0.002",
        "-0.001",
        "-0.001",
        "0",
        "0",
        "0.2",
        "0.5",
        "50000",
        "+Inf",
        "-1e+06",
        "NaN",
    ]


def test_the_largest_float16_values_stay_below_the_infinite_bucket() -> None:
    # From 1e5 up the edges are inf in float16; only +inf itself is past the last edge.
    values = np.array([65504, -65504, np.inf], dtype=np.float16)
    assert [REGRESSION_BINS[i] for i in regression_buckets(values).tolist()] == ["100000", "-50000", "+Inf"]
    assert [REGRESSION_BINS[i] for i in regression_buckets(np.array([1e6, 1.5e6, 7])).tolist()] == [
        "1e+06",
        "+Inf",
        "10",
    ]


def test_label_text() -> None:
    assert [label_text(v) for v in (True, False, 0, -3, 2**64 - 1, "chat", b"ch\xc3\xa2t", b"\xff")] == [
        "true",
        "false",
        "0",
        "-3",
        "18446744073709551615",
        "chat",
        "chât",
        "\ufffd",
    ]


def _spec(datatype: str, *shape: int) -> TensorSpec:
    return TensorSpec("o", datatype, shape)


@pytest.mark.parametrize(
    ("spec", "batched", "kind"),
    [
        (_spec("INT64", -1), True, Kind.LABEL),
        (_spec("BYTES", -1, 1), True, Kind.LABEL),
        (_spec("BOOL", -1, -1), True, Kind.LABEL),  # counted when the result has one column
        (_spec("INT64", -1, 3), True, None),
        (_spec("UINT8", -1, 2, 1), True, None),
        (_spec("FP32", -1, 3), True, Kind.SCORES),
        (_spec("FP16", -1, -1), True, Kind.SCORES),  # one column in a result: a regression
        (_spec("FP32", -1, 1), True, Kind.REGRESSION),
        (_spec("FP64", -1), True, Kind.REGRESSION),
        (_spec("FP32", -1, 3, 4), True, None),
        (_spec("FP32", -1, 1, 1), True, None),
        (_spec("INT32"), False, Kind.LABEL),
        (_spec("BYTES", 1), False, Kind.LABEL),
        (_spec("INT32", 3), False, None),
        (_spec("FP32"), False, Kind.REGRESSION),
        (_spec("FP32", 1, 1), False, Kind.REGRESSION),
        (_spec("FP32", 1, 5), False, Kind.SCORES),
        (_spec("FP32", 2, 5), False, None),
        (_spec("FP32", 3), False, None),
    ],
)
def test_the_kind_of_an_output_follows_its_datatype_and_shape(
    spec: TensorSpec, batched: bool, kind: Kind | None
) -> None:
    assert kind_of(spec, batched) is kind


def test_counted_outputs_are_the_first_n_that_have_bins() -> None:
    outputs = tuple(
        TensorSpec(name, datatype, shape)
        for name, datatype, shape in [
            ("image", "FP32", (-1, 3, 8, 8)),
            ("a", "INT64", (-1,)),
            ("b", "FP32", (-1, 10)),
            ("embedding", "INT8", (-1, 64)),
            ("c", "FP32", (-1,)),
        ]
    )
    signature = Signature(inputs=(), outputs=outputs, batched=True)
    assert [(spec.name, kind) for spec, kind in counted_outputs(signature, 4)] == [
        ("a", Kind.LABEL),
        ("b", Kind.SCORES),
        ("c", Kind.REGRESSION),
    ]
    assert [spec.name for spec, _kind in counted_outputs(signature, 2)] == ["a", "b"]
    assert counted_outputs(signature, 0) == []


def _rendered(metrics: Metrics) -> Counts:
    counts: Counts = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "modelship_predictions_total":
                counts[sample.labels["output"], sample.labels["bin"]] = sample.value
    return counts


def _watching(*outputs: TensorSpec, batched: bool = True) -> Metrics:
    metrics = Metrics("m", "1", "r")
    metrics.predictions.watch(Signature(inputs=(), outputs=outputs, batched=batched), 4)
    return metrics


def test_string_labels_are_first_come_and_past_64_go_to_other() -> None:
    metrics = _watching(TensorSpec("name", "BYTES", (-1,)))
    names = [f"class-{i}" for i in range(100)]
    for name in reversed(names):
        metrics.predictions.observe({"name": np.array([name], dtype=object)})
    metrics.predictions.observe({"name": np.array(names[:3] + names[-2:], dtype=object)})
    counts = _rendered(metrics)
    assert counts["name", OTHER] == 36 + 3
    assert counts["name", "class-99"] == 2 and ("name", "class-0") not in counts
    assert len(counts) == MAX_BINS + 1
    # Values that are not remembered (an id in every row) keep the cache bounded.
    for i in range(1000):
        metrics.predictions.observe({"name": np.array([f"id-{i}"], dtype=object)})
    assert len(metrics.predictions.outputs[0]._by_value) <= predictions.MAX_REMEMBERED_VALUES


def test_class_columns_from_63_share_other() -> None:
    metrics = _watching(TensorSpec("logits", "FP32", (-1, 1000)))
    logits = np.zeros((4, 1000), np.float32)
    for row, column in enumerate([0, 62, 63, 999]):
        logits[row, column] = 1
    metrics.predictions.observe({"logits": logits})
    metrics.predictions.observe({"logits": logits[3:]})
    assert _rendered(metrics) == {("logits", "0"): 1, ("logits", "62"): 1, ("logits", OTHER): 3}


def test_a_dynamic_width_of_one_is_a_regression_and_odd_results_count_nothing() -> None:
    metrics = _watching(
        TensorSpec("scores", "FP32", (-1, -1)),
        TensorSpec("label", "INT64", (-1, -1)),
        TensorSpec("value", "FP64", (-1,)),
    )
    p = metrics.predictions
    p.observe({"scores": np.array([[0.3], [7.0]], np.float32)})
    p.observe({"scores": np.zeros((2, 0), np.float32), "label": np.zeros((2, 3), np.int64)})
    p.observe({"scores": np.zeros((0, 4), np.float32), "label": np.zeros((0, 1), np.int64)})
    p.observe({"value": np.array(1.0)})  # a scalar from a batched model: no rows
    p.observe({"value": np.zeros((2, 2))})  # four values for two rows
    p.observe({})
    assert _rendered(metrics) == {("scores", "0.5"): 1, ("scores", "10"): 1}


def test_an_unbatched_result_is_one_prediction() -> None:
    metrics = _watching(
        TensorSpec("total", "FP32", ()),
        TensorSpec("scores", "FP32", (1, 3)),
        TensorSpec("label", "BYTES", (-1,)),
        batched=False,
    )
    p = metrics.predictions
    p.observe({"total": np.array(3.0, np.float32), "scores": np.array([[0.1, 0.7, 0.2]], np.float32)})
    p.observe({"label": np.array(["yes"], dtype=object)})
    p.observe({"label": np.array(["yes", "no"], dtype=object)})  # two values: not one prediction
    assert _rendered(metrics) == {("total", "5"): 1, ("scores", "1"): 1, ("label", "yes"): 1}


def test_prediction_outputs_setting() -> None:
    base = {"MODELSHIP_MODEL_NAME": "m", "MODELSHIP_MODEL_URI": "/m.onnx"}
    assert load_settings([], base).prediction_outputs == 4
    assert load_settings([], {**base, "MODELSHIP_PREDICTION_OUTPUTS": "0"}).prediction_outputs == 0
    assert load_settings(["--prediction-outputs", "2"], base).prediction_outputs == 2
    with pytest.raises(ConfigError, match="prediction_outputs must not be negative"):
        load_settings([], {**base, "MODELSHIP_PREDICTION_OUTPUTS": "-1"})
