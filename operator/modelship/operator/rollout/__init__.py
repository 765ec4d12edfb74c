"""How a new revision takes over: the step function and what it reads. Pure, except `measuring`.

- `steps`: the step function, `advance(spec, state, inputs, now) -> StepResult` (Canary and Recreate).
- `state`: `status.rollout` typed (`RolloutState`) and the manual actions (`modelship.io/action`).
- `plan`: the small summary of a step result (serving, target, retired) that the rest reads.
- `analysis`: the canary's metrics, judged against thresholds (Prometheus queries, pure verdicts).
- `measuring`: the one place a reconcile talks to Prometheus.
- `traffic`: exact weights through a Gateway API HTTPRoute.
"""
