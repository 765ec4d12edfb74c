"""The canary step function: scenarios a user meets, and invariants over random histories."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st
from modelship.operator import reasons
from modelship.operator.children import RevisionState
from modelship.operator.rollout import state, steps
from modelship.operator.rollout.analysis import AnalysisSettings
from modelship.operator.rollout.analysis import Result as R
from modelship.operator.rollout.state import RolloutState
from modelship.operator.rollout.steps import Inputs, StepResult, Verdict
from modelship.operator.spec import RolloutSpec, Step

from tests.operator.factories import revision_state

PASS, FAIL, INCONCLUSIVE = R.PASS, R.FAIL, R.INCONCLUSIVE

T0 = 1_800_000_000.0
INTERVAL = 10.0


def rev(name: str, *, wanted: int, ready: int) -> RevisionState:
    return revision_state(name, ready=ready, wanted=wanted)


class World:
    """A ModelDeployment's revisions that do what the step function asks, a tick at a time.

    As on a cluster, a Deployment's status lags its spec: a resize is seen with the old ready
    count until the Deployment controller observes it, at the start of a later tick
    (`observe=False` holds that back for a tick); then `grow` more pods are ready."""

    def __init__(
        self, rollout: RolloutSpec, size: int = 4, *, routed: bool = False, autoscaled: bool = False
    ) -> None:
        self.rollout = rollout
        self.size = size
        self.routed = routed
        self.autoscaled = autoscaled
        self.now = T0
        self.revisions: dict[str, RevisionState] = {"old": rev("old", wanted=size, ready=size)}
        self.state = RolloutState(stable="old", stable_version="old")
        self.target = "new"
        self.failure: reasons.Failure | None = None
        self.action: str | None = None
        self.verdict = PASS
        self.outcomes: list[StepResult] = []
        self.stable_pods_created = 0  # pods a Deployment of the stable revision gained

    def observe(self, grow: int) -> None:
        """The Deployment controller: every resize is observed, and `grow` more pods come up."""
        for name, before in list(self.revisions.items()):
            wanted = before.spec_replicas
            ready = min(wanted, before.ready_replicas + grow) if wanted >= before.ready_replicas else wanted
            if name == self.target and self.failure is not None:
                ready = 0
            self.revisions[name] = dataclasses.replace(
                before, replicas=wanted, ready_replicas=ready, available_replicas=ready, observed_current=True
            )

    def tick(self, seconds: float = 1.0, *, grow: int = 100, observe: bool = True) -> StepResult:
        if observe:
            self.observe(grow)
        measurement = None
        if steps.analysis_due(self.rollout, self.state, self.target, INTERVAL, self.now):
            measurement = Verdict(self.verdict, f"success-rate {self.verdict}")
        seen = Inputs(
            target=self.target,
            target_version=self.target,
            revisions=dict(self.revisions),
            size=self.size,
            autoscaled=self.autoscaled,
            target_failure=self.failure,
            measurement=measurement,
            action=self.action,
            routed=self.routed,
        )
        outcome = steps.advance(self.rollout, self.state, seen, self.now, AnalysisSettings(interval=INTERVAL))
        self.outcomes.append(outcome)
        # Status is written and read back as JSON: what survives that is all a restart has.
        status = {"rollout": outcome.state.to_status(self.rollout)}
        self.state = RolloutState.from_status(status)
        for name, replicas in outcome.replicas.items():
            if replicas is None:
                continue
            before = self.revisions.get(name)
            if before is None:
                self.revisions[name] = dataclasses.replace(
                    rev(name, wanted=replicas, ready=0), replicas=0, observed_current=False
                )
            elif before.spec_replicas != replicas:
                if name == outcome.stable and replicas > before.spec_replicas:
                    self.stable_pods_created += replicas - before.spec_replicas
                self.revisions[name] = dataclasses.replace(
                    before, spec_replicas=replicas, observed_current=False
                )
        for name in outcome.retire:
            self.revisions.pop(name, None)
        if outcome.clear_action:
            self.action = None
        self.now += seconds
        return outcome

    def run_until(self, done: object, *, ticks: int = 500, seconds: float = 1.0) -> StepResult:
        for _ in range(ticks):
            outcome = self.tick(seconds)
            if callable(done) and done(outcome):
                return outcome
        raise AssertionError(f"not reached in {ticks} ticks; last: {self.outcomes[-1]}")


STEPS = (
    Step(set_weight=25),
    Step(pause=30.0),
    Step(analysis=True),
    Step(set_weight=50),
    Step(pause=math.inf),
    Step(set_weight=75),
)
ANALYSED = RolloutSpec(steps=STEPS, analysis={"interval": "10s"})


def test_a_good_canary_goes_through_every_step_and_takes_over() -> None:
    world = World(ANALYSED)
    seen_weights = []
    paused = world.run_until(lambda o: o.paused and "manual promote" in o.paused)
    seen_weights = [o.weight for o in world.outcomes]
    assert 25 in seen_weights and 50 in seen_weights
    assert paused.state.step == 4
    # A pause without a duration waits for a person, however long it takes.
    for _ in range(50):
        assert world.tick(10).state.step == 4
    world.action = "promote@1"
    promoted = world.run_until(lambda o: o.stable == "new")
    assert promoted.state.retiring == "old"
    assert 75 in [o.weight for o in world.outcomes]
    # The old revision keeps its pods for scaleDownDelaySeconds, then is deleted.
    assert "old" not in world.run_until(lambda o: "old" in o.retire, seconds=5).replicas
    assert world.state.stable == "new" and world.state.canary is None


def test_the_weights_set_the_canary_share_of_replicas() -> None:
    world = World(RolloutSpec(steps=(Step(set_weight=25), Step(pause=math.inf))), size=4)
    outcome = world.run_until(lambda o: o.paused is not None)
    assert outcome.replicas == {"new": 1, "old": 3}
    assert world.revisions["old"].spec_replicas == 3


def test_a_failing_canary_is_aborted_after_failure_limit_measurements() -> None:
    world = World(ANALYSED)
    world.run_until(lambda o: o.weight == 25)
    world.verdict = FAIL
    started = world.now
    aborted = world.run_until(lambda o: o.abort is not None)
    assert world.now - started <= 2 * INTERVAL + 2
    assert aborted.replicas == {"old": 4, "new": 0}
    assert aborted.weight == 0
    assert aborted.abort is not None and aborted.abort.reason == reasons.ANALYSIS_FAILED
    assert "analysis failed 2 times in a row" in aborted.abort.message
    # Aborted stays aborted: no step runs, and the stable revision keeps everything.
    world.verdict = PASS
    for _ in range(30):
        outcome = world.tick(5)
        assert outcome.replicas == {"old": 4, "new": 0} and outcome.abort


def test_inconclusive_measurements_neither_pass_an_analysis_step_nor_abort() -> None:
    world = World(RolloutSpec(steps=(Step(set_weight=10), Step(analysis=True), Step(set_weight=60))))
    world.verdict = INCONCLUSIVE
    world.run_until(lambda o: o.state.step == 1)
    for _ in range(40):
        outcome = world.tick(5)
        assert outcome.state.step == 1 and outcome.abort is None
    world.verdict = PASS
    assert world.run_until(lambda o: o.stable == "new").abort is None


def test_a_canary_whose_model_does_not_load_is_aborted_and_the_stable_keeps_serving() -> None:
    world = World(ANALYSED)
    world.tick()
    world.failure = reasons.Failure(reasons.MODEL_LOAD_FAILED, "version new: sha256 mismatch")
    outcome = world.tick()
    assert outcome.abort == world.failure, "the failure travels as it is, not re-worded"
    assert outcome.replicas == {"old": 4, "new": 0}


def test_retry_starts_again_and_a_new_spec_change_starts_a_new_canary() -> None:
    world = World(ANALYSED)
    world.failure = reasons.Failure(reasons.MODEL_LOAD_FAILED, "boom")
    world.run_until(lambda o: o.abort is not None)
    world.failure = None
    world.action = "retry@1"
    outcome = world.tick()
    assert outcome.abort is None and outcome.state.step == 0 and outcome.state.aborted is None
    # Abort again, then a different target: a fresh canary, not an aborted one.
    world.action = "abort@2"
    aborted = world.tick().abort
    assert aborted is not None and aborted.reason == reasons.ROLLOUT_ABORTED
    assert aborted.message == f"version new (revision new): {steps.ABORTED_BY_USER}"
    world.target = "newer"
    outcome = world.tick()
    assert outcome.abort is None and outcome.state.canary == "newer" and "new" in outcome.retire


def test_promote_full_skips_every_step_but_still_waits_for_the_pods() -> None:
    world = World(ANALYSED)
    world.tick(grow=0)
    world.action = "promote-full@x"
    outcome = world.tick(grow=0)
    assert outcome.state.step == len(STEPS) and outcome.replicas["new"] == 4
    assert outcome.stable == "old"
    assert world.tick(grow=3).stable == "old"  # 3 of its 4 pods are ready
    assert world.tick().stable == "new"


def test_an_action_is_performed_once_even_if_its_annotation_stays() -> None:
    world = World(RolloutSpec(steps=(Step(pause=math.inf), Step(pause=math.inf), Step(pause=math.inf))))
    world.tick()
    world.action = "promote@once"
    assert world.tick().state.step == 1
    world.action = "promote@once"  # as after a restart before the annotation was removed
    assert world.tick().state.step == 1
    world.action = "promote@twice"
    assert world.tick().state.step == 2


def test_a_timed_pause_survives_a_restart_and_is_not_shortened() -> None:
    world = World(RolloutSpec(steps=(Step(set_weight=10), Step(pause=60.0), Step(set_weight=50))))
    world.run_until(lambda o: o.paused is not None)
    started = world.state.step_started
    assert started is not None
    # A restart: a new World reads only what status kept.
    status = {"rollout": world.state.to_status(world.rollout)}
    world.state = RolloutState.from_status(status)
    outcome = world.tick(1)
    assert outcome.state.step == 1 and outcome.requeue_after is not None
    assert 0 < outcome.requeue_after <= 60
    resumed = world.run_until(lambda o: o.state.step == 2, seconds=1)
    assert world.now - 1 >= started + 60
    assert resumed.weight in (10, 50)


def test_no_steps_means_the_new_revision_comes_up_fully_then_takes_over() -> None:
    world = World(RolloutSpec())
    first = world.tick(grow=0)
    assert first.replicas == {"new": 4, "old": 4}
    assert world.run_until(lambda o: o.stable == "new").state.retiring == "old"


def test_recreate_deletes_the_old_revision_at_once() -> None:
    world = World(RolloutSpec(strategy="Recreate"))
    outcome = world.tick(grow=0)
    assert outcome.retire == ("old",) and outcome.replicas == {"new": 4}


def test_with_an_http_route_the_stable_revision_keeps_every_pod() -> None:
    world = World(RolloutSpec(steps=(Step(set_weight=50), Step(pause=math.inf))), routed=True)
    outcome = world.run_until(lambda o: o.paused is not None)
    assert outcome.replicas == {"new": 2, "old": 4} and outcome.weight == 50


def test_replica_arithmetic() -> None:
    assert steps.canary_replicas(10, 0) == 0
    assert steps.canary_replicas(10, 1) == 1
    assert steps.canary_replicas(10, 25) == 3
    assert steps.canary_replicas(2, 100) == 2
    assert steps.stable_replicas(10, 25, canary_ready=0) == 10
    assert steps.stable_replicas(10, 25, canary_ready=3) == 8
    assert steps.stable_replicas(1, 50, canary_ready=1) == 1
    # Never above its current size, except to its own share.
    assert steps.stable_replicas(4, 50, canary_ready=0, current=3) == 3
    assert steps.stable_replicas(4, 25, canary_ready=1, current=2) == 3


def test_a_growing_canary_never_grows_the_stable_revision() -> None:
    """Issue #31: the stable revision went 3 -> 4 -> 3 and 2 -> 4 -> 2 whenever a step grew the
    canary, because the canary's resize, not yet observed, counted none of its ready pods."""
    world = World(RolloutSpec(steps=(Step(set_weight=25), Step(set_weight=50), Step(set_weight=75))))
    stable_sizes = [world.revisions["old"].spec_replicas]
    for _ in range(40):
        # The Deployment controller observes each write one tick late, as it does on a cluster.
        outcome = world.tick(observe=len(world.outcomes) % 2 == 0, grow=1)
        size = outcome.replicas.get("old")
        if size is not None and size != stable_sizes[-1]:
            stable_sizes.append(size)
        if outcome.stable == "new":
            break
    assert stable_sizes == [4, 3, 2, 1], stable_sizes
    assert world.stable_pods_created == 0
    assert world.state.stable == "new"


