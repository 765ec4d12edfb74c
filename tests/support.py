"""Helpers the tests (and benchmarks) share: waiting on a condition with a deadline instead of sleeping,
and a process's memory from /proc."""

from __future__ import annotations

import errno
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# The answers of the Kubernetes API that only say "not yet" or "try again": the object is not
# there yet (or no longer), a write raced another, the server sheds load or restarts.
TRANSIENT_API_STATUSES = frozenset({404, 409, 429, 500, 502, 503, 504})
# A socket's errors that say "nothing there yet": a ClusterIP before kube-proxy has programmed it.
TRANSIENT_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT})


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP clients the checks use, where installed."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # refused, reset, aborted
    try:
        import httpx
    except ImportError:
        pass
    else:  # not UnsupportedProtocol or LocalProtocolError: those are the test's own mistakes
        errors += [httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError]
    try:
        import urllib3.exceptions
    except ImportError:
        pass
    else:  # what the `kubernetes` client raises when the API server is not listening
        errors += [
            urllib3.exceptions.MaxRetryError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.TimeoutError,
        ]
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` only says the system is not there yet: an API answer of
    TRANSIENT_API_STATUSES, or a connection refused, reset or timed out, a host not reachable yet.
    An AssertionError never is, and neither is anything else (KeyError, TypeError, ValueError,
    another API status, an HTTP error answer of urllib...)."""
    if isinstance(exc, AssertionError):
        return False
    if isinstance(exc, TRANSPORT_ERRORS):
        return True
    if isinstance(exc, urllib.error.HTTPError):  # a URLError, but an answer, not a transport error
        return False
    if isinstance(exc, urllib.error.URLError):  # urlopen wraps the socket's error
        return isinstance(exc.reason, BaseException) and is_transient(exc.reason)
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    try:
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        return False
    return isinstance(exc, ApiException) and exc.status in TRANSIENT_API_STATUSES


class ConditionTimeout(AssertionError):
    pass


def _describe(exc: BaseException) -> str:
    """repr(exc), or its type and text where the repr says nothing (ApiException's is empty)."""
    described = repr(exc)
    if described.endswith("()"):
        text = " ".join(str(exc).split())
        described = f"{type(exc).__name__}: {text[:500]}"
    return described


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "the condition",
) -> T:
    """Call `check` until it returns something truthy, and return that.

    A check returns a falsy value for "not yet"; it never asserts. Wait on a condition, then
    assert what must hold. Of the exceptions `check` raises only the transient ones (see
    `is_transient`: the API's not found, conflict, too many requests and server errors,
    connections refused or reset, timeouts of a request) count as "not yet"; an AssertionError, or
    any other exception, propagates at once, so a failure a test exists to catch is never waited
    past. If the deadline passes, the last transient error (or else the last value) is reported.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: T | None = None
    raised = False
    while True:
        try:
            last_value = check()
            raised = False
            if last_value:
                return last_value
        except Exception as exc:
            if not is_transient(exc):
                raise
            last_error, raised = exc, True  # retried until the deadline, then reported
        if time.monotonic() >= deadline:
            if raised and last_error is not None:
                detail = f"; last error: {_describe(last_error)}"
            else:
                detail = f"; last value: {last_value!r}"
                if last_error is not None:
                    detail += f"; earlier error: {_describe(last_error)}"
            raise ConditionTimeout(f"timed out after {timeout}s waiting for {what}{detail}") from last_error
        time.sleep(interval)


def proc_status_kib(pid: int, key: str) -> int:
    """A size field of /proc/<pid>/status (VmRSS, VmHWM, ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def process_alive(pid: int) -> bool:
    """Whether the process runs: a zombie has exited (it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
