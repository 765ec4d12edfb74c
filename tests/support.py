"""Helpers the tests share: waiting on a condition with a deadline instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ConditionTimeout(AssertionError):
    pass


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "the condition",
) -> T:
    """Call `check` until it returns something truthy, and return that.

    Exceptions from `check` count as "not yet" (the API may briefly 404 or conflict), but the
    last one is reported if the deadline passes, so a failure says what went wrong.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: T | None = None
    while True:
        try:
            last_value = check()
            if last_value:
                return last_value
        except Exception as exc:  # retried until the deadline, then reported
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else f"; last value: {last_value!r}"
            raise ConditionTimeout(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)
