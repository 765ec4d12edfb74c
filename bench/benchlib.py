"""What both benchmarks need of the local cluster: the CRDs applied, and waits with deadlines.

The benchmarks run as scripts (`python bench/<name>.py`), so this folder is on sys.path.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import RESTRICTED, fresh_namespace_name  # noqa: E402
from tests.no_proxy import drop_proxy_variables  # noqa: E402
from tests.operator_process import KopfProcess  # noqa: E402
from tests.support import wait_until  # noqa: E402

# Before any client is made: the benchmarks talk to the local cluster only, never through a proxy.
drop_proxy_variables()

CRD_NAMES = ("modeldeployments.modelship.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """wait_until with the benchmarks' positional order."""
    return wait_until(check, timeout=timeout, interval=interval, what=what)


def apply_crds(kubeconfig: str) -> None:
    bin_dir = subprocess.run(
        [str(ROOT / "hack" / "cluster"), "bin-dir"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    kubectl = [str(Path(bin_dir) / "kubectl"), "--kubeconfig", kubeconfig]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for name in CRD_NAMES:
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s"],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def delete_namespace(core: client.CoreV1Api, name: str, timeout: float, interval: float) -> None:
    """Delete a namespace and wait until it is gone: the next run should not share the cluster
    with this one's garbage collection."""
    core.delete_namespace(name, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait(gone, timeout, f"namespace {name} to be deleted", interval)


class StandaloneOperator(KopfProcess):
    """The operator alone (`--standalone`) on one namespace, its analysis asking `prometheus_url`."""

    def __init__(self, kubeconfig: str, namespace: str, prometheus_url: str, log_path: Path) -> None:
        super().__init__(log_path, name="bench")
        self.env = {"KUBECONFIG": kubeconfig, "MODELSHIP_PROMETHEUS_URL": prometheus_url}
        self.namespace = namespace

    def start(self) -> None:
        self.launch(
            [f"--namespace={self.namespace}", "--standalone"],
            self.env,
            ready="Activity 'startup' succeeded",
            timeout=60,
        )


@contextlib.contextmanager
def operated_namespace(api: client.ApiClient, kubeconfig: str, work: Path, prefix: str) -> Iterator[str]:
    """A fresh namespace under Pod Security `restricted`, with the operator alone on it (no
    Prometheus); both gone, the namespace waited out, when the block ends."""
    core = client.CoreV1Api(api)
    name = fresh_namespace_name(prefix)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED)))
    operator = StandaloneOperator(kubeconfig, name, "", work / f"operator-{name}.log")
    operator.start()
    try:
        yield name
    finally:
        operator.stop()
        delete_namespace(core, name, 300, 0.5)
