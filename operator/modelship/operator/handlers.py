"""The Kopf layer: watch ModelDeployments and their children, queue reconciles. Thin on purpose.

Only `@kopf.on.event` handlers watch resources: each event updates the operator's cache
(`cache.ObjectCache`) and asks for a reconcile of the owning ModelDeployment. For this
handler kind Kopf stores nothing on our objects: no finalizers, no `last-handled-configuration`
annotation, no `status.kopf`. Diff-based handlers (on.create/update/field), timers and daemons
would add some, so the operator has none; nor does it use `@kopf.index` (see `cache`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
from modelship.operator import auth, kinds, naming, watching
from modelship.operator import client as kube
from modelship.operator.cache import MODEL_DEPLOYMENT, ObjectCache
from modelship.operator.config import OperatorConfig
from modelship.operator.reconciler import Key, Reconciler
from modelship.operator.rollout import measuring
from modelship.operator.spec import ModelDeployment
from modelship.operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
MANAGED_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
DEFAULT_PEERING = "modelship"


@dataclass
class Runtime:
    config: OperatorConfig
    client: kube.KubeClient
    cache: ObjectCache
    reconciler: Reconciler
    queue: WorkQueue[Key]
    measurer: measuring.Measurer
    served: watching.Served


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
    settings: kopf.OperatorSettings,
    config: OperatorConfig,
    client: kube.KubeClient,
    params: Mapping[str, Any],
) -> None:
    """Make peering work out of the box: a named peering object that exists, a priority that
    differs between instances, and no activity before the peers are known."""
    if settings.peering.standalone:
        return
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
        if not patterns or not all(watching.is_literal(p) for p in patterns):
            logger.warning("namespaces %s: peering needs a KopfPeering %r in each of them", patterns, name)
            return
        objects = [
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": ns}}
            for ns in patterns
        ]
    for obj in objects:
        await client.apply(obj, force=False)
    # Start paused until the peering object is read: two instances never act at once.
    settings.peering.mandatory = True
    logger.info("peering %r with priority %d", name, settings.peering.priority)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig.from_env()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Kopf logs every on.event call at INFO; with pods churning that drowns our own lines.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.posting.level = logging.WARNING  # routine logs are not Events; decisions are posted explicitly
    settings.posting.reporting_component = "modelship-operator"
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "modelship-operator")
    settings.posting.event_name_prefix = "modelship-"
    settings.execution.max_workers = 4  # no sync handlers; keep the thread pool small
    # Kopf keeps a worker, and the last event it handled, per object until the worker idles
    # out: at 4000 objects listed at once, the default 5 s doubles the memory of a restart.
    settings.queueing.idle_timeout = 0.5
    # Kopf's own LIST in pages too: one response of 1000 pods is ~10 MB of JSON parsed at once
    # (measured at 1000 models: a restart peaks at 163 MiB instead of 282).
    settings.watching.chunk_size = 250
    # Status-based storages: should a diff-based handler ever be added, its state must not
    # land in metadata.annotations, where GitOps tools would see it as drift.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    for child in kinds.CHILDREN:
        settings.watching.label_selectors[child.resource.selector] = MANAGED_SELECTOR

    params = _cli_params()
    connections = max(8, config.concurrency * 2)
    client = kube.KubeClient(lambda: auth.login(settings=settings), connections=connections)
    await _prepare_peering(settings, config, client, params)

    cache = ObjectCache()
    served = watching.Served.from_options(
        settings.peering.clusterwide, list(params.get("namespaces") or ()), config.ignore_namespaces
    )
    listed = await watching.prefill(client, cache, served, MANAGED_SELECTOR)
    measurer = measuring.Measurer(config.prometheus_url)
    reconciler = Reconciler(
        client, cache, post_event, config, measure=measurer, settings_of=measuring.settings_of
    )
    queue: WorkQueue[Key] = WorkQueue(reconciler.reconcile, concurrency=config.concurrency)
    memo.runtime = Runtime(
        config=config,
        client=client,
        cache=cache,
        reconciler=reconciler,
        queue=queue,
        measurer=measurer,
        served=served,
    )
    logger.info(
        "server image %s, %d reconciles at once, %d children listed",
        config.server_image,
        config.concurrency,
        listed,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.queue.close()
        await runtime.client.close()
        await runtime.measurer.close()
        logger.info("api writes: %s", dict(runtime.client.writes))


@kopf.on.probe(id="reconciles")
def probe(memo: kopf.Memo, **_: Any) -> dict[str, int | bool]:
    runtime: Runtime = memo.runtime
    return {
        "reconciles": runtime.queue.reconciles,
        "errors": runtime.queue.errors,
        "pending": runtime.queue.pending,
        "writes": sum(runtime.client.writes.values()),
        "cached": len(runtime.cache),
        "synced": runtime.cache.synced,
    }


def _changed(memo: Any, kind: str, event: Mapping[str, Any], body: kopf.Body) -> None:
    """Keep the cache current, tell the reconciler which version it now holds, reconcile."""
    runtime: Runtime = memo.runtime
    if runtime.served.ignored and not runtime.served.includes(body.metadata.namespace or ""):
        return
    event_type = event.get("type")
    key = runtime.cache.apply_event(kind, event_type, body)
    if key is None:
        return
    version = None if event_type == "DELETED" else body.metadata.get("resourceVersion")
    runtime.reconciler.observe(key, kind, body.metadata.name or "", version)
    # A spec not acted on yet goes before routine refreshes (a pod became ready).
    urgent = (
        kind == MODEL_DEPLOYMENT
        and event_type != "DELETED"
        and body.metadata.get("generation") != body.status.get("observedGeneration")
    )
    runtime.queue.request(key, urgent=urgent)


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def model_deployment_changed(event: Mapping[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
    _changed(memo, MODEL_DEPLOYMENT, event, body)


def _watch_child(kind: str, selector: tuple[str, str] | tuple[str, str, str]) -> None:
    async def child_changed(event: Mapping[str, Any], body: kopf.Body, memo: Any, **_: Any) -> None:
        _changed(memo, kind, event, body)

    kopf.on.event(*selector, labels=MANAGED, id=f"{kind.lower()}-changed")(child_changed)


for _child in kinds.CHILDREN:
    _watch_child(_child.kind, _child.resource.selector)
