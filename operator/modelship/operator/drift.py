"""Does a live object already hold what we would apply? Pure comparison, no I/O.

The live object holds more than we wrote (defaults, other managers' fields, status), so the
check is "is the desired manifest a subset of the live object", with resource quantities
compared as numbers. Together with the applied-hash annotation it tells apart an object that
is missing, one whose desired state changed, and one that someone edited by hand.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from modelship.operator import naming, quantities


class Difference(enum.Enum):
    NONE = "none"
    MISSING = "missing"  # the object does not exist: create it
    OUTDATED = "outdated"  # our desired state changed since the last apply
    DRIFTED = "drifted"  # same desired state, but the live object was edited


def difference(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> Difference:
    if live is None:
        return Difference.MISSING
    want_hash = desired.get("metadata", {}).get("annotations", {}).get(naming.ANNOTATION_APPLIED)
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(naming.ANNOTATION_APPLIED)
    if want_hash != live_hash:
        return Difference.OUTDATED
    if not is_subset(desired, live):
        return Difference.DRIFTED
    return Difference.NONE


def _empty(value: object) -> bool:
    return value is None or value == {} or value == []


def is_subset(desired: object, live: object, *, in_resources: bool = False) -> bool:
    """True when every field of `desired` is present in `live` with an equal value.

    Lists must have the same length and match item by item: the API server keeps list
    order, and an extra or missing item (an env var, a port) is a real difference.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return _empty(desired) and _empty(live)
        for key, value in desired.items():
            if key not in live or live[key] is None:
                if _empty(value):
                    continue  # the API server drops empty maps and lists
                return False
            if not is_subset(value, live[key], in_resources=in_resources or key == "resources"):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return _empty(desired) and _empty(live)
        return all(is_subset(d, v, in_resources=in_resources) for d, v in zip(desired, live, strict=True))
    if in_resources and isinstance(desired, str | int) and isinstance(live, str | int):
        try:
            return quantities.parse_quantity(desired) == quantities.parse_quantity(live)
        except ValueError:
            return desired == live
    return desired == live
