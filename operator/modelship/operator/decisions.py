"""One reconcile's decision: which children to apply and which to delete. Pure, no I/O.

It joins the other pure parts, one phase each: the rollout step (`rollout.steps`) on what is
observed (`children`), the manifests it asks for (`manifests`, `rollout.traffic`), their
comparison with the live objects (`drift`), and what is deleted and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelship.operator import bodies, kinds, manifests, naming
from modelship.operator.bodies import Body
from modelship.operator.children import Children, RevisionState, revision_failure, revision_states
from modelship.operator.drift import Difference, difference
from modelship.operator.manifests import Manifest, Revision
from modelship.operator.reasons import Failure
from modelship.operator.rollout import steps, traffic
from modelship.operator.rollout.analysis import AnalysisSettings
from modelship.operator.rollout.plan import RolloutPlan, plan_of
from modelship.operator.rollout.state import RolloutState
from modelship.operator.spec import ModelDeployment


@dataclass(frozen=True)
class Apply:
    manifest: Manifest
    difference: Difference
    # Written first, under the handover field manager: the size the Deployment keeps while the
    # manifest, which leaves spec.replicas to the autoscaler, lets go of it (`replicas_hold`).
    hold_replicas: int | None = None

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class Delete:
    kind: str
    name: str
    uid: str | None
    why: str


@dataclass(frozen=True)
class Annotate:
    """Set (or with None, remove) the mirror annotation of one pod: where it copies requests to."""

    pod: str
    value: str | None
    has_annotations: bool = True  # the pod has metadata.annotations (a JSON patch adds into it)

    @property
    def operations(self) -> list[dict[str, Any]]:
        """The JSON patch (RFC 6902) that makes the change."""
        key = naming.ANNOTATION_MIRROR.replace("~", "~0").replace("/", "~1")
        if self.value is None:
            return [{"op": "remove", "path": f"/metadata/annotations/{key}"}]
        if not self.has_annotations:
            return [
                {
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {naming.ANNOTATION_MIRROR: self.value},
                }
            ]
        return [{"op": "add", "path": f"/metadata/annotations/{key}", "value": self.value}]


@dataclass(frozen=True)
class Decision:
    revision: Revision
    plan: RolloutPlan
    revisions: Mapping[str, RevisionState]
    rollout: steps.StepResult
    target_failure: Failure | None = None  # why the target's pods cannot serve
    apply: tuple[Apply, ...] = ()
    delete: tuple[Delete, ...] = ()
    route_rules: list[Manifest] | None = None  # the HTTPRoute's new spec.rules, when they change
    route_missing: str | None = None
    annotate: tuple[Annotate, ...] = ()  # pods whose mirror annotation changes (a shadow step)


def rollout_state(md: ModelDeployment) -> RolloutState:
    return RolloutState.from_status(md.status)


def measurement_due(
    md: ModelDeployment, revision: Revision, settings: AnalysisSettings, *, now: float
) -> bool:
    return steps.analysis_due(md.rollout, rollout_state(md), revision.revision, settings.interval, now)


def decide(
    md: ModelDeployment,
    children: Children,
    *,
    server_image: str,
    now: float,
    measurement: steps.Verdict | None = None,
    settings: AnalysisSettings = steps.DEFAULT_SETTINGS,
    route: Body | None = None,
    revision: Revision | None = None,
) -> Decision:
    """`route` is the live HTTPRoute named in spec.rollout.canary.trafficRouting, if any;
    `revision` the spec's revision when the caller has already computed it."""
    if revision is None:
        revision = manifests.desired_revision(md, server_image=server_image)
    ours = children.owned_by(md.uid)
    states = revision_states(ours.deployments)
    failure = revision_failure(revision.revision, revision.version, states, ours.pods)
    size = _size(md, states, rollout_state(md).stable)
    step = _step(md, revision, states, size, failure, measurement, settings, now)
    wanted, target_deployment = _wanted(md, revision, ours, states, step, size)
    applies = _applies(wanted, ours, size if md.autoscaling is not None else None)
    plan = _plan(md, revision, states, step, applies, target_deployment)
    revision_services = _revision_services(md, ours)
    deletes = [*_retired(revision, ours, states, plan, step), *_stale_services(md, revision_services, step)]
    annotate = _annotate(ours.pods, step.stable, _mirror(md, step, ours))
    if not any(m["kind"] == kinds.AUTOSCALERS.kind for m in wanted):
        deletes.extend(_unwanted_autoscaler(md, ours))
    route_rules, route_missing = _route(md, route, set(revision_services), step, revision)
    return Decision(
        revision=revision,
        plan=plan,
        revisions=states,
        rollout=step,
        target_failure=failure,
        apply=tuple(applies),
        delete=tuple(deletes),
        route_rules=route_rules,
        route_missing=route_missing,
        annotate=tuple(annotate),
    )


