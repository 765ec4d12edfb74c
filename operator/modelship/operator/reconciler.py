"""One reconcile of one ModelDeployment: read the cache, decide, write what differs.

Everything interesting is decided by pure functions (`decisions.decide`,
`status.compute_status`); this module only performs the writes they ask for, posts the
Kubernetes Events a user reads in `kubectl describe`, and writes status when it changed.
A reconcile returns a `workqueue.Result`; a `client.Transient` error is raised for the queue
to retry the whole reconcile, a refusal for good is recorded in status (ApplyFailed) and
retried slowly, and a status the API refuses is a `workqueue.TerminalError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelship.operator import autoscaling, bodies, kinds, manifests, naming, reasons, spec
from modelship.operator import client as kube
from modelship.operator import status as status_
from modelship.operator.bodies import Body
from modelship.operator.children import Children, artifacts, unschedulable_message
from modelship.operator.config import OperatorConfig
from modelship.operator.decisions import Annotate, Apply, Decision, Delete, decide, measurement_due
from modelship.operator.drift import Difference
from modelship.operator.expectations import Expectations
from modelship.operator.kinds import ResourceKind
from modelship.operator.rollout.analysis import AnalysisSettings
from modelship.operator.rollout.steps import Verdict
from modelship.operator.workqueue import DONE, Result, TerminalError

logger = logging.getLogger(__name__)

Key = tuple[str, str]

# A ModelDeployment with a write the API refused for good is retried this much later:
# a missing permission may be granted meanwhile.
PERMANENT_ERROR_RETRY = 300.0


class Cache(Protocol):
    async def wait_synced(self) -> None: ...

    def model_deployment(self, key: Key) -> Body | None: ...

    def children(self, key: Key) -> Children: ...

    def version_of(self, key: Key, kind: str, name: str) -> str | None: ...


class EventSink(Protocol):
    def __call__(self, md: spec.ModelDeployment, type: str, reason: str, message: str) -> None: ...


class Writer(Protocol):
    """The client calls a reconcile makes (KubeClient has them)."""

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]: ...

    async def hold_replicas(
        self, kind: ResourceKind, namespace: str, name: str, replicas: int
    ) -> dict[str, Any]: ...

    async def patch_status(
        self,
        kind: ResourceKind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any] | None: ...

    async def delete(
        self, kind: ResourceKind, namespace: str, name: str, *, uid: str | None = None
    ) -> bool: ...

    async def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_json(
        self, kind: ResourceKind, namespace: str, name: str, operations: list[dict[str, Any]]
    ) -> dict[str, Any] | None: ...


# Measures a canary revision in Prometheus (see `analysis`); None: no analysis possible.
Measure = Callable[[spec.ModelDeployment, str], Awaitable[Verdict]]
SettingsOf = Callable[[spec.ModelDeployment], AnalysisSettings]


def utc_now() -> str:
    return bodies.format_time(time.time(), millis=False)


@dataclass
class Tally:
    """What one reconcile did, for its log line."""

    writes: int = 0
    events: int = 0
    skipped: int = 0  # writes not repeated because the cache has not caught up with ours
    actions: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class Reconciler:
    def __init__(
        self,
        writer: Writer,
        cache: Cache,
        events: EventSink,
        config: OperatorConfig,
        *,
        clock: Callable[[], str] = utc_now,
        wallclock: Callable[[], float] = time.time,
        expectations: Expectations | None = None,
        measure: Measure | None = None,
        settings_of: SettingsOf | None = None,
    ) -> None:
        self._writer = writer
        self._cache = cache
        self._events = events
        self._config = config
        self._clock = clock
        self._wallclock = wallclock
        self._measure = measure
        self._settings_of = settings_of or (lambda md: AnalysisSettings())
        self._expectations = expectations if expectations is not None else Expectations()
        self._seen: set[Key] = set()  # reconciled at least once since this process started

    def observe(self, key: Key, kind: str, name: str, resource_version: str | None) -> None:
        """Called for every watch event of a ModelDeployment or a child (None: deleted)."""
        self._expectations.observe((key, kind, name), resource_version)

    async def reconcile(self, key: Key) -> Result:
        await self._cache.wait_synced()  # never decide on a partial view: it would re-create children
        body = self._cache.model_deployment(key)
        if body is None:
            self._expectations.forget(key)
            self._seen.discard(key)
            return DONE
        if bodies.being_deleted(body):
            return DONE  # the garbage collector is removing the children; do not re-create them
        started_at = bodies.resource_version(body)
        tally = Tally()
        try:
            md = spec.parse(body)
        except spec.SpecError as exc:
            await self._write_invalid(key, body, str(exc), tally)
            self._log(key, tally, "invalid spec")
            return DONE
        children = self._cache.children(key)
        now = self._wallclock()
        try:
            settings = self._settings_of(md)
        except ValueError as exc:
            await self._write_invalid(key, body, f"spec.rollout.canary.analysis: {exc}", tally)
            self._log(key, tally, "invalid analysis settings")
            return DONE
        revision = manifests.desired_revision(md, server_image=self._config.server_image)
        measurement = None
        if self._measure is not None and measurement_due(md, revision, settings, now=now):
            measurement = await self._measure(md, revision.revision)
            tally.actions.append(f"analysis {measurement.verdict}")
        route = None
        if md.rollout.http_route is not None:
            route = await self._writer.get(kinds.HTTPROUTES, md.namespace, md.rollout.http_route)
        decision = decide(
            md,
            children,
            server_image=self._config.server_image,
            now=now,
            measurement=measurement,
            settings=settings,
            route=route,
            revision=revision,
        )
        errors: list[str] = []
        # The children are independent of each other: write them at once, not one after another.
        results = await asyncio.gather(
            *(self._apply(md, action, children, errors, tally) for action in decision.apply),
            *(self._delete(md, deletion, decision, children, errors, tally) for deletion in decision.delete),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # Transient: the queue retries the whole reconcile after a backoff
        # After the children: the annotation names the canary's Service, which exists by now.
        await asyncio.gather(*(self._annotate(md, change, errors, tally) for change in decision.annotate))
        if decision.route_missing is not None:
            errors.append(decision.route_missing)
        elif route is not None and decision.route_rules is not None:
            await self._set_route(md, route, decision.route_rules, errors, tally)
        await self._write_status(md, decision, children, errors, tally, started_at)
        await self._clear_action(md, decision, tally)
        self._log(key, tally, "")
        delays = [PERMANENT_ERROR_RETRY] if errors else []
        if decision.rollout.requeue_after is not None:
            delays.append(decision.rollout.requeue_after)
        return Result(requeue_after=min(delays)) if delays else DONE

    async def _set_route(
        self,
        md: spec.ModelDeployment,
        route: Body,
        rules: list[dict[str, Any]],
        errors: list[str],
        tally: Tally,
    ) -> None:
        """Written after the per-revision Services exist, so the route never points at nothing."""
        updated = {**route, "spec": {**(route.get("spec") or {}), "rules": rules}}
        updated.pop("status", None)
        try:
            await self._writer.replace(updated)
        except kube.Transient:
            raise  # a conflict: read the route again in the retry
        except kube.ApiError as exc:
            errors.append(f"HTTPRoute {md.rollout.http_route}: {exc.message}")
            return
        tally.writes += 1
        tally.actions.append(f"route {md.rollout.http_route}")

    async def _annotate(
        self, md: spec.ModelDeployment, change: Annotate, errors: list[str], tally: Tally
    ) -> None:
        """Tell one pod where to copy requests to (a shadow step), or to stop: its server reads the
        annotation from a downwardAPI file within seconds, and the pod is not restarted."""
        try:
            await self._writer.patch_json(kinds.PODS, md.namespace, change.pod, change.operations)
        except kube.Transient:
            raise
        except kube.ApiError as exc:
            # 422: the pod changed under the patch (its annotations went or came); the pod's own
            # watch event brings another reconcile, which decides again.
            if exc.status != 422:
                errors.append(f"Pod {change.pod}: {exc.message}")
            return
        tally.writes += 1
        tally.actions.append(f"{'mirror on' if change.value is not None else 'mirror off'} pod/{change.pod}")

    async def _clear_action(self, md: spec.ModelDeployment, decision: Decision, tally: Tally) -> None:
        """Remove the modelship.io/action annotation once status shows it was handled.

        Status is written first: a restart between the two writes then finds the action
        recorded as handled and never performs it twice. The JSON patch tests the value, so an
        action a user set meanwhile is not lost.
        """
        value = md.annotations.get(naming.ANNOTATION_ACTION)
        handled = ((md.status.get("rollout") or {}).get("handledAction")) or None
        if value is None or value != handled:
            return
        path = "/metadata/annotations/" + naming.ANNOTATION_ACTION.replace("~", "~0").replace("/", "~1")
        operations = [{"op": "test", "path": path, "value": value}, {"op": "remove", "path": path}]
        try:
            await self._writer.patch_json(kinds.MODEL_DEPLOYMENTS, md.namespace, md.name, operations)
        except kube.Transient:
            raise
        except kube.ApiError as exc:
            # 422: the test failed, a newer action is there, and the next reconcile handles it.
            # Anything else is said: a 403 once kept every promote's annotation, silently.
            if exc.status != 422:
                logger.error(
                    "%s/%s: could not remove the handled action %s: %s", md.namespace, md.name, value, exc
                )
            return
        tally.writes += 1
        tally.actions.append("action handled")

    def _awaiting_own_write(self, ref: tuple[Key, str, str], children: Children, tally: Tally) -> bool:
        """Whether a write of this child, decided from `children`, must wait for the next reconcile.

        Either the cache has not yet shown our last write of it (writing again would repeat it),
        or it has changed since this reconcile read it: the writes start as tasks after the
        decision, and a watch event handled in between (our previous write of it arriving) both
        settles the expectation and makes the decision stale, which wrote a resize twice, with
        two RevisionUpdated Events (issue #31). That event has asked for another reconcile.
        """
        key, kind, name = ref
        seen = bodies.resource_version(bodies.by_name(children.of(kind), name))
        if self._cache.version_of(key, kind, name) != seen or self._expectations.pending(ref, seen):
            tally.skipped += 1
            return True
        return False

    async def _apply(
        self, md: spec.ModelDeployment, action: Apply, children: Children, errors: list[str], tally: Tally
    ) -> None:
        ref = (md.key, action.kind, action.name)
        if self._awaiting_own_write(ref, children, tally):
            return
        held = action.hold_replicas
        try:
            if held is not None:
                # Just before the apply that lets go of spec.replicas; its own watch event shows an
                # older version than the apply's, which the expectation below waits for.
                await self._writer.hold_replicas(kinds.BY_KIND[action.kind], md.namespace, action.name, held)
                tally.writes += 1
            result = await self._writer.apply(action.manifest)
        except kube.Transient:
            raise
        except kube.ApiError as exc:
            errors.append(f"{action.kind} {action.name}: {exc.message}")
            self._event(
                md, "Warning", reasons.APPLY_FAILED, f"{action.kind} {action.name}: {exc.message}", tally
            )
            return
        tally.writes += 1
        size = (
            action.manifest.get("spec", {}).get("replicas") if action.kind == kinds.DEPLOYMENTS.kind else None
        )
        scaled = f" to {size}" if size is not None else ""
        holding = f", holding {held} replicas for the autoscaler" if held is not None else ""
        tally.actions.append(
            f"apply {action.kind}/{action.name} ({action.difference.value}){scaled}{holding}"
        )
        self._expectations.expect(ref, bodies.resource_version(result))
        event = _apply_event(md, action)
        if event is not None:
            self._event(md, "Normal", *event, tally)

    async def _delete(
        self,
        md: spec.ModelDeployment,
        deletion: Delete,
        decision: Decision,
        children: Children,
        errors: list[str],
        tally: Tally,
    ) -> None:
        ref = (md.key, deletion.kind, deletion.name)
        if self._awaiting_own_write(ref, children, tally):
            return
        kind = kinds.BY_KIND[deletion.kind]
        try:
            await self._writer.delete(kind, md.namespace, deletion.name, uid=deletion.uid)
        except kube.Transient:
            raise
        except kube.ApiError as exc:
            errors.append(f"deleting {deletion.kind} {deletion.name}: {exc.message}")
            return
        tally.writes += 1
        tally.actions.append(f"delete {deletion.kind}/{deletion.name}")
        self._expectations.expect(ref, None)
        if deletion.kind == kinds.DEPLOYMENTS.kind:
            version = next(
                (s.version for s in decision.revisions.values() if s.deployment == deletion.name), "?"
            )
            message = f"deleted Deployment {deletion.name} (version {version}): {deletion.why}"
            self._event(md, "Normal", reasons.EVENT_REVISION_RETIRED, message, tally)
        elif deletion.kind == kinds.AUTOSCALERS.kind:
            message = f"deleted HPA {deletion.name}: {deletion.why}"
            self._event(md, "Normal", reasons.EVENT_AUTOSCALER_REMOVED, message, tally)

    async def _write_status(
        self,
        md: spec.ModelDeployment,
        decision: Decision,
        children: Children,
        errors: list[str],
        tally: Tally,
        started_at: str | None,
    ) -> None:
        pods = [p for p in children.pods if bodies.revision_of(p) in decision.plan.keep]
        hpa = bodies.by_name(children.autoscalers, md.name)
        seen = status_.StatusInputs(
            revisions=decision.revisions,
            target_failure=decision.target_failure,
            unschedulable=unschedulable_message(pods, decision.plan.target),
            apply_errors=tuple(errors),
            rollout=decision.rollout,
            autoscaler=bodies.status_of(hpa) if hpa is not None else None,
            artifacts=artifacts(pods),
        )
        new = status_.compute_status(md, decision.revision, decision.plan, seen, now=self._clock())
        await self._patch_status(md.key, md.status, new, tally, md=md, started_at=started_at)

    async def _write_invalid(self, key: Key, body: Body, message: str, tally: Tally) -> None:
        new = status_.invalid_status(body, message, now=self._clock())
        old = bodies.status_of(body)
        await self._patch_status(key, old, new, tally, md=None, started_at=bodies.resource_version(body))

    async def _patch_status(
        self,
        key: Key,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        tally: Tally,
        *,
        md: spec.ModelDeployment | None,
        started_at: str | None,
    ) -> None:
        ref = (key, naming.KIND, key[1])
        body = self._cache.model_deployment(key)
        if bodies.resource_version(body) != started_at:
            # The object changed while we wrote its children: `old` is stale, and the event of
            # that change has already asked for another reconcile, which writes the status.
            tally.skipped += 1
            return
        patch = status_.merge_patch(old, new, owned=status_.OWNED_STATUS_FIELDS)
        if not patch:
            return
        if self._expectations.pending(ref, bodies.resource_version(body)):
            tally.skipped += 1
            return
        try:
            # The patch is a diff against the version this reconcile read: the API server applies it
            # to that version only. The cache may not have seen a change yet (a deletion, someone
            # else's status write); the change's own event asks for the reconcile that writes.
            result = await self._writer.patch_status(
                kinds.MODEL_DEPLOYMENTS, key[0], key[1], patch, resource_version=started_at
            )
        except kube.Conflict:
            tally.skipped += 1
            return
        except kube.ApiError as exc:
            if exc.status == 422:  # the CRD's schema refuses the status we computed: no retry fixes that
                raise TerminalError(f"status of {key[0]}/{key[1]} refused: {exc}") from exc
            raise  # Transient, or a permission that may yet be granted: retried with backoff
        tally.writes += 1
        tally.actions.append("status " + ",".join(sorted(patch)))
        if result is None:
            return  # deleted meanwhile
        self._expectations.expect(ref, bodies.resource_version(result))
        if md is not None:
            for type_, reason, message in transition_events(old, new):
                self._event(md, type_, reason, message, tally)

    def _event(self, md: spec.ModelDeployment, type_: str, reason: str, message: str, tally: Tally) -> None:
        tally.events += 1
        self._events(md, type_, reason, message)

    def _log(self, key: Key, tally: Tally, note: str) -> None:
        first = key not in self._seen
        self._seen.add(key)
        # The first reconcile of each object after a start is logged even when it wrote
        # nothing: that line is how a restart is shown to have changed nothing.
        level = logging.INFO if tally.writes or tally.events or first else logging.DEBUG
        logger.log(
            level,
            "reconciled %s/%s in %.3fs: writes=%d events=%d skipped=%d first=%s%s%s",
            key[0],
            key[1],
            time.monotonic() - tally.started,
            tally.writes,
            tally.events,
            tally.skipped,
            str(first).lower(),
            f" ({note})" if note else "",
            f" [{'; '.join(tally.actions)}]" if tally.actions else "",
            extra={"md": f"{key[0]}/{key[1]}", "writes": tally.writes, "first": first},
        )


def _apply_event(md: spec.ModelDeployment, action: Apply) -> tuple[str, str] | None:
    """The Event for an apply, or None for a routine one (the Service follows the spec; each
    Event is one more write for the API server, a thousand of them when many models start)."""
    manifest = action.manifest
    kind, name = action.kind, action.name
    if action.difference is Difference.DRIFTED:
        return reasons.EVENT_DRIFT_REPAIRED, f"restored {kind} {name}, which was changed or deleted by hand"
    created = action.difference is Difference.MISSING
    if kind == kinds.DEPLOYMENTS.kind:
        labels = manifest["metadata"]["labels"]
        what = naming.describe_revision(labels[naming.LABEL_VERSION], labels[naming.LABEL_REVISION])
        size = manifest["spec"].get("replicas")
        scale = "sized by the autoscaler" if size is None else f"{size} replicas"
        if action.hold_replicas is not None:
            scale += f", from {action.hold_replicas} replicas"
        if created:
            return reasons.EVENT_REVISION_CREATED, f"created Deployment {name} for {what}, {scale}"
        return reasons.EVENT_REVISION_UPDATED, f"updated Deployment {name} for {what}, {scale}"
    if kind == kinds.AUTOSCALERS.kind:
        hpa = manifest["spec"]
        text = (
            f"HPA {name} scales Deployment {hpa['scaleTargetRef']['name']} "
            f"between {hpa['minReplicas']} and {hpa['maxReplicas']} replicas"
        )
        return (reasons.EVENT_AUTOSCALER_CREATED if created else reasons.EVENT_AUTOSCALER_UPDATED), text
    return None


def transition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Events for conditions that flipped (or a failure whose reason changed)."""
    events = []
    old_ready = bodies.condition(old, reasons.READY) or {}
    new_ready = bodies.condition(new, reasons.READY) or {}
    if new_ready.get("status") == "True" and old_ready.get("status") != "True":
        events.append(("Normal", reasons.EVENT_READY, str(new_ready.get("message", ""))))
    old_degraded = bodies.condition(old, reasons.DEGRADED) or {}
    new_degraded = bodies.condition(new, reasons.DEGRADED) or {}
    if new_degraded.get("status") == "True" and (
        old_degraded.get("status") != "True" or old_degraded.get("reason") != new_degraded.get("reason")
    ):
        events.append(("Warning", str(new_degraded.get("reason")), str(new_degraded.get("message", ""))))
    if new_degraded.get("status") == "False" and old_degraded.get("status") == "True":
        events.append(("Normal", reasons.EVENT_RECOVERED, "no failures any more"))
    events += autoscaler_events(old.get("autoscaling") or {}, new.get("autoscaling") or {})
    return events + rollout_events(old.get("rollout") or {}, new.get("rollout") or {})


def autoscaler_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """A Warning when the HPA stops being able to read its metric (or fails for another reason),
    and a Normal Event when it reads it again: the model stays Ready meanwhile, at a size nobody
    adjusts, so this Event and status.autoscaling.problem are how a user learns of it."""
    old_problem = reasons.Failure.from_status(old.get("problem"))
    new_problem = reasons.Failure.from_status(new.get("problem"))
    if new_problem is not None and (old_problem is None or old_problem.reason != new_problem.reason):
        if autoscaling.is_metric_failure(new_problem.reason):
            return [("Warning", reasons.EVENT_AUTOSCALER_METRIC_UNAVAILABLE, new_problem.message)]
        return [("Warning", reasons.EVENT_AUTOSCALER_FAILING, new_problem.message)]
    if old_problem is not None and new_problem is None and new.get("scalingActive"):
        return [
            ("Normal", reasons.EVENT_AUTOSCALER_RECOVERED, f"the HPA is scaling again, at {new.get('load')}")
        ]
    return []


def rollout_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """What `kubectl describe` should tell of a canary: its steps, its pauses and its promotion."""
    events = []
    canary = new.get("canaryRevision")
    if canary and canary != old.get("canaryRevision"):
        events.append(
            (
                "Normal",
                reasons.EVENT_CANARY_STARTED,
                f"{naming.describe_revision(new.get('canaryVersion'), canary)} starts at step 1",
            )
        )
    elif canary and new.get("step") != old.get("step") and not new.get("abortedRevision"):
        steps = new.get("steps", 0)
        done = min(int(new.get("step") or 0), int(steps))
        events.append(
            (
                "Normal",
                reasons.EVENT_CANARY_STEP,
                f"step {done}/{steps} done, canary weight {new.get('weight', 0)}%",
            )
        )
    if new.get("paused") and not old.get("paused") and new.get("pauseReason"):
        reason = str(new.get("pauseCondition") or reasons.ROLLOUT_PAUSED)
        kind = "Warning" if reason == reasons.ANALYSIS_INCONCLUSIVE else "Normal"
        events.append((kind, reason, str(new["pauseReason"])))
    stable = new.get("stableRevision")
    if stable and old.get("canaryRevision") == stable and not canary:
        events.append(
            (
                "Normal",
                reasons.EVENT_PROMOTED,
                f"{naming.describe_revision(new.get('stableVersion'), stable)} serves all traffic",
            )
        )
    return events
