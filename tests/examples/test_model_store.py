"""The examples pin the sha256 of the model store's files: rebuilding the models gives those bytes.

hack/model-store/build_models.py writes the models from literal weights, so their bytes must not
depend on the machine: the store is rebuilt here under every OpenBLAS kernel this CPU runs, with one
and two threads, and must give the examples' digests each time (issue #28: a scikit-learn fit at
build time gave other bytes on every kernel but Haswell). A digest that drifts fails here, with the
new digest to pin, before any pod refuses its model on the cluster. The literal weights are checked
against a fresh scikit-learn fit, which would catch a typo in them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tests.conftest import ROOT

STORE_URL = "http://models.modelship-store.svc.cluster.local"
# The same files in the store's S3 server (hack/models), bucket `models`.
S3_STORE_URL = "s3://models"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BUILD_SCRIPT = ROOT / "hack" / "model-store" / "build_models.py"

# OPENBLAS_CORETYPE names of OpenBLAS's x86_64 DYNAMIC_ARCH kernels (driver/others/dynamic.c).
# A build has only some of them; a name it lacks maps to a neighbour (Core2 to Prescott), an
# unknown one to the CPU's own kernel, so a name counts only when OpenBLAS reports it back.
CORETYPES = (
    "Katmai", "Coppermine", "Northwood", "Prescott", "Banias", "Atom", "Core2", "Penryn",
    "Dunnington", "Nehalem", "Athlon", "Opteron", "Opteron_SSE3", "Barcelona", "Nano",
    "Sandybridge", "Bobcat", "Bulldozer", "Piledriver", "Haswell", "Steamroller", "Excavator",
    "Zen", "SkylakeX", "Cooperlake", "SapphireRapids",
)  # fmt: skip
# A DYNAMIC_LIST build without a Katmai kernel aliases it to Prescott, and openblas_get_corename
# tests Katmai first: the Prescott kernel is then reported as "Katmai".
REPORTED_AS = {"prescott": {"prescott", "katmai"}}

# Loads numpy's OpenBLAS under the kernel asked for and runs a product on it (a kernel this CPU
# cannot run dies here), then prints what threadpoolctl says was loaded.
PROBE = """
import json, numpy, threadpoolctl
a = numpy.arange(64 * 64, dtype=numpy.float64).reshape(64, 64)
a @ a
print(json.dumps([i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]))
"""
# Runs the build script as its CLI, then prints the OpenBLAS it loaded (through onnx's numpy):
# threadpoolctl only lists libraries already loaded, and this wrapper imports no numpy itself.
BUILD = """
import json, runpy, sys, threadpoolctl
script, out = sys.argv[1:]
sys.argv = [script, out]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print(json.dumps([i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]))
"""


def _openblas_env(coretype: str | None, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_", "OMP_", "GOTO_"))}
    env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    return env


def _openblas(stdout: str) -> list[dict[str, Any]]:
    """The OpenBLAS libraries the process loaded (numpy's; scipy brings its own), from threadpoolctl."""
    loaded = json.loads(stdout.strip().splitlines()[-1])
    assert loaded, "no OpenBLAS loaded"
    return list(loaded)


def _probe(coretype: str) -> str | None:
    """The kernel OpenBLAS reports for OPENBLAS_CORETYPE=coretype; None when the process died."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=_openblas_env(coretype, 1),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode < 0:  # killed by a signal: SIGILL, a kernel this CPU cannot run
        return None
    assert done.returncode == 0, done.stderr
    return str(_openblas(done.stdout)[0]["architecture"])


def _build(
    out: Path, coretype: str | None = None, threads: int = 1
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the store into out; return its index by path and the OpenBLAS the build process loaded."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(BUILD_SCRIPT), str(out)],
        env=_openblas_env(coretype, threads),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    index = json.loads((out / "index.json").read_text())
    return {entry["path"]: entry for entry in index}, _openblas(done.stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("model-store")
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), str(out)], check=True, capture_output=True, timeout=300
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


def _store_path(uri: str) -> str | None:
    """The model's path in the store, whether the example reads it over HTTP or from S3."""
    for store in (STORE_URL, S3_STORE_URL):
        if uri.startswith(f"{store}/"):
            return uri.removeprefix(f"{store}/")
    return None


def _pinned() -> dict[str, str]:
    """path in the store -> the sha256 the examples pin for it."""
    pins: dict[str, str] = {}
    for example, model in _models_of_examples():
        path = _store_path(model["uri"]) or model["uri"]
        assert pins.setdefault(path, model["sha256"]) == model["sha256"], (
            f"{example}: another sha256 for {path}"
        )
    return pins


def test_every_example_takes_its_model_from_the_store_with_the_built_digest(built: dict[str, Any]) -> None:
    models = _models_of_examples()
    assert models
    for example, model in models:
        path = _store_path(model["uri"])
        assert path is not None, f"{example}: {model['uri']} is not in the store"
        entry = built["by_path"].get(path)
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


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86_64 OpenBLAS kernels")
def test_every_openblas_kernel_and_thread_count_builds_the_pinned_bytes(tmp_path: Path) -> None:
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        reported = dict(zip(CORETYPES, pool.map(_probe, CORETYPES), strict=True))
    accepted = [
        name
        for name, architecture in reported.items()
        if architecture is not None and architecture.lower() in REPORTED_AS.get(name.lower(), {name.lower()})
    ]
    assert "Prescott" in accepted and {"Haswell", "Sandybridge"} & set(accepted), f"kernels found: {reported}"
    kernels: dict[str, str] = {}  # reported architecture -> a name that selects it: each kernel once
    for name in accepted:
        kernels.setdefault(str(reported[name]), name)

    runs = [(name, threads) for name in kernels.values() for threads in (1, 2)]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda run: _build(tmp_path / f"{run[0]}-{run[1]}", *run), runs))
    pinned = _pinned()
    for (name, threads), (by_path, loaded) in zip(runs, results, strict=True):
        for openblas in loaded:  # the kernel and the threads asked for really were in use
            assert (openblas["architecture"], openblas["num_threads"]) == (reported[name], threads), (
                name,
                openblas,
            )
        digests = {path: by_path[path]["sha256"] for path in pinned}
        assert digests == pinned, f"OPENBLAS_CORETYPE={name}, {threads} threads"