def test_actions_are_read_from_the_annotation() -> None:
    assert state.parse_action("promote@2026-11-23T10:00:00.000Z") == "promote"
    assert state.parse_action("promote-full") == "promote-full"
    assert state.parse_action("reboot@1") is None
    assert state.parse_action(None) is None


# Invariants over random histories -----------------------------------------------------------

step_strategy = st.one_of(
    st.builds(lambda w: Step(set_weight=w), st.integers(0, 100)),
    st.builds(lambda d: Step(pause=float(d)), st.integers(0, 40)),
    st.just(Step(pause=math.inf)),
    st.just(Step(analysis=True)),
    st.builds(lambda p, d: Step(shadow=p, pause=float(d)), st.integers(1, 100), st.integers(0, 40)),
    st.builds(lambda p: Step(shadow=p, pause=math.inf), st.integers(1, 100)),
)
# (kind, value, pods that come up, whether the Deployment controller observes before the tick)
event = st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 15), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("verdict"), st.sampled_from([PASS, FAIL, INCONCLUSIVE]), st.just(0), st.just(True)),
    st.tuples(
        st.just("action"),
        st.sampled_from(["promote", "promote-full", "abort", "retry"]),
        st.just(0),
        st.just(True),
    ),
    st.tuples(st.just("fail"), st.just(""), st.just(0), st.just(True)),
    st.tuples(st.just("restart"), st.just(""), st.just(0), st.just(True)),
)


