"""Reading children: revision states, and why a pod cannot serve in its own words."""

from __future__ import annotations

from modelship.operator import manifests, naming, observed, spec

from tests.operator.factories import live, md_body, pod, ready_deployment


def target_deployment(replicas: int = 2) -> dict:
    md = spec.parse(md_body(replicas=replicas))
    revision = manifests.desired_revision(md, server_image="img:1")
    return manifests.revision_deployment(md, revision, replicas)


def test_a_ready_deployment_is_a_complete_revision() -> None:
    state = observed.revision_state(ready_deployment(target_deployment(2)))
    assert state is not None
    assert state.complete
    assert (state.version, state.model_name, state.spec_replicas, state.ready_replicas) == ("3", "iris", 2, 2)


def test_a_partly_ready_or_stale_deployment_is_not_complete() -> None:
    assert not observed.revision_state(ready_deployment(target_deployment(2), ready=1)).complete  # type: ignore[union-attr]
    stale = ready_deployment(target_deployment(2))
    stale["metadata"]["generation"] = 2
    assert not observed.revision_state(stale).complete  # type: ignore[union-attr]


def test_zero_replicas_is_complete_at_once() -> None:
    state = observed.revision_state(live(target_deployment(0), replicas=0))
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
    state = observed.revision_state(body)
    assert state is not None
    assert state.failure == ("ReplicaFailure", 'pods "x" is forbidden: exceeded quota')
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
    assert observed.revision_state(deadline).failure == ("ProgressDeadlineExceeded", "too slow")  # type: ignore[union-attr]


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
    assert observed.pod_failure(failing) == observed.PodFailure(
        revision="abc",
        pod="iris-pod",
        reason="ModelLoadFailed",
        message="container fetch-model: sha256 mismatch: expected 9f86, got 0000",
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
    failure = observed.pod_failure(failing)
    assert failure is not None
    assert failure.message == "container fetch-model: 404 Not Found: https://models/x.onnx"


def test_a_crashing_server_without_a_message_reports_its_exit_code() -> None:
    failing = pod(
        "abc",
        init={"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        server={
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        },
    )
    failure = observed.pod_failure(failing)
    assert failure is not None
    assert (failure.reason, failure.message) == (
        "ServerFailed",
        "container server: exited with code 137 (OOMKilled)",
    )


def test_an_image_that_cannot_be_pulled_is_a_failure() -> None:
    failing = pod("abc", init={"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}})
    assert observed.pod_failure(failing).reason == "ImagePullFailed"  # type: ignore[union-attr]


def test_starting_ready_and_restarted_pods_are_not_failures() -> None:
    assert observed.pod_failure(pod("abc")) is None
    assert observed.pod_failure(pod("abc", ready=True)) is None
    recovered = pod(
        "abc",
        server={"state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "message": "once"}}},
    )
    assert observed.pod_failure(recovered) is None


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
    assert observed.unschedulable_message([pending], "abc") == "0/3 nodes are available: 3 Insufficient cpu."
    assert observed.unschedulable_message([pending], "other") is None


def test_trimming_keeps_what_reconciling_reads() -> None:
    body = live(target_deployment())
    body["metadata"]["managedFields"] = [{"manager": "x"}]
    trimmed = observed.trim_object(body)
    assert "managedFields" not in trimmed["metadata"]
    assert trimmed["spec"] == body["spec"]
    assert trimmed["metadata"]["labels"][naming.LABEL_REVISION]


def test_the_cache_keeps_objects_packed_and_unpacks_them_unchanged() -> None:
    trimmed = observed.trim_object(live(target_deployment()))
    packed = observed.pack(trimmed)
    assert isinstance(packed, str)
    assert observed.unpack(packed) == trimmed