def _build_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_models", BUILD_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_literal_weights_are_those_scikit_learn_fits(built: dict[str, Any]) -> None:
    """A fresh fit, under whatever kernel this machine picks, labels every iris flower as the store's
    models do. (Between kernels the fit's coefficients move by up to 0.04 and its smallest margin
    between the two likeliest classes stays near 0.03, far from a tie, so every row is compared.)"""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    constants = _build_models()
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)

    def store_labels(version: str) -> np.ndarray:
        session = ort.InferenceSession(str(built["dir"] / "iris" / version / "model.onnx"))
        return np.asarray(session.run(["label"], {"X": features})[0])

    linear = LogisticRegression(max_iter=1000).fit(features, labels)
    np.testing.assert_array_equal(store_labels("1"), linear.predict(features))
    assert np.abs(linear.coef_ - np.array(constants.COEFFICIENTS)).max() < 0.1
    assert np.abs(linear.intercept_ - np.array(constants.INTERCEPTS)).max() < 0.1

    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(features, labels)
    np.testing.assert_array_equal(store_labels("2"), tree.predict(features))
    fitted = tree.tree_
    assert fitted.node_count == len(constants.TREE)
    for i, node in enumerate(constants.TREE):
        if isinstance(node, constants.Leaf):
            assert fitted.children_left[i] == -1, i
            counts = np.rint(fitted.value[i][0] * fitted.weighted_n_node_samples[i])
            assert tuple(int(n) for n in counts) == node.counts, i
            continue
        assert (fitted.feature[i], fitted.children_left[i], fitted.children_right[i]) == (
            node.feature,
            node.true,
            node.false,
        ), i
        # float32 inputs: `x <= t` (float64 t) is `x <= the largest float32 not above t`.
        threshold = np.float32(fitted.threshold[i])
        if threshold > fitted.threshold[i]:
            threshold = np.nextafter(threshold, np.float32(-np.inf))
        assert threshold == np.float32(node.threshold), i
