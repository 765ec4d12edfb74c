"""The child objects a ModelDeployment becomes."""

from __future__ import annotations

from typing import Any

import pytest
from modelship.operator import autoscaling, manifests, naming, spec

from tests.operator.factories import SHA, md_body

IMAGE = "modelship/server:test"


def revision_of(**kwargs: Any) -> manifests.Revision:
    return manifests.desired_revision(spec.parse(md_body(**kwargs)), server_image=IMAGE)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container["env"]}


def test_the_revision_is_stable_and_names_the_deployment() -> None:
    first, second = revision_of(), revision_of()
    assert first.revision == second.revision
    assert len(first.revision) == naming.REVISION_LENGTH
    assert first.deployment_name == f"iris-{first.revision}"


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"version": "4"}},
        {"model": {"sha256": "0" * 64}},
        {"server": {"image": "other:1"}},
        {"server": {"batching": {"maxBatchSize": 8, "maxDelayMs": 5}}},
        {"server": {"batching": {"maxBatchSize": 32, "maxDelayMs": 5}, "connections": {"maxRequests": 0}}},
        {"resources": {"requests": {"cpu": "2"}}},
        {"nodeSelector": {"pool": "gpu"}},
        {"env": [{"name": "HTTPS_PROXY", "value": "http://proxy"}]},
    ],
)
def test_anything_the_pods_run_makes_a_new_revision(change: dict[str, Any]) -> None:
    assert revision_of(**change).revision != revision_of().revision


def test_the_replica_count_is_not_part_of_the_revision() -> None:
    assert revision_of(replicas=5).revision == revision_of(replicas=1).revision
    assert revision_of(autoscaling={"minReplicas": 1, "maxReplicas": 3}).revision == revision_of().revision


def test_the_server_is_configured_through_its_environment() -> None:
    revision = revision_of(resources={"limits": {"cpu": "2"}, "requests": {"cpu": "1"}})
    server = revision.template["spec"]["containers"][0]
    env = env_of(server)
    assert env == {
        "MODELSHIP_MODEL_NAME": "iris",
        "MODELSHIP_MODEL_VERSION": "3",
        "MODELSHIP_MODEL_URI": "https://models.example.com/iris/3/model.onnx",
        "MODELSHIP_MODEL_SHA256": SHA,
        "MODELSHIP_THREADS": "2",
        "MODELSHIP_MAX_BATCH_SIZE": "32",
        "MODELSHIP_MAX_DELAY_MS": "5",
        "MODELSHIP_PORT": "8080",
        "MODELSHIP_CACHE_DIR": naming.CACHE_DIR,
        "MODELSHIP_TERMINATION_LOG": "/dev/termination-log",
        "MODELSHIP_MIRROR_FILE": "/etc/modelship/podinfo/mirror",
        "MODELSHIP_REVISION": revision.revision,
    }
    init = revision.template["spec"]["initContainers"][0]
    assert init["args"] == ["fetch"]
    assert env_of(init) == env


def _with_connections(**fields: Any) -> manifests.Revision:
    return revision_of(server={"batching": {"maxBatchSize": 32, "maxDelayMs": 5}, "connections": fields})


def test_connection_limits_reach_the_environment_only_when_set() -> None:
    # Unset, the server's own defaults apply, and the pod template of an existing ModelDeployment (its
    # revision hash) stays what it was before the fields existed.
    for revision in (revision_of(), _with_connections()):
        names = set(env_of(revision.template["spec"]["containers"][0]))
        assert not names & {"MODELSHIP_MAX_CONNECTION_REQUESTS", "MODELSHIP_MAX_CONNECTION_AGE_SECONDS"}
    assert _with_connections().revision == revision_of().revision
    env = env_of(_with_connections(maxRequests=250).template["spec"]["containers"][0])
    assert env["MODELSHIP_MAX_CONNECTION_REQUESTS"] == "250"
    assert "MODELSHIP_MAX_CONNECTION_AGE_SECONDS" not in env
    env = env_of(_with_connections(maxAge="1m30s").template["spec"]["containers"][0])
    assert env["MODELSHIP_MAX_CONNECTION_AGE_SECONDS"] == "90"
    assert "MODELSHIP_MAX_CONNECTION_REQUESTS" not in env


@pytest.mark.parametrize(("max_age", "value"), [("500ms", "0.5"), ("0s", "0"), (0, "0"), ("2m", "120")])
def test_a_max_age_is_written_as_plain_seconds(max_age: Any, value: str) -> None:
    env = env_of(_with_connections(maxAge=max_age).template["spec"]["containers"][0])
    assert env["MODELSHIP_MAX_CONNECTION_AGE_SECONDS"] == value


