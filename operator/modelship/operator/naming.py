"""Names, labels and constants that the operator, the CRD and the tests share."""

from __future__ import annotations

from typing import Final

GROUP: Final = "modelship.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelDeployment"
PLURAL: Final = "modeldeployments"

FIELD_MANAGER: Final = "modelship"
# Holds a Deployment's spec.replicas while FIELD_MANAGER stops applying it, until the autoscaler's
# first scale write takes the field (server-side apply would otherwise remove it: 1 replica).
HANDOVER_FIELD_MANAGER: Final = "modelship-handover"

# Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_VERSION: Final = "app.kubernetes.io/version"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
# Our own: which ModelDeployment a child belongs to, and which revision of its pods.
LABEL_MODEL_DEPLOYMENT: Final = f"{GROUP}/model-deployment"
LABEL_REVISION: Final = f"{GROUP}/revision"

APP_NAME: Final = "modelship-server"
COMPONENT: Final = "predictor"
MANAGED_BY: Final = "modelship"

# The hash of the manifest we applied last; a different hash means "apply again".
ANNOTATION_APPLIED: Final = f"{GROUP}/applied-hash"

# `<verb>@<nonce>`: a manual rollout action (promote, promote-full, abort, retry); see canary.
ANNOTATION_ACTION: Final = f"{GROUP}/action"

# On a stable revision's pods during a shadow step: where to copy requests to, and how many (JSON).
# A downwardAPI volume projects it into MIRROR_FILE, which the server re-reads every second: the
# kubelet rewrites the file on the pod update, with no restart (a ConfigMap volume would wait for
# the kubelet's periodic sync, about a minute; reading the API would need a token in every pod).
ANNOTATION_MIRROR: Final = f"{GROUP}/mirror"

# Length of the revision hash: short enough that `<md>-<revision>` stays a DNS label.
REVISION_LENGTH: Final = 10
MAX_NAME_LENGTH: Final = 63 - REVISION_LENGTH - 1

SERVER_PORT: Final = 8080
SERVICE_PORT: Final = 80
DEFAULT_SERVER_IMAGE: Final = "modelship/server:0.1.0"
SERVER_UID: Final = 65532

CACHE_DIR: Final = "/models"
PVC_MOUNT_DIR: Final = "/mnt/model-pvc"
AUTH_MOUNT_DIR: Final = "/var/run/modelship/auth"
PODINFO_MOUNT_DIR: Final = "/etc/modelship/podinfo"
MIRROR_FILE: Final = f"{PODINFO_MOUNT_DIR}/mirror"
TERMINATION_LOG: Final = "/dev/termination-log"

# The one variable the operator reads back from a revision's pod template (the served name).
ENV_MODEL_NAME: Final = "MODELSHIP_MODEL_NAME"

INIT_CONTAINER: Final = "fetch-model"
SERVER_CONTAINER: Final = "server"


def deployment_name(md_name: str, revision: str) -> str:
    return f"{md_name}-{revision}"


def selector_labels(md_name: str) -> dict[str, str]:
    """Labels that select every pod of a ModelDeployment, whatever its revision."""
    return {LABEL_MODEL_DEPLOYMENT: md_name, LABEL_COMPONENT: COMPONENT}


def common_labels(md_name: str) -> dict[str, str]:
    """Labels on every child object of a ModelDeployment."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: md_name,
        LABEL_COMPONENT: COMPONENT,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL_DEPLOYMENT: md_name,
    }


def service_url(md_name: str, namespace: str, model_name: str) -> str:
    return f"http://{md_name}.{namespace}.svc.cluster.local/v2/models/{model_name}"


def describe_revision(version: str | None, revision: str | None) -> str:
    """How status, events and failures name a revision, in one wording."""
    return f"version {version} (revision {revision})"


# The per-pod custom metric an HPA with `metric: inflightRequests` reads from the custom metrics API
# (custom.metrics.k8s.io): the average number of inference requests in flight in one pod.
INFLIGHT_METRIC: Final = "modelship_inflight_requests"
