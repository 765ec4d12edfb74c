"""The memory a request may cost, reserved before the work that costs it.

An inference request's memory is mostly a few big buffers whose sizes are known, or boundable, before
they are allocated: the body (its length is declared), the decoded input tensors (from the shapes), the
outputs (from the model's shapes, or once the run has made them) and the encoded response (from the
outputs and their datatypes). So the server reserves each before making it, against two budgets:

- one request may cost at most `max_request_memory_bytes`: past that it is refused with 413 and a
  message that names the limit, before the allocation that would have gone over;
- all requests in flight together may cost at most `max_inflight_memory_bytes`: a request whose body
  does not fit waits (first come, first served) until earlier ones finish, so that several large
  requests at once cannot push the pod over its memory limit either.

What a request adds before the model runs (decoding, the outputs its shapes announce) waits its turn
too, behind earlier requests and ahead of later ones; while it waits it gives back what it held, so a
request that waits for more never holds memory that others wait for (no deadlock), and the bodies of
waiting requests (all admitted within the budget, none admitted after them) are the only memory
not counted meanwhile. What a request adds after the run (outputs only the run could size, the
response) is granted at once, within its own budget: the run has made them already.

A response is held until the client has taken it: the reservation is kept, at the size of the encoded
response, until the connection's write buffer has drained (serving.py closes a connection whose client
stops reading), so that clients that read slowly cannot pile responses up beyond the budget.

Small requests skip the accounting entirely: below `SMALL_REQUEST_BYTES` a reservation costs more than
the memory it tracks, and the in-flight bound keeps their sum small.
"""

from __future__ import annotations

import asyncio
from collections import deque

from modelship.server.errors import RequestError

SMALL_REQUEST_BYTES = 256 << 10


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


class MemoryBudget:
    """The two budgets of one server, and the requests waiting for memory."""

    def __init__(self, per_request: int, inflight: int) -> None:
        self.per_request = per_request
        self.inflight = inflight
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def too_big(self, size: int, what: str) -> RequestError:
        return RequestError(
            413,
            f"{what} needs about {mib(size)} of memory, over the limit of {mib(self.per_request)} for one "
            "request (MODELSHIP_MAX_REQUEST_MEMORY_BYTES; the default is a quarter of the pod's memory "
            "limit); send fewer rows per request, or tensors in binary form (as JSON they take about 6 "
            "times as much)",
        )

    async def admit(self, size: int, what: str) -> Reservation:
        """A reservation of `size` bytes, once the in-flight budget has room; 413 if one request cannot."""
        reservation = Reservation(self)
        await reservation.grow(size, what)
        return reservation

    async def _take(self, size: int) -> None:
        """Count `size` more bytes in flight, once there is room and every earlier waiter has had its turn."""
        if not self._waiting and self.used + size <= self.inflight:
            self.used += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiting.append(entry)
        try:
            await future
        except BaseException:
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif future.done() and not future.cancelled():
                self.used -= size  # granted as it was cancelled: give it back
                self._wake()
            raise

    def _wake(self) -> None:
        while self._waiting:
            size, future = self._waiting[0]
            if future.done():
                self._waiting.popleft()
                continue
            if self.used + size > self.inflight:
                return
            self._waiting.popleft()
            self.used += size
            future.set_result(None)

    def _release(self, size: int) -> None:
        if size:
            self.used -= size
            self._wake()


class Reservation:
    """The memory one request holds; grows as its later buffers become known, released once."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.size = 0

    def need(self, total: int, what: str) -> None:
        """The request will hold `total` bytes in all: 413 past its budget, else granted at once."""
        if total > self.budget.per_request:
            raise self.budget.too_big(total, what)
        if total > self.size and total > SMALL_REQUEST_BYTES:
            self.budget.used += total - self.size
            self.size = total

    async def grow(self, total: int, what: str) -> None:
        """The request will hold `total` bytes in all: 413 past its budget, else once the in-flight budget
        has room for it (in turn; what it held is given back while it waits)."""
        budget = self.budget
        if total > budget.per_request:
            raise budget.too_big(total, what)
        if total <= self.size or total <= SMALL_REQUEST_BYTES:
            return
        if not budget._waiting and budget.used + total - self.size <= budget.inflight:
            budget.used += total - self.size
            self.size = total
            return
        self.release()
        await budget._take(total)
        self.size = total

    def keep(self, size: int) -> None:
        """Hold only `size` bytes from now on (the encoded response, once its inputs are gone)."""
        if size <= SMALL_REQUEST_BYTES:
            self.release()
        elif size < self.size:
            freed, self.size = self.size - size, size
            self.budget._release(freed)

    def release(self) -> None:
        size, self.size = self.size, 0
        self.budget._release(size)
