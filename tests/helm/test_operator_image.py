"""The operator image the chart runs (operator/Dockerfile, built by `hack/images operator`):
its entry point reconciles a model against the real API server, as a non-root user.

The local cluster's API server listens on 127.0.0.1 only, so the container shares the host's
network instead of running as a pod; the rest is what a cluster runs: the image's own Python,
kopf and operator code, started by its entry point (the chart's command) as user 65532.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import ROOT
from tests.operator.models import Models, model_spec

pytestmark = pytest.mark.cluster

IMAGE = "docker.io/modelship/operator:0.1.0"
PODMAN = ["podman", "--runtime", "runc"]
# This VM's root cannot raise these limits (see hack/images).
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run hack/deps")
    found = subprocess.run([*PODMAN, "image", "exists", IMAGE], capture_output=True)
    if found.returncode != 0:
        pytest.fail(f"{IMAGE} is not built: run hack/images operator")
    return IMAGE


def run(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return subprocess.run(
        [*PODMAN, "run", "--rm", *LIMITS, "--network", "none", *extra, image, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_image_runs_as_non_root_with_kopf_and_without_the_server(image: str) -> None:
    probe = (
        "import importlib.util, os, shutil, modelship.operator;"
        "print(os.getuid(), shutil.which('kopf'), importlib.util.find_spec('onnxruntime') is None)"
    )
    result = run(image, "-c", probe, entrypoint="python3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65532", "/opt/modelship/bin/kopf", "True"]


@pytest.fixture
def container(image: str, kubeconfig: str, namespace: str, tmp_path: Path, crds: None) -> Iterator[str]:
    config = tmp_path / "kubeconfig"
    shutil.copyfile(kubeconfig, config)
    config.chmod(0o644)  # read by the image's non-root user
    name = f"modelship-operator-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [
            *PODMAN,
            "run",
            "-d",
            "--name",
            name,
            *LIMITS,
            "--network",
            "host",
            "-v",
            f"{config}:/etc/modelship/kubeconfig:ro",
            "-e",
            "KUBECONFIG=/etc/modelship/kubeconfig",
            image,
            f"--namespace={namespace}",
            "--standalone",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "5", name], capture_output=True, timeout=60)


@pytest.fixture
def crds(kube_bin_dir: Path, kubeconfig: str) -> None:
    subprocess.run(
        [
            str(kube_bin_dir / "kubectl"),
            "--kubeconfig",
            kubeconfig,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(ROOT / "crds"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_the_images_entry_point_reconciles_a_model(
    container: str, k8s_api: client.ApiClient, namespace: str
) -> None:
    models = Models(k8s_api, namespace)
    models.create("iris", model_spec(replicas=1))
    try:
        body = models.wait_ready("iris", timeout=90)
    except AssertionError:
        logs = subprocess.run([*PODMAN, "logs", container], capture_output=True, text=True, timeout=30)
        log = logs.stdout[-4000:] + logs.stderr[-4000:]
        raise AssertionError(f"not Ready; the operator's log:\n{log}") from None
    assert body["status"]["phase"] == "Healthy"
