"""`kubectl modelship` without a cluster: the status text, the arguments, and which actions it refuses."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from modelship.operator import naming
from modelship.operator.plugin import cli
from modelship.operator.plugin.text import age, describe_step, format_rollout
from modelship.operator.rollout import state

from tests import loopback

NOW = datetime(2026, 11, 23, 10, 1, 0, 250000, tzinfo=UTC)
STABLE, CANARY = "7f3a9c01ab", "9b1c22de00"

STEPS = [
    {"setWeight": 10},
    {"pause": {"duration": "30s"}},
    {"analysis": {}},
    {"setWeight": 50},
    {"pause": {}},
]


def md(status: dict[str, Any] | None = None, *, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "prod"},
        "spec": {
            "model": {"version": "2", "uri": "file:///models/m.onnx"},
            "rollout": {"strategy": "Canary", "canary": {"steps": STEPS}},
        },
    }
    if annotations:
        body["metadata"]["annotations"] = annotations
    if status is not None:
        body["status"] = status
    return body


def conditions(ready: str, progressing: str, degraded: str) -> list[dict[str, Any]]:
    return [
        # Deliberately out of order: the text puts Ready, Progressing, Degraded first.
        {"type": "Degraded", "status": degraded, "reason": "AsExpected", "message": ""},
        {"type": "Progressing", "status": progressing, "reason": "Canary", "message": "step 3 of 5"},
        {"type": "Ready", "status": ready, "reason": "StableServes", "message": "version 1 serves"},
    ]


MID_ROLLOUT: dict[str, Any] = {
    "phase": "Paused",
    "model": {"name": "iris", "version": "1", "revision": STABLE},
    "rollout": {
        "strategy": "Canary",
        "stableRevision": STABLE,
        "stableVersion": "1",
        "canaryRevision": CANARY,
        "canaryVersion": "2",
        "step": 1,
        "steps": 5,
        "stepStartedAt": "2026-11-23T10:00:00Z",
        "weight": 10,
        "actualWeight": 8,
        "replicaWeight": 33,
        "traffic": "by replica ratio: 1 canary and 2 stable pods behind one Service",
        "paused": True,
        "pauseReason": "pause of 30s until 2026-11-23T10:00:30Z",
        "analysis": {
            "failures": 0,
            "lastRun": "2026-11-23T10:00:30Z",
            "results": [{"name": "success-rate", "value": 1.0, "threshold": ">= 0.99", "result": "Pass"}],
        },
    },
    "conditions": conditions("True", "True", "False"),
}

ABORTED: dict[str, Any] = {
    "phase": "Degraded",
    "rollout": {
        "strategy": "Canary",
        "stableRevision": STABLE,
        "stableVersion": "1",
        "weight": 0,
        "actualWeight": 0,
        "abortedRevision": CANARY,
        "abortReason": f"analysis success-rate: 0.42 < 0.99 (canary {CANARY}, 50 requests)",
        "analysis": {
            "failures": 2,
            "runs": 4,
            "verdict": "Fail",
            "summary": "success-rate 0.42 < 0.99",
            "lastRun": "2026-11-23T10:00:30Z",
            "results": [
                {"name": "success-rate", "value": 0.4200001, "threshold": ">= 0.99", "result": "Fail"},
                {"name": "latency-p99", "value": 0.0123, "threshold": "<= 0.5", "result": "Pass"},
                {"name": "error-budget", "threshold": "0 .. 5", "result": "Inconclusive"},
            ],
        },
        "handledAction": "abort@2026-11-23T10:00:31.123Z",
    },
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "StableServes"},
        {"type": "Degraded", "status": "True", "reason": "RolloutAborted", "message": "analysis failed"},
        {"type": "Progressing", "status": "False", "reason": "RolloutAborted"},
    ],
}

HEALTHY: dict[str, Any] = {
    "phase": "Healthy",
    "model": {"name": "iris", "version": "2", "revision": CANARY},
    "rollout": {
        "strategy": "Canary",
        "stableRevision": CANARY,
        "stableVersion": "2",
        "step": 5,
        "steps": 5,
        "promotedAt": "2026-11-23T10:00:45Z",
        "retiring": STABLE,
    },
    "conditions": conditions("True", "False", "False"),
}


def text(body: dict[str, Any]) -> str:
    return format_rollout(body, now=NOW)


def field(output: str, label: str) -> str:
    """The value of one `Label:   value` line of the status text."""
    for line in output.splitlines():
        if line.startswith(f"{label}:"):
            return line[len(label) + 1 :].strip()
    raise AssertionError(f"no {label!r} line in:\n{output}")


def labels(output: str) -> set[str]:
    """The labels of the top-level lines of the status text."""
    return {line.split(":")[0] for line in output.splitlines() if not line.startswith(" ")}


def lines_after(output: str, heading: str) -> list[str]:
    """The indented lines under a heading."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line.strip())
    return block


