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


def test_a_pvc_uri_splits_into_claim_and_path() -> None:
    model = spec.parse(md_body(model={"uri": "pvc://models/a/b.onnx"})).model
    assert model.pvc == ("models", "a/b.onnx")
    assert spec.parse(md_body()).model.pvc is None


def test_a_pvc_uri_without_a_path_is_an_error_for_the_user() -> None:
    with pytest.raises(spec.SpecError, match="pvc://<claim>/<path"):
        spec.parse(md_body(model={"uri": "pvc://models"}))


def test_a_model_without_version_or_uri_is_refused() -> None:
    body = md_body()
    del body["spec"]["model"]["uri"]
    with pytest.raises(spec.SpecError):
        spec.parse(body)