def _size(md: ModelDeployment, states: Mapping[str, RevisionState], stable: str | None) -> int:
    """N: the replicas the model serves with; with an autoscaler, the size it gave the serving revision."""
    desired = md.desired_replicas
    if desired is not None:
        return desired
    assert md.autoscaling is not None
    serving = states.get(stable) if stable else None
    return max(md.autoscaling.min_replicas, serving.spec_replicas if serving is not None else 0)


def _step(
    md: ModelDeployment,
    revision: Revision,
    states: Mapping[str, RevisionState],
    size: int,
    failure: Failure | None,
    measurement: steps.Verdict | None,
    settings: AnalysisSettings,
    now: float,
) -> steps.StepResult:
    state = rollout_state(md)
    inputs = steps.Inputs(
        target=revision.revision,
        target_version=revision.version,
        revisions=states,
        size=size,
        autoscaled=md.autoscaling is not None,
        target_failure=failure,
        measurement=measurement,
        action=md.annotations.get(naming.ANNOTATION_ACTION),
        routed=md.rollout.http_route is not None,
    )
    return steps.advance(md.rollout, state, inputs, now, settings)


def _serving(revision: Revision, step: steps.StepResult) -> str:
    return step.stable or revision.revision


def _wanted(
    md: ModelDeployment,
    revision: Revision,
    ours: Children,
    states: Mapping[str, RevisionState],
    step: steps.StepResult,
    size: int,
) -> tuple[list[Manifest], Manifest | None]:
    """Every child the step asks for, and the target's Deployment among them. `size` is N, the
    replicas the model serves with (`_size`)."""
    wanted: list[Manifest] = []
    target_deployment: Manifest | None = None
    for rev, replicas in sorted(step.replicas.items()):
        if rev == revision.revision:
            created = rev not in states
            target_deployment = manifests.revision_deployment(
                md, revision, _starting_size(replicas, size, created)
            )
            wanted.append(target_deployment)
        elif replicas is not None and rev in states:
            body = bodies.by_name(ours.deployments, states[rev].deployment)
            # Resized only when its size changes: an earlier revision is otherwise left as it is.
            if body is not None and states[rev].spec_replicas != replicas:
                wanted.append(manifests.resized_deployment(dict(body), replicas))
    wanted.append(manifests.service(md, only=_pinned(step)))
    if md.rollout.http_route is not None:
        wanted.extend(traffic.revision_service(md, rev) for rev in sorted(step.replicas))
    elif _shadowing(step):
        assert step.canary is not None
        wanted.append(traffic.revision_service(md, step.canary))
    hpa = manifests.autoscaler(md, naming.deployment_name(md.name, _serving(revision, step)))
    if hpa is not None:
        wanted.append(hpa)
    return wanted, target_deployment


def _shadowing(step: steps.StepResult) -> bool:
    """The step copies requests to the canary, or will once its pods are ready."""
    return step.state.mirror > 0 and step.canary is not None and step.abort is None


