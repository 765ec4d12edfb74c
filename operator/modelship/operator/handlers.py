"""The Kopf layer: watch ModelDeployments and their children, queue reconciles. Thin on purpose.

Only level-triggered handler kinds are used: `@kopf.index` keeps an in-memory cache of each
watched kind (Kopf finishes listing every indexed kind before any handler runs, which makes
a restart see the whole world before it decides anything), and `@kopf.on.event` turns every
change into a reconcile request for the owning ModelDeployment. Kopf stores nothing on our
objects for these handler kinds: no finalizers, no `last-handled-configuration` annotation,
no `status.kopf`; diff-based handlers (on.create/update/field), timers and daemons would add
some, so the operator has none.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
from modelship.operator import auth, naming, observed
from modelship.operator import client as kube
from modelship.operator.config import OperatorConfig
from modelship.operator.decisions import Children
from modelship.operator.reconciler import Key, Reconciler
from modelship.operator.spec import ModelDeployment
from modelship.operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
MANAGED_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
CHILD_KINDS = (
    ("apps", "v1", "deployments"),
    ("v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("v1", "pods"),
)
DEFAULT_PEERING = "modelship"
INDICES = ("model_deployments", "deployments", "services", "autoscalers", "pods")


@dataclass
class Runtime:
    config: OperatorConfig
    client: kube.KubeClient
    reconciler: Reconciler
    queue: WorkQueue[Key]


class IndexCache:
    """The reconciler's view of the cluster, read from Kopf's indices."""

    def __init__(self, indices: Mapping[str, kopf.Index[Any, Any]]) -> None:
        self._mds = indices["model_deployments"]
        self._deployments = indices["deployments"]
        self._services = indices["services"]
        self._autoscalers = indices["autoscalers"]
        self._pods = indices["pods"]

    def model_deployment(self, key: Key) -> Mapping[str, Any] | None:
        store = self._mds.get(key)
        return next(iter(store), None) if store else None

    def children(self, key: Key) -> Children:
        def values(index: kopf.Index[Any, Any]) -> list[Mapping[str, Any]]:
            store = index.get(key)
            return list(store) if store else []

        def expanded(index: kopf.Index[Any, Any]) -> list[Mapping[str, Any]]:
            return [observed.expand(body) for body in values(index)]

        return Children(
            deployments=expanded(self._deployments),
            services=expanded(self._services),
            autoscalers=expanded(self._autoscalers),
            pods=values(self._pods),
        )


def post_event(md: ModelDeployment, type: str, reason: str, message: str) -> None:
    ref = md.object_reference()
    body = {
        "apiVersion": ref["apiVersion"],
        "kind": ref["kind"],
        "metadata": {"name": ref["name"], "namespace": ref["namespace"], "uid": ref["uid"]},
    }
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type, reason=reason, message=message[:1024])


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return auth.login(**kwargs)


def _cli_params() -> dict[str, Any]:
    """`kopf run`'s own options (namespaces, peering, priority), when run from its CLI."""
    try:
        import click

        context = click.get_current_context(silent=True)
    except ImportError:  # pragma: no cover - click comes with kopf
        return {}
    return dict(context.params) if context is not None else {}


async def _prepare_peering(
    settings: kopf.OperatorSettings, config: OperatorConfig, client: kube.KubeClient
) -> None:
    """Make peering work out of the box: a named peering object that exists, a priority that
    differs between instances, and no activity before the peers are known."""
    if settings.peering.standalone:
        return
    params = _cli_params()
    if not params.get("peering_name"):
        settings.peering.name = DEFAULT_PEERING
    if params.get("priority") is None:
        priority = config.peering_priority
        settings.peering.priority = priority if priority is not None else random.randint(1, 2**31 - 1)
    settings.peering.lifetime = config.peering_lifetime
    name = settings.peering.name
    if settings.peering.clusterwide:
        objects = [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}]
    else:
        patterns = list(params.get("namespaces") or ())
        literal = [ns for ns in patterns if not any(c in ns for c in "*?!,")]
        if len(literal) != len(patterns) or not patterns:
            logger.warning("namespaces %s: peering needs a KopfPeering %r in each of them", patterns, name)
            return
        objects = [
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": ns}}
            for ns in literal
        ]
    for obj in objects:
        await client.apply(obj, force=False)
    # Start paused until the peering object is read: two instances never act at once.
    settings.peering.mandatory = True
    logger.info("peering %r with priority %d", name, settings.peering.priority)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config = OperatorConfig.from_env()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Kopf logs every on.event call at INFO; with pods churning that drowns our own lines.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.posting.level = logging.WARNING  # routine logs are not Events; decisions are posted explicitly
    settings.posting.reporting_component = "modelship-operator"
    settings.posting.event_name_prefix = "modelship-"
    settings.execution.max_workers = 4  # no sync handlers; keep the thread pool small
    settings.watching.inactivity_timeout = 70.0
    # Status-based storages: should a diff-based handler ever be added, its state must not
    # land in metadata.annotations, where GitOps tools would see it as drift.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    for selector in CHILD_KINDS:
        settings.watching.label_selectors[selector] = MANAGED_SELECTOR

    connections = max(8, config.concurrency * 2)
    client = kube.KubeClient(lambda: auth.login(settings=settings), connections=connections)
    await _prepare_peering(settings, config, client)
    indices = {name: kwargs[name] for name in INDICES}
    reconciler = Reconciler(client, IndexCache(indices), post_event, config)
    queue: WorkQueue[Key] = WorkQueue(reconciler.reconcile, concurrency=config.concurrency)
    memo.runtime = Runtime(config=config, client=client, reconciler=reconciler, queue=queue)
    logger.info("server image %s, %d reconciles at once", config.server_image, config.concurrency)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.queue.close()
        await runtime.client.close()
        logger.info("api writes: %s", dict(runtime.client.writes))