def check_invariants(world: World, outcome: StepResult, previous: RolloutState) -> None:
    size = world.size
    replicas: Mapping[str, int | None] = outcome.replicas
    stable = outcome.stable
    walk = world.rollout.steps
    at = walk[outcome.state.step] if outcome.canary is not None and outcome.state.step < len(walk) else None
    # Copies go to the canary only in a shadow step, only once a canary pod is ready, and the
    # users' requests then go to the stable revision alone.
    assert outcome.state.mirror == (at.shadow or 0 if at is not None and outcome.abort is None else 0)
    if outcome.mirror:
        canary_state = world.revisions.get(world.target)
        assert canary_state is not None and canary_state.ready_replicas > 0
        assert outcome.mirror == outcome.state.mirror and outcome.weight == 0
    if at is not None and at.shadow is not None and outcome.abort is None:
        assert outcome.weight == 0
        assert stable is not None and replicas[stable] == size
    if outcome.abort is not None:
        # An abort always gives every request back to the stable revision, at full size.
        assert stable is not None and replicas[stable] == size
        assert replicas.get(world.target, 0) == 0 and outcome.weight == 0
        assert outcome.mirror == 0
        return
    if stable is not None and outcome.canary is not None:
        stable_want = replicas[stable]
        assert stable_want is not None
        steps = world.rollout.steps
        # After the last step the canary grows to full size; the stable revision keeps the
        # share the last setWeight left it until the canary takes over.
        last = next((s.set_weight for s in reversed(steps) if s.set_weight is not None), 0)
        w = outcome.weight if outcome.state.step < len(steps) else last
        # The stable revision never goes below its share of the traffic the steps leave it...
        assert stable_want >= math.ceil(size * (100 - min(w, 100)) / 100) or w == 100
        # ...nor below what the canary's ready pods cannot yet take over.
        canary_state = world.revisions.get(world.target)
        canary_ready = canary_state.ready_replicas if canary_state is not None else 0
        assert stable_want + min(canary_ready, replicas.get(world.target) or 0) >= size
        if previous.canary == outcome.canary and previous.aborted is None:
            assert outcome.state.step >= previous.step  # a finished step is never repeated
    for name in outcome.retire:
        assert name != stable or stable is None
        assert name not in replicas


