"""Which revisions of a ModelDeployment to keep, and which to retire: a pure decision.

Today's policy replaces a revision safely: the new revision (the "target", what the spec asks
for) is created next to the one that serves (the "stable" revision), and the stable one is
retired only once the target is complete, so a target whose pods never become ready leaves
the stable revision serving. Canary steps will grow out of this function: it already takes
the previous status's stable revision and returns the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelship.operator.observed import RevisionState


@dataclass(frozen=True)
class RolloutPlan:
    target: str
    stable: str | None  # the revision that serves while the target is not complete
    retire: tuple[str, ...]  # revisions whose Deployments are deleted now
    target_complete: bool

    @property
    def keep(self) -> tuple[str, ...]:
        return tuple(r for r in (self.stable, self.target) if r is not None)


def plan_rollout(
    target: str,
    previous_stable: str | None,
    revisions: Mapping[str, RevisionState],
    *,
    target_up_to_date: bool = True,
) -> RolloutPlan:
    """Decide the stable revision and what to retire, given the observed revision Deployments.

    - A complete target becomes the stable revision and every other revision is retired.
    - Otherwise the previous stable revision keeps serving (if its Deployment still exists);
      with no record of one (a lost status), the other revision with the most ready pods does.
    - Revisions that are neither target nor stable (an intermediate version that was replaced
      before it finished) are retired at once: they serve nothing the stable revision does not.

    `target_up_to_date` is False while the target's Deployment differs from what we apply
    (a new replica count not yet seen): its old counts cannot make it complete.
    """
    live = {rev: state for rev, state in revisions.items() if not state.being_deleted}
    target_state = live.get(target)
    target_complete = target_up_to_date and target_state is not None and target_state.complete

    stable: str | None
    if target_complete or previous_stable == target:
        stable = target
    elif previous_stable is not None and previous_stable in live:
        stable = previous_stable
    else:
        candidates = [s for rev, s in live.items() if rev != target and s.ready_replicas > 0]
        candidates.sort(key=lambda s: (s.ready_replicas, s.created, s.revision), reverse=True)
        stable = candidates[0].revision if candidates else None

    retire = tuple(sorted(rev for rev in live if rev not in (target, stable)))
    return RolloutPlan(target=target, stable=stable, retire=retire, target_complete=target_complete)
