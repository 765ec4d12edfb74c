"""One revision's Deployment and pods watched from outside during a rollout (issue #31).

Every size its Deployment is written with (one per new `metadata.generation`, in the order the
API server stored them) and every pod its ReplicaSets create, read from the API's watch stream,
not sampled: a write that is undone a moment later is seen all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from modelship.operator import naming

_WATCH_SECONDS = 2  # each watch call ends this soon, so that stop() is quick


@dataclass
class RevisionHistory:
    sizes: list[int] = field(default_factory=list)  # spec.replicas, one per generation
    pods_created: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Stream(threading.Thread):
    def __init__(self, lister: Callable[..., Any], on_event: Callable[[str, Any], None], **selector: str):
        super().__init__(daemon=True)
        self.lister, self.on_event, self.selector = lister, on_event, selector
        self.stopping = threading.Event()
        self.error: str | None = None
        # The watch starts from a list's resourceVersion: what exists before is not an event.
        self.version = lister(**selector).metadata.resource_version

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                stream = watch.Watch().stream(
                    self.lister,
                    resource_version=self.version,
                    timeout_seconds=_WATCH_SECONDS,
                    **self.selector,
                )
                for event in stream:
                    self.version = event["object"].metadata.resource_version
                    self.on_event(event["type"], event["object"])
        except Exception as exc:  # reported by the test, never swallowed
            self.error = repr(exc)


@contextmanager
def watching_revision(
    api: client.ApiClient, namespace: str, name: str, revision: str
) -> Iterator[RevisionHistory]:
    """Watch `name`'s Deployment of `revision` and its pods until the block ends."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment = naming.deployment_name(name, revision)
    history = RevisionHistory()
    generations: set[int] = set()
    live = apps.read_namespaced_deployment(deployment, namespace)
    generations.add(live.metadata.generation)
    history.sizes.append(live.spec.replicas)

    def deployment_event(kind: str, obj: client.V1Deployment) -> None:
        if kind in ("ADDED", "MODIFIED") and obj.metadata.generation not in generations:
            generations.add(obj.metadata.generation)
            history.sizes.append(obj.spec.replicas)

    def pod_event(kind: str, obj: client.V1Pod) -> None:
        if kind == "ADDED":
            history.pods_created.append(str(obj.metadata.name))

    streams = [
        _Stream(
            apps.list_namespaced_deployment,
            deployment_event,
            namespace=namespace,
            field_selector=f"metadata.name={deployment}",
        ),
        _Stream(
            core.list_namespaced_pod,
            pod_event,
            namespace=namespace,
            label_selector=f"{naming.LABEL_REVISION}={revision}",
        ),
    ]
    for stream in streams:
        stream.start()
    try:
        yield history
    finally:
        for stream in streams:
            stream.stopping.set()
        for stream in streams:
            stream.join(timeout=_WATCH_SECONDS * 5)
            if stream.is_alive():
                history.errors.append(f"a watch of {deployment} did not stop")
            elif stream.error is not None:
                history.errors.append(stream.error)