# --- the status text ------------------------------------------------------------------------


def test_a_fresh_object_without_status_prints_what_is_known() -> None:
    output = text(md())
    assert field(output, "Name") == "iris"
    assert field(output, "Namespace") == "prod"
    assert field(output, "Phase") == "- (no status reported yet)"
    assert field(output, "Strategy") == "Canary"  # from the spec
    assert field(output, "Stable") == "-"
    assert field(output, "Canary") == "- (no rollout in progress)"
    # The steps the next rollout will take, without progress markers.
    assert lines_after(output, "Steps:") == [
        "1. setWeight: 10%",
        "2. pause: 30s",
        "3. analysis",
        "4. setWeight: 50%",
        "5. pause: until promoted",
    ]
    assert labels(output) == {"Name", "Namespace", "Phase", "Strategy", "Stable", "Canary", "Steps"}


def test_an_empty_object_does_not_crash() -> None:
    output = format_rollout({}, now=NOW)
    assert field(output, "Name") == "-"
    assert "Steps:" not in output


def test_fields_of_the_wrong_type_are_ignored() -> None:
    body = md({"phase": "Healthy", "rollout": "garbage", "conditions": {"not": "a list"}})
    body["spec"]["rollout"]["canary"]["steps"] = "garbage"
    output = text(body)
    assert field(output, "Phase") == "Healthy"
    assert "Conditions:" not in output


def test_an_older_operator_without_rollout_status_shows_the_serving_model() -> None:
    output = text(
        md(
            {
                "phase": "Healthy",
                "model": {"version": "1", "revision": STABLE},
                "conditions": conditions("True", "False", "False"),
            }
        )
    )
    assert field(output, "Stable") == f"version 1 (revision {STABLE})"
    assert field(output, "Canary") == "- (no rollout in progress)"
    assert field(output, "Strategy") == "Canary"


def test_the_stable_artifact_is_shown_as_its_pods_reported_it() -> None:
    model = {
        "version": "1",
        "revision": STABLE,
        "uri": "s3://models/iris/1/model.onnx",
        "sha256": "42fce6f8" * 8,
    }
    output = text(md({"phase": "Healthy", "model": {**model, "size": 2150, "fetchSeconds": 0.1234}}))
    assert (
        field(output, "Artifact")
        == "s3://models/iris/1/model.onnx (2.1 KiB, sha256 42fce6f842fc, fetched in 0.12s)"
    )
    assert field(text(md({"model": {**model, "fetchSeconds": 0}})), "Artifact").endswith(
        "(sha256 42fce6f842fc, fetched in 0.00s)"
    )
    assert "Artifact" not in labels(text(md({"model": {"version": "1", "revision": STABLE}})))


def test_mid_rollout_paused() -> None:
    output = text(md(MID_ROLLOUT))
    assert field(output, "Phase") == "Paused"
    assert field(output, "Stable") == f"version 1 (revision {STABLE})"
    assert field(output, "Canary") == f"version 2 (revision {CANARY})"
    assert field(output, "Step") == "1/5 done; now 2. pause: 30s, since 2026-11-23T10:00:00Z (1m ago)"
    assert lines_after(output, "Steps:") == [
        "[x] 1. setWeight: 10%",
        "[>] 2. pause: 30s",
        "[ ] 3. analysis",
        "[ ] 4. setWeight: 50%",
        "[ ] 5. pause: until promoted",
    ]
    assert field(output, "Weight") == "10% asked, 33% of ready pods, 8% of requests (measured)"
    assert field(output, "Traffic").startswith("by replica ratio: 1 canary and 2 stable pods")
    assert field(output, "Paused") == "pause of 30s until 2026-11-23T10:00:30Z"
    assert field(output, "Analysis") == "0 failed in a row, last run 2026-11-23T10:00:30Z (30s ago)"
    assert lines_after(output, "Analysis:") == [
        "NAME          VALUE  THRESHOLD  RESULT",
        "success-rate  1      >= 0.99    Pass",
    ]
    assert lines_after(output, "Conditions:") == [
        "TYPE         STATUS  REASON        MESSAGE",
        "Ready        True    StableServes  version 1 serves",
        "Progressing  True    Canary        step 3 of 5",
        "Degraded     False   AsExpected    -",
    ]
    assert "Aborted:" not in output


