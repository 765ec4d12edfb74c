"""One reconcile's decision: which children to apply and which to delete. Pure, no I/O.

It joins the other pure parts: the desired revision (manifests), the observed revisions
(observed), the rollout policy (rollout) and the comparison with live objects (drift).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelship.operator import manifests, naming
from modelship.operator.drift import Difference, difference
from modelship.operator.manifests import Manifest, Revision
from modelship.operator.observed import RevisionState, revision_states
from modelship.operator.rollout import RolloutPlan, plan_rollout
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


def decide(md: ModelDeployment, children: Children, *, server_image: str) -> Decision:
    revision = manifests.desired_revision(md, server_image=server_image)
    deployments = [d for d in children.deployments if _owned(d, md)]
    states = revision_states(deployments)
    target_deployment = manifests.revision_deployment(md, revision, md.desired_replicas)
    wanted = [target_deployment, manifests.service(md)]
    hpa = manifests.autoscaler(md, revision.deployment_name)
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

    previous_stable = (md.status.get("model") or {}).get("revision")
    target_up_to_date = all(a.manifest is not target_deployment for a in applies)
    plan = plan_rollout(revision.revision, previous_stable, states, target_up_to_date=target_up_to_date)

    deletes = []
    for rev in plan.retire:
        state = states[rev]
        uid = ((_by_name(deployments, state.deployment) or {}).get("metadata") or {}).get("uid")
        why = (
            f"revision {revision.revision} (version {revision.version}) is complete"
            if plan.target_complete
            else f"replaced by revision {revision.revision} before it completed"
        )
        deletes.append(Delete("Deployment", state.deployment, uid, why))
    if hpa is None:
        for (kind, name), body in sorted(live.items()):
            if kind == "HorizontalPodAutoscaler" and name == md.name:
                uid = (body.get("metadata") or {}).get("uid")
                deletes.append(Delete(kind, name, uid, "spec.autoscaling is unset"))
    return Decision(
        revision=revision, plan=plan, revisions=states, apply=tuple(applies), delete=tuple(deletes)
    )
