"""The environment the operator gives the server is the one the server reads.

The operator spells out `MODELSHIP_*` in manifests.py and reads `MODELSHIP_MODEL_NAME` back in
children.py; the server parses them in config.py. Nothing else ties the two halves together, so these
tests render real revisions with the operator's own code, feed each container's environment to the
server's `load_settings`, and compare what comes out with what the spec asked for. A variable renamed on
either side, or a value the server would read differently, fails here instead of in a pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from modelship.operator import children, manifests, naming, spec
from modelship.server import config
from modelship.server.fetch import cache_path

from tests.operator.factories import SHA, md_body

IMAGE = "modelship/server:contract"
# What a user may put in spec.env: passed through untouched, never read by the server.
USER_ENV = (
    {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"},
    {"name": "S3_KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "access-key"}}},
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
)


@dataclass(frozen=True)
class Case:
    """A spec, and what the server must end up with."""

    body: dict[str, Any]
    model_name: str
    version: str
    uri: str
    sha256: str | None
    threads: int | None  # None: not set by the operator, the server takes the pod's CPU limit
    max_batch_size: int
    max_delay_ms: float
    auth: bool = False
    # None: not set by the operator, the server's default applies.
    max_connection_requests: int | None = None
    max_connection_age_seconds: float | None = None


HTTPS = "https://models.example.com/iris/3/model.onnx"


def _unverified(uri: str) -> dict[str, Any]:
    """A body whose model has no sha256 (a local file or a claim needs none)."""
    body = md_body(model={"uri": uri})
    del body["spec"]["model"]["sha256"]
    return body


CASES = {
    "minimal": Case(md_body(), "iris", "3", HTTPS, SHA, 1, 32, 5.0),
    "server-settings": Case(
        md_body(
            model={"name": "iris-classifier", "version": "2024.06-01"},
            server={
                "image": "registry.local/server:2",
                "threads": 3,
                "batching": {"maxBatchSize": 1, "maxDelayMs": 0},
            },
        ),
        "iris-classifier",
        "2024.06-01",
        HTTPS,
        SHA,
        3,
        1,
        0.0,
    ),
    "connection-limits": Case(
        md_body(
            server={
                "batching": {"maxBatchSize": 32, "maxDelayMs": 5},
                "connections": {"maxRequests": 250, "maxAge": "1m30s"},
            }
        ),
        "iris",
        "3",
        HTTPS,
        SHA,
        1,
        32,
        5.0,
        max_connection_requests=250,
        max_connection_age_seconds=90.0,
    ),
    "no-request-limit-and-an-age-in-ms": Case(
        md_body(
            server={
                "batching": {"maxBatchSize": 32, "maxDelayMs": 5},
                "connections": {"maxRequests": 0, "maxAge": "500ms"},
            }
        ),
        "iris",
        "3",
        HTTPS,
        SHA,
        1,
        32,
        5.0,
        max_connection_requests=0,
        max_connection_age_seconds=0.5,
    ),
    "threads-from-the-cpu-limit": Case(
        md_body(resources={"requests": {"cpu": "1"}, "limits": {"cpu": "2500m", "memory": "1Gi"}}),
        "iris",
        "3",
        HTTPS,
        SHA,
        2,
        32,
        5.0,
    ),
    "no-cpu-at-all": Case(
        md_body(resources={"requests": {"memory": "1Gi"}}), "iris", "3", HTTPS, SHA, None, 32, 5.0
    ),
    "pvc": Case(
        _unverified("pvc://models/iris/3/model.onnx"),
        "iris",
        "3",
        f"file://{naming.PVC_MOUNT_DIR}/iris/3/model.onnx",
        None,
        1,
        32,
        5.0,
    ),
    "file": Case(
        _unverified("file:///opt/models/iris.onnx"),
        "iris",
        "3",
        "file:///opt/models/iris.onnx",
        None,
        1,
        32,
        5.0,
    ),
    "s3": Case(
        md_body(
            model={
                "uri": "s3://models/iris/3/model.onnx",
                "s3": {
                    "endpoint": "http://minio.storage:9000/",
                    "region": "eu-west-1",
                    "addressing": "path",
                    "credentialsSecretRef": {"name": "store"},
                },
            }
        ),
        "iris",
        "3",
        "s3://models/iris/3/model.onnx",
        SHA,
        1,
        32,
        5.0,
    ),
    "secret-and-user-env": Case(
        md_body(
            server={
                "batching": {"maxBatchSize": 16, "maxDelayMs": 20},
                "authSecretRef": {"name": "iris-auth", "key": "bearer"},
            },
            env=[dict(item) for item in USER_ENV],
        ),
        "iris",
        "3",
        HTTPS,
        SHA,
        1,
        16,
        20.0,
        auth=True,
    ),
}


def _rendered(case: Case) -> tuple[manifests.Revision, dict[str, Any]]:
    md = spec.parse(case.body)
    revision = manifests.desired_revision(md, server_image=IMAGE)
    return revision, manifests.revision_deployment(md, revision, md.desired_replicas)


def _pod(case: Case) -> dict[str, Any]:
    return _rendered(case)[1]["spec"]["template"]["spec"]


def _containers(pod: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}


def _server_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's MODELSHIP_* environment as the kubelet would set it (all plain values)."""
    env: dict[str, str] = {}
    for item in container["env"]:
        name = item["name"]
        if not name.startswith(config.ENV_PREFIX):
            continue
        # The server reads files and plain values; a secret reaches it as a mounted file, never as env.
        assert set(item) == {"name", "value"} and isinstance(item["value"], str), item
        assert name not in env, f"{name} is set twice"
        env[name] = item["value"]
    return env