def test_zero_max_requests_is_passed_on_as_no_limit() -> None:
    env = env_of(_with_connections(maxRequests=0).template["spec"]["containers"][0])
    assert env["MODELSHIP_MAX_CONNECTION_REQUESTS"] == "0"


def test_user_env_follows_the_operators_own() -> None:
    revision = revision_of(env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}])
    names = [item["name"] for item in revision.template["spec"]["containers"][0]["env"]]
    assert names[-1] == "HTTPS_PROXY"
    assert names[-2] == "MODELSHIP_REVISION"


def test_pods_pass_the_restricted_pod_security_profile() -> None:
    pod = revision_of().template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert container["imagePullPolicy"] == "IfNotPresent"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {naming.CACHE_DIR, "/tmp"} <= mounts


def test_the_server_probes_the_inference_protocols_health_endpoints() -> None:
    server = revision_of().template["spec"]["containers"][0]
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_a_pvc_uri_mounts_the_claim_read_only_and_hands_the_server_a_path() -> None:
    revision = revision_of(model={"uri": "pvc://models/iris/3/model.onnx"})
    pod = revision.template["spec"]
    assert {"name": "model-pvc", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    for container in pod["initContainers"] + pod["containers"]:
        assert env_of(container)["MODELSHIP_MODEL_URI"] == f"file://{naming.PVC_MOUNT_DIR}/iris/3/model.onnx"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "model-pvc")
        assert mount["readOnly"] is True


def test_an_auth_secret_is_mounted_for_the_server_only() -> None:
    revision = revision_of(server={"authSecretRef": {"name": "iris-token", "key": "token"}})
    pod = revision.template["spec"]
    assert env_of(pod["containers"][0])["MODELSHIP_AUTH_TOKEN_FILE"] == f"{naming.AUTH_MOUNT_DIR}/token"
    volume = next(v for v in pod["volumes"] if v["name"] == "auth-token")
    assert volume["secret"]["secretName"] == "iris-token"
    assert not any(m["name"] == "auth-token" for m in pod["initContainers"][0]["volumeMounts"])


S3_URI = "s3://models/iris/3/model.onnx"


def test_s3_credentials_reach_the_init_container_only_and_as_references_to_their_secret() -> None:
    revision = revision_of(
        model={
            "uri": S3_URI,
            "s3": {"endpoint": "http://minio.storage:9000/", "credentialsSecretRef": {"name": "s3-reader"}},
        }
    )
    init, server = revision.template["spec"]["initContainers"][0], revision.template["spec"]["containers"][0]
    for container in (init, server):
        assert env_of(container)["MODELSHIP_S3_ENDPOINT"] == "http://minio.storage:9000"
        assert "MODELSHIP_S3_REGION" not in env_of(container)
    refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in init["env"] if "valueFrom" in item}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-reader", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-reader", "key": "AWS_SECRET_ACCESS_KEY"},
        "AWS_SESSION_TOKEN": {"name": "s3-reader", "key": "AWS_SESSION_TOKEN", "optional": True},
    }
    assert not any(item["name"].startswith("AWS_") for item in server["env"])
    # The Secret's content is not in the template: a fixed Secret is read by the next retry of the same
    # revision, no rollout needed.
    assert "s3-reader" in str(revision.template) and "secretKeyRef" not in str(server)


def test_s3_without_settings_leaves_it_to_the_pods_environment() -> None:
    revision = revision_of(model={"uri": S3_URI})
    for container in (*revision.template["spec"]["initContainers"], *revision.template["spec"]["containers"]):
        assert not [
            item["name"] for item in container["env"] if "S3" in item["name"] or "AWS" in item["name"]
        ]


def test_placement_is_passed_through() -> None:
    toleration = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    revision = revision_of(
        nodeSelector={"pool": "inference"},
        tolerations=[toleration],
        serviceAccountName="fetcher",
        imagePullSecrets=[{"name": "registry"}],
        podMetadata={"labels": {"team": "ml"}, "annotations": {"a": "b"}},
    )
    pod = revision.template
    assert pod["spec"]["nodeSelector"] == {"pool": "inference"}
    assert pod["spec"]["tolerations"] == [toleration]
    assert pod["spec"]["serviceAccountName"] == "fetcher"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["metadata"]["annotations"] == {"a": "b"}


def test_user_pod_labels_cannot_override_the_operators() -> None:
    revision = revision_of(podMetadata={"labels": {naming.LABEL_MODEL_DEPLOYMENT: "other"}})
    assert revision.template["metadata"]["labels"][naming.LABEL_MODEL_DEPLOYMENT] == "iris"


