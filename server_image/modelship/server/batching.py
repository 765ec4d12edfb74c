"""Running requests on the model off the event loop, alone or merged into batches.

Batching follows Triton's dynamic batcher: a batch is formed when an execution slot is free, from the
requests waiting then; it is sent at once when full, else when its oldest request has waited
`max_delay`. With a delay of 0 nothing waits on purpose: requests that arrive while the slots are busy
are what gets merged, so batches grow with the load and a lone request pays no delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from modelship.server.metrics import Metrics
from modelship.server.runtime import InferenceError, ModelRuntime

log = logging.getLogger("modelship.server.batching")

Feeds = Mapping[str, np.ndarray]
Results = dict[str, np.ndarray]


class DirectRunner:
    """Each request is one run; up to the executor's workers run at once."""

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: Metrics) -> None:
        self._runtime = runtime
        self._executor = executor
        self._metrics = metrics

    async def infer(self, feeds: Feeds, rows: int) -> Results:
        submitted = time.perf_counter()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feeds, submitted)

    def _run(self, feeds: Feeds, submitted: float) -> Results:
        started = time.perf_counter()
        results = self._runtime.run(feeds)
        metrics = self._metrics
        metrics.queue_duration.observe(started - submitted)
        metrics.inference_duration.observe(time.perf_counter() - started)
        metrics.batch_size.observe(1)
        return results

    async def close(self) -> None:
        return None


def batch_key(feeds: Feeds) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Requests can share a batch when their inputs agree on everything but the first dimension."""
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items())


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    rows: int
    key: tuple[tuple[str, str, tuple[int, ...]], ...]
    future: asyncio.Future[Results]
    enqueued: float = field(default_factory=time.perf_counter)


class BatchingRunner:
    """Merges concurrent requests along the first dimension, runs them, and gives each its own rows."""

    def __init__(
        self,
        runtime: ModelRuntime,
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_delay_seconds: float,
        slots: int = 1,
    ) -> None:
        self._runtime = runtime
        self._executor = executor
        self._metrics = metrics
        self._max_rows = max_batch_size
        self._max_delay = max_delay_seconds
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(slots)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._form_batches(), name="batcher")

    async def infer(self, feeds: Feeds, rows: int) -> Results:
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(feeds, rows, batch_key(feeds), future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))
        self._queue.clear()

    async def _form_batches(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue[0]
        deadline = first.enqueued + self._max_delay
        while self._rows_waiting(first.key) < self._max_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return self._take(first.key)

    def _rows_waiting(self, key: object) -> int:
        return sum(p.rows for p in self._queue if p.key == key and not p.future.done())

    def _take(self, key: object) -> list[_Pending]:
        """The oldest waiting requests of this key that fit in one batch (the first one always does)."""
        batch: list[_Pending] = []
        rest: deque[_Pending] = deque()
        rows = 0
        full = False
        for pending in self._queue:
            if pending.future.done():  # its caller went away
                continue
            if full or pending.key != key:
                rest.append(pending)
            elif batch and rows + pending.rows > self._max_rows:
                full = True
                rest.append(pending)
            else:
                batch.append(pending)
                rows += pending.rows
        self._queue = rest
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            if not batch:
                return
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            for pending in batch:
                self._metrics.queue_duration.observe(started - pending.enqueued)
            if len(batch) == 1:
                await self._run_alone(batch[0])
                return
            try:
                feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
                results = await loop.run_in_executor(self._executor, self._timed_run, feeds, len(batch))
                parts = _split(results, [p.rows for p in batch])
            except (InferenceError, _NotSplittable) as exc:
                # One caller's rows may be what the graph refused: run each alone so only it fails.
                log.debug("merged run of %d requests failed (%s); running them one by one", len(batch), exc)
                for pending in batch:
                    await self._run_alone(pending)
                return
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                return
            for pending, part in zip(batch, parts, strict=True):
                if not pending.future.done():
                    pending.future.set_result(part)
        finally:
            self._slots.release()

    async def _run_alone(self, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._timed_run, pending.feeds, 1)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(results)

    def _timed_run(self, feeds: Feeds, requests: int) -> Results:
        started = time.perf_counter()
        results = self._runtime.run(feeds)
        self._metrics.inference_duration.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(requests)
        return results


class _NotSplittable(Exception):
    pass


def _split(results: Results, rows: list[int]) -> list[Results]:
    """Each request's rows of every output, in request order."""
    total = sum(rows)
    for name, array in results.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise _NotSplittable(f"output {name!r} has shape {array.shape}, not {total} rows")
    parts: list[Results] = []
    start = 0
    for count in rows:
        parts.append({name: array[start : start + count] for name, array in results.items()})
        start += count
    return parts


Runner = DirectRunner | BatchingRunner
