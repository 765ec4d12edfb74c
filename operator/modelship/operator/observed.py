"""What the operator sees of a ModelDeployment's children, reduced to what it decides on.

`trim_*` keep the parts of a watched object that reconciling needs (the cache holds these,
not whole objects, to keep memory flat at thousands of objects); the other functions read
them into plain values: one RevisionState per revision Deployment, and PodFailures that
carry the server's own words (the container's termination message).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelship.operator import naming

Body = Mapping[str, Any]

_MESSAGE_LIMIT = 1000
_IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


def _meta(body: Body) -> dict[str, Any]:
    meta = body.get("metadata") or {}
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
    return kept


def trim_object(body: Body) -> dict[str, Any]:
    """A ModelDeployment, Deployment, Service or HPA without managedFields and noise."""
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
    status = body.get("status") or {}

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


def _condition(body: Body, kind: str) -> Mapping[str, Any] | None:
    for condition in (body.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return condition
    return None


@dataclass(frozen=True)
class RevisionState:
    """One revision's Deployment as last observed."""

    revision: str
    deployment: str
    version: str
    model_name: str
    spec_replicas: int
    replicas: int
    ready_replicas: int
    available_replicas: int
    observed_current: bool
    being_deleted: bool
    created: str
    failure: tuple[str, str] | None  # (reason, message) from the Deployment's own conditions

    @property
    def complete(self) -> bool:
        """Every wanted pod is up, ready and available on the current Deployment spec."""
        return (
            self.observed_current
            and not self.being_deleted
            and self.available_replicas >= self.spec_replicas
            and self.ready_replicas >= self.spec_replicas
        )


def revision_state(deployment: Body) -> RevisionState | None:
    meta = deployment.get("metadata") or {}
    labels = meta.get("labels") or {}
    revision = labels.get(naming.LABEL_REVISION)
    if not revision:
        return None
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    failure: tuple[str, str] | None = None
    replica_failure = _condition(deployment, "ReplicaFailure")
    progressing = _condition(deployment, "Progressing")
    if replica_failure and replica_failure.get("status") == "True":
        failure = ("ReplicaFailure", _short(replica_failure.get("message") or "pods cannot be created"))
    elif progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        failure = ("ProgressDeadlineExceeded", _short(progressing.get("message") or "no progress"))
    generation = int(meta.get("generation") or 0)
    return RevisionState(
        revision=revision,
        deployment=meta.get("name", ""),
        version=labels.get(naming.LABEL_VERSION, ""),
        model_name=_model_name(spec),
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        observed_current=int(status.get("observedGeneration") or 0) >= generation,
        being_deleted=bool(meta.get("deletionTimestamp")),
        created=str(meta.get("creationTimestamp") or ""),
        failure=failure,
    )


def _model_name(deployment_spec: Mapping[str, Any]) -> str:
    containers = ((deployment_spec.get("template") or {}).get("spec") or {}).get("containers") or ()
    for container in containers:
        for item in container.get("env") or ():
            if item.get("name") == "MODELSHIP_MODEL_NAME":
                return str(item.get("value", ""))
    return ""


def revision_states(deployments: Iterable[Body]) -> dict[str, RevisionState]:
    states = {}
    for deployment in deployments:
        state = revision_state(deployment)
        if state is not None:
            states[state.revision] = state
    return states


@dataclass(frozen=True)
class PodFailure:
    revision: str
    pod: str
    reason: str
    message: str


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 1] + "…"


def _terminated_failure(container: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The failed termination of a container, now or (while it waits to restart) the last one."""
    state = container.get("state") or {}
    terminated = state.get("terminated")
    if terminated and terminated.get("exitCode", 0) != 0:
        return terminated
    if "running" in state:
        return None  # it may have crashed before, but it is trying again right now
    last = (container.get("lastState") or {}).get("terminated")
    if last and last.get("exitCode", 0) != 0:
        return last
    return None


def _container_failure(container: Mapping[str, Any], *, init: bool) -> tuple[str, str] | None:
    name = container.get("name", "?")
    terminated = _terminated_failure(container)
    if terminated is not None:
        reason = "ModelLoadFailed" if init else "ServerFailed"
        message = (terminated.get("message") or "").strip()
        if not message:
            message = f"exited with code {terminated.get('exitCode')} ({terminated.get('reason', 'Error')})"
        return reason, _short(f"container {name}: {message}")
    waiting = (container.get("state") or {}).get("waiting") or {}
    detail = _short(f"container {name}: {waiting.get('message') or waiting.get('reason')}")
    if waiting.get("reason") in _IMAGE_REASONS:
        return "ImagePullFailed", detail
    if waiting.get("reason") in _CONFIG_REASONS:
        return "ContainerConfigError", detail
    return None


def pod_is_ready(pod: Body) -> bool:
    ready = _condition(pod, "Ready")
    return bool(ready and ready.get("status") == "True")


def pod_failure(pod: Body) -> PodFailure | None:
    """Why a pod cannot serve, in the words of its containers; None if it is fine or starting."""
    if pod_is_ready(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    found = None
    for container in status.get("initContainerStatuses") or ():
        found = _container_failure(container, init=True)
        if found:
            break
    if found is None:
        for container in status.get("containerStatuses") or ():
            found = _container_failure(container, init=False)
            if found:
                break
    if found is None:
        return None
    return PodFailure(
        revision=(meta.get("labels") or {}).get(naming.LABEL_REVISION, ""),
        pod=meta.get("name", ""),
        reason=found[0],
        message=found[1],
    )


def pod_failures(pods: Iterable[Body]) -> list[PodFailure]:
    failures = [failure for pod in pods if (failure := pod_failure(pod)) is not None]
    return sorted(failures, key=lambda f: (f.revision, f.pod))


def unschedulable_message(pods: Iterable[Body], revision: str) -> str | None:
    """The scheduler's reason when a pod of the revision cannot be placed on any node."""
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(naming.LABEL_REVISION) != revision:
            continue
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return _short(scheduled.get("message") or "no node fits the pod")
    return None
