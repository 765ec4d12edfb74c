"""The onnxruntime side: signatures, batch detection, warm-up, and models the protocol cannot carry."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from modelship.server.errors import ModelLoadError
from modelship.server.fetch import ModelFile
from modelship.server.protocol import TensorSpec
from modelship.server.runtime import ModelRuntime
from onnx import TensorProto, helper

from tests.server import models


def _load(model: onnx.ModelProto) -> ModelRuntime:
    return ModelRuntime.load(ModelFile(model.SerializeToString(), "f" * 64, "test.onnx"), threads=1)


def test_signature_and_batch_dimension() -> None:
    mlp = _load(models.mlp())
    assert mlp.signature.inputs == (TensorSpec("x", "FP32", (-1, 4), ("batch", None)),)
    assert mlp.signature.batched
    fixed = _load(models.fixed())
    assert fixed.signature.outputs == (
        TensorSpec("doubled", "FP32", (2, 3), (None, None)),
        TensorSpec("total", "FP32", ()),
    )
    assert not fixed.signature.batched
    # Dynamic first dimensions named apart are sizes of their own, not one batch: no rows to merge.
    every = _load(models.every())
    assert not every.signature.batched
    assert every.signature.inputs[0] == TensorSpec("bool", "BOOL", (-1, -1), ("bool_rows", "bool_cols"))
    # x[n] -> y[n, n]: the first dimension's name on another dimension, so rows are not independent.
    assert not _load(models.outer()).signature.batched
    dtypes = _load(models.dtypes())
    assert [s.datatype for s in dtypes.signature.inputs] == [
        "INT64",
        "INT32",
        "INT8",
        "UINT8",
        "BOOL",
        "FP16",
        "FP64",
    ]


def test_symbolic_dimensions_keep_their_names_and_anonymous_ones_do_not() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "dims",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    signature = _load(model).signature
    assert signature.inputs[0].shape == (-1, -1, 3)
    assert signature.inputs[0].symbols == ("n", None, None)
    assert signature.outputs[0].symbols == ("n", None, None)


def test_warm_up_and_run() -> None:
    runtime = _load(models.mlp())
    runtime.warm_up(max_batch_size=8)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(runtime.run({"x": x})["y"], models.mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_a_model_with_a_type_the_protocol_cannot_carry_is_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="output 'seq' has type seq\\(tensor\\(float\\)\\)"):
        _load(model)


def test_garbage_is_not_a_model() -> None:
    with pytest.raises(ModelLoadError, match=r"test\.onnx is not a loadable ONNX model: "):
        ModelRuntime.load(ModelFile(b"\x00garbage", "f" * 64, "test.onnx"), threads=1)
