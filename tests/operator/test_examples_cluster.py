"""Every manifest in examples/ is accepted as written and becomes Ready."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.operator.conftest import OperatorProcess
from tests.operator.models import Models

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_minimal_and_autoscaled_examples_exist() -> None:
    assert {"minimal.yaml", "autoscaled.yaml"} <= {path.name for path in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_an_example_becomes_ready(
    path: Path,
    k8s_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubectl: Callable[..., Any],
) -> None:
    kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    models = Models(k8s_api, namespace)
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == naming.KIND:
            body = models.wait_ready(document["metadata"]["name"])
            assert body["status"]["phase"] == "Healthy"
