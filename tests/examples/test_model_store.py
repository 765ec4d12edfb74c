"""The examples pin the sha256 of the model store's files: rebuilding the models gives those bytes.

hack/model-store/build_models.py is deterministic for the pinned scikit-learn/skl2onnx versions;
a digest that drifts (a library upgrade) fails here, with the new digest to pin, before any pod
refuses its model on the cluster.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tests.conftest import ROOT

STORE_URL = "http://models.modelship-store.svc.cluster.local"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("model-store")
    subprocess.run(
        [sys.executable, str(ROOT / "hack" / "model-store" / "build_models.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    index = yaml.safe_load((out / "index.json").read_text())
    return {"dir": out, "by_path": {entry["path"]: entry for entry in index}}


def _models_of_examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                found.append((path.name, doc["spec"]["model"]))
    return found


def test_every_example_takes_its_model_from_the_store_with_the_built_digest(built: dict[str, Any]) -> None:
    models = _models_of_examples()
    assert models
    for example, model in models:
        assert model["uri"].startswith(f"{STORE_URL}/"), f"{example}: {model['uri']} is not in the store"
        entry = built["by_path"].get(model["uri"].removeprefix(f"{STORE_URL}/"))
        assert entry is not None, f"{example}: the store has no {model['uri']}"
        assert entry["version"] == model["version"], example
        assert model["sha256"] == entry["sha256"], f"{example}: pin sha256 {entry['sha256']}"


def test_the_two_iris_versions_answer_differently(built: dict[str, Any]) -> None:
    flower = np.array([[5.9, 3.2, 4.8, 1.8]], dtype=np.float32)
    labels = {}
    for version in ("1", "2"):
        session = ort.InferenceSession(str(built["dir"] / "iris" / version / "model.onnx"))
        label, probabilities = session.run(None, {"X": flower})
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        labels[version] = int(label[0])
    assert labels == {"1": 2, "2": 1}