@kopf.on.probe(id="reconciles")
def probe(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    runtime: Runtime = memo.runtime
    return {
        "reconciles": runtime.queue.reconciles,
        "errors": runtime.queue.errors,
        "pending": runtime.queue.pending,
        "writes": sum(runtime.client.writes.values()),
    }


# ---- the cache: one index per watched kind, keyed by (namespace, ModelDeployment name)


def _owner(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    owner = labels.get(naming.LABEL_MODEL_DEPLOYMENT)
    return (namespace or "", owner) if owner else None


@kopf.index(naming.GROUP, naming.VERSION, naming.PLURAL)
async def model_deployments(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace or "", name): observed.trim_object(body)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
async def deployments(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any] | None:
    owner = _owner(namespace, labels)
    return {owner: observed.compact(body)} if owner else None


@kopf.index("v1", "services", labels=MANAGED)
async def services(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any] | None:
    owner = _owner(namespace, labels)
    return {owner: observed.compact(body)} if owner else None


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED)
async def autoscalers(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any] | None:
    owner = _owner(namespace, labels)
    return {owner: observed.compact(body)} if owner else None


@kopf.index("v1", "pods", labels=MANAGED)
async def pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any] | None:
    owner = _owner(namespace, labels)
    return {owner: observed.trim_pod(body)} if owner else None


# ---- events: every change of a ModelDeployment or a child asks for a reconcile of the owner


def _seen(memo: Any, key: Key, event: Mapping[str, Any], body: kopf.Body) -> None:
    """Tell the reconciler which version of an object the cache now holds, then reconcile."""
    runtime: Runtime = memo.runtime
    version = None if event.get("type") == "DELETED" else body.metadata.get("resourceVersion")
    runtime.reconciler.observe(key, str(body.get("kind", "")), body.metadata.name or "", version)
    runtime.queue.request(key)


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def model_deployment_changed(
    namespace: str | None, name: str, event: Mapping[str, Any], body: kopf.Body, memo: Any, **_: Any
) -> None:
    _seen(memo, (namespace or "", name), event, body)


async def _child_changed(
    namespace: str | None, labels: Mapping[str, str], event: Mapping[str, Any], body: kopf.Body, memo: Any
) -> None:
    owner = _owner(namespace, labels)
    if owner is not None:
        _seen(memo, owner, event, body)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_changed(
    namespace: str | None, labels: Mapping[str, str], event: Any, body: kopf.Body, memo: Any, **_: Any
) -> None:
    await _child_changed(namespace, labels, event, body, memo)


@kopf.on.event("v1", "services", labels=MANAGED)
async def service_changed(
    namespace: str | None, labels: Mapping[str, str], event: Any, body: kopf.Body, memo: Any, **_: Any
) -> None:
    await _child_changed(namespace, labels, event, body, memo)


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED)
async def autoscaler_changed(
    namespace: str | None, labels: Mapping[str, str], event: Any, body: kopf.Body, memo: Any, **_: Any
) -> None:
    await _child_changed(namespace, labels, event, body, memo)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_changed(
    namespace: str | None, labels: Mapping[str, str], event: Any, body: kopf.Body, memo: Any, **_: Any
) -> None:
    await _child_changed(namespace, labels, event, body, memo)