def check_no_churn(world: World, outcome: StepResult, prior: StepResult | None) -> None:
    """Issue #31: within one canary that is not aborted, the stable revision never grows (but to
    the share a step that lowers the weight gives back to it), and never has more than N pods:
    both revisions together have at most N plus the canary's pods of the step."""
    size, stable = world.size, outcome.stable
    if prior is None or outcome.abort is not None or prior.abort is not None:
        return
    if outcome.canary is None or outcome.canary != prior.canary or stable != prior.stable or stable is None:
        return
    want, before = outcome.replicas.get(stable), prior.replicas.get(stable)
    if world.autoscaled:
        assert want is None, "the operator sized the stable revision the HPA sizes"
    else:
        assert want is not None and before is not None
        walk = world.rollout.steps
        last = next((s.set_weight for s in reversed(walk) if s.set_weight is not None), 0)
        w = outcome.weight if outcome.state.step < len(walk) else last
        share = math.ceil(size * (100 - min(w, 100)) / 100)
        assert want <= max(before, share), f"the stable revision grew from {before} to {want}"
        assert want <= size
    canary_want = outcome.replicas.get(world.target) or 0
    in_steps = outcome.state.step < len(world.rollout.steps)
    share = max(outcome.weight, outcome.state.mirror)  # a shadow step's copies need pods too
    assert canary_want == (steps.canary_replicas(size, share) if in_steps else size)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(step_strategy, max_size=6),
    size=st.integers(1, 6),
    events=st.lists(event, max_size=40),
    analysed=st.booleans(),
)
def test_invariants_hold_over_any_history(
    steps: list[Step], size: int, events: list[tuple[str, str | int, int, bool]], analysed: bool
) -> None:
    rollout = RolloutSpec(steps=tuple(steps), analysis={"interval": "10s"} if analysed else None)
    world = World(rollout, size=size)
    nonce = 0
    for kind, value, grow, observe in events:
        previous = world.state
        if kind == "tick":
            pause_step = (
                previous.canary == world.target
                and previous.step < len(steps)
                and steps[previous.step].pause is not None
            )
            had_action = world.action is not None
            prior = world.outcomes[-1] if world.outcomes else None
            outcome = world.tick(float(value), grow=grow, observe=observe)
            check_invariants(world, outcome, previous)
            check_no_churn(world, outcome, prior)
            left = previous.canary == world.target and outcome.state.step > previous.step
            shadow = steps[previous.step] if left and previous.step < len(steps) else None
            if shadow is not None and shadow.shadow is not None and analysed and not had_action:
                # With analysis a shadow step ends only on a pass measured after its duration.
                assert previous.step_started is not None and shadow.pause is not None
                ends = previous.step_started + shadow.pause
                assert outcome.state.verdict == PASS
                assert outcome.state.last_run is not None and outcome.state.last_run >= ends
            # A timed pause is never left before its time, unless a person promoted it.
            if pause_step and outcome.state.step > previous.step and previous.step_started is not None:
                pause = steps[previous.step].pause
                assert pause is not None
                assert world.now - float(value) >= previous.step_started + pause or had_action
        elif kind == "verdict":
            world.verdict = str(value)
        elif kind == "action":
            nonce += 1
            world.action = f"{value}@{nonce}"
        elif kind == "fail":
            world.failure = reasons.Failure(reasons.MODEL_LOAD_FAILED, "broken")
        elif kind == "restart":
            status = {"rollout": world.state.to_status(rollout)}
            world.state = RolloutState.from_status(status)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(step_strategy, max_size=6),
    size=st.integers(1, 6),
    ticks=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 3), st.booleans()), max_size=40),
)
def test_an_autoscaled_canary_never_sizes_the_stable_revision(
    steps: list[Step], size: int, ticks: list[tuple[int, int, bool]]
) -> None:
    """The HPA sizes the stable revision (N is its size); the canary gets its share of N."""
    world = World(RolloutSpec(steps=tuple(steps)), size=size, autoscaled=True)
    for seconds, grow, observe in ticks:
        prior = world.outcomes[-1] if world.outcomes else None
        outcome = world.tick(float(seconds), grow=grow, observe=observe)
        check_no_churn(world, outcome, prior)
    assert world.stable_pods_created == 0


