"""A per-key reconcile queue: one reconcile at a time per ModelDeployment, requests that
arrive meanwhile coalesce into one more run, failures retry with capped exponential backoff.

Kopf calls our event handlers once per watch event, for the ModelDeployment and for each of
its children and pods; a rollout produces dozens of pod events. The queue turns them into as
few reconciles as the changes need, and serialises them per key so that two reconciles of the
same object never race (the same idea as controller-runtime's workqueue). Urgent requests
(a spec the operator has not acted on yet) get the next free slot before routine ones (a
pod became ready), so that a burst of new ModelDeployments gets its children first.

A reconcile returns a `Result` (`requeue_after`: look again later, as controller-runtime's
`reconcile.Result{RequeueAfter}`); raising retries it with backoff, or after the server's
`retry_after` if the error carries one (the client's `Transient`), whichever is later; raising
`TerminalError` logs it and does not retry (controller-runtime's `reconcile.TerminalError`):
only a new event of the object runs it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Result:
    """What a reconcile asks of the queue when it succeeds."""

    requeue_after: float | None = None  # seconds: run again then, even without an event


DONE = Result()


class TerminalError(Exception):
    """A reconcile failed in a way a retry cannot fix: logged and counted, not retried."""


Reconcile = Callable[[K], Awaitable[Result]]


class WorkQueue(Generic[K]):
    def __init__(
        self,
        reconcile: Reconcile[K],
        *,
        concurrency: int = 16,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
    ) -> None:
        self._reconcile = reconcile
        self._slots = concurrency
        self._waiting: dict[K, asyncio.Future[None]] = {}  # in arrival order
        self._urgent: set[K] = set()
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._failures: dict[K, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.reconciles = 0
        self.errors = 0

    def request(self, key: K, delay: float = 0.0, *, urgent: bool = False) -> None:
        """Ask for a reconcile of `key`, now or after `delay` seconds (an earlier ask wins)."""
        if self._closed:
            return
        if urgent:
            self._urgent.add(key)
        loop = asyncio.get_running_loop()
        if delay > 0:
            timer = self._timers.get(key)
            if timer is not None and timer.when() <= loop.time() + delay:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_later(delay, self._fire, key)
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        self._idle.clear()
        task = asyncio.create_task(self._run(key), name=f"reconcile {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.request(key)

    def backoff(self, failures: int) -> float:
        delay = min(self._max_delay, self._base_delay * 2 ** max(0, failures - 1))
        return delay * (0.8 + 0.4 * random.random())

    async def _acquire(self, key: K) -> None:
        if self._slots > 0 and not self._waiting:
            self._slots -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[key] = turn
        try:
            await turn
        except asyncio.CancelledError:
            if self._waiting.get(key) is turn:
                del self._waiting[key]
            elif turn.done() and not turn.cancelled():
                self._release()  # the slot was handed to us just as we were cancelled
            raise

    def _release(self) -> None:
        if not self._waiting:
            self._slots += 1
            return
        key = next((k for k in self._waiting if k in self._urgent), None)
        if key is None:
            key = next(iter(self._waiting))
        self._waiting.pop(key).set_result(None)

    async def _run(self, key: K) -> None:
        try:
            while True:
                again: float | None
                await self._acquire(key)
                try:
                    # Requests made while waiting for the slot are served by this run.
                    self._dirty.discard(key)
                    self._urgent.discard(key)
                    self.reconciles += 1
                    try:
                        again = (await self._reconcile(key)).requeue_after
                    except asyncio.CancelledError:
                        raise
                    except TerminalError as exc:
                        self.errors += 1
                        self._failures.pop(key, None)
                        again = None
                        logger.error("reconciling %s failed for good; not retried: %s", key, exc)
                    except Exception as exc:
                        self.errors += 1
                        failures = self._failures[key] = self._failures.get(key, 0) + 1
                        again = max(self.backoff(failures), min(self._max_delay, _retry_after(exc)))
                        logger.exception(
                            "reconciling %s failed (attempt %d); retrying in %.1fs", key, failures, again
                        )
                        # Retry after the backoff even if new events arrived: they are in the cache
                        # the retry reads, and an outage must not turn into a tight loop.
                        self._dirty.discard(key)
                    else:
                        self._failures.pop(key, None)
                finally:
                    self._release()
                if key in self._dirty:
                    continue
                if again is not None:
                    self.request(key, max(again, 0.001))
                return
        finally:
            self._running.discard(key)
            if not self._running:
                self._idle.set()

    @property
    def pending(self) -> int:
        return len(self._running) + len(self._timers)

    async def wait_idle(self) -> None:
        """Until no reconcile runs (timers may still be pending)."""
        await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _retry_after(exc: BaseException) -> float:
    """The wait the failure itself asks for (an API server's Retry-After), else 0."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0
