"""Which revision serves and which are retired while a new revision rolls out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from modelship.operator.observed import RevisionState
from modelship.operator.rollout import plan_rollout


def state(
    revision: str, *, ready: int = 2, wanted: int = 2, created: str = "2026-01-01T00:00:00Z", **kw
) -> RevisionState:
    values = dict(
        revision=revision,
        deployment=f"iris-{revision}",
        version=revision,
        model_name="iris",
        spec_replicas=wanted,
        replicas=wanted,
        ready_replicas=ready,
        available_replicas=ready,
        observed_current=True,
        being_deleted=False,
        created=created,
        failure=None,
    )
    values.update(kw)
    return RevisionState(**values)  # type: ignore[arg-type]


def test_a_first_revision_has_nothing_to_retire() -> None:
    plan = plan_rollout("new", None, {})
    assert (plan.stable, plan.retire, plan.target_complete) == (None, (), False)


def test_the_old_revision_serves_until_the_new_one_is_complete() -> None:
    plan = plan_rollout("new", "old", {"old": state("old"), "new": state("new", ready=1)})
    assert plan.stable == "old"
    assert plan.retire == ()
    assert not plan.target_complete


def test_a_complete_new_revision_takes_over_and_the_old_one_is_retired() -> None:
    plan = plan_rollout("new", "old", {"old": state("old"), "new": state("new")})
    assert plan.stable == "new"
    assert plan.retire == ("old",)
    assert plan.target_complete


def test_a_new_revision_that_never_becomes_ready_leaves_the_old_one_serving() -> None:
    plan = plan_rollout("bad", "old", {"old": state("old"), "bad": state("bad", ready=0)})
    assert plan.stable == "old"
    assert "old" not in plan.retire


def test_an_intermediate_revision_replaced_before_it_completed_is_retired() -> None:
    revisions = {"a": state("a"), "b": state("b", ready=1), "c": state("c", ready=0)}
    plan = plan_rollout("c", "a", revisions)
    assert plan.stable == "a"
    assert plan.retire == ("b",)


def test_rolling_back_to_the_serving_revision_retires_the_new_one() -> None:
    plan = plan_rollout("old", "old", {"old": state("old"), "new": state("new", ready=1)})
    assert plan.stable == "old"
    assert plan.retire == ("new",)


def test_with_a_lost_status_the_revision_with_most_ready_pods_serves() -> None:
    revisions = {"a": state("a", ready=1), "b": state("b", ready=3, wanted=3), "new": state("new", ready=0)}
    plan = plan_rollout("new", None, revisions)
    assert plan.stable == "b"
    assert plan.retire == ("a",)


def test_a_stale_target_observation_cannot_complete_the_rollout() -> None:
    plan = plan_rollout("new", "old", {"old": state("old"), "new": state("new")}, target_up_to_date=False)
    assert plan.stable == "old"
    assert plan.retire == ()


def test_revisions_already_being_deleted_are_not_deleted_again() -> None:
    revisions = {"old": state("old", being_deleted=True), "new": state("new")}
    assert plan_rollout("new", "old", revisions).retire == ()


names = st.sampled_from(["a", "b", "c", "d"])
states = st.builds(
    lambda rev, ready, wanted, deleting: state(rev, ready=ready, wanted=wanted, being_deleted=deleting),
    names,
    st.integers(0, 3),
    st.integers(0, 3),
    st.booleans(),
)


@given(
    target=names,
    previous=st.none() | names,
    observed=st.lists(states, max_size=4).map(lambda xs: {s.revision: s for s in xs}),
    up_to_date=st.booleans(),
)
def test_invariants(target: str, previous: str | None, observed: dict, up_to_date: bool) -> None:
    plan = plan_rollout(target, previous, observed, target_up_to_date=up_to_date)
    # The target is never retired, nor is the revision that serves.
    assert target not in plan.retire
    assert plan.stable is None or plan.stable not in plan.retire
    # Nothing is retired twice, and only revisions that exist are retired.
    assert all(rev in observed and not observed[rev].being_deleted for rev in plan.retire)
    # Serving revisions are retired only once the target is complete, or when the target was
    # already serving (its previous stable).
    if not plan.target_complete and previous != target:
        live_previous = previous is not None and previous in observed and not observed[previous].being_deleted
        if live_previous:
            assert plan.stable == previous
    # A complete target serves alone.
    if plan.target_complete:
        assert plan.stable == target
        assert set(plan.retire) == {r for r, s in observed.items() if r != target and not s.being_deleted}