def test_status_round_trip_keeps_the_state() -> None:
    state = RolloutState(
        stable="a",
        stable_version="1",
        canary="b",
        canary_version="2",
        step=3,
        step_started=T0 + 0.25,
        weight=40,
        handled_action="promote@x",
        failures=1,
        runs=4,
        last_run=T0 + 1.5,
        verdict=FAIL,
        summary="success-rate 0.5 < 0.99",
        results=({"name": "success-rate", "value": 0.5, "threshold": ">= 0.99", "result": FAIL},),
    )
    back = RolloutState.from_status({"rollout": state.to_status(RolloutSpec(steps=STEPS))})
    assert dataclasses.asdict(back) == dataclasses.asdict(state)


# ---- inconclusive measurements pause the rollout (issue #29)


def starved_world() -> World:
    """At step 2 (analysis) of 25% / analysis / 50%, with every measurement inconclusive."""
    world = World(RolloutSpec(steps=(Step(set_weight=25), Step(analysis=True), Step(set_weight=50))))
    world.verdict = INCONCLUSIVE
    world.run_until(lambda o: o.state.step == 1)
    return world


def test_inconclusive_limit_measurements_in_a_row_pause_the_rollout_with_the_reason() -> None:
    world = starved_world()
    paused = world.run_until(lambda o: o.paused is not None, seconds=2)
    assert paused.state.inconclusive == AnalysisSettings().inconclusive_limit == 3
    assert paused.state.runs == 3
    assert paused.pause_reason == reasons.ANALYSIS_INCONCLUSIVE
    assert (
        paused.paused is not None
        and "analysis inconclusive 3 times in a row (inconclusiveLimit 3)" in paused.paused
    )
    assert "kubectl modelship promote" in paused.paused
    assert paused.abort is None and paused.weight == 25 and paused.replicas == {"old": 3, "new": 1}
    # Paused, it keeps measuring: it asks to be woken for the next measurement.
    assert paused.requeue_after is not None and paused.requeue_after <= INTERVAL


