"""A typed, read-only view of a ModelDeployment as the API server stored it.

The CRD schema validates and defaults the spec before it reaches us; this module only reads it.
Defaults that cannot live in the schema (the model name falls back to `metadata.name`, the
replica count to 1) are applied here and documented in the CRD's field descriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from modelship.operator import bodies, naming, validation
from modelship.operator.durations import format_duration, parse_duration
from modelship.operator.validation import SpecError


@dataclass(frozen=True)
class S3Access:
    """How the pod reaches an s3:// model; None fields: the pod's environment decides."""

    endpoint: str | None = None
    region: str | None = None
    addressing: str | None = None  # path or virtual
    credentials_secret: str | None = None  # a Secret with the AWS_* keys, read by the init container only


@dataclass(frozen=True)
class ModelSource:
    name: str
    version: str
    uri: str
    sha256: str | None
    s3: S3Access | None = None  # set for every s3:// uri, empty without spec.model.s3

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme

    @property
    def pvc(self) -> tuple[str, str] | None:
        """(claim, path inside the claim) for a `pvc://<claim>/<path>` URI, else None."""
        if self.scheme != "pvc":
            return None
        parts = urlsplit(self.uri)  # `parse` has checked its form (validation.check_model)
        return parts.netloc, parts.path.lstrip("/")


METRIC_CPU = "cpu"
METRIC_INFLIGHT_REQUESTS = "inflightRequests"
DEFAULT_TARGET_CPU_UTILIZATION = 70  # not a CRD default: it would contradict metric inflightRequests


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int = DEFAULT_TARGET_CPU_UTILIZATION
    metric: str = METRIC_CPU
    target_inflight_requests: float | None = None
    behavior: Mapping[str, Any] = field(default_factory=dict)  # the user's override, as written

    @property
    def on_cpu(self) -> bool:
        return self.metric == METRIC_CPU


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class ServerSettings:
    image: str | None = None
    threads: int | None = None
    max_batch_size: int | None = None
    max_delay_ms: int | None = None
    auth_secret: SecretKey | None = None
    # None: not set, the server's own default applies (and the pod template does not mention it).
    max_connection_requests: int | None = None
    max_connection_age: float | None = None  # seconds


@dataclass(frozen=True)
class Placement:
    """What a platform team sets on pods: passed through to the pod spec unchanged."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    priority_class_name: str | None = None
    env: tuple[Mapping[str, Any], ...] = ()
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)


STRATEGY_CANARY = "Canary"
STRATEGY_RECREATE = "Recreate"


@dataclass(frozen=True)
class Step:
    """One canary step: exactly one of the four is set (the CRD checks it). A shadow step sets
    `shadow` (the percent of requests copied) and `pause` (its duration, math.inf: until promoted)."""

    set_weight: int | None = None
    pause: float | None = None  # seconds; math.inf waits for a manual promote
    analysis: bool = False
    shadow: int | None = None  # percent of the stable revision's requests copied to the canary

    def describe(self) -> str:
        """The step as a user would say it; status, events and the kubectl plugin all show this."""
        if self.set_weight is not None:
            return f"setWeight: {self.set_weight}%"
        if self.analysis:
            return "analysis"
        if self.shadow is not None:
            if self.pause is None or self.pause == float("inf"):
                return f"shadow: {self.shadow}% until promoted"
            return f"shadow: {self.shadow}% for {format_duration(self.pause)}"
        if self.pause is None or self.pause == float("inf"):
            return "pause: until promoted"
        return f"pause: {format_duration(self.pause)}"


@dataclass(frozen=True)
class RolloutSpec:
    strategy: str = STRATEGY_CANARY
    steps: tuple[Step, ...] = ()
    scale_down_delay: float = 30.0
    http_route: str | None = None
    analysis: Mapping[str, Any] | None = None  # read by analysis.parse_settings

    @property
    def recreate(self) -> bool:
        return self.strategy == STRATEGY_RECREATE


def parse_step(item: Any, index: int = 0) -> Step:
    """One step of spec.rollout.canary.steps; SpecError for one that is none of the three."""
    item = item if isinstance(item, Mapping) else {}
    if "setWeight" in item:
        return Step(set_weight=int(item["setWeight"]))
    if "analysis" in item:
        return Step(analysis=True)
    if "pause" in item:
        return Step(pause=_step_duration(item.get("pause"), f"spec.rollout.canary.steps[{index}].pause"))
    if "shadow" in item:
        shadow = item.get("shadow") or {}
        path = f"spec.rollout.canary.steps[{index}].shadow"
        percent = shadow.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
            raise SpecError(f"{path}.percent must be a whole percentage from 1 to 100, not {percent!r}")
        return Step(shadow=percent, pause=_step_duration(shadow, path))
    raise SpecError(f"spec.rollout.canary.steps[{index}] must be one of setWeight, pause, analysis or shadow")


def _step_duration(raw: Any, path: str) -> float:
    """A step's `duration` in seconds; none is math.inf (until promoted)."""
    duration = (raw or {}).get("duration") if isinstance(raw, Mapping) else None
    try:
        return float("inf") if duration is None else parse_duration(duration)
    except ValueError as exc:
        raise SpecError(f"{path}.duration: {exc}") from None


