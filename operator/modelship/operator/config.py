"""The operator's own settings, read once from the environment at startup."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from modelship.operator import naming


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorConfig:
    # The inference server image used when a ModelDeployment does not name one.
    server_image: str = naming.DEFAULT_SERVER_IMAGE
    # Kopf peering: the highest priority acts; None picks a random one at startup, because
    # equal priorities make Kopf pause every instance.
    peering_priority: int | None = None
    # Seconds after which a silent peer is presumed dead and another instance takes over.
    peering_lifetime: int = 60
    # Reconciles running at once (each is a handful of API calls).
    concurrency: int = 16
    # Where canary analysis queries the servers' metrics, unless a ModelDeployment names one.
    prometheus_url: str | None = None
    # A namespace pattern in `kopf run --namespace` syntax (comma-separated globs, `!` excludes): the
    # ModelDeployments of matching namespaces are left alone, though the whole cluster is watched,
    # because another operator owns them (`mst-*`: the project's tests; `!team-*`: all but team-*).
    ignore_namespaces: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ

        def integer(name: str, default: int | None, minimum: int) -> int | None:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r}: expected an integer") from None
            if value < minimum:
                raise ConfigError(f"{name}={value}: must be at least {minimum}")
            return value

        image = env.get("MODELSHIP_SERVER_IMAGE", "").strip() or naming.DEFAULT_SERVER_IMAGE
        return cls(
            server_image=image,
            peering_priority=integer("MODELSHIP_PEERING_PRIORITY", None, 0),
            peering_lifetime=integer("MODELSHIP_PEERING_LIFETIME", 60, 2) or 60,
            concurrency=integer("MODELSHIP_CONCURRENCY", 16, 1) or 16,
            prometheus_url=env.get("MODELSHIP_PROMETHEUS_URL", "").strip() or None,
            ignore_namespaces=env.get("MODELSHIP_IGNORE_NAMESPACES", "").strip() or None,
        )
