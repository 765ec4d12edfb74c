"""What the operator sees of a ModelDeployment's children, reduced to what it decides on.

`Children` is one reconcile's view of them (from the cache); the functions here read them into
plain values: one RevisionState per revision Deployment, and the `reasons.Failure` of a
revision that cannot serve, in the server's own words (its container's termination message).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelship.operator import bodies, kinds, naming, reasons
from modelship.operator.bodies import Body
from modelship.operator.reasons import Failure

_MESSAGE_LIMIT = 1000
_IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


@dataclass(frozen=True)
class Children:
    """The live children of one ModelDeployment, as the operator's cache holds them; one field
    per row of `kinds.CHILDREN`."""

    deployments: Sequence[Body] = ()
    services: Sequence[Body] = ()
    autoscalers: Sequence[Body] = ()
    pods: Sequence[Body] = ()

    def of(self, kind: str) -> Sequence[Body]:
        found: Sequence[Body] = getattr(self, kinds.ATTRIBUTE_OF[kind])
        return found

    @classmethod
    def from_kinds(cls, by_kind: Mapping[str, Sequence[Body]]) -> Children:
        return cls(**{kinds.ATTRIBUTE_OF[kind]: items for kind, items in by_kind.items()})

    def owned_by(self, uid: str | None) -> Children:
        """Without leftovers of an earlier ModelDeployment of the same name being collected."""
        return dataclasses.replace(
            self,
            **{c.attribute: tuple(b for b in self.of(c.kind) if _owned(b, uid)) for c in kinds.CHILDREN},
        )


def _owned(body: Body, uid: str | None) -> bool:
    refs = bodies.meta(body).get("ownerReferences") or ()
    owners = [ref for ref in refs if ref.get("kind") == naming.KIND and ref.get("controller")]
    return not owners or any(ref.get("uid") == uid for ref in owners)


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
    failure: Failure | None  # from the Deployment's own conditions, in its words

    @property
    def complete(self) -> bool:
        """Every wanted pod is up, ready and available on the current Deployment spec."""
        return (
            self.observed_current
            and not self.being_deleted
            and self.available_replicas >= self.spec_replicas
            and self.ready_replicas >= self.spec_replicas
        )


def _deployment_failure(status: Mapping[str, Any]) -> Failure | None:
    replica_failure = bodies.condition(status, "ReplicaFailure")
    if replica_failure and replica_failure.get("status") == "True":
        return Failure(
            reasons.REPLICA_FAILURE, _short(replica_failure.get("message") or "pods cannot be created")
        )
    progressing = bodies.condition(status, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Failure(
            reasons.PROGRESS_DEADLINE_EXCEEDED, _short(progressing.get("message") or "no progress")
        )
    return None


def revision_state(deployment: Body) -> RevisionState | None:
    meta = bodies.meta(deployment)
    labels = bodies.labels_of(deployment)
    revision = labels.get(naming.LABEL_REVISION)
    if not revision:
        return None
    spec = deployment.get("spec") or {}
    status = bodies.status_of(deployment)
    generation = int(meta.get("generation") or 0)
    return RevisionState(
        revision=revision,
        deployment=bodies.name_of(deployment),
        version=labels.get(naming.LABEL_VERSION, ""),
        model_name=model_name(spec),
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        observed_current=int(status.get("observedGeneration") or 0) >= generation,
        being_deleted=bodies.being_deleted(deployment),
        created=str(meta.get("creationTimestamp") or ""),
        failure=_deployment_failure(status),
    )


def model_name(deployment_spec: Mapping[str, Any]) -> str:
    """The served model's name, from the server's environment (see `manifests.server_env`)."""
    containers = ((deployment_spec.get("template") or {}).get("spec") or {}).get("containers") or ()
    for container in containers:
        for item in container.get("env") or ():
            if item.get("name") == naming.ENV_MODEL_NAME:
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
    failure: Failure  # in the words of the pod's container


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


def _container_failure(container: Mapping[str, Any], *, init: bool) -> Failure | None:
    name = container.get("name", "?")
    terminated = _terminated_failure(container)
    if terminated is not None:
        reason = reasons.MODEL_LOAD_FAILED if init else reasons.SERVER_FAILED
        message = (terminated.get("message") or "").strip()
        if not message:
            message = f"exited with code {terminated.get('exitCode')} ({terminated.get('reason', 'Error')})"
        return Failure(reason, _short(f"container {name}: {message}"))
    waiting = (container.get("state") or {}).get("waiting") or {}
    detail = _short(f"container {name}: {waiting.get('message') or waiting.get('reason')}")
    if waiting.get("reason") in _IMAGE_REASONS:
        return Failure(reasons.IMAGE_PULL_FAILED, detail)
    if waiting.get("reason") in _CONFIG_REASONS:
        return Failure(reasons.CONTAINER_CONFIG_ERROR, detail)
    return None


def pod_is_ready(pod: Body) -> bool:
    return bodies.condition_is_true(bodies.status_of(pod), "Ready")


def pod_failure(pod: Body) -> PodFailure | None:
    """Why a pod cannot serve, in the words of its containers; None if it is fine or starting."""
    if pod_is_ready(pod) or bodies.being_deleted(pod):
        return None
    status = bodies.status_of(pod)
    found = next(
        (f for c in status.get("initContainerStatuses") or () if (f := _container_failure(c, init=True))),
        None,
    ) or next(
        (f for c in status.get("containerStatuses") or () if (f := _container_failure(c, init=False))),
        None,
    )
    if found is None:
        return None
    return PodFailure(revision=bodies.revision_of(pod), pod=bodies.name_of(pod), failure=found)


def pod_failures(pods: Iterable[Body]) -> list[PodFailure]:
    failures = [failure for pod in pods if (failure := pod_failure(pod)) is not None]
    return sorted(failures, key=lambda f: (f.revision, f.pod))


def revision_failure(
    revision: str, version: str, states: Mapping[str, RevisionState], pods: Iterable[Body]
) -> Failure | None:
    """Why a revision's pods cannot serve, in their own words; None while all is well.

    The message names the version and revision once; the pod's words follow.
    """
    what = naming.describe_revision(version, revision)
    for found in pod_failures(p for p in pods if bodies.revision_of(p) == revision):
        return Failure(found.failure.reason, f"{what}, pod {found.pod}: {found.failure.message}")
    state = states.get(revision)
    if state is not None and state.failure is not None and not state.complete:
        return Failure(state.failure.reason, f"{what}: {state.failure.message}")
    return None


def _artifact(pod: Body) -> dict[str, Any] | None:
    """What the pod's init container reported on success: one line of JSON (the server's `fetch`).
    Only the fields the status has room for, of their type: the line is the pod's to write."""
    for container in bodies.status_of(pod).get("initContainerStatuses") or ():
        if container.get("name") != naming.INIT_CONTAINER:
            continue
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") != 0:
            return None
        try:
            record = json.loads(terminated.get("message") or "")
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        uri, sha256 = record.get("uri"), record.get("sha256")
        size, seconds = record.get("size"), record.get("fetchSeconds")
        if not (isinstance(uri, str) and isinstance(sha256, str) and len(uri) <= 2048 and len(sha256) <= 64):
            return None
        found: dict[str, Any] = {"uri": uri, "sha256": sha256}
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            found["size"] = size
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            found["fetchSeconds"] = round(float(seconds), 3)
        return found
    return None


def artifacts(pods: Iterable[Body]) -> dict[str, dict[str, Any]]:
    """Per revision, the artifact its pods fetched: the record of the pod that started first, so that
    the status does not change as pods come and go."""
    found: dict[str, dict[str, Any]] = {}

    def started(pod: Body) -> tuple[str, str]:
        return str(bodies.meta(pod).get("creationTimestamp") or ""), bodies.name_of(pod)

    for pod in sorted(pods, key=started):
        revision = bodies.revision_of(pod)
        if revision and revision not in found and (record := _artifact(pod)) is not None:
            found[revision] = record
    return found


def unschedulable_message(pods: Iterable[Body], revision: str) -> str | None:
    """The scheduler's reason when a pod of the revision cannot be placed on any node."""
    for pod in sorted(pods, key=bodies.name_of):
        if bodies.revision_of(pod) != revision:
            continue
        scheduled = bodies.condition(bodies.status_of(pod), "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return _short(scheduled.get("message") or "no node fits the pod")
    return None