def _copied_to(md: ModelDeployment, step: steps.StepResult) -> str | None:
    """The canary's own Service while requests are copied to it now, else None."""
    if step.mirror <= 0 or not _shadowing(step):
        return None
    assert step.canary is not None
    return naming.deployment_name(md.name, step.canary)


def _pinned(step: steps.StepResult) -> str | None:
    """The revision the main Service selects alone, or None for every revision's pods.

    A canary that takes no share of the traffic (a shadow step, a rollback, the steps before the
    first weight) stays out of the Service: its ready pods would otherwise get users' requests.
    With the selector changed before its pods are ready, none of them ever joins."""
    if step.canary is None or step.stable is None or step.canary == step.stable or step.weight > 0:
        return None
    return step.stable


def _mirror(md: ModelDeployment, step: steps.StepResult, ours: Children) -> str | None:
    """The stable pods' mirror annotation now: the canary's own Service and the share to copy.

    The Service's cluster IP, not its DNS name: no resolver is needed, and it is known as soon as
    the Service exists (None until then)."""
    name = _copied_to(md, step)
    if name is None or md.rollout.http_route is not None:
        return None  # with an HTTPRoute, the gateway copies the requests (`_route`)
    service = bodies.by_name(ours.services, name)
    address = ((service or {}).get("spec") or {}).get("clusterIP")
    if not isinstance(address, str) or not address or address == "None":
        return None
    host = f"[{address}]" if ":" in address else address
    wanted = {"url": f"http://{host}:{naming.SERVICE_PORT}", "percent": step.mirror, "revision": step.canary}
    return json.dumps(wanted, sort_keys=True, separators=(",", ":"))


def _annotate(pods: Iterable[Body], stable: str | None, mirror: str | None) -> list[Annotate]:
    """The pods whose mirror annotation is not what it should be: `mirror` on the stable
    revision's pods, none on any other."""
    changes = []
    for pod in pods:
        if bodies.being_deleted(pod):
            continue
        want = mirror if stable is not None and bodies.revision_of(pod) == stable else None
        annotations = bodies.meta(pod).get("annotations")
        have = (annotations or {}).get(naming.ANNOTATION_MIRROR)
        if have != want:
            changes.append(Annotate(bodies.name_of(pod), want, annotations is not None))
    return sorted(changes, key=lambda change: change.pod)


def _starting_size(replicas: int | None, size: int, created: bool) -> int | None:
    """The replicas of the target's Deployment manifest. One the autoscaler sizes is created
    at N (minReplicas, or what the HPA gave the revision it replaces) rather than at the default
    of 1, which would wait for the HPA to raise it; the next apply leaves the field to the HPA
    (`replicas_hold`)."""
    return size if replicas is None and created else replicas


def replicas_hold(manifest: Manifest, live: Body | None, floor: int | None) -> int | None:
    """The size to hold a Deployment at while our apply lets go of its spec.replicas, or None.

    Server-side apply removes a field that its only manager stops applying, and a Deployment
    without spec.replicas defaults to 1: a revision the rollout steps sized (a canary at 100%),
    now sized by the autoscaler (promoted), would drop to one pod until the HPA scaled it up
    again. Applying the field alone under a second field manager first keeps it (the Kubernetes
    docs' "transferring ownership"); the HPA's next scale write takes it from that manager.
    `floor` is the least an autoscaled model serves with (None: the model is not autoscaled):
    minReplicas, or the size the HPA gave the stable revision.
    """
    if floor is None or live is None or manifest["kind"] != kinds.DEPLOYMENTS.kind:
        return None
    if "replicas" in manifest["spec"] or not bodies.applies_replicas(live, naming.FIELD_MANAGER):
        return None
    current = (live.get("spec") or {}).get("replicas")
    return max(current if isinstance(current, int) else 0, floor)


