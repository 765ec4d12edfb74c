"""One reconcile's decision: which children to apply and which to delete. Pure, no I/O.

It joins the other pure parts: the desired revision (manifests), the observed revisions
(observed), the rollout policy (rollout) and the comparison with live objects (drift).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelship.operator import canary, manifests, naming, observed, traffic
from modelship.operator.drift import Difference, difference
from modelship.operator.manifests import Manifest, Revision
from modelship.operator.observed import RevisionState, revision_states
from modelship.operator.rollout import RolloutPlan, plan_of
from modelship.operator.spec import ModelDeployment

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Children:
    """The live children of one ModelDeployment, as the operator's cache holds them."""

    deployments: Sequence[Body] = ()
    services: Sequence[Body] = ()
    autoscalers: Sequence[Body] = ()
    pods: Sequence[Body] = ()


@dataclass(frozen=True)
class Apply:
    manifest: Manifest
    difference: Difference

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
class Decision:
    revision: Revision
    plan: RolloutPlan
    revisions: Mapping[str, RevisionState]
    apply: tuple[Apply, ...] = ()
    delete: tuple[Delete, ...] = field(default=())
    rollout: canary.Outcome | None = None
    route_rules: list[Manifest] | None = None  # the HTTPRoute's new spec.rules, when they change
    route_missing: str | None = None


@dataclass(frozen=True)
class AnalysisSettings:
    """What `decide` needs of the analysis settings (analysis.AnalysisSettings has them)."""

    interval: float = 30.0
    failure_limit: int = 2


def _owned(body: Body, md: ModelDeployment) -> bool:
    """Ours, not a leftover of an earlier ModelDeployment of the same name being collected."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or ()
    owners = [ref for ref in refs if ref.get("kind") == naming.KIND and ref.get("controller")]
    return not owners or any(ref.get("uid") == md.uid for ref in owners)


def _by_name(bodies: Sequence[Body], name: str) -> Body | None:
    for body in bodies:
        if (body.get("metadata") or {}).get("name") == name:
            return body
    return None


def _size(md: ModelDeployment, states: Mapping[str, RevisionState], stable: str | None) -> int:
    """N: the replicas the model serves with; with an autoscaler, the size it gave the serving revision."""
    desired = md.desired_replicas
    if desired is not None:
        return desired
    assert md.autoscaling is not None
    serving = states.get(stable) if stable else None
    return max(md.autoscaling.min_replicas, serving.spec_replicas if serving is not None else 0)


def _revision_of(body: Body) -> str:
    return ((body.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_REVISION, "")


def target_failure(
    revision: Revision, states: Mapping[str, RevisionState], pods: Sequence[Body]
) -> str | None:
    """Why the target revision's pods cannot serve, in their own words; None while all is well."""
    mine = [p for p in pods if _revision_of(p) == revision.revision]
    for failure in observed.pod_failures(mine):
        return f"{failure.reason}: version {revision.version}, pod {failure.pod}: {failure.message}"
    state = states.get(revision.revision)
    if state is not None and state.failure is not None and not state.complete:
        return f"{state.failure[0]}: version {revision.version}: {state.failure[1]}"
    return None


def rollout_state(md: ModelDeployment) -> canary.RolloutState:
    return canary.RolloutState.from_status(md.status)


def measurement_due(
    md: ModelDeployment, revision: Revision, settings: AnalysisSettings, *, now: float
) -> bool:
    return canary.analysis_due(md.rollout, rollout_state(md), revision.revision, settings.interval, now)


