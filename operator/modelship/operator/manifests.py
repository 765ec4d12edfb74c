"""The exact child objects a ModelDeployment should have: pure functions, no I/O.

One Deployment per model revision (a revision is a hash of the pod template, so anything the
pods run, except how many of them, makes a new one), one Service selecting every revision,
and an autoscaling/v2 HorizontalPodAutoscaler when `spec.autoscaling` is set.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelship.operator import autoscaling, bodies, naming, quantities, validation
from modelship.operator.spec import ModelDeployment, S3Access

Manifest = dict[str, Any]

PRE_STOP_SECONDS = 5

_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


@dataclass(frozen=True)
class Revision:
    """What one revision of a ModelDeployment's pods runs."""

    revision: str
    version: str
    model_name: str
    deployment_name: str
    template: Manifest


def canonical_hash(obj: Any, length: int) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _server_uri(md: ModelDeployment) -> str:
    """The URI the server fetches: a pvc:// claim becomes a path where the pod mounts it."""
    pvc = md.model.pvc
    if pvc is None:
        return md.model.uri
    return f"file://{naming.PVC_MOUNT_DIR}/{pvc[1]}"


def _seconds(value: float | None) -> str | None:
    """Seconds as a user would write them: 90, not 90.0 (a value in the pod template, read by people)."""
    if value is None:
        return None
    return str(int(value)) if value.is_integer() else str(value)


def _env(md: ModelDeployment) -> list[dict[str, Any]]:
    values: list[tuple[str, object]] = [
        (naming.ENV_MODEL_NAME, md.model.name),
        ("MODELSHIP_MODEL_VERSION", md.model.version),
        ("MODELSHIP_MODEL_URI", _server_uri(md)),
        ("MODELSHIP_MODEL_SHA256", md.model.sha256),
        ("MODELSHIP_THREADS", md.server.threads or quantities.cpu_threads(dict(md.resources))),
        ("MODELSHIP_MAX_BATCH_SIZE", md.server.max_batch_size),
        ("MODELSHIP_MAX_DELAY_MS", md.server.max_delay_ms),
        ("MODELSHIP_MAX_CONNECTION_REQUESTS", md.server.max_connection_requests),
        ("MODELSHIP_MAX_CONNECTION_AGE_SECONDS", _seconds(md.server.max_connection_age)),
        ("MODELSHIP_PORT", naming.SERVER_PORT),
        ("MODELSHIP_CACHE_DIR", naming.CACHE_DIR),
        ("MODELSHIP_TERMINATION_LOG", naming.TERMINATION_LOG),
        (
            "MODELSHIP_AUTH_TOKEN_FILE",
            f"{naming.AUTH_MOUNT_DIR}/token" if md.server.auth_secret else None,
        ),
        ("MODELSHIP_MIRROR_FILE", naming.MIRROR_FILE),
        *_s3_env(md.model.s3),
    ]
    env = [{"name": name, "value": str(value)} for name, value in values if value is not None]
    return env + [dict(item) for item in md.placement.env]


def _s3_env(s3: S3Access | None) -> list[tuple[str, str | None]]:
    if s3 is None:
        return []
    return [
        ("MODELSHIP_S3_ENDPOINT", s3.endpoint),
        ("MODELSHIP_S3_REGION", s3.region),
        ("MODELSHIP_S3_ADDRESSING", s3.addressing),
    ]


def _credentials_env(s3: S3Access | None) -> list[Manifest]:
    """The s3 credentials, as references to their Secret: the kubelet resolves them when it starts the
    init container (so a fixed Secret is read by the next retry, without a new revision), and neither
    the Deployment nor the server container ever holds them."""
    if s3 is None or s3.credentials_secret is None:
        return []
    return [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {
                    "name": s3.credentials_secret,
                    "key": key,
                    **({"optional": True} if key == "AWS_SESSION_TOKEN" else {}),
                }
            },
        }
        for key in validation.S3_CREDENTIAL_KEYS
    ]