def _applies(wanted: Sequence[Manifest], ours: Children, floor: int | None) -> list[Apply]:
    """`floor`: the least an autoscaled model serves with (None: not autoscaled)."""
    applies = []
    for manifest in wanted:
        live = bodies.by_name(ours.of(manifest["kind"]), manifest["metadata"]["name"])
        diff = difference(manifest, live)
        if diff is not Difference.NONE:
            applies.append(Apply(manifest, diff, replicas_hold(manifest, live, floor)))
    return applies


def _plan(
    md: ModelDeployment,
    revision: Revision,
    states: Mapping[str, RevisionState],
    step: steps.StepResult,
    applies: Sequence[Apply],
    target_deployment: Manifest | None,
) -> RolloutPlan:
    target_up_to_date = all(a.manifest is not target_deployment for a in applies)
    target_state = states.get(revision.revision)
    if md.autoscaling is not None and target_state is not None:
        # A new Deployment starts at minReplicas (`_starting_size`) and keeps its size when handed
        # over to the HPA (`replicas_hold`); a raised minReplicas waits for the HPA to apply it.
        target_up_to_date = target_up_to_date and target_state.spec_replicas >= md.autoscaling.min_replicas
    return plan_of(revision.revision, step, target_state, target_up_to_date=target_up_to_date)


def _retired(
    revision: Revision,
    ours: Children,
    states: Mapping[str, RevisionState],
    plan: RolloutPlan,
    step: steps.StepResult,
) -> list[Delete]:
    what = naming.describe_revision(revision.version, revision.revision)
    why = (
        f"{what} took over" if step.stable == revision.revision else f"replaced by {what} before it completed"
    )
    deletes = []
    for rev in plan.retire:
        name = states[rev].deployment
        uid = bodies.uid_of(bodies.by_name(ours.deployments, name))
        deletes.append(Delete(kinds.DEPLOYMENTS.kind, name, uid, why))
    return deletes


def _revision_services(md: ModelDeployment, ours: Children) -> dict[str, Body]:
    """The per-revision Services an HTTPRoute sends traffic to, by name."""
    return {
        bodies.name_of(body): body
        for body in ours.services
        if bodies.name_of(body) != md.name and bodies.revision_of(body)
    }


def _stale_services(
    md: ModelDeployment, revision_services: Mapping[str, Body], step: steps.StepResult
) -> list[Delete]:
    routed = md.rollout.http_route is not None
    shadowed = step.canary if _shadowing(step) else None
    return [
        Delete(kinds.SERVICES.kind, name, bodies.uid_of(body), "its revision no longer takes traffic")
        for name, body in sorted(revision_services.items())
        if (not routed or bodies.revision_of(body) not in step.replicas)
        and bodies.revision_of(body) != shadowed
    ]


def _unwanted_autoscaler(md: ModelDeployment, ours: Children) -> list[Delete]:
    hpa = bodies.by_name(ours.autoscalers, md.name)
    if hpa is None:
        return []
    return [Delete(kinds.AUTOSCALERS.kind, md.name, bodies.uid_of(hpa), "spec.autoscaling is unset")]


def _route(
    md: ModelDeployment,
    route: Body | None,
    revision_services: set[str],
    step: steps.StepResult,
    revision: Revision,
) -> tuple[list[Manifest] | None, str | None]:
    """The HTTPRoute's new rules (None: unchanged), or why there is no route to write."""
    if md.rollout.http_route is None:
        return None, None
    if route is None:
        return None, f"HTTPRoute {md.rollout.http_route} not found in namespace {md.namespace}"
    canary = step.canary if step.abort is None and step.weight > 0 else None
    copied_to = _copied_to(md, step)
    mirror = (copied_to, step.mirror) if copied_to is not None else None
    rules = traffic.route_rules(
        route,
        md.name,
        revision_services,
        naming.deployment_name(md.name, _serving(revision, step)),
        naming.deployment_name(md.name, canary) if canary is not None else None,
        step.weight if canary is not None else 0,
        mirror,
    )
    return rules, None
