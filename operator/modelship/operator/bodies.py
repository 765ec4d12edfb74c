"""Reading Kubernetes object bodies: metadata, labels, conditions and times, in one place.

Objects reach the operator as plain mappings (from Kopf's events, the cache, the API), where any
field may be missing; these accessors answer with an empty value rather than a KeyError, as
Kopf's own `kopf._cogs.structs.bodies` views do. Times are RFC 3339 in UTC as the API writes
them; the operator keeps them as seconds since the epoch.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from modelship.operator import naming

Body = Mapping[str, Any]


def meta(body: Body | None) -> Mapping[str, Any]:
    return (body.get("metadata") if body is not None else None) or {}


def name_of(body: Body | None) -> str:
    return str(meta(body).get("name") or "")


def namespace_of(body: Body | None) -> str:
    return str(meta(body).get("namespace") or "")


def uid_of(body: Body | None) -> str | None:
    return meta(body).get("uid") or None


def resource_version(body: Body | None) -> str | None:
    return meta(body).get("resourceVersion") or None


def labels_of(body: Body | None) -> Mapping[str, str]:
    return meta(body).get("labels") or {}


def being_deleted(body: Body | None) -> bool:
    return bool(meta(body).get("deletionTimestamp"))


def revision_of(body: Body | None) -> str:
    """The revision a child belongs to (its `modelship.io/revision` label), or ""."""
    return labels_of(body).get(naming.LABEL_REVISION, "")


def status_of(body: Body | None) -> Mapping[str, Any]:
    return (body.get("status") if body is not None else None) or {}


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of type `kind` in a status (an object's `.status`), or None."""
    for entry in status.get("conditions") or ():
        if isinstance(entry, Mapping) and entry.get("type") == kind:
            return entry
    return None


def condition_is_true(status: Mapping[str, Any], kind: str) -> bool:
    found = condition(status, kind)
    return bool(found and found.get("status") == "True")


def managers_of_replicas(body: Body | None) -> list[Mapping[str, Any]]:
    """The managedFields entries that own `spec.replicas` (its field managers' claims to it)."""
    return [
        entry
        for entry in meta(body).get("managedFields") or ()
        if isinstance(entry, Mapping) and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]


def applies_replicas(body: Body | None, manager: str) -> bool:
    """Whether `manager`'s server-side apply owns `spec.replicas`: a field it then stops
    applying is removed, unless another manager owns it too."""
    return any(
        entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource")
        for entry in managers_of_replicas(body)
    )


def by_name(bodies: Iterable[Body], name: str) -> Body | None:
    return next((body for body in bodies if name_of(body) == name), None)


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 time as the API writes it ("...Z", optionally with fractions), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def timestamp(value: Any) -> float | None:
    """An RFC 3339 time as seconds since the epoch, or None."""
    moment = parse_time(value)
    return moment.timestamp() if moment is not None else None


def format_time(seconds: float, *, millis: bool = True) -> str:
    """RFC 3339 in UTC. Milliseconds by default, so that "measured after the step started"
    survives the round trip through status; whole seconds for condition transition times,
    like the API's own metav1.Time."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}Z" if millis else f"{text}Z"
