"""Exact canary weights through the Gateway API: pure functions, no I/O.

With `trafficRouting.gatewayAPI.httpRoute`, every revision gets a Service of its own (named
like its Deployment), and the user's HTTPRoute splits the traffic between the stable and the
canary revision by the weights of its backendRefs. Only the rules that send traffic to this
ModelDeployment are rewritten: the rest of the route (hosts, matches, filters, other
backends' rules) stays the user's.

A shadow step adds the standard `RequestMirror` filter to those rules: the gateway sends a copy of
`percent` of their requests to the canary's Service and discards its answers, while every user
request goes to the stable revision. Only a mirror filter that points at one of this model's
Services is ours: it is set, changed and removed; a user's own filters stay.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from modelship.operator import bodies, manifests, naming
from modelship.operator.manifests import Manifest
from modelship.operator.spec import ModelDeployment

# What the HTTPRoute CRD's schema fills in on a backendRef that leaves them out.
_REF_DEFAULTS: Mapping[str, Any] = {"group": "", "kind": "Service", "weight": 1}
REQUEST_MIRROR = "RequestMirror"


def revision_service(md: ModelDeployment, revision: str) -> Manifest:
    """The Service in front of one revision's pods only, for a route to give a weight."""
    labels = naming.common_labels(md.name)
    labels[naming.LABEL_REVISION] = revision
    return manifests.stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": naming.deployment_name(md.name, revision),
                "namespace": md.namespace,
                "labels": labels,
                "ownerReferences": [md.owner_reference()],
            },
            "spec": {
                "type": "ClusterIP",
                "selector": {naming.LABEL_MODEL_DEPLOYMENT: md.name, naming.LABEL_REVISION: revision},
                "ports": [
                    {"name": "http", "port": naming.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
                ],
            },
        }
    )


def backend_refs(stable_service: str, canary_service: str | None, canary_weight: int) -> list[Manifest]:
    """The backendRefs of a rule of ours: weights that sum to 100, the canary's `canary_weight`."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"a canary weight is a percentage, not {canary_weight}")
    if canary_service is None or canary_service == stable_service:
        return [{"name": stable_service, "port": naming.SERVICE_PORT, "weight": 100}]
    return [
        {"name": stable_service, "port": naming.SERVICE_PORT, "weight": 100 - canary_weight},
        {"name": canary_service, "port": naming.SERVICE_PORT, "weight": canary_weight},
    ]


def mirror_filter(service: str, percent: int) -> Manifest:
    """The rule filter that has the gateway copy `percent` of the rule's requests to `service`."""
    if not 1 <= percent <= 100:
        raise ValueError(f"a mirrored share is a percentage from 1 to 100, not {percent}")
    return {
        "type": REQUEST_MIRROR,
        "requestMirror": {"backendRef": {"name": service, "port": naming.SERVICE_PORT}, "percent": percent},
    }


def route_rules(
    route: Mapping[str, Any],
    md_name: str,
    service_names: Collection[str],
    stable_service: str,
    canary_service: str | None,
    canary_weight: int,
    mirror: tuple[str, int] | None = None,
) -> list[Manifest] | None:
    """The route's `spec.rules` with the weights set, or None when they are already so.
    `mirror`: (a Service of this model, percent) that our rules copy requests to (a shadow step).

    A rule is ours when one of its backendRefs is a Service of this ModelDeployment: its main
    Service `md_name`, one in `service_names` (the per-revision Services that exist, old ones
    included), or the stable or canary Service. An ours rule's backendRefs become exactly
    `backend_refs(...)`, whatever they were, and its mirror filters to our Services exactly
    `mirror`'s; every other rule is left as it is.
    """
    namespace = _namespace(route)
    ours = {md_name, stable_service, *service_names}
    if canary_service is not None:
        ours.add(canary_service)
    if mirror is not None:
        ours.add(mirror[0])
    wanted = backend_refs(stable_service, canary_service, canary_weight)
    mirrored = [mirror_filter(*mirror)] if mirror is not None else []
    rules = copy.deepcopy(list(_rules(route)))
    changed = False
    for rule in rules:
        refs = rule.get("backendRefs") or []
        if not any(_service_name(ref, namespace) in ours for ref in refs):
            continue
        # Compared with the schema's defaults filled in, so that what the API server returns
        # for the refs we wrote reads as unchanged and an idle reconcile writes nothing.
        if _canonical(refs, namespace) != _canonical(wanted, namespace):
            rule["backendRefs"] = copy.deepcopy(wanted)
            changed = True
        filters = rule.get("filters") or []
        theirs = [f for f in filters if not _our_mirror(f, ours, namespace)]
        if _mirrors(filters, ours, namespace) != _mirrors(mirrored, ours, namespace):
            if theirs or mirrored:
                rule["filters"] = theirs + copy.deepcopy(mirrored)
            else:
                rule.pop("filters", None)
            changed = True
    return rules if changed else None


def _our_mirror(item: Mapping[str, Any], ours: Collection[str], namespace: str | None) -> bool:
    if item.get("type") != REQUEST_MIRROR:
        return False
    ref = (item.get("requestMirror") or {}).get("backendRef") or {}
    return _service_name(ref, namespace) in ours


def _mirrors(filters: Sequence[Mapping[str, Any]], ours: Collection[str], namespace: str | None) -> list[str]:
    """Our mirror filters as comparable text: the Service, its port and the share (an absent
    percent and fraction is 100%, as the Gateway API reads it)."""
    found = []
    for item in filters:
        if _our_mirror(item, ours, namespace):
            spec = item.get("requestMirror") or {}
            ref = spec.get("backendRef") or {}
            percent = spec.get("percent", 100 if spec.get("fraction") is None else None)
            found.append(json.dumps([ref.get("name"), ref.get("port"), percent, spec.get("fraction")]))
    return sorted(found)


def _namespace(route: Mapping[str, Any]) -> str | None:
    return bodies.namespace_of(route) or None


def _rules(route: Mapping[str, Any]) -> Sequence[Manifest]:
    return (route.get("spec") or {}).get("rules") or []


def _with_defaults(ref: Mapping[str, Any], namespace: str | None) -> Manifest:
    """The ref as the API server sees it: a missing (or null) namespace is the route's own."""
    defaults = {**_REF_DEFAULTS, "namespace": namespace}
    filled = {**defaults, **ref}
    return {key: defaults.get(key) if value is None else value for key, value in filled.items()}


def _service_name(ref: Mapping[str, Any], namespace: str | None) -> str | None:
    """The name of the Service in the route's own namespace that the ref points at, if any."""
    full = _with_defaults(ref, namespace)
    if full["group"] != "" or full["kind"] != "Service" or full["namespace"] != namespace:
        return None
    name = full.get("name")
    return name if isinstance(name, str) else None


def _canonical(refs: Sequence[Mapping[str, Any]], namespace: str | None) -> list[str]:
    """The refs as comparable text, in no particular order: the order of backends is no weight."""
    return sorted(json.dumps(_with_defaults(ref, namespace), sort_keys=True) for ref in refs)
