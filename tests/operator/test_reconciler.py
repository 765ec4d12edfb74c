"""The reconcile orchestration with an in-memory API: which writes and events it makes.

The cluster tests run it against the real API server; these pin down its bookkeeping
(writes only what differs, never twice for one change, status last, errors surfaced).
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from modelship.operator import bodies, kinds, naming, spec
from modelship.operator import client as kube
from modelship.operator.children import Children
from modelship.operator.config import OperatorConfig
from modelship.operator.reconciler import PERMANENT_ERROR_RETRY, Reconciler, transition_events
from modelship.operator.workqueue import DONE, Result, TerminalError

from tests.operator.factories import live, md_body, replicas_managed_by

KEY = ("ml", "iris")


class MemoryApi:
    """Stores what is written; `sync()` copies it into the cache the way watch events would."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.md = body
        self.cached_md = copy.deepcopy(body)
        self.cached: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: collections.Counter[str] = collections.Counter()
        self.version = 100
        self.fail_with: kube.ApiError | None = None
        self.status_fails_with: kube.ApiError | None = None
        self.edit_during_apply = False
        self.edit_unseen_during_apply = False
        # versions the watch delivered after a reconcile read the cache, by (kind, name)
        self.arrived: dict[tuple[str, str], str] = {}
        self.calls: list[tuple[Any, ...]] = []  # the writes of children, in order
        self.held: dict[str, dict[str, Any]] = {}  # a Deployment as the hold left it, by name

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.writes["apply"] += 1
        if self.fail_with is not None:
            raise self.fail_with
        if self.edit_during_apply:  # someone changes the ModelDeployment while we write
            meta = {**self.cached_md["metadata"], "resourceVersion": self._bump()}
            self.cached_md = {**self.cached_md, "metadata": meta}
        if self.edit_unseen_during_apply:  # ... and the watch has not delivered it yet
            self.md["metadata"]["resourceVersion"] = self._bump()
        body = live(dict(manifest), resource_version=self._bump())
        key = (manifest["kind"], manifest["metadata"]["name"])
        if manifest["kind"] == "Deployment":
            _apply_replicas(body, manifest, self.objects.get(key))
        self.calls.append(("apply", *key))
        self.objects[key] = body
        return body

    async def hold_replicas(self, kind: Any, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.writes["hold"] += 1
        self.calls.append(("hold", name, replicas))
        body = self.objects[(kind.kind, name)]
        body["spec"]["replicas"] = replicas
        body["metadata"]["resourceVersion"] = self._bump()
        replicas_managed_by(body, naming.HANDOVER_FIELD_MANAGER)
        self.held[name] = copy.deepcopy(body)
        return body

    async def patch_status(
        self,
        kind: Any,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.writes["status"] += 1
        if self.status_fails_with is not None:
            raise self.status_fails_with
        if resource_version not in (None, self.md["metadata"]["resourceVersion"]):
            raise kube.api_error(409, {"reason": "Conflict", "message": "the object has been modified"})
        status = self.md.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            elif isinstance(value, dict) and isinstance(status.get(key), dict):
                status[key] = {k: v for k, v in {**status[key], **value}.items() if v is not None}
            else:
                status[key] = value
        self.md["metadata"]["resourceVersion"] = self._bump()
        return self.md

    async def delete(self, kind: Any, namespace: str, name: str, *, uid: str | None = None) -> bool:
        self.writes["delete"] += 1
        return self.objects.pop((kind.kind, name), None) is not None

    def sync(self, reconciler: Reconciler) -> None:
        """Deliver the watch events: the cache takes the stored state, the reconciler hears of it."""
        for kind, name in set(self.cached) | set(self.objects):
            body = self.objects.get((kind, name))
            reconciler.observe(KEY, kind, name, body["metadata"]["resourceVersion"] if body else None)
        self.cached = copy.deepcopy(self.objects)
        self.cached_md = copy.deepcopy(self.md)
        reconciler.observe(KEY, "ModelDeployment", "iris", self.md["metadata"]["resourceVersion"])

    # the Cache protocol
    async def wait_synced(self) -> None:
        return None

    def model_deployment(self, key: tuple[str, str]) -> Mapping[str, Any] | None:
        return self.cached_md

    def children(self, key: tuple[str, str]) -> Children:
        def of(kind: str) -> list[dict[str, Any]]:
            return [body for (k, _), body in self.cached.items() if k == kind]

        return Children.from_kinds({kind: of(kind) for kind in kinds.CHILD_KINDS})

    def version_of(self, key: tuple[str, str], kind: str, name: str) -> str | None:
        if (kind, name) in self.arrived:
            return self.arrived[(kind, name)]
        body = self.cached.get((kind, name))
        return body["metadata"]["resourceVersion"] if body is not None else None


def _apply_replicas(
    body: dict[str, Any], manifest: Mapping[str, Any], before: Mapping[str, Any] | None
) -> None:
    """Server-side apply's rule for spec.replicas: the field belongs to the managers that set it;
    one our apply no longer sets is kept only if another manager (the handover) holds it."""
    if "replicas" in manifest["spec"]:
        replicas_managed_by(body, naming.FIELD_MANAGER)
        return
    others = [
        entry for entry in bodies.managers_of_replicas(before) if entry["manager"] != naming.FIELD_MANAGER
    ]
    if before is not None and others:
        body["spec"]["replicas"] = before["spec"]["replicas"]
        body["metadata"]["managedFields"] = others


@pytest.fixture
def api() -> MemoryApi:
    return MemoryApi(md_body(replicas=2))


@pytest.fixture
def events() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def reconciler(api: MemoryApi, events: list[tuple[str, str, str]]) -> Reconciler:
    def sink(md: spec.ModelDeployment, type_: str, reason: str, message: str) -> None:
        events.append((type_, reason, message))

    return Reconciler(api, api, sink, OperatorConfig(), clock=lambda: "2026-01-01T00:00:00Z")


async def test_a_new_model_deployment_is_created_once_and_then_left_alone(
    api: MemoryApi, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    assert await reconciler.reconcile(KEY) == DONE
    assert api.writes == {"apply": 2, "status": 1}
    assert [reason for _, reason, _ in events] == ["RevisionCreated"]
    assert api.md["status"]["phase"] == "Progressing"

    # The watch has not delivered our writes yet: nothing is written twice.
    await reconciler.reconcile(KEY)
    assert api.writes == {"apply": 2, "status": 1}

    # Once it has, and nothing changed, a resync writes nothing.
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    assert api.writes == {"apply": 2, "status": 1}


async def test_a_deployment_deleted_by_hand_is_restored(
    api: MemoryApi, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    await reconciler.reconcile(KEY)
    api.sync(reconciler)
    api.objects.pop(next(k for k in api.objects if k[0] == "Deployment"))
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    assert api.writes["apply"] == 3
    assert events[-1][1] == "RevisionCreated"


async def test_a_child_that_changed_after_the_reconcile_read_it_is_left_to_the_next_one(
    api: MemoryApi, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    await reconciler.reconcile(KEY)
    api.sync(reconciler)
    for body in (api.md, api.cached_md):
        body["spec"]["replicas"] = 3
    deployment = next(name for kind, name in api.objects if kind == "Deployment")
    # Its watch event (our own last write, or the controller's status) arrived while this
    # reconcile decided from the older copy: a resize decided from that copy is not written.
    api.arrived[("Deployment", deployment)] = "999"
    await reconciler.reconcile(KEY)
    assert api.writes["apply"] == 2
    api.arrived.clear()
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    assert api.writes["apply"] == 3
    assert [reason for _, reason, _ in events].count("RevisionUpdated") == 1


async def test_a_status_computed_from_an_object_that_changed_meanwhile_is_not_written(
    api: MemoryApi, reconciler: Reconciler
) -> None:
    api.edit_during_apply = True
    await reconciler.reconcile(KEY)
    assert api.writes == {"apply": 2}  # the change's own event brings the next reconcile


async def test_a_status_write_racing_a_change_the_cache_has_not_seen_is_refused_and_skipped(
    api: MemoryApi, reconciler: Reconciler
) -> None:
    # A deletion or someone else's status write reached the API server after this reconcile read
    # the object: the patch, a diff against what it read, must not land on the newer version.
    api.edit_unseen_during_apply = True
    before = copy.deepcopy(api.md.get("status"))
    assert await reconciler.reconcile(KEY) == DONE
    assert api.writes == {"apply": 2, "status": 1}
    assert api.md.get("status") == before


async def test_an_outage_is_raised_for_the_queue_to_retry(api: MemoryApi, reconciler: Reconciler) -> None:
    api.fail_with = kube.api_error(503, {"reason": "ServiceUnavailable", "message": "etcd is down"})
    with pytest.raises(kube.Transient):
        await reconciler.reconcile(KEY)


async def test_a_refused_write_degrades_the_status_and_is_retried_much_later(
    api: MemoryApi, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    api.fail_with = kube.api_error(403, {"reason": "Forbidden", "message": "cannot patch deployments"})
    assert await reconciler.reconcile(KEY) == Result(requeue_after=PERMANENT_ERROR_RETRY)
    degraded = next(c for c in api.md["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "ApplyFailed"
    assert "cannot patch deployments" in degraded["message"]
    assert ("Warning", "ApplyFailed") in [(t, r) for t, r, _ in events]


async def test_a_model_deployment_being_deleted_is_not_touched(
    api: MemoryApi, reconciler: Reconciler
) -> None:
    api.cached_md["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await reconciler.reconcile(KEY)
    assert sum(api.writes.values()) == 0


def test_events_follow_condition_flips_only() -> None:
    def status(ready: str, degraded: str, reason: str = "X") -> dict[str, Any]:
        return {
            "conditions": [
                {"type": "Ready", "status": ready, "message": "serving"},
                {"type": "Degraded", "status": degraded, "reason": reason, "message": "bad"},
            ]
        }

    assert transition_events(status("False", "False"), status("True", "False")) == [
        ("Normal", "Ready", "serving")
    ]
    assert transition_events(status("True", "False"), status("True", "False")) == []
    assert transition_events(status("False", "False"), status("False", "True", "ModelLoadFailed")) == [
        ("Warning", "ModelLoadFailed", "bad")
    ]
    assert transition_events(status("False", "True", "A"), status("False", "True", "B")) == [
        ("Warning", "B", "bad")
    ]
    assert transition_events(status("False", "True"), status("False", "False")) == [
        ("Normal", "Recovered", "no failures any more")
    ]


def test_a_canary_tells_its_story_in_events() -> None:
    started = {"stableRevision": "a", "canaryRevision": "b", "canaryVersion": "2", "step": 0, "steps": 2}
    paused = {
        **started,
        "step": 1,
        "weight": 10,
        "paused": True,
        "pauseReason": "step 2: waiting for a manual promote",
    }
    promoted = {"stableRevision": "b", "stableVersion": "2", "step": 2, "steps": 2}
    reasons = [
        [reason for _, reason, _ in transition_events({"rollout": old}, {"rollout": new})]
        for old, new in (
            ({"stableRevision": "a"}, started),
            (started, paused),
            (paused, promoted),
            (promoted, promoted),
        )
    ]
    assert reasons == [["CanaryStarted"], ["CanaryStep", "RolloutPaused"], ["Promoted"], []]


def test_a_pause_for_inconclusive_analysis_is_a_warning_with_its_own_reason() -> None:
    running = {"stableRevision": "a", "canaryRevision": "b", "step": 1, "steps": 3}
    starved = {
        **running,
        "paused": True,
        "pauseCondition": "AnalysisInconclusive",
        "pauseReason": "step 2: analysis inconclusive 3 times in a row",
    }
    events = transition_events({"rollout": running}, {"rollout": starved})
    assert events == [("Warning", "AnalysisInconclusive", "step 2: analysis inconclusive 3 times in a row")]


def test_an_hpa_that_cannot_read_its_metric_warns_once_per_change() -> None:
    ok = {"load": "1/2 in-flight", "scalingActive": True}
    unread = {
        "load": "?/2 in-flight",
        "scalingActive": False,
        "problem": {
            "reason": "FailedGetPodsMetric",
            "message": "the HPA cannot read modelship_inflight_requests: x",
        },
    }
    assert transition_events({"autoscaling": ok}, {"autoscaling": unread}) == [
        ("Warning", "AutoscalerMetricUnavailable", "the HPA cannot read modelship_inflight_requests: x")
    ]
    assert transition_events({}, {"autoscaling": unread})[0][1] == "AutoscalerMetricUnavailable"
    assert (
        transition_events({"autoscaling": unread}, {"autoscaling": {**unread, "load": "?/3 in-flight"}}) == []
    )
    assert transition_events({"autoscaling": unread}, {"autoscaling": ok}) == [
        ("Normal", "AutoscalerRecovered", "the HPA is scaling again, at 1/2 in-flight")
    ]
    # Autoscaling taken away: nothing recovered, nothing to tell.
    assert transition_events({"autoscaling": unread}, {}) == []
    unscalable = {
        **ok,
        "problem": {"reason": "FailedGetScale", "message": "the HPA cannot scale its Deployment: x"},
    }
    assert transition_events({"autoscaling": ok}, {"autoscaling": unscalable})[0][:2] == (
        "Warning",
        "AutoscalerFailing",
    )


async def test_the_hpas_status_reaches_the_model_deployments_and_is_written_once(
    events: list[tuple[str, str, str]],
) -> None:
    scaling = {"maxReplicas": 4, "metric": "inflightRequests", "targetInflightRequests": 2}
    api = MemoryApi(md_body(autoscaling=scaling))

    def sink(md: spec.ModelDeployment, type_: str, reason: str, message: str) -> None:
        events.append((type_, reason, message))

    reconciler = Reconciler(api, api, sink, OperatorConfig(), clock=lambda: "2026-01-01T00:00:00Z")
    await reconciler.reconcile(KEY)
    api.sync(reconciler)
    await reconciler.reconcile(KEY)  # the HPA exists now, without a status
    assert api.md["status"]["autoscaling"]["load"] == "?/2 in-flight"
    api.sync(reconciler)

    # The HPA controller writes the HPA's status: it cannot read the metric.
    hpa = api.objects[("HorizontalPodAutoscaler", "iris")]
    failing = {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric", "message": "no"}
    hpa["status"] = {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [failing]}
    hpa["metadata"]["resourceVersion"] = api._bump()
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    assert api.md["status"]["autoscaling"]["problem"]["reason"] == "FailedGetPodsMetric"
    assert [reason for _, reason, _ in events].count("AutoscalerMetricUnavailable") == 1
    writes = dict(api.writes)

    # Our own status write comes back as a watch event: nothing more to write, nothing more to tell.
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    assert api.writes == writes
    assert [reason for _, reason, _ in events].count("AutoscalerMetricUnavailable") == 1


async def test_a_status_the_schema_refuses_is_a_terminal_error(
    api: MemoryApi, reconciler: Reconciler
) -> None:
    api.status_fails_with = kube.api_error(
        422, {"reason": "Invalid", "message": "status.phase: Unsupported value"}
    )
    with pytest.raises(TerminalError, match="Unsupported value"):
        await reconciler.reconcile(KEY)


async def test_a_refused_status_permission_is_retried_not_terminal(
    api: MemoryApi, reconciler: Reconciler
) -> None:
    api.status_fails_with = kube.api_error(403, {"reason": "Forbidden", "message": "cannot patch status"})
    with pytest.raises(kube.ApiError) as refused:
        await reconciler.reconcile(KEY)
    assert not isinstance(refused.value, TerminalError | kube.Transient)


async def test_an_autoscaled_deployment_is_held_at_its_size_while_our_apply_lets_go_of_it(
    events: list[tuple[str, str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    api = MemoryApi(md_body(autoscaling={"minReplicas": 3, "maxReplicas": 6}))

    def sink(md: spec.ModelDeployment, type_: str, reason: str, message: str) -> None:
        events.append((type_, reason, message))

    reconciler = Reconciler(api, api, sink, OperatorConfig(), clock=lambda: "2026-01-01T00:00:00Z")
    await reconciler.reconcile(KEY)
    [(_, name)] = [key for key in api.objects if key[0] == "Deployment"]
    assert api.objects[("Deployment", name)]["spec"]["replicas"] == 3  # created at minReplicas
    api.sync(reconciler)
    api.calls.clear()

    caplog.set_level("INFO", logger="modelship.operator.reconciler")
    await reconciler.reconcile(KEY)
    # The hold comes first, under the handover manager; then our apply without spec.replicas.
    assert api.calls == [("hold", name, 3), ("apply", "Deployment", name)]
    handed = api.objects[("Deployment", name)]
    assert handed["spec"]["replicas"] == 3
    assert [e["manager"] for e in handed["metadata"]["managedFields"]] == [naming.HANDOVER_FIELD_MANAGER]
    assert "holding 3 replicas for the autoscaler" in caplog.text
    assert events[-1][1] == "RevisionUpdated" and "from 3 replicas" in events[-1][2]

    # The hold's own watch event (older than the apply's) arrives first: nothing is written again.
    api.cached[("Deployment", name)] = api.held[name]
    reconciler.observe(KEY, "Deployment", name, api.held[name]["metadata"]["resourceVersion"])
    writes = dict(api.writes)
    await reconciler.reconcile(KEY)
    assert api.writes == writes

    # Then the apply's: the handover is done, and stays done.
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    api.sync(reconciler)
    await reconciler.reconcile(KEY)
    assert api.writes["hold"] == 1
    assert [call for call in api.calls if call[0] == "apply" and call[1] == "Deployment"] == [
        ("apply", "Deployment", name)
    ]
