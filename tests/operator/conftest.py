"""Fixtures for the operator's cluster tests: the CRDs installed once, and the operator itself
running as a real `kopf run` subprocess whose JSON log lines the tests can wait on."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TEST_NAMESPACE_PREFIX
from tests.operator_process import KopfProcess, free_port

# The canary tests on the real node import from this plugin of theirs before pytest_plugins loads it:
# marked here, before any test module, so that its asserts are rewritten all the same.
pytest.register_assert_rewrite("tests.operator.real_node_canary")

CRDS = ROOT / "crds"
# Tests use their own peering object, so that an operator someone runs by hand against the
# same cluster (with the default `modelship` peering) is not paused by them, nor pauses them.
TEST_PEERING = "modelship-tests"


class OperatorProcess(KopfProcess):
    """The operator watching every namespace, in the tests' peering at a priority of its own."""

    def __init__(
        self, kubeconfig: str, log_dir: Path, *, name: str, priority: int, extra_env: dict[str, str]
    ):
        super().__init__(log_dir / f"{name}.log", name=name)
        self.kubeconfig = kubeconfig
        self.priority = priority
        self.extra_env = extra_env
        self.port = free_port()

    def start(self) -> None:
        env = {
            "KUBECONFIG": self.kubeconfig,
            "MODELSHIP_PEERING_PRIORITY": str(self.priority),
            "MODELSHIP_PEERING_LIFETIME": "10",
            # Only the tests' own namespaces: a demo's models on the same cluster are another operator's.
            "MODELSHIP_IGNORE_NAMESPACES": f"!{TEST_NAMESPACE_PREFIX}*",
            **self.extra_env,
        }
        args = ["--all-namespaces", f"--peering={TEST_PEERING}"]
        self.launch(args, env, ready="Activity 'startup' succeeded", liveness_port=self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reconciles(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        """The operator's 'reconciled' lines for objects of one namespace (or one object)."""
        prefix = f"{namespace}/{name}" if name else f"{namespace}/"
        return [
            line
            for line in self.snapshot()
            if line.get("message", "").startswith("reconciled ")
            and str(line.get("md", "")).startswith(prefix)
        ]


# The local Prometheus of hack/prometheus, where canary analysis finds the servers' metrics.
PROMETHEUS_ENV = {
    "MODELSHIP_PROMETHEUS_URL": f"http://127.0.0.1:{os.environ.get('MODELSHIP_PROMETHEUS_PORT', '19090')}"
}


@pytest.fixture(scope="session")
def kubectl(kube_bin_dir: Path, kubeconfig: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the pinned kubectl against the test cluster; `check=False` to look at failures."""

    def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(kube_bin_dir / "kubectl"), "--kubeconfig", kubeconfig, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def crds(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The CRDs from crds/, installed (server-side, so re-running is a no-op) and established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for name in ("modeldeployments.modelship.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture(scope="session")
def operator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-logs")


@pytest.fixture(scope="package")
def operator(kubeconfig: str, crds: None, operator_logs: Path) -> Iterator[OperatorProcess]:
    """The operator under test, watching every namespace, with the highest test priority.

    Package-scoped: it stops when the operator's tests are done, so that it does not act in
    the namespaces of other packages' tests, which run operators of their own.
    """
    process = OperatorProcess(kubeconfig, operator_logs, name="main", priority=100, extra_env=PROMETHEUS_ENV)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def second_operator(kubeconfig: str, crds: None, operator_logs: Path) -> Iterator[OperatorProcess]:
    """Another instance of the operator (as a second replica would be), with a lower priority."""
    process = OperatorProcess(
        kubeconfig, operator_logs, name=f"second-{int(time.time())}", priority=10, extra_env={}
    )
    yield process
    process.stop()
