"""What the cache should show after our own writes, until the watch catches up.

After we apply a child or write a status, the watch event for that write arrives a little
later; a reconcile that runs in between would see the old object and write again. Like the
ReplicaSet controller's "expectations", we remember the resourceVersion each write returned
(or that a deleted object should vanish) and skip re-writing that object until the cache shows
that version or a later one. Resource versions of one resource are comparable integers
(KEP-5504, stable since Kubernetes 1.35); Kopf may coalesce a burst of events into the last
one, so "this version or later" matters, not "this version". An edit by someone else after
our write is a later version, so it is still repaired. Expectations also expire, in case the
cache never shows our write (an object deleted and re-created meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


def is_at_least(version: str | None, expected: str) -> bool:
    """Whether `version` is `expected` or later (KEP-5504), or equal where not comparable."""
    if version is None:
        return False
    if (
        version.isdigit()
        and expected.isdigit()
        and not version.startswith("0")
        and not expected.startswith("0")
    ):
        return int(version) >= int(expected)
    return version == expected


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
        """The watch delivered this version of `ref` (None: its deletion).

        A deletion settles any expectation: whatever we wrote is gone, and the event of our own
        write may have been handled before we recorded what to expect from it.
        """
        expected = self._items.get(ref)
        if expected is not None and (resource_version is None or self._met(expected, resource_version)):
            del self._items[ref]

    @staticmethod
    def _met(expected: _Expected, version: str | None) -> bool:
        if expected.resource_version is None:
            return version is None
        return is_at_least(version, expected.resource_version)

    def pending(self, ref: Hashable, live_version: str | None) -> bool:
        """True while the cache has not yet caught up with our last write to `ref`."""
        expected = self._items.get(ref)
        if expected is None:
            return False
        if self._clock() >= expected.deadline or self._met(expected, live_version):
            del self._items[ref]
            return False
        return True

    def forget(self, prefix: Hashable) -> None:
        """Drop every expectation whose ref starts with `prefix` (a deleted ModelDeployment)."""
        for ref in [r for r in self._items if isinstance(r, tuple) and r[:1] == (prefix,)]:
            del self._items[ref]

    def __len__(self) -> int:
        return len(self._items)
