"""Build the model store's ONNX models from literal weights, byte for byte the same on every machine.

    .venv/bin/python hack/model-store/build_models.py OUT_DIR

writes OUT_DIR/<name>/<version>/model.onnx and OUT_DIR/index.json (name, version, sha256, what
the model is). The examples pin these files' sha256, so the bytes must not depend on the machine.
They used to come from a scikit-learn fit at build time, whose solver's last digits follow the
OpenBLAS kernel the CPU selects (issue #28): the pinned digest matched on Haswell only. So nothing
here is computed with a BLAS, a thread pool or a solver: the weights are constants below, fitted
once, and the graphs are written with onnx.helper, with every field that a newer onnx could fill
differently (IR version, producer, opsets) set explicitly. tests/examples/test_model_store.py
rebuilds the store under every OpenBLAS kernel and checks the constants against a fresh fit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import AttributeProto, TensorProto, helper

IR_VERSION = 8
OPSETS = {"": 17, "ai.onnx.ml": 3}
PRODUCER = ("modelship-model-store", "1")  # bump the version when the graphs written here change
ML = "ai.onnx.ml"

# The iris data: X [N, 4] float32 is sepal length, sepal width, petal length, petal width (cm);
# the labels 0, 1, 2 are setosa, versicolor, virginica.
CLASSES = (0, 1, 2)

# The constants below were fitted once with scikit-learn 1.9.1 on its bundled iris data (features
# as float32) under OpenBLAS's Haswell kernel, the fit whose digest the examples pinned before. The
# nodes carry exactly the attributes skl2onnx 1.20.0 wrote for that fit (no ZipMap), so the models
# answer as before, bit for bit; skl2onnx declared ai.onnx.ml 1, the least these ops need.

# Version 1: LogisticRegression(max_iter=1000), coef_ and intercept_ rounded to 3 decimals.
# One row per class, one column per feature; softmax of X @ COEFFICIENTS.T + INTERCEPTS.
COEFFICIENTS = (
    (-0.424, 0.970, -2.517, -1.076),
    (0.539, -0.320, -0.207, -0.944),
    (-0.115, -0.650, 2.724, 2.020),
)
INTERCEPTS = (9.839, 2.206, -12.045)


@dataclass(frozen=True)
class Split:
    feature: int
    threshold: float
    true: int  # the node for X[:, feature] <= threshold
    false: int


@dataclass(frozen=True)
class Leaf:
    counts: tuple[int, int, int]  # training flowers of each class that end here


# Version 2: DecisionTreeClassifier(max_depth=4, random_state=0), node i of its tree_ as TREE[i].
# scikit-learn's thresholds are float64 midpoints of float32 data values (1.6500000357627869 for
# 1.65); the graph compares float32 inputs, for which `x <= midpoint` is `x <= float32(1.65)`.
TREE: tuple[Split | Leaf, ...] = (
    Split(3, 0.80, 1, 2),  # 0: petal width
    Leaf((50, 0, 0)),  # 1
    Split(3, 1.75, 3, 10),  # 2: petal width
    Split(2, 4.95, 4, 7),  # 3: petal length
    Split(3, 1.65, 5, 6),  # 4: petal width
    Leaf((0, 47, 0)),  # 5
    Leaf((0, 0, 1)),  # 6
    Split(3, 1.55, 8, 9),  # 7: petal width
    Leaf((0, 0, 3)),  # 8
    Leaf((0, 2, 1)),  # 9
    Split(2, 4.85, 11, 14),  # 10: petal length
    Split(0, 5.95, 12, 13),  # 11: sepal length
    Leaf((0, 1, 0)),  # 12
    Leaf((0, 0, 2)),  # 13
    Leaf((0, 0, 43)),  # 14
)


def _ints(key: str, values: Sequence[int]) -> AttributeProto:
    return helper.make_attribute(key, list(values), attr_type=AttributeProto.INTS)


def _floats(key: str, values: Sequence[float]) -> AttributeProto:
    # Spelled out: onnx would store [1, 0] as INTS. Python floats become float32 in the proto.
    return helper.make_attribute(key, [float(v) for v in values], attr_type=AttributeProto.FLOATS)


def _strings(key: str, values: Sequence[str]) -> AttributeProto:
    return helper.make_attribute(key, list(values), attr_type=AttributeProto.STRINGS)


def _int(key: str, value: int) -> AttributeProto:
    return helper.make_attribute(key, value, attr_type=AttributeProto.INT)


def _string(key: str, value: str) -> AttributeProto:
    return helper.make_attribute(key, value, attr_type=AttributeProto.STRING)


def _ml_node(
    op: str, inputs: list[str], outputs: list[str], attributes: list[AttributeProto]
) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, outputs, name=op, domain=ML)
    node.attribute.extend(attributes)
    return node


def logistic_regression() -> list[onnx.NodeProto]:
    linear = _ml_node(
        "LinearClassifier",
        ["X"],
        ["label", "scores"],
        [
            _ints("classlabels_ints", CLASSES),
            _floats("coefficients", [c for row in COEFFICIENTS for c in row]),
            _floats("intercepts", INTERCEPTS),
            _int("multi_class", 1),
            _string("post_transform", "SOFTMAX"),
        ],
    )
    return [linear, _ml_node("Normalizer", ["scores"], ["probabilities"], [_string("norm", "L1")])]


def decision_tree() -> list[onnx.NodeProto]:
    # The node attributes list every node; a leaf's split fields are zeros.
    splits = [node if isinstance(node, Split) else Split(0, 0.0, 0, 0) for node in TREE]
    leaves = [(i, node) for i, node in enumerate(TREE) if isinstance(node, Leaf)]
    tree = _ml_node(
        "TreeEnsembleClassifier",
        ["X"],
        ["label", "probabilities"],
        [
            _ints("class_ids", [c for _ in leaves for c in CLASSES]),
            _ints("class_nodeids", [i for i, _ in leaves for _ in CLASSES]),
            _ints("class_treeids", [0] * len(leaves) * len(CLASSES)),
            _floats("class_weights", [n / sum(leaf.counts) for _, leaf in leaves for n in leaf.counts]),
            _ints("classlabels_int64s", CLASSES),
            _ints("nodes_falsenodeids", [s.false for s in splits]),
            _ints("nodes_featureids", [s.feature for s in splits]),
            _floats("nodes_hitrates", [1.0] * len(TREE)),
            _ints("nodes_missing_value_tracks_true", [0] * len(TREE)),
            _strings("nodes_modes", ["LEAF" if isinstance(node, Leaf) else "BRANCH_LEQ" for node in TREE]),
            _ints("nodes_nodeids", range(len(TREE))),
            _ints("nodes_treeids", [0] * len(TREE)),
            _ints("nodes_truenodeids", [s.true for s in splits]),
            _floats("nodes_values", [s.threshold for s in splits]),
            _string("post_transform", "NONE"),
        ],
    )
    return [tree]


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    description: str
    nodes: list[onnx.NodeProto]

    @property
    def path(self) -> str:
        return f"{self.name}/{self.version}/model.onnx"

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            f"{self.name}_v{self.version}",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
            [
                helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(CLASSES)]),
            ],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(domain, version) for domain, version in OPSETS.items()],
            ir_version=IR_VERSION,
            producer_name=PRODUCER[0],
            producer_version=PRODUCER[1],
            model_version=int(self.version),
        )
        onnx.checker.check_model(model)
        return model


CATALOGUE = (
    StoredModel(
        "iris",
        "1",
        "logistic regression on the iris data (input X: float32 [N, 4]; outputs label, probabilities)",
        logistic_regression(),
    ),
    StoredModel(
        "iris",
        "2",
        "decision tree of depth 4 on the iris data (same signature as version 1, other answers)",
        decision_tree(),
    ),
)


def build(out: Path) -> list[dict[str, str]]:
    index = []
    for entry in CATALOGUE:
        data = entry.model().SerializeToString()
        target = out / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        index.append(
            {
                "name": entry.name,
                "version": entry.version,
                "path": entry.path,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": str(len(data)),
                "description": entry.description,
            }
        )
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for entry in build(Path(argv[0])):
        print(f"{entry['path']}  sha256 {entry['sha256']}  ({entry['bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
