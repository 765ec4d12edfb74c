"""The CRD in crds/ agrees with what the operator writes (unknown status fields are pruned)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from modelship.operator import manifests, naming, reasons, spec
from modelship.operator import status as st
from modelship.operator.reasons import Failure
from modelship.operator.rollout import state, steps
from modelship.operator.rollout.plan import RolloutPlan

from tests.operator.factories import md_body, revision_state

CRD = Path(__file__).resolve().parents[2] / "crds" / "modelship.io_modeldeployments.yaml"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}"
        paths.add(path)
        paths |= schema_paths(sub, path)
        if "items" in sub:
            paths |= schema_paths(sub["items"], path + "[]")
    return paths


def value_paths(value: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            paths.add(f"{prefix}.{key}")
            paths |= value_paths(sub, f"{prefix}.{key}")
    elif isinstance(value, list):
        for item in value:
            paths |= value_paths(item, prefix + "[]")
    return paths


def test_names_and_subresources() -> None:
    doc = crd()
    assert doc["spec"]["group"] == naming.GROUP
    assert doc["spec"]["names"]["kind"] == naming.KIND
    assert doc["spec"]["names"]["plural"] == naming.PLURAL
    assert doc["spec"]["names"]["shortNames"] == ["md"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == naming.VERSION
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Model", "Version", "Ready", "Status", "Load", "Desired", "Age"]
    paths = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert paths["Load"] == ".status.autoscaling.load"
    assert paths["Desired"] == ".status.autoscaling.desiredReplicas"


def test_every_status_field_the_operator_writes_is_in_the_schema() -> None:
    md = spec.parse(md_body(replicas=2))
    revision = manifests.desired_revision(md, server_image="img:1")
    status = st.compute_status(
        md, revision, RolloutPlan(revision.revision, None, (), False), st.StatusInputs(revisions={}), now="t"
    )
    status["model"] |= {"version": "3", "revision": "abc"}
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert value_paths(status) <= schema_paths(schema)
    assert set(status) | {"rollout", "autoscaling"} == st.OWNED_STATUS_FIELDS


def test_every_autoscaling_status_field_is_in_the_schema() -> None:
    scaling = {"maxReplicas": 4, "metric": "inflightRequests", "targetInflightRequests": 2}
    md = spec.parse(md_body(autoscaling=scaling))
    revision = manifests.desired_revision(md, server_image="img:1")
    reading = {
        "type": "Pods",
        "pods": {"metric": {"name": naming.INFLIGHT_METRIC}, "current": {"averageValue": "3"}},
    }
    hpa = {
        "currentReplicas": 2,
        "desiredReplicas": 3,
        "lastScaleTime": "2026-01-01T00:00:00Z",
        "currentMetrics": [reading],
        "conditions": [
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric", "message": "no"},
            {"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas", "message": "max"},
        ],
    }
    seen = st.StatusInputs(revisions={}, autoscaler=hpa)
    status = st.compute_status(md, revision, RolloutPlan(revision.revision, None, (), False), seen, now="t")
    assert {"current", "lastScaleTime", "scalingActive", "scalingLimitedReason", "problem"} <= set(
        status["autoscaling"]
    )
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert value_paths({"autoscaling": status["autoscaling"]}) <= schema_paths(schema)


def test_every_rollout_status_field_is_in_the_schema() -> None:
    body = md_body(
        replicas=4,
        rollout={"canary": {"steps": [{"setWeight": 50}, {"pause": {}}], "analysis": {}}},
        status={"rollout": {"stableRevision": "old", "stableVersion": "2"}},
    )
    md = spec.parse(body)
    revision = manifests.desired_revision(md, server_image="img:1")
    old = revision_state("old", "2", ready=4, wanted=4)
    result = {"name": "success-rate", "value": 0.5, "threshold": ">= 0.99", "result": "Fail"}
    seen = steps.Inputs(
        revision.revision,
        revision.version,
        revisions={"old": old},
        size=4,
        measurement=steps.Verdict("Fail", "success-rate 0.5 < 0.99", (result,), requests=30, total=120),
        action="promote@1",
    )
    current = dataclasses.replace(
        state.RolloutState.from_status(md.status), canary=revision.revision, weight=50
    )
    outcome = steps.advance(md.rollout, current, seen, 1_800_000_000.0)
    rollout = st.rollout_status(md, outcome, {"old": old})
    assert {"analysis", "actualWeight", "replicaWeight", "handledAction", "canaryRevision", "message"} <= set(
        rollout
    )
    assert {"inconclusive", "canaryRequests", "requests"} <= set(rollout["analysis"])
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert value_paths({"rollout": rollout}) <= schema_paths(schema)
    failing = dataclasses.replace(seen, target_failure=Failure(reasons.MODEL_LOAD_FAILED, "sha256 mismatch"))
    aborted = st.rollout_status(
        md, steps.advance(md.rollout, current, failing, 1_800_000_001.0), {"old": old}
    )
    assert {"abortedRevision", "abort"} <= set(aborted)
    assert value_paths({"rollout": aborted}) <= schema_paths(schema)
    starved = dataclasses.replace(
        seen, measurement=steps.Verdict("Inconclusive", "inconclusive", requests=0, total=500), action=None
    )
    streak = dataclasses.replace(current, inconclusive=2)
    paused = st.rollout_status(md, steps.advance(md.rollout, streak, starved, 1_800_000_002.0), {"old": old})
    assert paused["pauseCondition"] == reasons.ANALYSIS_INCONCLUSIVE
    assert value_paths({"rollout": paused}) <= schema_paths(schema)


def test_the_cpu_target_has_no_default_so_that_it_cannot_contradict_another_metric() -> None:
    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    scaling = props["autoscaling"]["properties"]
    assert "default" not in scaling["targetCPUUtilization"] and "default" not in scaling["metric"]
    assert (
        f"Absent means {spec.DEFAULT_TARGET_CPU_UTILIZATION}"
        in scaling["targetCPUUtilization"]["description"]
    )
    assert scaling["metric"]["enum"] == [spec.METRIC_CPU, spec.METRIC_INFLIGHT_REQUESTS]
    assert naming.INFLIGHT_METRIC in scaling["targetInflightRequests"]["description"]


def test_replicas_has_no_default_so_that_autoscaling_can_exclude_it() -> None:
    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert "default" not in props["replicas"]
    assert "Absent means 1" in props["replicas"]["description"]


def test_the_name_limit_leaves_room_for_the_revision_in_child_names() -> None:
    rule = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"][0]["rule"]
    assert f"size(self.metadata.name) <= {naming.MAX_NAME_LENGTH}" in rule
    assert len(naming.deployment_name("a" * naming.MAX_NAME_LENGTH, "r" * naming.REVISION_LENGTH)) == 63
