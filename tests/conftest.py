"""Fixtures for tests that need a Kubernetes API.

By default the tests use the local cluster of `hack/cluster` and start it when it is not
running. `MODELSHIP_TEST_KUBECONFIG` points them at any other cluster instead (kind, a dev
cluster): the user's own `KUBECONFIG` is deliberately not used, so that running the tests never
touches a cluster by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.no_proxy import BOGUS_PROXY, PROXY_VARIABLES, drop_proxy_variables

# Before any client is made: every request of the tests goes direct (tests/no_proxy.py says why).
drop_proxy_variables()

ROOT = Path(__file__).resolve().parent.parent
LOCAL_KUBECONFIG = ROOT / ".cluster" / "kubeconfig"


@pytest.fixture
def bogus_proxy(monkeypatch: pytest.MonkeyPatch) -> str:
    """HTTP_PROXY, HTTPS_PROXY and ALL_PROXY, in both cases, set to a proxy that is never there, and no
    NO_PROXY: a client that honoured them could not connect (for this test only)."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, BOGUS_PROXY)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return BOGUS_PROXY


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """Path of an admin kubeconfig for a running cluster."""
    other = os.environ.get("MODELSHIP_TEST_KUBECONFIG")
    if other:
        return other
    subprocess.run([str(ROOT / "hack" / "cluster"), "up"], check=True, stdout=subprocess.DEVNULL)
    return str(LOCAL_KUBECONFIG)


@pytest.fixture(scope="session")
def kube_bin_dir() -> Path:
    """Folder of the pinned kubectl, helm and friends that `hack/cluster build` compiled."""
    out = subprocess.run(
        [str(ROOT / "hack" / "cluster"), "bin-dir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str):  # type: ignore[no-untyped-def]
    # Imported here so that tests without a cluster do not pay for the client's import.
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=kubeconfig)
    yield api_client
    api_client.close()


# The API server's PodNodeSelector and PodTolerationRestriction admission plugins read these
# annotations: every pod of such a namespace lands on a KWOK node, even when the cluster has a
# real node, so tests that reconcile objects never wait on models that cannot be downloaded.
KWOK_ONLY = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
    ),
}


# Every namespace the tests and benchmarks make starts with this: an operator someone else runs on the
# same cluster (`make demo` installs one for the whole cluster) is told to leave these alone
# (MODELSHIP_IGNORE_NAMESPACES=mst-*), so the tests' own operators are the only ones acting there.
TEST_NAMESPACE_PREFIX = "mst-"


def fresh_namespace_name(base: str) -> str:
    """A fresh namespace name for a test or benchmark: the prefix, `base`, a random suffix."""
    base = "".join(c for c in base.lower().replace("_", "-") if c.isalnum() or c == "-")[:40].strip("-")
    return f"{TEST_NAMESPACE_PREFIX}{base}-{uuid.uuid4().hex[:6]}"


def _namespace_name(request: pytest.FixtureRequest) -> str:
    return fresh_namespace_name(request.node.name)


@pytest.fixture
def namespace(k8s_api, request: pytest.FixtureRequest) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace whose pods run on KWOK nodes, deleted (in the background) afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    name = _namespace_name(request)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, annotations=KWOK_ONLY)))
    yield name
    delete_namespace_if_present(core, name)


# What the Pod Security admission enforces in a namespace whose pods run on the real node: the
# operator's pods must pass the `restricted` profile, as on a cluster that enforces it.
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


@pytest.fixture
def real_namespace(k8s_api, request: pytest.FixtureRequest) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace whose pods run on the real node (no KWOK-only annotations), enforcing the
    `restricted` Pod Security profile; deleted (in the background) afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    name = _namespace_name(request)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED)))
    yield name
    delete_namespace_if_present(core, name)


def delete_namespace_if_present(core, name: str) -> None:  # type: ignore[no-untyped-def]
    from kubernetes.client.exceptions import ApiException

    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:  # already gone is what we wanted
            raise


def pytest_report_header() -> str:
    """The machine the run is on (CPU, OpenBLAS kernel): what can make two runs of a commit differ."""
    out = subprocess.run([str(ROOT / "hack" / "machine")], capture_output=True, text=True, check=False)
    return out.stdout.strip() or f"hack/machine failed: {out.stderr.strip()}"
