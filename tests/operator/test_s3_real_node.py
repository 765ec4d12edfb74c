"""Models from the local cluster's S3 store (versitygw, `hack/models up`) on the real node.

The objects are uploaded with boto3, a third-party client, never with our fetcher; the pods fetch them
through the store's Service with the credentials of a Secret the test writes. Each way an S3 fetch goes
wrong (an object that is not there, a secret key that is wrong, a digest that is not the object's)
must end as Degraded with S3's own error code and the object's URI while the version before keeps
answering every request (the new revision is rolled back, as any that cannot load), and must serve
once its cause is fixed and `kubectl modelship retry` asks for it, with no new version: the init
container reads the uploaded object or the corrected Secret.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from kubernetes import client
from modelship.operator import naming, reasons

from tests.conftest import ROOT
from tests.operator import canary_models
from tests.operator.models import Models
from tests.operator.real_node_canary import POD_START, send
from tests.real_node import routed_into_node
from tests.support import wait_until

pytestmark = pytest.mark.cluster
pytest_plugins = ["tests.operator.real_node_canary"]

NAME = "from-s3"
STORE_NAMESPACE = "modelship-store"
STORE_SERVICE = "s3"
STORE_SECRET = "s3-credentials"
# What the pods use: the Service's name, resolved by the cluster's DNS.
ENDPOINT = f"http://{STORE_SERVICE}.{STORE_NAMESPACE}.svc.cluster.local"
PLUGIN = ROOT / ".venv" / "bin" / "kubectl-modelship"


@dataclass(frozen=True)
class Store:
    bucket: str
    access_key: str
    secret_key: str
    s3: Any  # a boto3 S3 client on the Service's ClusterIP

    def upload(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"


@pytest.fixture
def store(k8s_api: client.ApiClient) -> Iterator[Store]:
    """A bucket of its own in the cluster's S3 store, and the store's credentials."""
    core = client.CoreV1Api(k8s_api)
    try:
        secret = core.read_namespaced_secret(STORE_SECRET, STORE_NAMESPACE)
        service = core.read_namespaced_service(STORE_SERVICE, STORE_NAMESPACE)
    except client.ApiException as exc:
        pytest.fail(f"the local S3 store is not deployed ({exc.reason}): run hack/models up")
    keys = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{routed_into_node(str(service.spec.cluster_ip))}",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    try:
        yield Store(bucket, keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"], s3)
    finally:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


def write_secret(models: Models, name: str, access_key: str, secret_key: str) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        string_data={"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
    )
    try:
        models.core.create_namespaced_secret(models.namespace, body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        models.core.replace_namespaced_secret(name, models.namespace, body)


def model(version: str, uri: str, sha256: str, secret: str) -> dict[str, Any]:
    return {
        "version": version,
        "uri": uri,
        "sha256": sha256,
        "s3": {"endpoint": ENDPOINT, "credentialsSecretRef": {"name": secret}},
    }


def degraded(models: Models, version: str) -> str:
    """The Degraded message once the version's fetch has failed and its revision is rolled back."""
    body = wait_until(
        lambda: (
            (b := models.get(NAME)).get("status", {}).get("rollout", {}).get("abortedRevision")
            and b["status"].get("observedGeneration") == b["metadata"]["generation"]
            and b
        ),
        timeout=POD_START,
        what=f"version {version} to be rolled back",
    )
    condition = next(c for c in body["status"]["conditions"] if c["type"] == reasons.DEGRADED)
    assert condition["status"] == "True", condition
    assert condition["reason"] == reasons.MODEL_LOAD_FAILED, condition
    assert f"version {version} " in condition["message"], condition
    return str(condition["message"])