def _load(container: Mapping[str, Any]) -> config.Settings:
    # argv is the container's args exactly (an empty list, not None: None would read pytest's own argv).
    return config.load_settings(list(container.get("args") or []), environ=_server_env(container))


def _mount(container: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds `path` inside the container."""
    found = [
        m
        for m in container["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
    ]
    assert found, f"nothing is mounted at {path} in container {container['name']}"
    return max(found, key=lambda m: len(m["mountPath"]))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_variable_the_operator_sets_is_one_the_server_reads_into_that_value(case: Case) -> None:
    for container in _containers(_pod(case)).values():
        env = _server_env(container)
        unknown = set(env) - set(config.ENVIRONMENT)
        assert not unknown, (
            f"container {container['name']} sets variables the server does not know: {unknown}"
        )
        settings = _load(container)
        for name, value in env.items():
            field = config.ENVIRONMENT[name]
            loaded = getattr(settings, field)
            assert loaded == type(loaded)(value), f"{name}={value!r} loaded as {field}={loaded!r}"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_server_gets_what_the_spec_asked_for(case: Case) -> None:
    revision, deployment = _rendered(case)
    pod = deployment["spec"]["template"]["spec"]
    server = _containers(pod)[naming.SERVER_CONTAINER]
    settings = _load(server)
    assert settings.command == "serve"
    assert (settings.model_name, settings.model_version, settings.model_uri, settings.model_sha256) == (
        case.model_name,
        case.version,
        case.uri,
        case.sha256,
    )
    assert (
        settings.revision
        == revision.revision
        == deployment["spec"]["template"]["metadata"]["labels"][naming.LABEL_REVISION]
    )
    assert (settings.max_batch_size, settings.max_delay_ms) == (case.max_batch_size, case.max_delay_ms)
    if case.threads is None:
        assert "MODELSHIP_THREADS" not in _server_env(server)
        assert settings.threads == config.default_threads()
    else:
        assert settings.threads == case.threads
    expected_requests = case.max_connection_requests
    expected_age = case.max_connection_age_seconds
    assert (settings.max_connection_requests, settings.max_connection_age_seconds) == (
        config.DEFAULT_MAX_CONNECTION_REQUESTS if expected_requests is None else expected_requests,
        config.DEFAULT_MAX_CONNECTION_AGE_SECONDS if expected_age is None else expected_age,
    )
    # The port the server listens on is the one its probes, its named port and the Service target.
    assert settings.port == naming.SERVER_PORT
    assert server["ports"] == [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}]
    # Its failures go to the file the kubelet turns into the termination message the operator reports.
    assert settings.termination_log == server["terminationMessagePath"]
    # The operator reads back the model name from the Deployment, and must read the one the server serves.
    assert children.model_name(deployment["spec"]) == settings.model_name == revision.model_name


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_fetch_init_container_fills_the_cache_the_server_reads(case: Case) -> None:
    containers = _containers(_pod(case))
    fetch, server = _load(containers[naming.INIT_CONTAINER]), _load(containers[naming.SERVER_CONTAINER])
    assert (fetch.command, server.command) == ("fetch", "serve")
    assert fetch.termination_log == containers[naming.INIT_CONTAINER]["terminationMessagePath"]
    # The same file, verified against the same digest, under the same limit.
    for field in ("model_uri", "model_sha256", "max_model_bytes", "cache_dir", "fetch_attempts"):
        assert getattr(fetch, field) == getattr(server, field), field
    if fetch.model_sha256 is not None:
        fetched = cache_path(fetch.cache_dir, fetch.model_sha256)
        assert fetched == cache_path(server.cache_dir, server.model_sha256)
    # ... in one volume, written by the init container and only read by the server.
    init_mount = _mount(containers[naming.INIT_CONTAINER], fetch.cache_dir)
    server_mount = _mount(containers[naming.SERVER_CONTAINER], server.cache_dir)
    assert init_mount["name"] == server_mount["name"]
    assert not init_mount.get("readOnly") and server_mount.get("readOnly") is True
    # A claim's model is read through the claim's mount, in both containers.
    if case.body["spec"]["model"]["uri"].startswith("pvc://"):
        path = fetch.model_uri.removeprefix("file://")
        for container in containers.values():
            assert _mount(container, path)["name"] == "model-pvc"


@pytest.mark.parametrize("case", [c for c in CASES.values() if c.auth], ids=lambda c: "auth")
def test_the_auth_token_file_is_the_mounted_secret_key(case: Case) -> None:
    pod = _pod(case)
    server = _containers(pod)[naming.SERVER_CONTAINER]
    token_file = _load(server).auth_token_file
    assert token_file is not None
    mount = _mount(server, token_file)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    auth = case.body["spec"]["server"]["authSecretRef"]
    assert volume["secret"]["secretName"] == auth["name"]
    relative = token_file.removeprefix(mount["mountPath"] + "/")
    assert {"key": auth["key"], "path": relative} in volume["secret"]["items"]


def test_user_env_is_passed_through_and_never_read_by_the_server() -> None:
    case = CASES["secret-and-user-env"]
    for container in _containers(_pod(case)).values():
        user = [item for item in container["env"] if not item["name"].startswith(config.ENV_PREFIX)]
        assert user == list(USER_ENV)
        kinds = {next(iter(item["valueFrom"])) for item in user if "valueFrom" in item}
        assert kinds == {"secretKeyRef", "fieldRef"}
    assert not {item["name"] for item in USER_ENV} & set(config.ENVIRONMENT)


def test_the_s3_settings_reach_the_fetch_as_the_spec_gave_them_and_the_keys_the_init_container_only() -> None:
    case = CASES["s3"]
    containers = _containers(_pod(case))
    fetch = _load(containers[naming.INIT_CONTAINER])
    assert (fetch.s3_endpoint, fetch.s3_region, fetch.s3_addressing) == (
        "http://minio.storage:9000",
        "eu-west-1",
        "path",
    )
    # obstore reads the standard AWS variables itself: the names the kubelet sets from the Secret.
    keys = {
        item["name"]: item["valueFrom"]["secretKeyRef"]["key"]
        for item in containers[naming.INIT_CONTAINER]["env"]
        if item["name"].startswith("AWS_")
    }
    assert keys == {
        name: name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }
    assert not [
        item for item in containers[naming.SERVER_CONTAINER]["env"] if item["name"].startswith("AWS_")
    ]
