"""Reading an HTTPRoute's weights back, for the tests: written apart from `rollout.traffic` so
that a test checks the operator's route against an independent reading of the Gateway API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def route_weights(route: Mapping[str, Any]) -> dict[str, int]:
    """The weight of each Service (in the route's namespace) the route sends traffic to, by name;
    a Service named in several rules keeps the weight of its first. Left-out fields take the
    defaults the HTTPRoute schema gives them: group "", kind Service, weight 1."""
    namespace = (route.get("metadata") or {}).get("namespace")
    weights: dict[str, int] = {}
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            group = ref.get("group") or ""
            kind = ref.get("kind") or "Service"
            if group != "" or kind != "Service" or (ref.get("namespace") or namespace) != namespace:
                continue
            weight = ref.get("weight")
            weights.setdefault(ref["name"], 1 if weight is None else int(weight))
    return weights