def test_aborted_by_a_failed_analysis() -> None:
    output = text(md(ABORTED))
    assert field(output, "Phase") == "Degraded"
    assert field(output, "Canary") == "- (no rollout in progress)"
    assert field(output, "Aborted") == (
        f"revision {CANARY}: analysis success-rate: 0.42 < 0.99 (canary {CANARY}, 50 requests)"
    )
    assert field(output, "Weight") == "0% asked, 0% of requests (measured)"
    assert field(output, "Analysis") == (
        "Fail, 2 failed in a row, 4 run(s), last run 2026-11-23T10:00:30Z (30s ago)"
    )
    assert lines_after(output, "Analysis:") == [
        "success-rate 0.42 < 0.99",
        "NAME          VALUE   THRESHOLD  RESULT",
        "success-rate  0.42    >= 0.99    Fail",
        "latency-p99   0.0123  <= 0.5     Pass",
        "error-budget  -       0 .. 5     Inconclusive",
    ]
    assert field(output, "Last action") == "abort@2026-11-23T10:00:31.123Z (acted on)"
    assert [line.split()[0] for line in lines_after(output, "Conditions:")] == [
        "TYPE",
        "Ready",
        "Progressing",
        "Degraded",
    ]
    # Without a rollout in progress the steps are the plan of the next one: no markers.
    assert "[x]" not in output and "[>]" not in output


def test_healthy_after_a_rollout() -> None:
    output = text(md(HEALTHY))
    assert field(output, "Phase") == "Healthy"
    assert field(output, "Stable") == f"version 2 (revision {CANARY})"
    assert field(output, "Canary") == "- (no rollout in progress)"
    assert field(output, "Retiring") == (
        f"revision {STABLE}, kept a while after the promotion at 2026-11-23T10:00:45Z (15s ago)"
    )
    assert labels(output) == {
        *("Name", "Namespace", "Phase", "Strategy", "Stable", "Canary", "Steps", "Retiring", "Conditions")
    }


def test_an_action_not_yet_acted_on_is_shown_as_pending() -> None:
    status = {**MID_ROLLOUT, "rollout": {**MID_ROLLOUT["rollout"], "handledAction": "promote@1"}}
    output = text(md(status, annotations={naming.ANNOTATION_ACTION: "promote@2"}))
    assert field(output, "Action") == "promote@2 (asked, not yet acted on)"
    # Handled but not yet removed by the operator: it is done, not pending.
    output = text(md(status, annotations={naming.ANNOTATION_ACTION: "promote@1"}))
    assert field(output, "Last action") == "promote@1 (acted on)"
    assert "Action:" not in output


def test_an_autoscaled_model_shows_its_load_and_size() -> None:
    body = md(copy.deepcopy(HEALTHY))
    body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 6}
    body["status"]["autoscaling"] = {"load": "3.2/2 in-flight", "currentReplicas": 3, "desiredReplicas": 4}
    assert field(text(body), "Autoscaling") == "3.2/2 in-flight, 3 → 4 replicas (min 1, max 6)"
    body["status"]["autoscaling"] = {
        "load": "?/2 in-flight",
        "currentReplicas": 2,
        "desiredReplicas": 2,
        "problem": {
            "reason": "FailedGetPodsMetric",
            "message": "the HPA cannot read modelship_inflight_requests",
        },
    }
    output = text(body)
    assert field(output, "Autoscaling") == "?/2 in-flight, 2 replicas (min 1, max 6)"
    assert lines_after(output, "Autoscaling:") == [
        "FailedGetPodsMetric: the HPA cannot read modelship_inflight_requests"
    ]
    del body["status"]["autoscaling"]
    assert field(text(body), "Autoscaling") == "no reading yet (min 1, max 6)"
    assert "Autoscaling" not in labels(text(md(HEALTHY)))


def test_all_steps_done_marks_none_current() -> None:
    status = {**MID_ROLLOUT, "rollout": {**MID_ROLLOUT["rollout"], "step": 5, "stepStartedAt": None}}
    output = text(md(status))
    assert field(output, "Step") == "5/5 done"
    assert all(line.startswith("[x]") for line in lines_after(output, "Steps:"))


def test_progress_without_the_steps_in_the_spec() -> None:
    # The spec changed (or was read from an older object): status alone still tells the step.
    body = md({**MID_ROLLOUT, "rollout": {**MID_ROLLOUT["rollout"], "stepStartedAt": None}})
    del body["spec"]["rollout"]
    output = text(body)
    assert field(output, "Step") == "1/5 done; now step 2"
    assert "Steps" not in labels(output)


