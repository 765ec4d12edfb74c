import pytest
from modelship.operator import spec

from tests.operator.factories import md_body


def test_the_model_name_defaults_to_the_object_name() -> None:
    assert spec.parse(md_body(name="churn")).model.name == "churn"
    assert spec.parse(md_body(model={"name": "other"})).model.name == "other"


def test_absent_replicas_means_one_and_autoscaling_means_none() -> None:
    assert spec.parse(md_body()).desired_replicas == 1
    assert spec.parse(md_body(replicas=0)).desired_replicas == 0
    scaled = spec.parse(md_body(autoscaling={"maxReplicas": 4}))
    assert scaled.desired_replicas is None
    assert scaled.autoscaling == spec.Autoscaling(min_replicas=1, max_replicas=4, target_cpu_utilization=70)


def test_autoscaling_on_inflight_requests_keeps_its_target_and_the_users_behavior() -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 60}}
    raw = {"maxReplicas": 4, "metric": "inflightRequests", "targetInflightRequests": 2, "behavior": behavior}
    scaling = spec.parse(md_body(autoscaling=raw)).autoscaling
    assert scaling == spec.Autoscaling(
        min_replicas=1,
        max_replicas=4,
        metric=spec.METRIC_INFLIGHT_REQUESTS,
        target_inflight_requests=2.0,
        behavior=behavior,
    )
    assert not scaling.on_cpu


def test_an_object_stored_with_the_old_cpu_default_still_reads() -> None:
    scaling = spec.parse(
        md_body(autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetCPUUtilization": 70})
    )
    assert scaling.autoscaling is not None and scaling.autoscaling.on_cpu
    assert scaling.autoscaling.target_cpu_utilization == 70


def test_a_pvc_uri_splits_into_claim_and_path() -> None:
    model = spec.parse(md_body(model={"uri": "pvc://models/a/b.onnx"})).model
    assert model.pvc == ("models", "a/b.onnx")
    assert spec.parse(md_body()).model.pvc is None


def test_an_s3_uri_gets_its_access_settings_and_only_an_s3_uri_does() -> None:
    model = spec.parse(md_body(model={"uri": "s3://models/iris/3/model.onnx"})).model
    assert model.s3 == spec.S3Access()
    access = {
        "endpoint": "https://minio:9000/",
        "region": "eu-west-1",
        "credentialsSecretRef": {"name": "s3"},
    }
    model = spec.parse(md_body(model={"uri": "s3://models/a.onnx", "s3": access})).model
    assert model.s3 == spec.S3Access(
        endpoint="https://minio:9000", region="eu-west-1", credentials_secret="s3"
    )
    assert spec.parse(md_body()).model.s3 is None


def test_a_pvc_uri_without_a_path_is_an_error_for_the_user() -> None:
    with pytest.raises(spec.SpecError, match="pvc://<claim>/<path"):
        spec.parse(md_body(model={"uri": "pvc://models"}))


def test_a_model_without_version_or_uri_is_refused() -> None:
    body = md_body()
    del body["spec"]["model"]["uri"]
    with pytest.raises(spec.SpecError):
        spec.parse(body)


def _connections(**fields: object) -> spec.ServerSettings:
    batching = {"maxBatchSize": 32, "maxDelayMs": 5}
    return spec.parse(md_body(server={"batching": batching, "connections": fields})).server


def test_connection_limits_left_out_are_none_so_the_servers_defaults_apply() -> None:
    server = spec.parse(md_body()).server
    assert (server.max_connection_requests, server.max_connection_age) == (None, None)
    assert (_connections().max_connection_requests, _connections().max_connection_age) == (None, None)


@pytest.mark.parametrize(
    ("max_age", "seconds"), [("1m30s", 90.0), (45, 45.0), ("500ms", 0.5), (0, 0.0), ("0s", 0.0)]
)
def test_a_connections_max_age_is_a_duration_in_seconds(max_age: object, seconds: float) -> None:
    assert _connections(maxAge=max_age).max_connection_age == seconds


def test_a_connections_max_requests_is_read_as_written_and_zero_stays_zero() -> None:
    assert _connections(maxRequests=250).max_connection_requests == 250
    assert _connections(maxRequests=0).max_connection_requests == 0


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"maxRequests": -1}, "spec.server.connections.maxRequests"),
        ({"maxRequests": 10_000_001}, "spec.server.connections.maxRequests"),
        ({"maxAge": -1}, "spec.server.connections.maxAge"),
        ({"maxAge": "soon"}, "spec.server.connections.maxAge"),
    ],
)
def test_bad_connection_limits_are_refused_naming_the_field(fields: dict[str, object], path: str) -> None:
    with pytest.raises(spec.SpecError, match=path):
        _connections(**fields)