def test_the_deployment_selects_one_revision_and_is_owned_by_the_model_deployment() -> None:
    md = spec.parse(md_body(replicas=2))
    revision = manifests.desired_revision(md, server_image=IMAGE)
    deployment = manifests.revision_deployment(md, revision, 2)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == {
        naming.LABEL_MODEL_DEPLOYMENT: "iris",
        naming.LABEL_REVISION: revision.revision,
    }
    labels = deployment["metadata"]["labels"]
    assert labels[naming.LABEL_MANAGED_BY] == "modelship"
    assert labels[naming.LABEL_VERSION] == "3"
    assert labels[naming.LABEL_NAME] == "modelship-server"
    assert labels[naming.LABEL_INSTANCE] == "iris"
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-iris" and owner["controller"] is True


def test_an_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    md = spec.parse(md_body(autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 60}))
    revision = manifests.desired_revision(md, server_image=IMAGE)
    assert "replicas" not in manifests.revision_deployment(md, revision, md.desired_replicas)["spec"]
    hpa = manifests.autoscaler(md, revision.deployment_name)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": revision.deployment_name,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
        }
    ]
    assert hpa["spec"]["behavior"] == autoscaling.behavior({})


def test_an_hpa_on_inflight_requests_reads_the_per_pod_metric_with_an_exact_target() -> None:
    scaling = {"maxReplicas": 4, "metric": "inflightRequests", "targetInflightRequests": 2}
    hpa = manifests.autoscaler(spec.parse(md_body(autoscaling=scaling)), "iris-x")
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": naming.INFLIGHT_METRIC},
                "target": {"type": "AverageValue", "averageValue": "2"},
            },
        }
    ]
    fractional = manifests.autoscaler(
        spec.parse(md_body(autoscaling={**scaling, "targetInflightRequests": 1.5})), "iris-x"
    )
    assert fractional is not None
    assert fractional["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "1500m"


def test_the_hpa_behavior_is_the_defaults_overridden_field_by_field() -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 60}}
    hpa = manifests.autoscaler(spec.parse(md_body(autoscaling={"maxReplicas": 4, "behavior": behavior})), "x")
    assert hpa is not None
    assert hpa["spec"]["behavior"]["scaleDown"] == {
        **autoscaling.SCALE_DOWN,
        "stabilizationWindowSeconds": 60,
    }
    assert hpa["spec"]["behavior"]["scaleUp"] == autoscaling.SCALE_UP


def test_no_hpa_without_autoscaling() -> None:
    assert manifests.autoscaler(spec.parse(md_body()), "iris-x") is None


def test_the_service_selects_every_revision() -> None:
    service = manifests.service(spec.parse(md_body()))
    assert service["metadata"]["name"] == "iris"
    assert service["spec"]["selector"] == naming.selector_labels("iris")
    assert naming.LABEL_REVISION not in service["spec"]["selector"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_the_service_of_a_canary_without_traffic_selects_the_stable_revision_alone() -> None:
    service = manifests.service(spec.parse(md_body()), only="abc")
    assert service["spec"]["selector"] == {**naming.selector_labels("iris"), naming.LABEL_REVISION: "abc"}


def test_the_server_reads_its_mirror_annotation_from_a_downward_api_file() -> None:
    pod = revision_of().template["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "podinfo")
    field = volume["downwardAPI"]["items"][0]
    assert field["fieldRef"]["fieldPath"] == "metadata.annotations['modelship.io/mirror']"
    server, init = pod["containers"][0], pod["initContainers"][0]
    mount = next(m for m in server["volumeMounts"] if m["name"] == "podinfo")
    assert mount == {"name": "podinfo", "mountPath": naming.PODINFO_MOUNT_DIR, "readOnly": True}
    assert env_of(server)["MODELSHIP_MIRROR_FILE"] == f"{mount['mountPath']}/{field['path']}"
    assert not any(m["name"] == "podinfo" for m in init["volumeMounts"])


def test_every_manifest_carries_the_hash_of_itself() -> None:
    md = spec.parse(md_body())
    one = manifests.service(md)
    other = manifests.service(spec.parse(md_body(name="iris", namespace="other")))
    assert one["metadata"]["annotations"][naming.ANNOTATION_APPLIED]
    assert (
        one["metadata"]["annotations"][naming.ANNOTATION_APPLIED]
        != other["metadata"]["annotations"][naming.ANNOTATION_APPLIED]
    )
