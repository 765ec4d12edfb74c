"""What the cache should show after our own writes, until the watch catches up.

After we apply a child or write a status, the watch event for that write arrives a little
later; a reconcile that runs in between would see the old object and write again. Like the
ReplicaSet controller's "expectations", we remember the resourceVersion each write returned
(or that a deleted object should vanish) and skip re-writing that object until the cache shows
it. Watch events of one resource arrive in order, so a later edit by someone else is seen
after ours and still repaired. Expectations expire, in case the event for our write is never
seen (a watch that restarted from a fresh list).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Expected:
    resource_version: str | None  # None: the object should be gone
    deadline: float


class Expectations:
    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._items: dict[Hashable, _Expected] = {}

    def expect(self, ref: Hashable, resource_version: str | None) -> None:
        self._items[ref] = _Expected(resource_version, self._clock() + self._ttl)

    def observe(self, ref: Hashable, resource_version: str | None) -> None:
        """The watch delivered this version of `ref` (None: its deletion)."""
        expected = self._items.get(ref)
        if expected is not None and expected.resource_version == resource_version:
            del self._items[ref]

    def pending(self, ref: Hashable, live_version: str | None) -> bool:
        """True while the cache has not yet caught up with our last write to `ref`."""
        expected = self._items.get(ref)
        if expected is None:
            return False
        if self._clock() >= expected.deadline or expected.resource_version == live_version:
            del self._items[ref]
            return False
        return True

    def forget(self, prefix: Hashable) -> None:
        """Drop every expectation whose ref starts with `prefix` (a deleted ModelDeployment)."""
        for ref in [r for r in self._items if isinstance(r, tuple) and r[:1] == (prefix,)]:
            del self._items[ref]

    def __len__(self) -> int:
        return len(self._items)
