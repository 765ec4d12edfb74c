"""Which revision serves, which is the target, and which are retired: one reconcile's summary.

The decisions themselves are made by the step function (`rollout.steps.advance`); this is the
small view of its result that the manifests, the deletions and the status read.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelship.operator.children import RevisionState
from modelship.operator.rollout.steps import StepResult


@dataclass(frozen=True)
class RolloutPlan:
    target: str
    stable: str | None  # the revision that serves
    retire: tuple[str, ...]  # revisions whose Deployments are deleted now
    target_complete: bool  # the target serves alone with every pod ready

    @property
    def keep(self) -> tuple[str, ...]:
        return tuple(r for r in (self.stable, self.target) if r is not None)


def plan_of(
    target: str,
    outcome: StepResult,
    target_state: RevisionState | None,
    *,
    target_up_to_date: bool = True,
) -> RolloutPlan:
    """`target_up_to_date` is False while the target's Deployment differs from what we apply
    (a new replica count not yet seen): its old counts cannot make it complete."""
    complete = (
        outcome.stable == target and target_up_to_date and target_state is not None and target_state.complete
    )
    return RolloutPlan(target=target, stable=outcome.stable, retire=outcome.retire, target_complete=complete)
