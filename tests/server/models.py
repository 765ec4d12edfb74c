"""Small real ONNX models the server tests (and the benchmark) build with the `onnx` package."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def mlp_weights(sizes: Sequence[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.standard_normal(b) * 0.1).astype(np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def mlp(sizes: Sequence[int] = (4, 8, 3), seed: int = 0) -> onnx.ModelProto:
    """A float32 MLP (ReLU between layers) with a dynamic batch dimension: input x, output y."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = "x"
    layers = mlp_weights(sizes, seed)
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        last = i == len(layers) - 1
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _model(graph)


def mlp_reference(x: np.ndarray, sizes: Sequence[int] = (4, 8, 3), seed: int = 0) -> np.ndarray:
    """The MLP's output in float64 and without a BLAS: a float32 `h @ w` has other last digits under
    each OpenBLAS kernel (7e-6 off onnxruntime's answer under Prescott, against the tests' rtol=1e-5
    on outputs near 0.002); in float64 the reference's own rounding is far below any tolerance."""
    layers = mlp_weights(sizes, seed)
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = (h[:, :, None] * w.astype(np.float64)[None, :, :]).sum(axis=1) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def mlp_rolled(sizes: Sequence[int] = (4, 8, 3), seed: int = 0, shift: int = 1) -> onnx.ModelProto:
    """The MLP with its classes renamed: column i of y is the MLP's column i - shift, so that every row's
    argmax moves (a canary that answers every request, and every one wrongly)."""
    model = mlp(sizes, seed)
    graph = model.graph
    for node in graph.node:
        if list(node.output) == ["y"]:
            node.output[0] = "scores"
    order = np.roll(np.arange(sizes[-1], dtype=np.int64), shift)
    graph.initializer.append(numpy_helper.from_array(order, "order"))
    graph.node.append(helper.make_node("Gather", ["scores", "order"], ["y"], axis=1))
    onnx.checker.check_model(model)
    return model


# name -> (ONNX type, op applied, numpy reference)
DTYPE_CASES = {
    "i64": (TensorProto.INT64, "add_one"),
    "i32": (TensorProto.INT32, "add_one"),
    "i8": (TensorProto.INT8, "identity"),
    "u8": (TensorProto.UINT8, "identity"),
    "b": (TensorProto.BOOL, "not"),
    "f16": (TensorProto.FLOAT16, "add_one"),
    "f64": (TensorProto.DOUBLE, "add_one"),
}


def dtypes() -> onnx.ModelProto:
    """One input per dtype (shape [batch, 2]), each mapped to an output `<name>_out` of the same dtype:
    numbers get +1 (int8/uint8 pass through), booleans are negated."""
    nodes, inputs, outputs, inits = [], [], [], []
    for name, (elem, op) in DTYPE_CASES.items():
        inputs.append(helper.make_tensor_value_info(name, elem, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, ["batch", 2]))
        if op == "add_one":
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            inits.append(numpy_helper.from_array(np.array(1, dtype=dtype), f"{name}_one"))
            nodes.append(helper.make_node("Add", [name, f"{name}_one"], [f"{name}_out"]))
        elif op == "not":
            nodes.append(helper.make_node("Not", [name], [f"{name}_out"]))
        else:
            nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _model(helper.make_graph(nodes, "dtypes", inputs, outputs, inits))


# Every V2 datatype the server maps to an ONNX type (BF16 has none in numpy or onnxruntime's Python API).
EVERY_DATATYPE = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def every() -> onnx.ModelProto:
    """An Identity per V2 datatype: input `<datatype>` of shape [`<datatype>_rows`, `<datatype>_cols`]
    to output `<datatype>_out`. The dimensions are named apart, so each tensor has a shape of its own."""
    inputs, outputs, nodes = [], [], []
    for datatype, elem in EVERY_DATATYPE.items():
        name = datatype.lower()
        dims = [f"{name}_rows", f"{name}_cols"]
        inputs.append(helper.make_tensor_value_info(name, elem, dims))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, dims))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _model(helper.make_graph(nodes, "every", inputs, outputs))


def strings() -> onnx.ModelProto:
    """BYTES in and out: text [batch, 2] with its two columns swapped into `swapped`."""
    order = numpy_helper.from_array(np.array([1, 0], dtype=np.int64), "order")
    node = helper.make_node("Gather", ["text", "order"], ["swapped"], axis=1)
    graph = helper.make_graph(
        [node],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("swapped", TensorProto.STRING, ["batch", 2])],
        [order],
    )
    return _model(graph)


def fixed() -> onnx.ModelProto:
    """No batch dimension: x [2, 3] float32 -> doubled [2, 3] and total [] (the sum of x)."""
    two = numpy_helper.from_array(np.array(2, dtype=np.float32), "two")
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
        [two],
    )
    return _model(graph)


def slow(iterations: int, width: int = 256) -> onnx.ModelProto:
    """x [batch, width] through `iterations` rounds of tanh(h @ W) in a Loop: a model that takes a while."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(
        (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w"
    )
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", width]),
        ],
    )
    inits = [
        w,
        numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    return _model(graph)


def outer() -> onnx.ModelProto:
    """x [n] float32 -> y [n, n], the outer product: a small request that asks for a large answer, whose
    size the model's shapes give before it runs (y's dimensions are x's `n`)."""
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["x", "col_axis"], ["col"]),
            helper.make_node("Unsqueeze", ["x", "row_axis"], ["row"]),
            helper.make_node("Mul", ["col", "row"], ["y"]),
        ],
        "outer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "n"])],
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "col_axis"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "row_axis"),
        ],
    )
    return _model(graph)


def zeros() -> onnx.ModelProto:
    """shape int64 [2] -> y float32 of that shape (ConstantOfShape): an answer whose size only the run
    knows; a negative size makes onnxruntime fail on input the signature allows."""
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"])],
        "zeros",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
    )
    return _model(graph)


def pair() -> onnx.ModelProto:
    """a [n], b [n] float32 -> y = a + b: two inputs whose dynamic dimension must agree."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    return _model(graph)


def wide(width: int = 1024) -> onnx.ModelProto:
    """x [batch, width] float32 -> y [batch, 1], the row sums: request bodies that grow with the rows
    while the answers stay small."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    return _model(graph)


def outputs() -> onnx.ModelProto:
    """An Identity per kind of output the server counts predictions of, in this order: `grid_out` FP32
    [batch, 2, 2] (no bins: not counted), `label` INT64 [batch], `name` STRING [batch, 1], `value_out`
    FP32 [batch] and `flag_out` BOOL [batch], from the inputs grid, code, text, value and flag."""
    pairs: list[tuple[str, str, int, list[str | int | None]]] = [
        ("grid", "grid_out", TensorProto.FLOAT, ["batch", 2, 2]),
        ("code", "label", TensorProto.INT64, ["batch"]),
        ("text", "name", TensorProto.STRING, ["batch", 1]),
        ("value", "value_out", TensorProto.FLOAT, ["batch"]),
        ("flag", "flag_out", TensorProto.BOOL, ["batch"]),
    ]
    graph = helper.make_graph(
        [helper.make_node("Identity", [source], [target]) for source, target, _elem, _dims in pairs],
        "outputs",
        [helper.make_tensor_value_info(source, elem, dims) for source, _target, elem, dims in pairs],
        [helper.make_tensor_value_info(target, elem, dims) for _source, target, elem, dims in pairs],
    )
    return _model(graph)