def _volumes(md: ModelDeployment) -> tuple[list[Manifest], list[Manifest], list[Manifest]]:
    """(volumes, mounts of the init container, mounts of the server container)."""
    # Every revision has the podinfo volume: a revision that serves may be asked to copy requests
    # to a later one's shadow step, and adding the volume then would restart its pods.
    mirror = f"metadata.annotations['{naming.ANNOTATION_MIRROR}']"
    volumes: list[Manifest] = [
        {"name": "model-cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "podinfo",
            "downwardAPI": {"items": [{"path": "mirror", "fieldRef": {"fieldPath": mirror}}]},
        },
    ]
    init_mounts: list[Manifest] = [
        {"name": "model-cache", "mountPath": naming.CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    # The server only reads what the init container verified.
    server_mounts: list[Manifest] = [
        {"name": "model-cache", "mountPath": naming.CACHE_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "podinfo", "mountPath": naming.PODINFO_MOUNT_DIR, "readOnly": True},
    ]
    pvc = md.model.pvc
    if pvc is not None:
        claim = {"claimName": pvc[0], "readOnly": True}
        volumes.append({"name": "model-pvc", "persistentVolumeClaim": claim})
        mount = {"name": "model-pvc", "mountPath": naming.PVC_MOUNT_DIR, "readOnly": True}
        init_mounts.append(mount)
        server_mounts.append(dict(mount))
    if md.server.auth_secret is not None:
        volumes.append(
            {
                "name": "auth-token",
                "secret": {
                    "secretName": md.server.auth_secret.name,
                    "items": [{"key": md.server.auth_secret.key, "path": "token"}],
                    "defaultMode": 0o440,
                },
            }
        )
        server_mounts.append({"name": "auth-token", "mountPath": naming.AUTH_MOUNT_DIR, "readOnly": True})
    return volumes, init_mounts, server_mounts


def _probe(path: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def pod_template(md: ModelDeployment, *, server_image: str) -> Manifest:
    """The pod template of the revision the spec asks for, without the revision itself."""
    image = md.server.image or server_image
    env = _env(md)
    resources = {section: dict(values) for section, values in md.resources.items() if values}
    volumes, init_mounts, server_mounts = _volumes(md)
    labels = {**md.placement.pod_labels, **naming.common_labels(md.name)}
    labels[naming.LABEL_VERSION] = md.model.version
    metadata: Manifest = {"labels": labels}
    if md.placement.pod_annotations:
        metadata["annotations"] = dict(md.placement.pod_annotations)
    common_container = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "securityContext": dict(_RESTRICTED_CONTAINER),
        "terminationMessagePath": naming.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        common_container["resources"] = resources
    spec: Manifest = {
        # The preStop wait, then the server's own drain of in-flight requests (up to 25 s).
        "terminationGracePeriodSeconds": PRE_STOP_SECONDS + 30,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": naming.SERVER_UID,
            "runAsGroup": naming.SERVER_UID,
            "fsGroup": naming.SERVER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [
            {
                "name": naming.INIT_CONTAINER,
                **copy.deepcopy(common_container),
                "args": ["fetch"],
                "volumeMounts": init_mounts,
                "env": copy.deepcopy(env) + _credentials_env(md.model.s3),
            }
        ],
        "containers": [
            {
                "name": naming.SERVER_CONTAINER,
                **copy.deepcopy(common_container),
                "ports": [{"name": "http", "containerPort": naming.SERVER_PORT, "protocol": "TCP"}],
                # Loading a large model may take minutes: the startup probe holds the others off.
                "startupProbe": _probe("/v2/health/live", 5, 60),
                "livenessProbe": _probe("/v2/health/live", 10, 3),
                "readinessProbe": _probe("/v2/health/ready", 5, 3),
                # Endpoints are removed asynchronously (the EndpointSlice, then every node's
                # kube-proxy): a pod being deleted keeps serving a few seconds before SIGTERM, so
                # that a canary scaled to 0 on abort loses no request that was already routed to it.
                "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
                "volumeMounts": server_mounts,
            }
        ],
        "volumes": volumes,
    }
    placement = md.placement
    if placement.service_account_name:
        spec["serviceAccountName"] = placement.service_account_name
    if placement.node_selector:
        spec["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        spec["tolerations"] = [dict(t) for t in placement.tolerations]
    if placement.affinity:
        spec["affinity"] = dict(placement.affinity)
    if placement.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in placement.image_pull_secrets]
    if placement.priority_class_name:
        spec["priorityClassName"] = placement.priority_class_name
    return {"metadata": metadata, "spec": spec}


def desired_revision(md: ModelDeployment, *, server_image: str) -> Revision:
    """The revision the spec asks for: its hash, name, and complete pod template."""
    template = pod_template(md, server_image=server_image)
    revision = canonical_hash(template, naming.REVISION_LENGTH)
    template["metadata"]["labels"][naming.LABEL_REVISION] = revision
    for container in template["spec"]["initContainers"] + template["spec"]["containers"]:
        # Inserted before the user's env, right after the operator's own variables.
        position = sum(1 for item in container["env"] if item["name"].startswith("MODELSHIP_"))
        container["env"].insert(position, {"name": "MODELSHIP_REVISION", "value": revision})
    return Revision(
        revision=revision,
        version=md.model.version,
        model_name=md.model.name,
        deployment_name=naming.deployment_name(md.name, revision),
        template=template,
    )


def revision_deployment(md: ModelDeployment, revision: Revision, replicas: int | None) -> Manifest:
    """The Deployment of one revision; `replicas=None` leaves the size to the autoscaler."""
    labels = naming.common_labels(md.name)
    labels[naming.LABEL_VERSION] = revision.version
    labels[naming.LABEL_REVISION] = revision.revision
    spec: Manifest = {
        "selector": {
            "matchLabels": {
                naming.LABEL_MODEL_DEPLOYMENT: md.name,
                naming.LABEL_REVISION: revision.revision,
            }
        },
        # The template of a revision never changes, so old ReplicaSets are never useful.
        "revisionHistoryLimit": 0,
        "progressDeadlineSeconds": 600,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": revision.template,
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return _stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": owned_metadata(md, revision.deployment_name, labels),
            "spec": spec,
        }
    )


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def resized_deployment(live: Manifest, replicas: int) -> Manifest:
    """An earlier revision's Deployment at a new size, rebuilt from the live object: the spec
    that made its pod template is gone (the ModelDeployment now asks for another revision),
    and applying a partial manifest under our field manager would delete the rest."""
    meta = bodies.meta(live)
    spec = _without_nulls(copy.deepcopy(live.get("spec") or {}))
    spec["replicas"] = replicas
    return _stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "labels": dict(meta.get("labels") or {}),
                "ownerReferences": [dict(ref) for ref in meta.get("ownerReferences") or ()],
            },
            "spec": spec,
        }
    )


