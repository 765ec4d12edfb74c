"""Build the model store's ONNX models from data that ships with scikit-learn, reproducibly.

    .venv/bin/python hack/model-store/build_models.py OUT_DIR

writes OUT_DIR/<name>/<version>/model.onnx and OUT_DIR/index.json (name, version, sha256, what
the model is). The examples pin these files' sha256: the same pinned library versions
(pyproject.toml) give the same bytes on every machine, because nothing here is random (fixed
seeds, a deterministic solver, coefficients rounded before export) and the export pins its opsets.
tests/examples/test_model_store.py rebuilds them and fails when a digest drifts from the examples.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

# Opsets pinned so that a newer skl2onnx does not change the graph it writes.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    description: str
    estimator: Any

    @property
    def path(self) -> str:
        return f"{self.name}/{self.version}/model.onnx"


def _rounded(model: LogisticRegression) -> LogisticRegression:
    # Rounding makes the bytes independent of the last digits a solver's version may change.
    model.coef_ = np.round(model.coef_, 3)
    model.intercept_ = np.round(model.intercept_, 3)
    return model


CATALOGUE = (
    StoredModel(
        "iris",
        "1",
        "logistic regression on the iris data (input X: float32 [N, 4]; outputs label, probabilities)",
        LogisticRegression(max_iter=1000),
    ),
    StoredModel(
        "iris",
        "2",
        "decision tree of depth 4 on the iris data (same signature as version 1, other answers)",
        DecisionTreeClassifier(max_depth=4, random_state=0),
    ),
)


def build(out: Path) -> list[dict[str, str]]:
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    index = []
    for entry in CATALOGUE:
        estimator = entry.estimator.fit(features, labels)
        if isinstance(estimator, LogisticRegression):
            estimator = _rounded(estimator)
        graph = to_onnx(estimator, features[:1], options={"zipmap": False}, target_opset=TARGET_OPSET)
        data = graph.SerializeToString()
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
