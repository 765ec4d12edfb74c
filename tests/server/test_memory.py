"""The memory budget of requests (memory.py) and the bounded inflating of compressed bodies."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest
from modelship.server import compression
from modelship.server.errors import RequestError
from modelship.server.memory import SMALL_REQUEST_BYTES, MemoryBudget

MIB = 1 << 20


async def test_a_request_over_its_own_budget_is_413_naming_the_setting() -> None:
    budget = MemoryBudget(per_request=8 * MIB, inflight=16 * MIB)
    with pytest.raises(RequestError) as caught:
        await budget.admit(9 * MIB, "the request's body")
    assert caught.value.status == 413
    assert "MODELSHIP_MAX_REQUEST_MEMORY_BYTES" in caught.value.message
    assert "8.0 MiB" in caught.value.message and "9.0 MiB" in caught.value.message
    assert budget.used == 0


async def test_what_a_request_adds_later_is_held_to_its_budget_and_released_once() -> None:
    budget = MemoryBudget(per_request=8 * MIB, inflight=16 * MIB)
    reservation = await budget.admit(2 * MIB, "body")
    reservation.need(6 * MIB, "outputs")
    assert budget.used == 6 * MIB
    reservation.need(3 * MIB, "less than held")  # never shrinks: what was held may still be alive
    assert budget.used == 6 * MIB
    with pytest.raises(RequestError) as caught:
        reservation.need(8 * MIB + 1, "the response")
    assert caught.value.status == 413 and "the response" in caught.value.message
    reservation.release()
    reservation.release()
    assert budget.used == 0


async def test_small_requests_are_not_accounted() -> None:
    budget = MemoryBudget(per_request=8 * MIB, inflight=8 * MIB)
    reservations = [await budget.admit(SMALL_REQUEST_BYTES, "small") for _ in range(100)]
    assert budget.used == 0
    for reservation in reservations:
        reservation.release()
    assert budget.used == 0


async def test_requests_wait_in_order_for_the_inflight_budget() -> None:
    budget = MemoryBudget(per_request=8 * MIB, inflight=10 * MIB)
    first = await budget.admit(6 * MIB, "first")
    order: list[str] = []

    async def later(name: str, size: int) -> None:
        reservation = await budget.admit(size, name)
        order.append(name)
        reservation.release()

    second = asyncio.create_task(later("second", 6 * MIB))
    # Fits beside the first, but waits behind the second: first come, first served, no starving.
    third = asyncio.create_task(later("third", 2 * MIB))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == [] and not second.done() and not third.done()
    first.release()
    await asyncio.wait_for(asyncio.gather(second, third), timeout=5)
    assert order == ["second", "third"]
    assert budget.used == 0


async def test_a_waiting_request_that_is_cancelled_gives_its_place_up() -> None:
    budget = MemoryBudget(per_request=8 * MIB, inflight=8 * MIB)
    first = await budget.admit(8 * MIB, "first")
    waiting = asyncio.create_task(budget.admit(4 * MIB, "waiting"))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.release()
    again = await asyncio.wait_for(budget.admit(8 * MIB, "again"), timeout=5)
    assert budget.used == 8 * MIB
    again.release()
    assert budget.used == 0


async def test_growing_before_the_run_waits_for_room_and_gives_back_what_it_held_meanwhile() -> None:
    """Small-bodied requests announcing large outputs queue for the in-flight budget instead of each
    overdrawing it; two that hold memory and both want more do not deadlock."""
    budget = MemoryBudget(per_request=8 * MIB, inflight=10 * MIB)
    small = await budget.admit(SMALL_REQUEST_BYTES, "a small body")
    await small.grow(8 * MIB, "outputs")
    other = await budget.admit(SMALL_REQUEST_BYTES, "another small body")
    grown = asyncio.create_task(other.grow(8 * MIB, "outputs"))
    await asyncio.sleep(0)
    assert not grown.done() and budget.used == 8 * MIB  # waits: 16 MiB would be over the 10 in flight
    small.release()
    await asyncio.wait_for(grown, timeout=5)
    assert budget.used == 8 * MIB
    other.release()

    a = await budget.admit(5 * MIB, "a")
    b = await budget.admit(5 * MIB, "b")
    grow_a = asyncio.create_task(a.grow(8 * MIB, "a's outputs"))
    await asyncio.sleep(0)
    assert budget.used == 5 * MIB  # a waits holding nothing: b's 5 MiB only
    grow_b = asyncio.create_task(b.grow(7 * MIB, "b's outputs"))
    # b gave its 5 back, so a (first in line) gets its 8; b waits for its 7.
    await asyncio.wait_for(grow_a, timeout=5)
    await asyncio.sleep(0)
    assert not grow_b.done() and budget.used == 8 * MIB
    a.release()
    await asyncio.wait_for(grow_b, timeout=5)
    assert budget.used == 7 * MIB
    b.release()
    assert budget.used == 0


async def test_keep_holds_only_the_response_and_small_ones_nothing() -> None:
    budget = MemoryBudget(per_request=8 * MIB, inflight=16 * MIB)
    reservation = await budget.admit(6 * MIB, "body")
    reservation.keep(2 * MIB)
    assert reservation.size == budget.used == 2 * MIB
    reservation.keep(SMALL_REQUEST_BYTES)
    assert reservation.size == budget.used == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_inflate(encoding: str) -> None:
    body = b'{"inputs": []}' * 1000
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    assert compression.decompress(packed, encoding, limit=len(body)) == body


def test_a_body_that_inflates_past_the_limit_is_413_before_it_is_inflated_whole() -> None:
    bomb = gzip.compress(b"\0" * (64 * MIB))
    assert len(bomb) < MIB
    with pytest.raises(RequestError) as caught:
        compression.decompress(bomb, "gzip", limit=MIB)
    assert caught.value.status == 413


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(b"abc")[:-4], gzip.compress(b"abc") + b"trailing"],
)
def test_broken_compressed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        compression.decompress(body, "gzip", limit=MIB)
    assert caught.value.status == 400