def owned_metadata(md: ModelDeployment, name: str, labels: Mapping[str, str] | None = None) -> Manifest:
    """A child's metadata: in the ModelDeployment's namespace, labelled, owned by it."""
    return {
        "name": name,
        "namespace": md.namespace,
        "labels": dict(labels) if labels is not None else naming.common_labels(md.name),
        "ownerReferences": [md.owner_reference()],
    }


def service(md: ModelDeployment, only: str | None = None) -> Manifest:
    """One Service per ModelDeployment, in front of every serving revision; with `only`, in front
    of that revision's pods alone (a canary that has pods but no share of the traffic)."""
    selector = naming.selector_labels(md.name)
    if only is not None:
        selector[naming.LABEL_REVISION] = only
    return _stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": owned_metadata(md, md.name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {"name": "http", "port": naming.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
                ],
            },
        }
    )


def autoscaler(md: ModelDeployment, target_deployment: str) -> Manifest | None:
    """The HPA for an autoscaled ModelDeployment, scaling the given revision's Deployment on the
    metric the spec names, with the scaling behaviour of `autoscaling.behavior`."""
    scaling = md.autoscaling
    if scaling is None:
        return None
    return _stamp(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": owned_metadata(md, md.name),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target_deployment},
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": autoscaling.metrics(scaling),
                "behavior": autoscaling.behavior(scaling.behavior),
            },
        }
    )


def _stamp(manifest: Manifest) -> Manifest:
    """Record the manifest's own hash on it, so that a changed manifest is re-applied even
    when it only drops fields (which a subset comparison with the live object cannot see)."""
    manifest["metadata"].pop("annotations", None)
    digest = canonical_hash(manifest, 16)
    manifest["metadata"]["annotations"] = {naming.ANNOTATION_APPLIED: digest}
    return manifest


# Children built in other modules (traffic's per-revision Services) are stamped the same way.
stamp = _stamp