def test_a_pass_after_an_inconclusive_pause_resumes_the_rollout() -> None:
    world = starved_world()
    world.run_until(lambda o: o.paused is not None, seconds=2)
    world.verdict = PASS
    resumed = world.run_until(lambda o: o.state.step == 2, seconds=2)
    assert resumed.paused is None and resumed.state.inconclusive == 0
    assert world.run_until(lambda o: o.stable == "new").abort is None


def test_failures_still_abort_a_rollout_paused_for_inconclusive_measurements() -> None:
    world = starved_world()
    world.run_until(lambda o: o.paused is not None, seconds=2)
    world.verdict = FAIL
    aborted = world.run_until(lambda o: o.abort is not None, seconds=2)
    assert aborted.abort is not None and aborted.abort.reason == reasons.ANALYSIS_FAILED


def test_promote_goes_on_past_an_inconclusive_pause_once() -> None:
    world = starved_world()
    world.run_until(lambda o: o.paused is not None, seconds=2)
    world.action = "promote@1"
    promoted = world.tick()
    assert promoted.paused is None and promoted.state.step == 2 and promoted.weight == 50
    assert promoted.action_note is not None and "step 2 (analysis) skipped" in promoted.action_note
    assert promoted.state.inconclusive == 0


def test_a_pause_for_inconclusive_background_analysis_holds_the_steps() -> None:
    world = World(
        RolloutSpec(steps=(Step(set_weight=25), Step(pause=20.0), Step(set_weight=50)), analysis={})
    )
    world.verdict = INCONCLUSIVE
    paused = world.run_until(lambda o: o.pause_reason == reasons.ANALYSIS_INCONCLUSIVE, seconds=2)
    for _ in range(30):  # far beyond the 20 s pause step
        outcome = world.tick(2)
        assert outcome.state.step == paused.state.step and outcome.weight == 25


def test_the_measured_traffic_survives_the_status_round_trip() -> None:
    world = World(ANALYSED)
    world.run_until(lambda o: o.weight == 25)
    measured = dataclasses.replace(
        world.state, canary_requests=250.4, all_requests=1000.0, inconclusive=2, runs=1
    )
    again = RolloutState.from_status({"rollout": measured.to_status(ANALYSED)})
    assert (again.canary_requests, again.all_requests, again.inconclusive) == (250, 1000, 2)


def test_a_measurement_remembers_the_weight_it_was_taken_at_when_its_pass_moves_the_weight_on() -> None:
    world = World(RolloutSpec(steps=(Step(set_weight=25), Step(analysis=True), Step(set_weight=50))))
    passed = world.run_until(lambda o: o.state.runs == 1)
    assert passed.weight == 50 and passed.state.measured_at_weight == 25


# ---- shadow steps (issue #16)

SHADOWED = (Step(shadow=20, pause=30.0), Step(set_weight=50), Step(pause=math.inf))


