"""No drift: once the operator has reconciled an example, `kubectl diff --server-side` shows
nothing and applying it again changes nothing; the operator owns only `status`, and leaves no
annotations or finalizers that a GitOps tool would see as a difference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.helm.scoped_operator import ScopedOperator, scoped_operator
from tests.operator.models import Models
from tests.support import wait_until

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _settled(body: dict[str, Any]) -> dict[str, Any] | None:
    """The object once one revision alone is left in its status: the operator has no more to write."""
    return body if len((body.get("status") or {}).get("revisions") or ()) == 1 else None


@pytest.fixture(scope="module")
def operator(
    kube_bin_dir: Path, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScopedOperator]:
    with scoped_operator(kube_bin_dir, kubeconfig, tmp_path_factory.mktemp("drift"), watched=1) as op:
        op.start(peering=f"modelship-{op.release_namespace}")
        yield op


def test_every_example_is_covered() -> None:
    assert {"minimal.yaml", "autoscaled.yaml"} <= {path.name for path in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_a_reconciled_example_shows_no_diff_and_reapplying_changes_nothing(
    path: Path, operator: ScopedOperator, k8s_api: client.ApiClient
) -> None:
    ns = operator.watched[0]
    models = Models(k8s_api, ns)
    operator.kubectl("apply", "--server-side", "-n", ns, "-f", str(path))
    names = [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == naming.KIND
    ]
    assert names, f"{path.name} holds no ModelDeployment"
    for name in names:
        models.wait_ready(name, timeout=60)
    # The examples share the namespace, and canary.yaml and minimal.yaml are two versions of one
    # `iris`: the older revision retires (and the status says so) only after its scale-down delay.
    before = {
        name: wait_until(lambda n=name: _settled(models.get(n)), timeout=120, what=f"{name} settled")
        for name in names
    }

    diff = operator.kubectl("diff", "--server-side", "-n", ns, "-f", str(path), check=False)
    # kubectl diff: 0 = no differences, 1 = differences, >1 = an error.
    assert diff.returncode == 0 and not diff.stdout, diff.stdout + diff.stderr

    operator.kubectl("apply", "--server-side", "-n", ns, "-f", str(path))
    for name, old in before.items():
        new = models.get(name)
        assert new["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"], "re-apply wrote"
        assert new["metadata"]["generation"] == old["metadata"]["generation"]

        metadata = new["metadata"]
        assert not metadata.get("finalizers"), metadata.get("finalizers")
        assert not [key for key in metadata.get("annotations") or {} if "kopf" in key], metadata[
            "annotations"
        ]
        # The user's apply owns the spec; the operator's field manager owns the status only.
        managers = {
            (e["manager"], e["operation"], e.get("subresource", "")) for e in metadata["managedFields"]
        }
        assert managers == {("kubectl", "Apply", ""), (naming.FIELD_MANAGER, "Update", "status")}, managers
