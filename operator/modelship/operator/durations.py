"""Durations as users write them in a ModelDeployment: `30s`, `2m`, `1h30m`, `250ms`, or seconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds in `value`; ValueError with a readable message when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r}: a duration cannot be negative")
        return float(value)
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    if not text or _PART.sub("", text):
        raise ValueError(f"{value!r} is not a duration such as 30s, 2m or 1h30m")
    return sum(int(n) * _UNIT[unit] for n, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The short form a user would write: 90 -> 1m30s, 0.25 -> 250ms."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"
