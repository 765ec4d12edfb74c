"""The two kinds of failure the server tells apart: a model that cannot be served, a request that is wrong."""

from __future__ import annotations

# nginx's code for a request its client gave up on: counted apart, neither a client error nor the server's.
CLIENT_CLOSED = 499


class ModelLoadError(Exception):
    """The model cannot be fetched, verified, parsed or warmed up; the message is the line users see."""


class RequestError(Exception):
    """A client's mistake (or a state the client must wait out), answered as `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)
