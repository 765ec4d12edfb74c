"""Reading children: revision states, and why a pod cannot serve in its own words."""

from __future__ import annotations

import json

from modelship.operator import children, manifests, reasons, spec
from modelship.operator.reasons import Failure

from tests.operator import factories
from tests.operator.factories import live, md_body, pod, ready_deployment


def target_deployment(replicas: int = 2) -> dict:
    md = spec.parse(md_body(replicas=replicas))
    revision = manifests.desired_revision(md, server_image="img:1")
    return manifests.revision_deployment(md, revision, replicas)


def test_a_ready_deployment_is_a_complete_revision() -> None:
    state = children.revision_state(ready_deployment(target_deployment(2)))
    assert state is not None
    assert state.complete
    assert (state.version, state.model_name, state.spec_replicas, state.ready_replicas) == ("3", "iris", 2, 2)


def test_a_partly_ready_or_stale_deployment_is_not_complete() -> None:
    assert not children.revision_state(ready_deployment(target_deployment(2), ready=1)).complete  # type: ignore[union-attr]
    stale = ready_deployment(target_deployment(2))
    stale["metadata"]["generation"] = 2
    assert not children.revision_state(stale).complete  # type: ignore[union-attr]


def test_zero_replicas_is_complete_at_once() -> None:
    state = children.revision_state(live(target_deployment(0), replicas=0))
    assert state is not None and state.complete


def test_deployment_failures_come_from_its_conditions() -> None:
    body = live(
        target_deployment(),
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "x" is forbidden: exceeded quota',
            }
        ],
    )
    state = children.revision_state(body)
    assert state is not None
    assert state.failure == Failure(reasons.REPLICA_FAILURE, 'pods "x" is forbidden: exceeded quota')
    deadline = live(
        target_deployment(),
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "too slow",
            }
        ],
    )
    assert children.revision_state(deadline).failure == Failure(
        reasons.PROGRESS_DEADLINE_EXCEEDED, "too slow"
    )  # type: ignore[union-attr]


def test_a_failed_fetch_surfaces_with_the_servers_own_message() -> None:
    failing = pod(
        "abc",
        init={
            "state": {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": "sha256 mismatch: expected 9f86, got 0000\n",
                }
            }
        },
    )
    assert children.pod_failure(failing) == children.PodFailure(
        revision="abc",
        pod="iris-pod",
        failure=Failure(
            reasons.MODEL_LOAD_FAILED, "container fetch-model: sha256 mismatch: expected 9f86, got 0000"
        ),
    )


def test_a_fetch_in_crash_loop_reports_the_last_termination() -> None:
    failing = pod(
        "abc",
        init={
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "404 Not Found: https://models/x.onnx"}},
        },
    )
    found = children.pod_failure(failing)
    assert found is not None
    assert found.failure.message == "container fetch-model: 404 Not Found: https://models/x.onnx"


def test_a_crashing_server_without_a_message_reports_its_exit_code() -> None:
    failing = pod(
        "abc",
        init={"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        server={
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        },
    )
    found = children.pod_failure(failing)
    assert found is not None
    assert found.failure == Failure(
        reasons.SERVER_FAILED, "container server: exited with code 137 (OOMKilled)"
    )


def test_an_image_that_cannot_be_pulled_is_a_failure() -> None:
    failing = pod("abc", init={"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}})
    assert children.pod_failure(failing).failure.reason == reasons.IMAGE_PULL_FAILED  # type: ignore[union-attr]


def test_starting_ready_and_restarted_pods_are_not_failures() -> None:
    assert children.pod_failure(pod("abc")) is None
    assert children.pod_failure(pod("abc", ready=True)) is None
    recovered = pod(
        "abc",
        server={"state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "message": "once"}}},
    )
    assert children.pod_failure(recovered) is None


def test_the_scheduler_reason_is_reported_for_the_revision() -> None:
    pending = pod(
        "abc",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
            }
        ],
    )
    assert children.unschedulable_message([pending], "abc") == "0/3 nodes are available: 3 Insufficient cpu."
    assert children.unschedulable_message([pending], "other") is None


def test_a_revisions_failure_names_its_version_and_revision_once() -> None:
    failing = pod("abc", init={"state": {"terminated": {"exitCode": 1, "message": "sha256 mismatch"}}})
    found = children.revision_failure("abc", "2", {}, [failing, pod("other")])
    assert found == Failure(
        reasons.MODEL_LOAD_FAILED,
        "version 2 (revision abc), pod iris-pod: container fetch-model: sha256 mismatch",
    )
    assert children.revision_failure("other", "1", {}, [failing]) is None


def test_children_hold_one_field_per_row_of_the_kinds_table() -> None:
    import dataclasses

    from modelship.operator import kinds

    assert [f.name for f in dataclasses.fields(children.Children)] == [c.attribute for c in kinds.CHILDREN]
    bodies = {kind: [{"metadata": {"name": kind.lower()}}] for kind in kinds.CHILD_KINDS}
    got = children.Children.from_kinds(bodies)
    assert all(got.of(kind) == bodies[kind] for kind in kinds.CHILD_KINDS)


def _fetched(record: object, exit_code: int = 0) -> dict[str, object]:
    message = record if isinstance(record, str) else json.dumps(record)
    return {"state": {"terminated": {"exitCode": exit_code, "message": message}}}


ARTIFACT = {"uri": "s3://models/iris/3/model.onnx", "sha256": "ab" * 32, "size": 2048, "fetchSeconds": 0.1234}


def test_the_artifact_is_what_the_fetch_init_container_reported() -> None:
    pods = [
        factories.pod("r1", "iris-r1-b", ready=True, init=_fetched({**ARTIFACT, "fetchSeconds": 9.0})),
        factories.pod("r1", "iris-r1-a", ready=True, init=_fetched({**ARTIFACT, "cached": False})),
        factories.pod("r2", "iris-r2-a", init=_fetched("model fetch failed: NoSuchKey", exit_code=1)),
    ]
    # The first pod's, whatever the order the cache lists them in; nothing for a failed fetch.
    assert children.artifacts(pods) == {"r1": {**ARTIFACT, "fetchSeconds": 0.123}}
    assert children.artifacts(reversed(pods)) == {"r1": {**ARTIFACT, "fetchSeconds": 0.123}}


def test_an_artifact_record_is_read_only_as_far_as_it_has_the_right_shape() -> None:
    def read(record: object) -> object:
        return children.artifacts([factories.pod("r1", init=_fetched(record))]).get("r1")

    assert read("model ok") is None  # an older server's plain line
    assert read(["uri"]) is None
    assert read({"uri": "s3://b/k"}) is None
    assert read({**ARTIFACT, "size": "2048", "fetchSeconds": True}) == {
        "uri": ARTIFACT["uri"],
        "sha256": "ab" * 32,
    }
    assert read({**ARTIFACT, "uri": "x" * 5000}) is None
    assert children.artifacts([factories.pod("r1")]) == {}  # still fetching
