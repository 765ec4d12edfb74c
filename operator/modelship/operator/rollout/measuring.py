"""The bridge between a reconcile and Prometheus: settings per ModelDeployment, one measurement.

`analysis` judges; this module only binds it to the operator's own settings (the default
Prometheus URL) and one HTTP session, and turns its Measurement into what the step function
reads (`steps.Verdict`).
"""

from __future__ import annotations

import aiohttp
from modelship.operator.rollout import analysis
from modelship.operator.rollout.state import RolloutState
from modelship.operator.rollout.steps import Verdict
from modelship.operator.spec import ModelDeployment


def settings_of(md: ModelDeployment) -> analysis.AnalysisSettings:
    """Raises analysis.AnalysisSpecError (a ValueError) for settings the CRD could not reject."""
    return analysis.parse_settings(md.rollout.analysis)


class Measurer:
    def __init__(self, default_url: str | None) -> None:
        self._default_url = default_url
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, md: ModelDeployment, revision: str) -> Verdict:
        if self._session is None:
            # Prometheus is in the cluster (or on loopback): never through HTTP(S)_PROXY.
            self._session = aiohttp.ClientSession(trust_env=False)
        settings = settings_of(md)
        url = settings.prometheus_url or self._default_url
        state = RolloutState.from_status(md.status)
        stable = state.stable
        measured = await analysis.measure(
            self._session,
            url,
            settings,
            md.namespace,
            md.name,
            revision,
            stable=stable if stable != revision else None,
            # With an HTTPRoute the gateway copies the requests and discards the canary's answers:
            # nothing compares them, and predictionDrift judges the copies instead.
            mirrored=state.mirror > 0 and md.rollout.http_route is None,
        )
        return Verdict(
            verdict=measured.verdict,
            summary=measured.summary,
            results=tuple(measured.status_results()),
            requests=measured.requests,
            total=measured.total,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
