"""The reconcile queue: serialised per key, coalescing, retrying with backoff."""

from __future__ import annotations

import asyncio
import itertools

from modelship.operator.workqueue import DONE, Result, TerminalError, WorkQueue


async def test_requests_during_a_reconcile_coalesce_into_one_more_run() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls: list[str] = []

    async def reconcile(key: str) -> Result:
        calls.append(key)
        started.set()
        await release.wait()
        return DONE

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.request("a")
    await started.wait()
    for _ in range(10):
        queue.request("a")
    release.set()
    await asyncio.wait_for(queue.wait_idle(), 5)
    assert calls == ["a", "a"]
    await queue.close()


async def test_one_key_never_runs_twice_at_once_but_keys_run_in_parallel() -> None:
    running: dict[str, int] = {}
    overlap: list[str] = []
    both = asyncio.Event()

    async def reconcile(key: str) -> Result:
        running[key] = running.get(key, 0) + 1
        if running[key] > 1:
            overlap.append(key)
        if len([k for k, n in running.items() if n]) == 2:
            both.set()
        await asyncio.sleep(0)
        await asyncio.wait_for(both.wait(), 5)
        running[key] -= 1
        return DONE

    queue: WorkQueue[str] = WorkQueue(reconcile, concurrency=4)
    for key in ["a", "b", "a", "b", "a"]:
        queue.request(key)
    await asyncio.wait_for(queue.wait_idle(), 5)
    assert overlap == []
    # Requests made before a key's reconcile starts are served by that reconcile.
    assert queue.reconciles == 2
    await queue.close()


async def test_a_failure_is_retried_after_a_backoff_and_then_succeeds() -> None:
    attempts: list[float] = []
    done = asyncio.Event()

    async def reconcile(key: str) -> Result:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise RuntimeError("API unavailable")
        done.set()
        return DONE

    # The delays the queue asks for: on a loaded machine a timer fires late, never early, so
    # measured gaps prove the lower bound only, and the growth is read from what was asked.
    asked: list[float] = []

    class Recording(WorkQueue[str]):
        def backoff(self, failures: int) -> float:
            delay = super().backoff(failures)
            asked.append(delay)
            return delay

    queue = Recording(reconcile, base_delay=0.05, max_delay=0.2)
    queue.request("a")
    await asyncio.wait_for(done.wait(), 5)
    assert len(attempts) == 3
    assert queue.errors == 2
    assert len(asked) == 2 and asked[1] > asked[0] >= 0.04
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # asyncio may fire a timer up to its clock resolution early (1 ns here), never more.
    assert all(gap >= delay - 1e-3 for gap, delay in zip(gaps, asked, strict=True)), (gaps, asked)
    await queue.close()


def test_backoff_grows_and_is_capped() -> None:
    async def reconcile(key: str) -> Result:
        return DONE

    async def check() -> None:
        queue: WorkQueue[str] = WorkQueue(reconcile, base_delay=1.0, max_delay=10.0)
        assert 0.8 <= queue.backoff(1) <= 1.2
        assert 3.2 <= queue.backoff(3) <= 4.8
        assert queue.backoff(30) <= 12.0

    asyncio.run(check())


async def test_a_requested_requeue_runs_again_later() -> None:
    calls: list[str] = []
    twice = asyncio.Event()

    async def reconcile(key: str) -> Result:
        calls.append(key)
        if len(calls) == 2:
            twice.set()
            return DONE
        return Result(requeue_after=0.01)

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.request("a")
    await asyncio.wait_for(twice.wait(), 5)
    assert calls == ["a", "a"]
    await queue.close()


async def test_an_immediate_request_replaces_a_pending_delayed_one() -> None:
    calls: list[str] = []

    async def reconcile(key: str) -> Result:
        calls.append(key)
        return DONE

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.request("a", delay=60)
    assert queue.pending == 1
    queue.request("a")
    await asyncio.wait_for(queue.wait_idle(), 5)
    assert calls == ["a"]
    assert queue.pending == 0
    await queue.close()


async def test_urgent_requests_get_the_next_free_slot_first() -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def reconcile(key: str) -> Result:
        order.append(key)
        if key == "busy":
            await release.wait()
        return DONE

    queue: WorkQueue[str] = WorkQueue(reconcile, concurrency=1)
    queue.request("busy")
    await asyncio.sleep(0)
    queue.request("routine-1")
    queue.request("routine-2")
    queue.request("new-spec", urgent=True)
    for _ in range(5):
        await asyncio.sleep(0)
    assert queue.pending == 4  # one runs, three wait for its slot
    release.set()
    await asyncio.wait_for(queue.wait_idle(), 5)
    assert order == ["busy", "new-spec", "routine-1", "routine-2"]
    await queue.close()


async def test_a_terminal_error_is_counted_and_not_retried() -> None:
    calls: list[str] = []

    async def reconcile(key: str) -> Result:
        calls.append(key)
        raise TerminalError("the schema refuses this status")

    queue: WorkQueue[str] = WorkQueue(reconcile, base_delay=0.001)
    queue.request("a")
    await asyncio.wait_for(queue.wait_idle(), 5)
    assert calls == ["a"] and queue.errors == 1 and queue.pending == 0
    queue.request("a")  # a new event runs it again
    await asyncio.wait_for(queue.wait_idle(), 5)
    assert calls == ["a", "a"]
    await queue.close()


class Throttled(Exception):
    retry_after = 0.3  # what the client's Transient carries from a Retry-After header


async def test_a_failure_waits_at_least_as_long_as_the_server_asked() -> None:
    attempts: list[float] = []
    done = asyncio.Event()

    async def reconcile(key: str) -> Result:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            raise Throttled()
        done.set()
        return DONE

    queue: WorkQueue[str] = WorkQueue(reconcile, base_delay=0.001)
    queue.request("a")
    await asyncio.wait_for(done.wait(), 5)
    assert attempts[1] - attempts[0] >= Throttled.retry_after
    await queue.close()
