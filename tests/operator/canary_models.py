"""Real ONNX models for canary tests: one that serves well, one that breaks on some requests, a slow one.

Each comes with the V2 inference requests to send it, so a test can make the traffic a canary
analysis should pass or fail on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.server import models

# onnxruntime's Python binding decodes string outputs as UTF-8; these bytes are not.
NOT_UTF8 = b"\xff\xfe"


@dataclass(frozen=True)
class CanaryModel:
    name: str
    model: onnx.ModelProto
    request: dict[str, Any]  # a V2 inference request the server answers with 200
    failing_request: dict[str, Any] | None = None  # one it answers with a 5xx

    def save(self, folder: Path) -> Path:
        return models.save(self.model, folder / f"{self.name}.onnx")


def _tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def healthy() -> CanaryModel:
    """The small MLP of the server tests: x [batch, 4] float32 -> y [batch, 3]."""
    return CanaryModel("healthy", models.mlp(), _tensor("x", "FP32", [1, 4], [0.1, 0.2, 0.3, 0.4]))


def broken_labels() -> CanaryModel:
    """index [batch] int64 -> label [batch]: a lookup in a label table whose second entry is not UTF-8.

    Index 0 (and the server's warm-up, which sends zeros) gets "ok"; index 1 makes onnxruntime's
    binding raise UnicodeDecodeError while it hands the output over, a failure of the model and
    not of the request, which the server answers with 500. (An onnxruntime error such as a Gather
    index out of bounds is answered 400: the server counts that as the client's mistake.)
    """
    return _labels("broken_labels", NOT_UTF8)


def good_labels() -> CanaryModel:
    """The same lookup as `broken_labels()` whose second entry is text: both of its requests get 200."""
    return dataclasses.replace(_labels("good_labels", b"fine"), failing_request=None)


def _labels(name: str, second: bytes) -> CanaryModel:
    table = helper.make_tensor("table", TensorProto.STRING, [2], [b"ok", second])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["label"], axis=0)],
        name,
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return CanaryModel(
        name,
        model,
        request=_tensor("index", "INT64", [1], [0]),
        failing_request=_tensor("index", "INT64", [1], [1]),
    )


def slow(iterations: int = 2500) -> CanaryModel:
    """The server tests' Loop of 256x256 matrix products: tens of milliseconds per request."""
    width = 256
    return CanaryModel(
        "slow", models.slow(iterations, width), _tensor("x", "FP32", [1, width], [0.01] * width)
    )


# Inputs the MLP of `classifier()` sorts with a clear margin (0.5 or more between its two highest
# scores, in float64), so that no kernel's rounding changes a class: three of class 1, one of class 0.
# Traffic that is not uniform over the classes is what makes a permutation of them show in the
# distribution of predictions: over inputs of every class alike, permuted answers look alike.
CLASSIFIER_INPUTS = (
    ([-5.42, -3.78, -0.35, -0.84], 1),
    ([-1.03, -3.3, 0.33, 0.22], 1),
    ([0.08, -0.58, -1.56, -0.51], 1),
    ([-1.57, 1.34, 3.57, -0.62], 0),
)
# Column j of the permuted classifier's scores is column PERMUTATION[j] of the classifier's.
PERMUTATION = (1, 2, 0)


def classifier(release: str = "") -> CanaryModel:
    """The MLP of `healthy()` as a classifier: x [batch, 4] -> class scores y [batch, 3]. `release`
    goes into the file's doc string, so that a retrained-but-equal version is another file."""
    model = models.mlp()
    model.doc_string = release
    request = _tensor("x", "FP32", [1, 4], CLASSIFIER_INPUTS[0][0])
    return CanaryModel(f"classifier{release}", model, request)


def permuted_classifier() -> CanaryModel:
    """Wrong but healthy: the classifier with the columns of its last layer permuted, as a model
    exported with its class labels in another order. It answers as fast, never fails, and puts every
    input in the wrong class."""
    model = models.mlp()
    last = {init.name: init for init in model.graph.initializer}
    for name in ("w1", "b1"):
        values = numpy_helper.to_array(last[name])
        last[name].CopyFrom(numpy_helper.from_array(values[..., list(PERMUTATION)], name))
    onnx.checker.check_model(model)
    return CanaryModel("permuted_classifier", model, _tensor("x", "FP32", [1, 4], CLASSIFIER_INPUTS[0][0]))


def classifier_requests() -> list[dict[str, Any]]:
    """One V2 request per input of CLASSIFIER_INPUTS, in order."""
    return [_tensor("x", "FP32", [1, 4], x) for x, _ in CLASSIFIER_INPUTS]
