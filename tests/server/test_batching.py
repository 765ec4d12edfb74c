"""Batching with a real onnxruntime session: merged runs, each caller's own rows back, failures kept apart."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import pytest
from modelship.server.batching import BatchingRunner
from modelship.server.fetch import ModelFile
from modelship.server.metrics import Metrics
from modelship.server.runtime import InferenceError, ModelRuntime
from onnx import TensorProto, helper, numpy_helper

from tests.server import models
from tests.server.conftest import Servers, StartServer


def _runtime(model: onnx.ModelProto) -> ModelRuntime:
    return ModelRuntime.load(ModelFile(model.SerializeToString(), "0" * 64, "test"), threads=1)


@pytest.fixture(scope="module")
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield pool


def _runs(metrics: Metrics) -> tuple[float, float]:
    """(runs, requests) the batch-size histogram has seen."""
    count = metrics.registry.get_sample_value(
        "modelship_batch_size_count", {"model": "m", "version": "1", "revision": ""}
    )
    total = metrics.registry.get_sample_value(
        "modelship_batch_size_sum", {"model": "m", "version": "1", "revision": ""}
    )
    return count or 0.0, total or 0.0


def _batcher(
    runtime: ModelRuntime, executor: concurrent.futures.Executor, **kwargs: float
) -> tuple[BatchingRunner, Metrics]:
    metrics = Metrics("m", "1", "")
    runner = BatchingRunner(
        runtime,
        executor,
        metrics,
        max_batch_size=int(kwargs.get("max_batch_size", 8)),
        max_delay_seconds=kwargs.get("max_delay_seconds", 0.2),
    )
    runner.start()
    return runner, metrics


async def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(executor) -> None:
    runner, metrics = _batcher(_runtime(models.mlp()), executor, max_batch_size=16, max_delay_seconds=0.5)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((rows, 4)).astype(np.float32) for rows in (1, 3, 2, 1, 4, 1, 2, 2)]
    try:
        results = await asyncio.gather(*(runner.infer({"x": x}, len(x)) for x in inputs))
    finally:
        await runner.close()
    for x, result in zip(inputs, results, strict=True):
        assert result["y"].shape == (len(x), 3)
        np.testing.assert_allclose(result["y"], models.mlp_reference(x), rtol=1e-5, atol=1e-6)
    runs, requests = _runs(metrics)
    assert requests == len(inputs)
    assert runs == 1  # 16 rows fill the batch at once


async def test_a_full_batch_does_not_wait_for_the_delay(executor) -> None:
    runner, _ = _batcher(_runtime(models.mlp()), executor, max_batch_size=4, max_delay_seconds=30)
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(runner.infer({"x": np.ones((1, 4), np.float32)}, 1) for _ in range(4))), 10
        )
    finally:
        await runner.close()
    assert time.monotonic() - started < 10


async def test_a_lone_request_waits_for_the_delay_then_runs(executor) -> None:
    runner, metrics = _batcher(_runtime(models.mlp()), executor, max_batch_size=8, max_delay_seconds=0.3)
    started = time.monotonic()
    try:
        await runner.infer({"x": np.ones((1, 4), np.float32)}, 1)
    finally:
        await runner.close()
    assert time.monotonic() - started >= 0.3
    assert _runs(metrics) == (1, 1)


async def test_requests_that_differ_past_the_first_dimension_go_in_separate_batches(executor) -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runner, metrics = _batcher(_runtime(model), executor, max_batch_size=8, max_delay_seconds=0.2)
    a, b, c = np.ones((1, 2), np.float32), np.full((2, 3), 2, np.float32), np.full((1, 2), 3, np.float32)
    try:
        ra, rb, rc = await asyncio.gather(*(runner.infer({"x": x}, len(x)) for x in (a, b, c)))
    finally:
        await runner.close()
    np.testing.assert_array_equal(ra["y"], -a)
    np.testing.assert_array_equal(rb["y"], -b)
    np.testing.assert_array_equal(rc["y"], -c)
    assert _runs(metrics) == (2, 3)  # a and c together, b alone


async def test_one_bad_request_in_a_batch_fails_alone(executor) -> None:
    table = numpy_helper.from_array(np.array([10.0, 11.0, 12.0], dtype=np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["value"])],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runner, _ = _batcher(_runtime(model), executor, max_batch_size=8, max_delay_seconds=0.2)
    requests = [np.array([0]), np.array([7]), np.array([2, 1])]
    try:
        results = await asyncio.gather(
            *(runner.infer({"idx": i}, len(i)) for i in requests), return_exceptions=True
        )
    finally:
        await runner.close()
    first, bad, third = results
    assert isinstance(first, dict) and first["value"].tolist() == [10.0]
    assert isinstance(bad, InferenceError)
    assert isinstance(third, dict) and third["value"].tolist() == [12.0, 11.0]


def test_concurrent_http_callers_get_their_own_rows_ids_and_encodings(servers: Servers) -> None:
    """32 callers at once against the batching server (max 8 rows, 20 ms): every answer is the caller's."""
    url = servers.mlp.url
    rng = np.random.default_rng(42)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(32)]

    def metric(name: str) -> float:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    runs_before, requests_before = metric("modelship_batch_size_count"), metric("modelship_batch_size_sum")

    def call(i: int) -> None:
        x = inputs[i]
        binary = i % 2 == 0
        body = orjson.dumps(
            {
                "id": f"caller-{i}",
                "inputs": [
                    {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": binary}}],
            }
        )
        response = httpx.post(f"{url}/v2/models/mlp/infer", content=body, timeout=30)
        assert response.status_code == 200, response.text
        if binary:
            length = int(response.headers["inference-header-content-length"])
            meta = orjson.loads(response.content[:length])
            y = np.frombuffer(response.content[length:], dtype="<f4").reshape(meta["outputs"][0]["shape"])
        else:
            assert "inference-header-content-length" not in response.headers
            meta = response.json()
            y = np.array(meta["outputs"][0]["data"], dtype=np.float32).reshape(meta["outputs"][0]["shape"])
        assert meta["id"] == f"caller-{i}"
        np.testing.assert_allclose(y, models.mlp_reference(x), rtol=1e-5, atol=1e-6)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(call, range(32)))
    runs = metric("modelship_batch_size_count") - runs_before
    requests = metric("modelship_batch_size_sum") - requests_before
    assert requests == 32
    assert runs < 32  # some requests were merged


def test_a_model_whose_rows_mix_is_never_batched(start_server: StartServer, tmp_path: Path) -> None:
    """x[n] -> y[n, n]: the first dimension is no batch (its name is on the second too). Stacked, each
    caller would get an answer of the merged size holding the others' inputs, with a 200."""
    path = models.save(models.outer(), tmp_path / "outer.onnx")
    server = start_server(
        {
            "MODELSHIP_MODEL_NAME": "outer",
            "MODELSHIP_MODEL_URI": str(path),
            "MODELSHIP_MAX_BATCH_SIZE": "32",
            "MODELSHIP_MAX_DELAY_MS": "300",
        }
    )
    sizes = [2, 3, 5, 1, 4, 2]

    def infer(i: int, n: int) -> tuple[int, np.ndarray]:
        x = np.full(n, float(i + 1), dtype=np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n], "data": x.tolist()}]}
        response = httpx.post(f"{server.url}/v2/models/outer/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        (out,) = response.json()["outputs"]
        return n, np.array(out["data"], dtype=np.float32).reshape(out["shape"])

    with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
        answers = list(pool.map(infer, range(len(sizes)), sizes))
    for i, (n, y) in enumerate(answers):
        assert y.shape == (n, n), (i, y.shape)
        np.testing.assert_array_equal(y, np.full((n, n), float((i + 1) ** 2), dtype=np.float32))
    assert "batching off" in server.log()