def test_a_shadow_step_gives_the_canary_copies_and_no_user_then_its_weights() -> None:
    world = World(RolloutSpec(steps=SHADOWED), size=5)
    first = world.tick(grow=0)
    # Pods for a fifth of the requests, none of the users': the stable revision keeps all five.
    assert first.weight == 0 and first.replicas == {"new": 1, "old": 5}
    assert first.state.mirror == 20 and first.mirror == 0, "no copies before a canary pod is ready"
    copying = world.tick()
    assert copying.mirror == 20 and copying.weight == 0 and copying.paused is None
    assert copying.requeue_after is not None and copying.requeue_after <= 30
    weighted = world.run_until(lambda o: o.weight == 50)
    assert world.now - 1 >= T0 + 30, "left before its duration"
    assert weighted.mirror == 0 and weighted.state.mirror == 0
    # The stable revision shrinks only as the canary's new pods become ready to take over.
    assert weighted.replicas == {"new": 3, "old": 4}
    assert world.run_until(lambda o: o.paused is not None).replicas == {"new": 3, "old": 3}


def test_with_analysis_a_shadow_step_ends_on_the_first_pass_after_its_duration() -> None:
    world = World(RolloutSpec(steps=SHADOWED, analysis={"interval": "10s"}), size=5)
    world.verdict = INCONCLUSIVE
    # Background analysis runs during the shadow step, though the canary's weight is 0.
    assert world.run_until(lambda o: o.state.runs == 1).weight == 0
    world.run_until(lambda o: world.now > T0 + 40, seconds=2)
    assert world.state.step == 0, "a shadow step never ends on what it could not measure"
    assert world.outcomes[-1].mirror == 20, "paused for inconclusive measurements, it keeps copying"
    world.verdict = PASS
    passed = world.run_until(lambda o: o.state.step == 1, seconds=2)
    assert passed.state.verdict == PASS and passed.weight == 50


def test_a_failing_canary_is_rolled_back_during_its_shadow_step_and_the_copies_stop() -> None:
    world = World(RolloutSpec(steps=SHADOWED, analysis={"interval": "10s"}), size=5)
    world.run_until(lambda o: o.mirror == 20)
    world.verdict = FAIL
    aborted = world.run_until(lambda o: o.abort is not None)
    assert aborted.mirror == 0 and aborted.state.mirror == 0 and aborted.weight == 0
    assert aborted.replicas == {"old": 5, "new": 0}
    assert all(o.weight == 0 for o in world.outcomes), "no user request ever went to the canary"


def test_a_shadow_step_without_a_duration_copies_until_promoted() -> None:
    world = World(RolloutSpec(steps=(Step(shadow=100, pause=math.inf), *SHADOWED[1:])), size=2)
    waiting = world.run_until(lambda o: o.mirror == 100)
    assert waiting.replicas == {"new": 2, "old": 2}
    assert waiting.paused == "step 1 (shadow: 100% until promoted): waiting for a manual promote"
    for _ in range(30):
        assert world.tick(10).state.step == 0
    world.action = "promote@1"
    assert world.run_until(lambda o: o.weight == 50).mirror == 0


def test_the_shadow_percent_survives_the_status_round_trip() -> None:
    world = World(RolloutSpec(steps=SHADOWED), size=5)
    world.run_until(lambda o: o.mirror == 20)
    again = RolloutState.from_status({"rollout": world.state.to_status(world.rollout)})
    assert again.mirror == 20 and world.state.to_status(world.rollout)["mirror"] == 20
    assert "mirror" not in RolloutState(stable="a").to_status(world.rollout)


def test_an_analysis_step_is_never_passed_by_the_measurement_taken_before_it_started() -> None:
    """A shadow step that ends, a weight its ready pods already meet and an analysis step can all
    be walked in one reconcile: the measurement of that reconcile was of the copies, not of the
    canary's share of the users' requests, and must not pass the analysis step."""
    steps_ = (Step(shadow=100, pause=10.0), Step(set_weight=50), Step(analysis=True), Step(pause=math.inf))
    world = World(RolloutSpec(steps=steps_, analysis={"interval": "10s"}), size=2)
    weighted = world.run_until(lambda o: o.weight == 50)
    assert weighted.state.step == 2, "the analysis step waits for a measurement of its own"
    passed = world.run_until(lambda o: o.state.step == 3)
    assert passed.state.measured_at_weight == 50