def decide(
    md: ModelDeployment,
    children: Children,
    *,
    server_image: str,
    now: float,
    measurement: canary.Verdict | None = None,
    settings: AnalysisSettings = AnalysisSettings(),
    route: Body | None = None,
    revision: Revision | None = None,
) -> Decision:
    """`route` is the live HTTPRoute named in spec.rollout.canary.trafficRouting, if any;
    `revision` the spec's revision when the caller has already computed it."""
    if revision is None:
        revision = manifests.desired_revision(md, server_image=server_image)
    deployments = [d for d in children.deployments if _owned(d, md)]
    states = revision_states(deployments)
    state = rollout_state(md)
    seen = canary.Observed(
        target=revision.revision,
        target_version=revision.version,
        revisions=states,
        size=_size(md, states, state.stable),
        autoscaled=md.autoscaling is not None,
        target_failure=target_failure(revision, states, children.pods),
        measurement=measurement,
        action=md.annotations.get(naming.ANNOTATION_ACTION),
        routed=md.rollout.http_route is not None,
    )
    outcome = canary.advance(
        md.rollout,
        state,
        seen,
        now,
        analysis_interval=settings.interval,
        failure_limit=settings.failure_limit,
    )

    wanted: list[Manifest] = []
    target_deployment: Manifest | None = None
    for rev, replicas in sorted(outcome.replicas.items()):
        if rev == revision.revision:
            target_deployment = manifests.revision_deployment(md, revision, replicas)
            wanted.append(target_deployment)
        elif replicas is not None:
            body = _by_name(deployments, states[rev].deployment) if rev in states else None
            # Resized only when its size changes: an earlier revision is otherwise left as it is.
            if body is not None and states[rev].spec_replicas != replicas:
                wanted.append(manifests.resized_deployment(dict(body), replicas))
    wanted.append(manifests.service(md))
    serving = outcome.stable or revision.revision
    routed = md.rollout.http_route is not None
    if routed:
        wanted.extend(traffic.revision_service(md, rev) for rev in sorted(outcome.replicas))
    hpa = manifests.autoscaler(md, naming.deployment_name(md.name, serving))
    if hpa is not None:
        wanted.append(hpa)

    live: dict[tuple[str, str], Body] = {}
    for kind, bodies in (
        ("Deployment", deployments),
        ("Service", children.services),
        ("HorizontalPodAutoscaler", children.autoscalers),
    ):
        for body in bodies:
            if _owned(body, md):
                live[(kind, (body.get("metadata") or {}).get("name", ""))] = body

    applies = []
    for manifest in wanted:
        diff = difference(manifest, live.get((manifest["kind"], manifest["metadata"]["name"])))
        if diff is not Difference.NONE:
            applies.append(Apply(manifest, diff))

    target_up_to_date = all(a.manifest is not target_deployment for a in applies)
    target_state = states.get(revision.revision)
    if md.autoscaling is not None and target_state is not None:
        # A new Deployment starts with 1 pod until the HPA raises it to minReplicas: not Ready yet.
        target_up_to_date = target_up_to_date and target_state.spec_replicas >= md.autoscaling.min_replicas
    plan = plan_of(revision.revision, outcome, target_state, target_up_to_date=target_up_to_date)

    deletes = []
    for rev in plan.retire:
        retired = states[rev]
        uid = ((_by_name(deployments, retired.deployment) or {}).get("metadata") or {}).get("uid")
        why = (
            f"revision {revision.revision} (version {revision.version}) took over"
            if outcome.stable == revision.revision
            else f"replaced by revision {revision.revision} before it completed"
        )
        deletes.append(Delete("Deployment", retired.deployment, uid, why))
    revision_services = {
        name: body
        for (kind, name), body in live.items()
        if kind == "Service" and name != md.name and _revision_of(body)
    }
    for name, body in sorted(revision_services.items()):
        if not routed or _revision_of(body) not in outcome.replicas:
            uid = (body.get("metadata") or {}).get("uid")
            deletes.append(Delete("Service", name, uid, "its revision no longer takes traffic"))
    route_rules = None
    route_missing = None
    if routed and route is None:
        route_missing = f"HTTPRoute {md.rollout.http_route} not found in namespace {md.namespace}"
    elif route is not None:
        stable_service = naming.deployment_name(md.name, serving)
        canary_service = (
            naming.deployment_name(md.name, outcome.canary)
            if outcome.canary is not None and outcome.abort is None and outcome.weight > 0
            else None
        )
        route_rules = traffic.route_rules(
            route,
            md.name,
            set(revision_services),
            stable_service,
            canary_service,
            outcome.weight if canary_service is not None else 0,
        )
    if hpa is None:
        for (kind, name), body in sorted(live.items()):
            if kind == "HorizontalPodAutoscaler" and name == md.name:
                uid = (body.get("metadata") or {}).get("uid")
                deletes.append(Delete(kind, name, uid, "spec.autoscaling is unset"))
    return Decision(
        revision=revision,
        plan=plan,
        revisions=states,
        apply=tuple(applies),
        delete=tuple(deletes),
        rollout=outcome,
        route_rules=route_rules,
        route_missing=route_missing,
    )