@pytest.mark.parametrize(
    ("step", "described"),
    [
        ({"setWeight": 25}, "setWeight: 25%"),
        ({"pause": {"duration": "1h30m"}}, "pause: 1h30m"),
        ({"pause": {"duration": 45}}, "pause: 45s"),
        ({"pause": {}}, "pause: until promoted"),
        ({"pause": None}, "pause: until promoted"),
        ({"analysis": {}}, "analysis"),
        ({"experiment": {"x": 1}}, '{"experiment": {"x": 1}}'),
        ({}, "(empty step)"),
    ],
)
def test_describe_step(step: dict[str, Any], described: str) -> None:
    assert describe_step(step) == described


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (192, "3m12s"), (7500, "2h5m"), (7200, "2h"), (356400, "4d3h")],
)
def test_age(seconds: int, shown: str) -> None:
    assert age(datetime.fromtimestamp(NOW.timestamp() - seconds, UTC), NOW) == shown


# --- the actions ----------------------------------------------------------------------------


def test_the_patch_sets_only_the_action_annotation_with_a_millisecond_utc_nonce() -> None:
    assert cli.action_patch("promote-full", NOW) == {
        "metadata": {"annotations": {"modelship.io/action": "promote-full@2026-11-23T10:01:00.250Z"}}
    }


