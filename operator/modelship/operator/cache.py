"""The operator's copy of ModelDeployments and their children, kept by Kopf's watch events.

Why not Kopf's `@kopf.index`: at startup Kopf holds every listed object of every indexed kind
in memory, and wakes every waiting object once per indexed object, until all are indexed
(measured at 1000 ModelDeployments, 4000 objects: ~20 CPU-seconds and a 260 MiB peak that the
process keeps). Instead the operator LISTs the children once at startup (page by page,
before Kopf starts watching), and Kopf's events keep the copy current. Objects are kept
packed (one compact JSON string each) and parsed only when their owner is reconciled.

A reconcile must not decide on a partial copy (it would re-create children that exist), and
the startup LIST may include an object deleted just before Kopf's own listing, which would
then never get an event. So the copy counts as synced once Kopf's events have confirmed every
object the startup LIST found; what is still unconfirmed a while after the first event is
dropped as deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelship.operator import bodies, kinds, naming
from modelship.operator.bodies import Body
from modelship.operator.children import Children
from modelship.operator.expectations import is_at_least

logger = logging.getLogger(__name__)

Key = tuple[str, str]

MODEL_DEPLOYMENT = kinds.MODEL_DEPLOYMENTS.kind


@dataclass
class _Entry:
    packed: str
    version: str
    confirmed: bool


def owner_of(kind: str, body: Body) -> Key | None:
    namespace = bodies.namespace_of(body)
    if kind == MODEL_DEPLOYMENT:
        return (namespace, bodies.name_of(body))
    owner = bodies.labels_of(body).get(naming.LABEL_MODEL_DEPLOYMENT)
    return (namespace, owner) if owner else None


def _meta(body: Body) -> dict[str, Any]:
    meta = bodies.meta(body)
    kept = {
        key: meta[key]
        for key in (
            "name",
            "namespace",
            "uid",
            "generation",
            "labels",
            "annotations",
            "ownerReferences",
            "creationTimestamp",
            "deletionTimestamp",
            "resourceVersion",
        )
        if key in meta
    }
    annotations = kept.get("annotations")
    if annotations and "kubectl.kubernetes.io/last-applied-configuration" in annotations:
        kept["annotations"] = {
            k: v for k, v in annotations.items() if k != "kubectl.kubernetes.io/last-applied-configuration"
        }
    replicas_managers = _replicas_managers(body)
    if replicas_managers:
        kept["managedFields"] = replicas_managers
    return kept


def _replicas_managers(body: Body) -> list[dict[str, Any]]:
    """Of managedFields, only who owns spec.replicas: whether our field manager still does decides
    how a Deployment is handed over to its autoscaler (see `decisions.replicas_hold`)."""
    return [
        {
            **{key: entry[key] for key in ("manager", "operation", "subresource") if key in entry},
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
        for entry in bodies.managers_of_replicas(body)
    ]


def trim_object(body: Body) -> dict[str, Any]:
    """A ModelDeployment, Deployment, Service or HPA without noise: of managedFields, only the
    owners of spec.replicas."""
    kept: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": _meta(body),
    }
    for key in ("spec", "status"):
        if key in body:
            kept[key] = body[key]
    return kept


def trim_pod(body: Body) -> dict[str, Any]:
    status = bodies.status_of(body)

    def containers(key: str) -> list[dict[str, Any]]:
        return [
            {k: c[k] for k in ("name", "ready", "restartCount", "state", "lastState") if k in c}
            for c in status.get(key) or ()
        ]

    return {
        "metadata": _meta(body),
        "status": {
            "phase": status.get("phase"),
            "conditions": [
                {k: c[k] for k in ("type", "status", "reason", "message") if k in c}
                for c in status.get("conditions") or ()
            ],
            "initContainerStatuses": containers("initContainerStatuses"),
            "containerStatuses": containers("containerStatuses"),
        },
    }


def pack(trimmed: Mapping[str, Any]) -> str:
    """An object as the cache keeps it: one compact JSON string.

    Thousands of watched objects kept as parsed dicts cost several times the memory of their
    JSON, and many small long-lived objects fragment Python's allocator, so that memory from
    a burst (a restart lists everything at once) is never returned to the system. Only a
    reconcile of the owner reads them, so they are parsed then.
    """
    return json.dumps(trimmed, separators=(",", ":"))


def unpack(packed: str | Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(packed) if isinstance(packed, str) else dict(packed)


def _trim(kind: str, body: Body) -> dict[str, Any]:
    return trim_pod(body) if kind == kinds.PODS.kind else trim_object(body)


class ObjectCache:
    def __init__(self, *, settle: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, dict[Key, dict[str, _Entry]]] = {
            kind: {} for kind in (MODEL_DEPLOYMENT, *kinds.CHILD_KINDS)
        }
        self._unconfirmed = 0
        self._settle = settle
        self._clock = clock
        self._first_event: float | None = None
        self._synced = asyncio.Event()
        self._synced.set()

    # ---- filling

    def prefill(self, kind: str, items: Iterable[Body]) -> int:
        """Objects from the startup LIST; they count as unconfirmed until an event shows them."""
        count = 0
        for body in items:
            if self._store(kind, body, confirmed=False):
                count += 1
        if self._unconfirmed:
            self._synced.clear()
        return count

    def apply_event(self, kind: str, event_type: str | None, body: Body) -> Key | None:
        """A watch event (type None: Kopf's own initial listing). Returns the owner's key."""
        if self._first_event is None:
            self._first_event = self._clock()
        if event_type == "DELETED":
            return self._remove(kind, body)
        return self._store(kind, body, confirmed=True)

    def _store(self, kind: str, body: Body, *, confirmed: bool) -> Key | None:
        key = owner_of(kind, body)
        if key is None:
            return None
        name = bodies.name_of(body)
        version = bodies.resource_version(body) or ""
        objects = self._entries[kind].setdefault(key, {})
        old = objects.get(name)
        if old is not None and old.version != version and is_at_least(old.version, version):
            # An older version arriving late (Kopf's listing after our own): keep the newer
            # copy, but the event proves the object exists.
            self._confirm(old, confirmed)
            return key
        entry = _Entry(pack(_trim(kind, body)), version, confirmed)
        if old is not None:
            entry.confirmed = old.confirmed
            self._confirm(entry, confirmed)
        elif not confirmed:
            self._unconfirmed += 1
        objects[name] = entry
        return key

    def _confirm(self, entry: _Entry, confirmed: bool) -> None:
        if confirmed and not entry.confirmed:
            entry.confirmed = True
            self._unconfirmed -= 1
            if self._unconfirmed == 0:
                self._synced.set()

    def _remove(self, kind: str, body: Body) -> Key | None:
        key = owner_of(kind, body)
        if key is None:
            return None
        objects = self._entries[kind].get(key)
        name = bodies.name_of(body)
        if objects is not None and name in objects:
            entry = objects.pop(name)
            if not entry.confirmed:
                self._confirm(entry, True)  # settled: it is gone
            if not objects:
                del self._entries[kind][key]
        return key

    # ---- syncing

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Until every object of the startup LIST was seen in an event, or the time for that
        is up (counted from the first event, so that a standby instance that starts watching
        late gets the same time); then what is still unseen is dropped as deleted."""
        while not self._synced.is_set():
            if self._first_event is None:
                await self._synced.wait()
                continue
            remaining = self._first_event + self._settle - self._clock()
            if remaining <= 0:
                self._drop_unconfirmed()
                return
            try:
                await asyncio.wait_for(self._synced.wait(), timeout=remaining)
            except TimeoutError:
                self._drop_unconfirmed()
                return

    def _drop_unconfirmed(self) -> None:
        dropped = []
        for kind, by_owner in self._entries.items():
            for key in list(by_owner):
                objects = by_owner[key]
                for name in [n for n, entry in objects.items() if not entry.confirmed]:
                    del objects[name]
                    dropped.append(f"{kind} {key[0]}/{name}")
                if not objects:
                    del by_owner[key]
        if dropped:
            logger.warning(
                "dropped %d objects the watch never showed: %s", len(dropped), ", ".join(dropped[:10])
            )
        self._unconfirmed = 0
        self._synced.set()

    # ---- reading (the reconciler's Cache protocol)

    def model_deployment(self, key: Key) -> dict[str, Any] | None:
        entry = self._entries[MODEL_DEPLOYMENT].get(key, {}).get(key[1])
        return unpack(entry.packed) if entry is not None else None

    def version_of(self, key: Key, kind: str, name: str) -> str | None:
        """The resourceVersion the cache holds of one child of `key` now (None: none held)."""
        entry = self._entries[kind].get(key, {}).get(name)
        return entry.version if entry is not None else None

    def children(self, key: Key) -> Children:
        def of(kind: str) -> list[dict[str, Any]]:
            return [unpack(entry.packed) for entry in self._entries[kind].get(key, {}).values()]

        return Children.from_kinds({kind: of(kind) for kind in kinds.CHILD_KINDS})

    def __len__(self) -> int:
        return sum(len(objects) for by_owner in self._entries.values() for objects in by_owner.values())
