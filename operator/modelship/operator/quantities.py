"""Kubernetes resource quantities ("500m", "1.5Gi", "2e3") as exact decimals.

The API server rewrites quantities to a canonical form ("0.5" comes back as "500m",
"1024Mi" as "1Gi"); comparing numbers rather than strings keeps an idle resync from
re-applying objects whose quantities are equal but spelled differently.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$"
)


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity; ValueError for anything Kubernetes would reject."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, exponent, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a quantity: {value!r}") from exc
    if exponent:
        return base * (Decimal(10) ** int(exponent[1:]))
    return base * _SUFFIXES[suffix or ""]


def cpu_threads(resources: dict[str, dict[str, object]] | object) -> int | None:
    """Whole CPUs the container may use (its limit, else its request), at least 1.

    None when neither is set: the server then decides (and the operator cannot know better).
    """
    if not isinstance(resources, dict):
        return None
    for section in ("limits", "requests"):
        cpu = (resources.get(section) or {}).get("cpu")
        if cpu is not None:
            return max(1, math.floor(parse_quantity(cpu)))  # type: ignore[arg-type]
    return None