@pytest.mark.parametrize(
    "argv", [["promote", "m"], ["promote", "m", "--full"], ["abort", "m"], ["retry", "m"]]
)
def test_the_operator_reads_the_verb_the_plugin_writes(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    verb = cli.verb_of(args.command, getattr(args, "full", False))
    value = cli.action_patch(verb, NOW)["metadata"]["annotations"][naming.ANNOTATION_ACTION]
    assert state.parse_action(value) == verb


def test_the_nonce_is_utc_whatever_the_local_zone() -> None:
    from datetime import timedelta, timezone

    local = NOW.astimezone(timezone(timedelta(hours=2)))
    assert cli.nonce(local) == "2026-11-23T10:01:00.250Z"


@pytest.mark.parametrize("verb", ["promote", "promote-full", "abort"])
def test_promote_and_abort_need_a_canary_in_progress(verb: str) -> None:
    assert cli.refusal(verb, md(MID_ROLLOUT)) is None
    for status in (None, {}, HEALTHY, ABORTED):
        reason = cli.refusal(verb, md(status))
        assert reason == "no canary rollout of iris is in progress (status.rollout has no canaryRevision)"


def test_retry_needs_an_aborted_revision() -> None:
    assert cli.refusal("retry", md(ABORTED)) is None
    for status in (None, HEALTHY, MID_ROLLOUT):
        assert cli.refusal("retry", md(status)) == (
            "no aborted rollout of iris to retry (status.rollout has no abortedRevision)"
        )


def test_an_action_the_operator_has_not_acted_on_is_not_replaced() -> None:
    # Two promotes in a row must not collapse into one.
    pending = md(MID_ROLLOUT, annotations={naming.ANNOTATION_ACTION: "promote@2026-11-23T10:00:59.000Z"})
    assert cli.refusal("promote", pending) == (
        "the operator has not yet acted on the previous action 'promote@2026-11-23T10:00:59.000Z' of iris"
    )
    handled = md(
        {**MID_ROLLOUT, "rollout": {**MID_ROLLOUT["rollout"], "handledAction": "promote@x"}},
        annotations={naming.ANNOTATION_ACTION: "promote@x"},
    )
    assert cli.refusal("promote", handled) is None


def test_describe_action_names_the_revision() -> None:
    assert cli.describe_action("abort", md(MID_ROLLOUT)) == (
        f"abort canary {CANARY}: all traffic back to the stable revision"
    )
    assert cli.describe_action("retry", md(ABORTED)) == f"retry revision {CANARY} from the first step"


# --- the arguments --------------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(argv)


def test_connection_options_go_before_or_after_the_command() -> None:
    args = parse("-n", "a", "--context", "c", "promote", "iris")
    assert (args.namespace, args.context, args.kubeconfig, args.name) == ("a", "c", None, "iris")
    args = parse("promote", "iris", "--namespace", "b", "--kubeconfig", "/k")
    assert (args.namespace, args.kubeconfig, args.context) == ("b", "/k", None)
    # After the command wins, as the later flag does in kubectl.
    assert parse("-n", "a", "status", "iris", "-n", "b").namespace == "b"
    assert parse("status", "iris").namespace is None


def test_promote_full_and_force() -> None:
    args = parse("promote", "iris", "--full", "--force")
    assert (cli.verb_of(args.command, args.full), args.force) == ("promote-full", True)
    args = parse("promote", "iris")
    assert (cli.verb_of(args.command, args.full), args.force) == ("promote", False)
    assert cli.verb_of(parse("abort", "iris").command) == "abort"
    assert cli.verb_of(parse("retry", "iris", "--force").command) == "retry"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["promote"],
        ["abort", "iris", "--full"],
        ["rollback", "iris"],
        ["status"],
        ["status", "a", "b"],
        ["promote", "iris", "-n"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: kubectl modelship" in capsys.readouterr().err


def test_the_namespace_comes_from_the_chosen_context() -> None:
    contexts = [
        {"name": "dev", "context": {"cluster": "c", "namespace": "team-a"}},
        {"name": "prod", "context": {"cluster": "c"}},
    ]
    assert cli.context_namespace(contexts, contexts[0], None) == "team-a"
    assert cli.context_namespace(contexts, contexts[0], "prod") is None
    assert cli.context_namespace(contexts, contexts[1], "dev") == "team-a"
    assert cli.context_namespace(contexts, None, None) is None


def test_a_missing_kubeconfig_is_an_error_not_a_traceback(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "iris", "--kubeconfig", str(tmp_path / "absent")]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot use the kubeconfig {tmp_path / 'absent'}")


def test_list_rows() -> None:
    table = cli.list_table([md(MID_ROLLOUT), md(HEALTHY), md()], all_namespaces=False)
    assert table.splitlines() == [
        "NAME   PHASE     STABLE   CANARY   STEP   CANARY WEIGHT",
        "iris   Paused    1        2        1/5    8%",
        "iris   Healthy   2        -        -      -",
        "iris   -         -        -        -      -",
    ]
    assert cli.list_table([md(HEALTHY)], all_namespaces=True).splitlines()[1].split()[:2] == ["prod", "iris"]
    unmeasured = copy.deepcopy(MID_ROLLOUT)
    del unmeasured["rollout"]["actualWeight"]
    assert cli.list_row(md(unmeasured))[-1] == "~33%"  # by ready pods, marked as not measured


def _kubeconfig(folder: Path, server: str) -> str:
    path = folder / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


@pytest.fixture
def fake_api() -> Iterator[tuple[str, list[str]]]:
    """An API server on 127.0.0.1 (plain HTTP) with no ModelDeployments; the paths it was asked for."""
    asked: list[str] = []

    class Handler(loopback.Handler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"kind": "ModelDeploymentList", "items": [], "metadata": {}}).encode()
            self.reply(200, body, "application/json")

    with loopback.serving(Handler) as url:
        yield url, asked


def test_an_api_server_on_loopback_is_reached_direct_whatever_the_proxy_variables_say(
    tmp_path: Path, fake_api: tuple[str, list[str]], bogus_proxy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, asked = fake_api
    assert cli.main(["list", "--kubeconfig", _kubeconfig(tmp_path, url)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == 'no modeldeployments in namespace "ml"\n'
    assert asked == [f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/ml/{naming.PLURAL}"]


def test_a_remote_api_server_keeps_the_environments_proxy(tmp_path: Path, bogus_proxy: str) -> None:
    # No request is sent: only the client's configuration is read.
    conn = cli.connect(_kubeconfig(tmp_path, "https://api.example.com:6443"), None, None)
    assert conn.api.api_client.configuration.proxy == bogus_proxy


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("https://127.0.0.1:6443", True),
        ("https://127.1.2.3", True),
        ("https://[::1]:6443", True),
        ("https://localhost:6443", True),
        ("https://api.localhost", True),
        ("https://10.96.0.1:443", False),
        ("https://api.example.com", False),
    ],
)
def test_is_loopback_url(url: str, loopback: bool) -> None:
    assert cli.is_loopback_url(url) is loopback


def test_a_shadow_step_shows_what_is_copied_and_that_users_get_the_stable_answers() -> None:
    body = md(copy.deepcopy(MID_ROLLOUT))
    body["spec"]["rollout"]["canary"]["steps"] = [{"shadow": {"percent": 20, "duration": "5m"}}, *STEPS]
    rollout = body["status"]["rollout"]
    rollout.update(
        step=0,
        weight=0,
        mirror=20,
        replicaWeight=0,
        traffic="shadow: users get only the stable revision's answers; its pods copy 20% of their requests",
    )
    rollout.pop("actualWeight", None)
    output = text(body)
    assert lines_after(output, "Steps:")[0] == "[>] 1. shadow: 20% for 5m"
    assert field(output, "Shadow") == "20% of the stable revision's requests copied"
    assert field(output, "Traffic").startswith("shadow: users get only the stable revision's answers")
    assert "Shadow:" not in text(md(MID_ROLLOUT))