def _steps(raw: Any) -> tuple[Step, ...]:
    return tuple(parse_step(item, index) for index, item in enumerate(raw or ()))


def _rollout(raw: Mapping[str, Any]) -> RolloutSpec:
    canary = raw.get("canary") or {}
    gateway = (canary.get("trafficRouting") or {}).get("gatewayAPI") or {}
    return RolloutSpec(
        strategy=raw.get("strategy") or STRATEGY_CANARY,
        steps=_steps(canary.get("steps")),
        scale_down_delay=float(canary.get("scaleDownDelaySeconds", 30)),
        http_route=gateway.get("httpRoute") or None,
        analysis=canary.get("analysis"),
    )


def _autoscaling(raw: Mapping[str, Any]) -> Autoscaling:
    target = raw.get("targetInflightRequests")
    return Autoscaling(
        min_replicas=int(raw.get("minReplicas", 1)),
        max_replicas=int(raw["maxReplicas"]),
        target_cpu_utilization=int(raw.get("targetCPUUtilization", DEFAULT_TARGET_CPU_UTILIZATION)),
        metric=raw.get("metric") or METRIC_CPU,
        target_inflight_requests=float(target) if target is not None else None,
        behavior=raw.get("behavior") or {},
    )


@dataclass(frozen=True)
class ModelDeployment:
    name: str
    namespace: str
    uid: str
    generation: int
    model: ModelSource
    replicas: int | None
    autoscaling: Autoscaling | None
    resources: Mapping[str, Mapping[str, Any]]
    server: ServerSettings
    placement: Placement
    status: Mapping[str, Any]
    rollout: RolloutSpec = RolloutSpec()
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def desired_replicas(self) -> int | None:
        """The fixed size, or None when an autoscaler owns the size."""
        if self.autoscaling is not None:
            return None
        return 1 if self.replicas is None else self.replicas

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def object_reference(self) -> dict[str, Any]:
        """What Kubernetes Events point at."""
        return {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }


def _s3(raw: Mapping[str, Any]) -> S3Access:
    ref = raw.get("credentialsSecretRef") or {}
    return S3Access(
        endpoint=str(raw["endpoint"]).rstrip("/") if raw.get("endpoint") else None,
        region=raw.get("region") or None,
        addressing=raw.get("addressing") or None,
        credentials_secret=ref.get("name") or None,
    )


def parse(body: Mapping[str, Any]) -> ModelDeployment:
    """Read a ModelDeployment body (as stored by the API server) into typed values."""
    meta = bodies.meta(body)
    spec = body.get("spec") or {}
    name = meta.get("name") or ""
    model = spec.get("model") or {}
    validation.check(name, spec)
    autoscaling = spec.get("autoscaling")
    server = spec.get("server") or {}
    batching = server.get("batching") or {}
    connections = server.get("connections") or {}
    auth = server.get("authSecretRef")
    pod_meta = spec.get("podMetadata") or {}
    return ModelDeployment(
        name=name,
        namespace=meta.get("namespace") or "",
        uid=meta.get("uid") or "",
        generation=int(meta.get("generation") or 0),
        model=ModelSource(
            name=model.get("name") or name,
            version=str(model["version"]),
            uri=str(model["uri"]),
            sha256=model.get("sha256") or None,
            s3=_s3(model.get("s3") or {}) if str(model["uri"]).startswith("s3://") else None,
        ),
        replicas=spec.get("replicas"),
        autoscaling=_autoscaling(autoscaling) if autoscaling else None,
        resources=spec.get("resources") or {},
        server=ServerSettings(
            image=server.get("image") or None,
            threads=server.get("threads"),
            max_batch_size=batching.get("maxBatchSize"),
            max_delay_ms=batching.get("maxDelayMs"),
            auth_secret=SecretKey(name=auth["name"], key=auth.get("key", "token")) if auth else None,
            max_connection_requests=connections.get("maxRequests"),
            max_connection_age=parse_duration(connections["maxAge"]) if "maxAge" in connections else None,
        ),
        placement=Placement(
            node_selector=spec.get("nodeSelector") or {},
            tolerations=tuple(spec.get("tolerations") or ()),
            affinity=spec.get("affinity") or None,
            service_account_name=spec.get("serviceAccountName") or None,
            image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or () if s.get("name")),
            priority_class_name=spec.get("priorityClassName") or None,
            env=tuple(spec.get("env") or ()),
            pod_labels=pod_meta.get("labels") or {},
            pod_annotations=pod_meta.get("annotations") or {},
        ),
        status=bodies.status_of(body),
        rollout=_rollout(spec.get("rollout") or {}),
        annotations=meta.get("annotations") or {},
    )
