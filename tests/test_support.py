"""wait_until: only the transient answers of an API or a network are "not yet"; a failure is a failure."""

from __future__ import annotations

import errno
import urllib.error
from collections.abc import Callable, Iterator

import httpx
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from tests.support import ConditionTimeout, is_transient, wait_until


def failing(error: BaseException, times: int = 1_000_000) -> tuple[Callable[[], str | None], list[int]]:
    """A check that raises `error` on its first `times` calls and then returns "done"; and its
    call count."""
    calls = [0]

    def check() -> str | None:
        calls[0] += 1
        if calls[0] <= times:
            raise error
        return "done"

    return check, calls


def api_error(status: int) -> ApiException:
    return ApiException(status=status, reason="from the test")


@pytest.mark.parametrize(
    "error",
    [
        AssertionError("a request failed"),
        KeyError("conditions"),
        TypeError("'NoneType' object is not subscriptable"),
        ValueError("no JSON"),
        AttributeError("'NoneType' object has no attribute 'conditions'"),
        RuntimeError("the watch failed"),
        api_error(400),
        api_error(403),
        api_error(422),
        urllib.error.HTTPError("http://127.0.0.1/", 500, "Internal Server Error", {}, None),  # type: ignore[arg-type]
        httpx.UnsupportedProtocol("no scheme"),
        OSError(errno.EACCES, "Permission denied"),
    ],
    ids=repr,
)
def test_anything_but_a_transient_error_propagates_at_the_first_call(error: Exception) -> None:
    check, calls = failing(error)
    with pytest.raises(type(error)) as raised:
        wait_until(check, timeout=5, interval=0.001)
    assert raised.value is error
    assert calls == [1]


def test_an_assertion_is_never_waited_past_even_when_a_later_try_would_pass() -> None:
    check, calls = failing(AssertionError("no request may fail"), times=1)
    with pytest.raises(AssertionError, match="no request may fail"):
        wait_until(check, timeout=5, interval=0.001)
    assert calls == [1]


@pytest.mark.parametrize(
    "error",
    [
        *(api_error(status) for status in (404, 409, 429, 500, 502, 503, 504)),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        TimeoutError("timed out"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadError("EOF"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
        urllib.error.URLError(TimeoutError("timed out")),
        urllib3.exceptions.MaxRetryError(None, "/api", reason=None),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("Connection aborted."),
    ],
    ids=repr,
)
def test_a_transient_error_is_retried_until_the_check_holds(error: Exception) -> None:
    check, calls = failing(error, times=3)
    assert wait_until(check, timeout=5, interval=0.001) == "done"
    assert calls == [4]


def test_a_falsy_value_is_not_yet() -> None:
    answers: Iterator[object] = iter([None, False, 0, [], {}, "", ["pod"]])
    assert wait_until(lambda: next(answers), timeout=5, interval=0.001) == ["pod"]


def test_the_timeout_names_the_last_error() -> None:
    check, _ = failing(api_error(404))
    with pytest.raises(ConditionTimeout) as raised:
        wait_until(check, timeout=0.05, interval=0.001, what="the Service back")
    message = str(raised.value)
    assert message.startswith("timed out after 0.05s waiting for the Service back; last error: ApiException")
    assert "(404)" in message
    assert isinstance(raised.value.__cause__, ApiException)


def test_the_timeout_names_a_connection_error() -> None:
    check, _ = failing(httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(
        ConditionTimeout, match=r"last error: ConnectError\('\[Errno 111\] Connection refused'\)"
    ):
        wait_until(check, timeout=0.05, interval=0.001)


def test_the_timeout_names_the_last_value_and_an_earlier_error() -> None:
    answers = iter([ConnectionRefusedError("refused")])

    def check() -> list[str]:
        for error in answers:
            raise error
        return []

    with pytest.raises(ConditionTimeout) as raised:
        wait_until(check, timeout=0.05, interval=0.001, what="pods")
    assert "last value: []" in str(raised.value)
    assert "earlier error: ConnectionRefusedError('refused')" in str(raised.value)


def test_a_condition_timeout_of_a_nested_wait_propagates() -> None:
    def check() -> bool:
        return wait_until(lambda: False, timeout=0.01, interval=0.001, what="the inner condition")

    with pytest.raises(ConditionTimeout, match="the inner condition"):
        wait_until(check, timeout=5, interval=0.001)


def test_is_transient_never_calls_an_assertion_transient() -> None:
    assert not is_transient(AssertionError())
    assert not is_transient(ConditionTimeout("timed out"))
    assert is_transient(api_error(409)) and not is_transient(api_error(401))