def retry(models: Models, kubeconfig: str) -> None:
    """What a user runs once the cause is fixed: the rolled-back revision again, the same version."""
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    done = subprocess.run(
        [str(PLUGIN), "retry", NAME, "-n", models.namespace, "--kubeconfig", kubeconfig],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def serving(models: Models, version: str) -> dict[str, Any]:
    """The status once `version` serves alone."""
    return wait_until(
        lambda: (
            (s := models.get(NAME).get("status") or {}).get("model", {}).get("version") == version
            and s.get("phase") == reasons.PHASE_HEALTHY
            and s
        ),
        timeout=POD_START,
        interval=1,
        what=f"version {version} to serve",
    )


def test_a_model_from_s3_serves_and_each_fetch_failure_says_why_while_the_old_version_serves(
    real_node: client.V1Node, models: Models, store: Store, kubeconfig: str
) -> None:
    v1 = canary_models.classifier().model.SerializeToString()
    v2 = canary_models.classifier("2").model.SerializeToString()
    requests = canary_models.classifier_requests()
    write_secret(models, "s3", store.access_key, store.secret_key)

    # Version 1 from S3: it serves, and the status records what the pod fetched.
    uri1 = store.upload("clf/1/model.onnx", v1)
    sha1 = hashlib.sha256(v1).hexdigest()
    models.create(
        NAME,
        {
            "model": model("1", uri1, sha1, "s3"),
            "replicas": 1,
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        },
    )
    status = models.wait_ready(NAME, timeout=POD_START)["status"]
    assert {k: status["model"][k] for k in ("uri", "sha256", "size")} == {
        "uri": uri1,
        "sha256": sha1,
        "size": len(v1),
    }
    assert status["model"]["fetchSeconds"] >= 0
    service = models.core.read_namespaced_service(NAME, models.namespace)
    url = f"http://{routed_into_node(str(service.spec.cluster_ip))}/v2/models/{NAME}/infer"
    wait_until(lambda: send(url, requests, 1)[200] == 1, what="an answer through the ClusterIP")

    # Version 2's object is not there yet: S3's NoSuchKey, with the URI; version 1 answers meanwhile.
    uri2 = f"s3://{store.bucket}/clf/2/model.onnx"
    sha2 = hashlib.sha256(v2).hexdigest()
    models.patch(NAME, {"spec": {"model": model("2", uri2, sha2, "s3")}})
    message = degraded(models, "2")
    assert "NoSuchKey" in message and uri2 in message, message
    assert "version 1 " in message and message.endswith("keeps serving"), message
    assert send(url, requests, 20) == {200: 20}
    # Uploaded, and retried: the same version serves.
    store.upload("clf/2/model.onnx", v2)
    retry(models, kubeconfig)
    assert serving(models, "2")["model"]["sha256"] == sha2

    # Version 3 with a secret key that is wrong: S3's SignatureDoesNotMatch, never the key itself.
    uri3 = store.upload("clf/3/model.onnx", v1)
    write_secret(models, "s3-wrong", store.access_key, "not-the-secret-key")
    models.patch(NAME, {"spec": {"model": model("3", uri3, sha1, "s3-wrong")}})
    message = degraded(models, "3")
    assert "SignatureDoesNotMatch" in message and uri3 in message, message
    assert "not-the-secret-key" not in message and store.secret_key not in message
    assert "version 2 " in message, message
    assert send(url, requests, 20) == {200: 20}
    write_secret(models, "s3-wrong", store.access_key, store.secret_key)  # the Secret fixed
    retry(models, kubeconfig)
    serving(models, "3")

    # Version 4 whose digest is not its object's: refused before it is parsed, version 3 serves.
    uri4 = store.upload("clf/4/model.onnx", v2)
    models.patch(NAME, {"spec": {"model": model("4", uri4, sha1, "s3")}})
    message = degraded(models, "4")
    assert f"sha256 mismatch for {uri4}" in message, message
    assert "version 3 " in message, message
    assert send(url, requests, 20) == {200: 20}
    status = models.get(NAME)["status"]
    assert (status["model"]["version"], status["model"]["uri"]) == ("3", uri3)
    # No credential in any pod spec: only references to the Secret, in the init container.
    for pod in models.pods(NAME):
        server = next(c for c in pod.spec.containers if c.name == naming.SERVER_CONTAINER)
        assert not [e.name for e in server.env or () if e.name.startswith("AWS_")]
        assert store.secret_key not in str(client.ApiClient().sanitize_for_serialization(pod.spec))
