"""`kubectl modelship` against the real API server, run as the installed plugin.

The tests write status themselves (through the status subresource, as the operator does) and
check what the plugin reads from it and writes to the object. An operator may be running (the
package's own, started by an earlier module, or anyone's against this cluster) and would
rewrite that status and act on the actions; it leaves a ModelDeployment that is being deleted
alone, so each object here is created with a finalizer of the tests and deleted at once: it
stays, terminating, until the test lets it go.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from modelship.operator import naming

from tests.conftest import ROOT
from tests.support import wait_until

pytestmark = pytest.mark.cluster

PLUGIN = ROOT / ".venv" / "bin" / "kubectl-modelship"
ACTION = naming.ANNOTATION_ACTION
HOLD = "tests.modelship.io/hold"
NONCE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
STABLE, CANARY = "7f3a9c01ab", "9b1c22de00"

Plugin = Callable[..., subprocess.CompletedProcess[str]]
Create = Callable[..., None]


@pytest.fixture
def plugin(kubeconfig: str) -> Plugin:
    """Run `kubectl-modelship` as kubectl would, with `--kubeconfig`, or `$KUBECONFIG` when given."""

    def run(*args: str, env_kubeconfig: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
        if env_kubeconfig:
            env["KUBECONFIG"] = env_kubeconfig
            options = []
        else:
            options = ["--kubeconfig", kubeconfig]
        return subprocess.run(
            [str(PLUGIN), *args, *options], capture_output=True, text=True, env=env, timeout=60
        )

    return run


@pytest.fixture
def api(k8s_api: Any, crds: None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


STEPS = [{"setWeight": 10}, {"pause": {}}, {"analysis": {}}, {"setWeight": 50}]

MID_ROLLOUT: dict[str, Any] = {
    "phase": "Paused",
    "model": {"name": "m", "version": "1", "revision": STABLE},
    "rollout": {
        "strategy": "Canary",
        "stableRevision": STABLE,
        "stableVersion": "1",
        "canaryRevision": CANARY,
        "canaryVersion": "2",
        "step": 1,
        "steps": 4,
        "weight": 10,
        "actualWeight": 8,
        "replicaWeight": 33,
        "traffic": "by replica ratio: 1 canary and 2 stable pods behind one Service",
        "paused": True,
        "pauseReason": "waiting for a manual promote",
        "analysis": {
            "failures": 1,
            "lastRun": "2026-11-23T10:00:30Z",
            "results": [{"name": "success-rate", "value": 0.5, "threshold": ">= 0.99", "result": "Fail"}],
        },
    },
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "StableServes", "message": "version 1 serves"},
        {"type": "Progressing", "status": "True", "reason": "Canary", "message": "step 2 of 4"},
        {"type": "Degraded", "status": "False", "reason": "AsExpected"},
    ],
}


def get(api: client.CustomObjectsApi, namespace: str, name: str = "m") -> dict[str, Any]:
    found = api.get_namespaced_custom_object(naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name)
    return cast(dict[str, Any], found)


def write_status(
    api: client.CustomObjectsApi, namespace: str, status: dict[str, Any], name: str = "m"
) -> None:
    """Replace the whole status, as written, and make sure the CRD kept all of it.

    An operator may write the status between our read and our write (a 409): read again."""

    def replace() -> bool:
        body = get(api, namespace, name)
        body["status"] = status
        api.replace_namespaced_custom_object_status(
            naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name, body
        )
        return True

    wait_until(replace, timeout=15, what=f"the status of {namespace}/{name} to be replaced")
    kept = get(api, namespace, name).get("status") or {}
    assert kept == status, "the API server pruned status: crds/ lacks (part of) its schema"


@pytest.fixture
def create(api: client.CustomObjectsApi, namespace: str) -> Iterator[Callable[..., None]]:
    """Create held ModelDeployments (see the module's docstring), with no status at first."""
    held: list[str] = []

    def create(name: str = "m", status: dict[str, Any] | None = None) -> None:
        body = {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "metadata": {"name": name, "finalizers": [HOLD]},
            "spec": {
                "model": {"version": "2", "uri": "file:///models/m.onnx"},
                "rollout": {"canary": {"steps": STEPS}},
            },
        }
        api.create_namespaced_custom_object(naming.GROUP, naming.VERSION, namespace, naming.PLURAL, body)
        held.append(name)
        api.delete_namespaced_custom_object(naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name)
        # Whatever an operator wrote before the deletion reached it is replaced.
        write_status(api, namespace, status or {}, name)

    yield create
    for name in held:
        release(api, namespace, name)


def release(api: client.CustomObjectsApi, namespace: str, name: str) -> None:
    """Let a held object go, so that it and then its namespace are deleted."""
    try:
        api.patch_namespaced_custom_object(
            naming.GROUP,
            naming.VERSION,
            namespace,
            naming.PLURAL,
            name,
            {"metadata": {"finalizers": None}},
            _content_type="application/merge-patch+json",
        )
    except client.ApiException as exc:
        if exc.status != 404:
            raise


def annotation(api: client.CustomObjectsApi, namespace: str, name: str = "m") -> str | None:
    value: str | None = (get(api, namespace, name)["metadata"].get("annotations") or {}).get(ACTION)
    return value


def test_promote_sets_the_action_and_waits_for_the_operator_before_another(
    api: client.CustomObjectsApi, create: Create, namespace: str, plugin: Plugin
) -> None:
    create(status=MID_ROLLOUT)

    promoted = plugin("promote", "m", "-n", namespace)
    assert promoted.returncode == 0, promoted.stderr
    first = annotation(api, namespace)
    assert first is not None and re.fullmatch(f"promote@{NONCE}", first), first
    assert promoted.stdout == (
        f"modeldeployment {namespace}/m: asked to promote canary {CANARY}: finish the current step and go on"
        f" ({ACTION}={first}); the operator acts on it, follow with"
        f" `kubectl modelship status m -n {namespace}`\n"
    )

    # The operator has not acted on it yet: a second action would silently replace the first.
    again = plugin("promote", "m", "--full", "-n", namespace)
    assert again.returncode == 1
    assert again.stderr == (
        f"error: the operator has not yet acted on the previous action {first!r} of m; see "
        "`kubectl modelship status m`, or use --force to set it anyway\n"
    )
    assert annotation(api, namespace) == first

    # Once status says it was handled (the operator has not removed it yet), the next one goes.
    write_status(
        api, namespace, {**MID_ROLLOUT, "rollout": {**MID_ROLLOUT["rollout"], "handledAction": first}}
    )
    full = plugin("-n", namespace, "promote", "m", "--full")
    assert full.returncode == 0, full.stderr
    second = annotation(api, namespace)
    assert second is not None and re.fullmatch(f"promote-full@{NONCE}", second), second
    assert "promote canary 9b1c22de00 fully: skip every remaining step" in full.stdout


def test_without_a_canary_actions_are_refused_unless_forced(
    api: client.CustomObjectsApi, create: Create, namespace: str, plugin: Plugin
) -> None:
    create()  # a fresh object: no status at all

    for verb in ("promote", "abort"):
        refused = plugin(verb, "m", "-n", namespace)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert refused.stderr.startswith(
            "error: no canary rollout of m is in progress (status.rollout has no canaryRevision)"
        )
    retry = plugin("retry", "m", "-n", namespace)
    assert retry.returncode == 1
    assert "no aborted rollout of m to retry" in retry.stderr
    assert annotation(api, namespace) is None

    forced = plugin("abort", "m", "-n", namespace, "--force")
    assert forced.returncode == 0, forced.stderr
    value = annotation(api, namespace)
    assert value is not None and re.fullmatch(f"abort@{NONCE}", value), value


def test_retry_after_an_abort(
    api: client.CustomObjectsApi, create: Create, namespace: str, plugin: Plugin
) -> None:
    create(
        status={
            "phase": "Degraded",
            "rollout": {
                "stableRevision": STABLE,
                "stableVersion": "1",
                "abortedRevision": CANARY,
                "abortReason": "aborted by kubectl modelship abort",
            },
        },
    )
    retried = plugin("retry", "m", "-n", namespace)
    assert retried.returncode == 0, retried.stderr
    assert f"retry revision {CANARY} from the first step" in retried.stdout
    value = annotation(api, namespace)
    assert value is not None and re.fullmatch(f"retry@{NONCE}", value), value


def test_a_missing_model_deployment_is_an_error(
    api: client.CustomObjectsApi, namespace: str, plugin: Plugin
) -> None:
    for args in (("promote", "absent"), ("abort", "absent", "--force"), ("status", "absent")):
        result = plugin(*args, "-n", namespace)
        assert result.returncode == 1
        assert result.stderr == f'error: modeldeployment "absent" in namespace "{namespace}" not found\n'


def test_usage_errors_exit_2(plugin: Plugin) -> None:
    for args in (("promote",), ("promote", "m", "--fast"), ("unpause", "m"), ()):
        result = plugin(*args)
        assert result.returncode == 2, args
        assert "usage: kubectl modelship" in result.stderr


def test_status_prints_the_rollout(
    api: client.CustomObjectsApi, create: Create, namespace: str, plugin: Plugin
) -> None:
    create()
    fresh = plugin("status", "m", "-n", namespace)
    assert fresh.returncode == 0, fresh.stderr
    assert "Phase:        - (no status reported yet)" in fresh.stdout
    assert "Canary:       - (no rollout in progress)" in fresh.stdout

    write_status(api, namespace, MID_ROLLOUT)
    shown = plugin("status", "m", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:6] == [
        "Name:         m",
        f"Namespace:    {namespace}",
        "Phase:        Paused",
        "Strategy:     Canary",
        f"Stable:       version 1 (revision {STABLE})",
        f"Canary:       version 2 (revision {CANARY})",
    ]
    expected = [
        "Step:         1/4 done; now 2. pause: until promoted",
        "Steps:",
        "  [x] 1. setWeight: 10%",
        "  [>] 2. pause: until promoted",
        "  [ ] 3. analysis",
        "  [ ] 4. setWeight: 50%",
        "Weight:       10% asked, 33% of ready pods, 8% of requests (measured)",
        "Traffic:      by replica ratio: 1 canary and 2 stable pods behind one Service",
        "Paused:       waiting for a manual promote",
        "  success-rate  0.5    >= 0.99    Fail",
        "  Ready        True    StableServes  version 1 serves",
    ]
    for line in expected:
        assert line in lines, f"{line!r} not in:\n{shown.stdout}"


def test_list_and_the_namespace_of_the_context(
    api: client.CustomObjectsApi,
    create: Create,
    namespace: str,
    plugin: Plugin,
    kubeconfig: str,
    tmp_path: Path,
) -> None:
    create(status=MID_ROLLOUT)
    create("other")

    # No -n nor --kubeconfig: $KUBECONFIG, and the namespace of its current context, as kubectl does.
    config = yaml.safe_load(Path(kubeconfig).read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    current["context"]["namespace"] = namespace
    with_namespace = tmp_path / "kubeconfig"
    with_namespace.write_text(yaml.safe_dump(config))

    listed = plugin("list", env_kubeconfig=str(with_namespace))
    assert listed.returncode == 0, listed.stderr
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["NAME", "PHASE", "STABLE", "CANARY", "STEP", "CANARY", "WEIGHT"],
        ["m", "Paused", "1", "2", "1/4", "8%"],
        ["other", "-", "-", "-", "-", "-"],
    ]
    status = plugin("status", "m", env_kubeconfig=str(with_namespace))
    assert status.returncode == 0, status.stderr
    assert f"Namespace:    {namespace}" in status.stdout


def test_status_watch_prints_again_on_a_change(
    api: client.CustomObjectsApi, create: Create, namespace: str, kubeconfig: str
) -> None:
    create()
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    watching = subprocess.Popen(
        [str(PLUGIN), "status", "m", "--watch", "-n", namespace, "--kubeconfig", kubeconfig],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []

    def read() -> None:
        assert watching.stdout is not None
        for line in watching.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: "Phase:        - (no status reported yet)\n" in lines, what="the first print")
        write_status(api, namespace, MID_ROLLOUT)
        wait_until(lambda: "Phase:        Paused\n" in lines, what="a print after the status changed")
        release(api, namespace, "m")
        assert watching.wait(timeout=30) == 0
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.wait()
    reader.join(timeout=10)
    assert lines[-1] == f"modeldeployment {namespace}/m was deleted\n"
    assert lines.count("Name:         m\n") == 2  # printed once, then once more for the change
