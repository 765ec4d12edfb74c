"""The chart's two replicas: with the chart's namespaced RBAC, Kopf peering keeps one active and
the other paused (yet alive for its liveness probe); stopping the active one hands over."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import ROOT
from tests.helm.scoped_operator import ScopedOperator, scoped_operator
from tests.operator.models import Models

pytestmark = pytest.mark.cluster


@pytest.fixture
def replicas(
    kube_bin_dir: Path, kubeconfig: str, tmp_path: Path
) -> Iterator[tuple[ScopedOperator, ScopedOperator]]:
    with scoped_operator(kube_bin_dir, kubeconfig, tmp_path, watched=1) as active:
        standby = active.replica("standby")
        try:
            yield active, standby
        finally:
            standby.stop()


def _reconciled(op: ScopedOperator) -> list[str]:
    return [line["message"] for line in op.snapshot() if line.get("message", "").startswith("reconciled ")]


def _liveness(op: ScopedOperator) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.probe_port}/healthz", timeout=5) as response:
        return int(response.status)


def test_one_replica_acts_the_other_waits_alive_and_takes_over_when_the_first_stops(
    replicas: tuple[ScopedOperator, ScopedOperator], k8s_api: client.ApiClient
) -> None:
    active, standby = replicas
    peering = f"modelship-{active.release_namespace}"
    active.start(peering, extra_env={"MODELSHIP_PEERING_PRIORITY": "100"})
    standby.start(peering, extra_env={"MODELSHIP_PEERING_PRIORITY": "10"})
    # The operator starts paused until it has read the peering (it sets peering.mandatory), so
    # a standby stays paused without a word; it must still answer its liveness probe.
    assert _liveness(standby) == 200

    ns = active.watched[0]
    models = Models(k8s_api, ns)
    active.kubectl("apply", "--server-side", "-n", ns, "-f", str(ROOT / "examples" / "minimal.yaml"))
    models.wait_ready("iris", timeout=60)
    assert _reconciled(active), "the active replica did not reconcile"
    assert not _reconciled(standby), "the paused replica reconciled"

    active.stop()  # SIGTERM: it leaves the peering, so the standby need not wait for it to expire
    standby.wait_for(lambda line: "Resuming operations" in line["message"], what="the take-over")
    models.patch("iris", {"spec": {"replicas": 1}})
    models.wait_ready("iris", timeout=60)
    assert _reconciled(standby), "the standby did not take over"
    assert not standby.errors(), standby.errors()
