"""How fast the operator turns ModelDeployments into serving pods, and what it costs.

For each N (default 100 and 1000): start the operator (`kopf run -m modelship.operator`,
watching one fresh namespace), create N ModelDeployments at once, and measure from each
create to its children (Deployment and Service) existing and to its `Ready` condition; then
the operator's RSS and CPU seconds; then restart it and count the API writes its resync
makes (target: 0), from the per-object "reconciled" lines it logs on its first pass.

Pods run on KWOK nodes (Running and Ready without containers). Every ModelDeployment has
one replica (`--replicas`); the bench adds tainted KWOK nodes of its own (100 pods each) so
that the pods fit, and removes them at the end. Run it with no other Modelship operator
watching the cluster. The machine's cores are shared by the operator, the whole control
plane (etcd, API server, controllers, scheduler, KWOK) and the bench's own watches.

    .venv/bin/python bench/reconcile.py            # N = 100 and 1000
    .venv/bin/python bench/reconcile.py --count 100
    .venv/bin/python bench/reconcile.py --count 100 --replicas 0   # no pods: the operator alone
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines
from modelship.operator import auth, kinds, manifests, spec
from modelship.operator import client as kube

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import apply_crds, delete_namespace, wait  # noqa: E402

from tests.conftest import fresh_namespace_name  # noqa: E402
from tests.operator_process import KopfProcess  # noqa: E402

GROUP, VERSION, PLURAL = "modelship.io", "v1alpha1", "modeldeployments"
BENCH_LABEL = "modelship.io/bench"
PODS_PER_NODE = 100
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


SINGLE_APPLIES = 20


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class Operator(KopfProcess):
    """The operator watching the bench's namespace, in a peering of its own."""

    stop_timeout = 60.0

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path) -> None:
        super().__init__(log_path, name="bench")
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def start(self) -> None:
        self.launch(
            [f"--namespace={self.namespace}", "--peering=modelship-bench"],
            {"KUBECONFIG": self.kubeconfig, "MODELSHIP_PEERING_PRIORITY": "100"},
            ready="Resuming operations",
            timeout=60,
        )

    def first_reconciles(self) -> list[dict[str, Any]]:
        return [line for line in self.snapshot() if line.get("first") is True]


class Watcher:
    """First time each object is seen (Deployments, Services) or becomes Ready (ModelDeployments)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.seen: dict[str, dict[str, float]] = {"deployment": {}, "service": {}, "ready": {}}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.listed: dict[str, threading.Event] = {kind: threading.Event() for kind in self.seen}

    def start(self) -> None:
        apps, core, custom = (
            client.AppsV1Api(self.api),
            client.CoreV1Api(self.api),
            client.CustomObjectsApi(self.api),
        )
        streams = {
            "deployment": lambda **kw: apps.list_namespaced_deployment(self.namespace, **kw),
            "service": lambda **kw: core.list_namespaced_service(self.namespace, **kw),
            "ready": lambda **kw: custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, **kw
            ),
        }
        for kind, call in streams.items():
            thread = threading.Thread(target=self._watch, args=(kind, call), daemon=True)
            thread.start()
            self.threads.append(thread)
        for kind, listed in self.listed.items():
            if not listed.wait(60):
                raise TimeoutError(f"the {kind} watch did not start")

    def _watch(self, kind: str, call: Any) -> None:
        # Raw JSON: deserialising a thousand Deployments into client models would cost more CPU
        # than the operator itself on a 2-core machine. List first, then watch from the list's
        # version, so that no event between the two is lost.
        listing = json.loads(call(_preload_content=False).data)
        version = listing["metadata"]["resourceVersion"]
        self.listed[kind].set()
        while not self.stop.is_set():
            response = call(watch=True, resource_version=version, timeout_seconds=30, _preload_content=False)
            try:
                for line in iter_resp_lines(response):
                    now = time.monotonic()
                    event = json.loads(line)
                    body = event.get("object") or {}
                    version = (body.get("metadata") or {}).get("resourceVersion", version)
                    labels = (body.get("metadata") or {}).get("labels") or {}
                    if kind == "ready":
                        owner = body["metadata"]["name"]
                        generation = body["metadata"].get("generation")
                        for condition in (body.get("status") or {}).get("conditions") or ():
                            if (
                                condition["type"] == "Ready"
                                and condition["status"] == "True"
                                and condition.get("observedGeneration") == generation
                            ):
                                self.seen[kind].setdefault(owner, now)
                    else:
                        owner = labels.get("modelship.io/model-deployment")
                        if owner and event.get("type") == "ADDED":
                            self.seen[kind].setdefault(owner, now)
                    if self.stop.is_set():
                        break
            finally:
                response.release_conn()


def first_reconcile_breakdown(
    lines: list[dict[str, Any]], created: dict[str, float]
) -> tuple[list[float], list[float]]:
    """From the operator's log: seconds from each create to its first reconcile starting (time
    in Kopf and in the operator's queue) and how long that reconcile took (mostly API calls)."""
    waited, took = [], []
    for line in lines:
        message = str(line.get("message", ""))
        if not (message.startswith("reconciled ") and line.get("first") is True):
            continue
        name = str(line["md"]).split("/", 1)[1]
        duration = float(message.split(" in ", 1)[1].split("s:", 1)[0])
        ended = datetime.datetime.fromisoformat(line["timestamp"]).timestamp()
        waited.append(ended - duration - created[name])
        took.append(duration)
    return waited, took


def baseline(kubeconfig: str, core: client.CoreV1Api, count: int, concurrency: int) -> list[float]:
    """The cluster's own floor: the same Deployments and Services applied directly, as many at
    once as the operator would, without the operator. Seconds from the burst's start to each
    pair existing."""

    namespace = fresh_namespace_name("bench-floor")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))

    async def burst() -> list[float]:
        os.environ["KUBECONFIG"] = kubeconfig
        api = kube.KubeClient(lambda: auth.login(), connections=concurrency * 2)
        gate = asyncio.Semaphore(concurrency)
        done: list[float] = []
        started = time.monotonic()

        async def pair(index: int) -> None:
            body = model_deployment(f"model-{index:04d}", 0)
            body["metadata"] |= {"namespace": namespace, "uid": "0", "generation": 1}
            md = spec.parse(body)
            revision = manifests.desired_revision(md, server_image="modelship/server:0.1.0")
            objects = [manifests.revision_deployment(md, revision, 0), manifests.service(md)]
            for obj in objects:
                obj["metadata"].pop("ownerReferences")
            async with gate:
                await asyncio.gather(*(api.apply(obj) for obj in objects))
            done.append(time.monotonic() - started)

        try:
            await asyncio.gather(*(pair(index) for index in range(count)))
        finally:
            await api.delete(
                kinds.ResourceKind("", "v1", "namespaces", "Namespace", namespaced=False), "", namespace
            )
            await api.close()
        return done

    return asyncio.run(burst())


def add_nodes(core: client.CoreV1Api, count: int) -> list[str]:
    names = []
    for index in range(count):
        name = f"modelship-bench-{index}"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "type": "kwok", BENCH_LABEL: "true"},
            },
            "spec": {"taints": [{"key": BENCH_LABEL, "value": "true", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "32", "memory": "128Gi", "pods": str(PODS_PER_NODE)},
                "capacity": {"cpu": "32", "memory": "128Gi", "pods": str(PODS_PER_NODE)},
            },
        }
        try:
            core.create_node(node)
        except ApiException as exc:
            if exc.status != 409:
                raise
        names.append(name)

    def all_ready() -> bool:
        for name in names:
            status = core.read_node(name).status
            conditions = (status.conditions if status else None) or []
            if not any(c.type == "Ready" and c.status == "True" for c in conditions):
                return False
        return True

    wait(all_ready, 120, f"{count} bench nodes to be Ready", interval=0.5)
    return names


def model_deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "version": "1",
                "uri": f"https://models.example.com/{name}/1/model.onnx",
                "sha256": SHA,
            },
            "replicas": replicas,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "nodeSelector": {BENCH_LABEL: "true"},
            "tolerations": [{"key": BENCH_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def run(count: int, replicas: int, kubeconfig: str, api: client.ApiClient, log_dir: Path) -> dict[str, Any]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = fresh_namespace_name(f"bench-{count}x{replicas}")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    operator = Operator(kubeconfig, namespace, log_dir / f"operator-{count}x{replicas}.log")
    watcher = Watcher(api, namespace)
    try:
        operator.start()
        idle = operator.usage()
        watcher.start()

        applied: dict[str, float] = {}
        walls: dict[str, float] = {}

        def create(index: int) -> None:
            name = f"model-{index:04d}"
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, model_deployment(name, replicas)
            )
            applied[name] = time.monotonic()
            walls[name] = time.time()

        log(f"N={count}: creating {count} ModelDeployments in {namespace}")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(count)))
        created_in = time.monotonic() - started

        wait(lambda: len(watcher.seen["ready"]) >= count, 900, f"{count} ModelDeployments to be Ready", 0.5)
        all_ready_in = time.monotonic() - started
        busy = operator.usage()
        waited, took = first_reconcile_breakdown(operator.snapshot(), walls)

        to_children = [
            max(watcher.seen["deployment"][name], watcher.seen["service"][name]) - applied[name]
            for name in applied
        ]
        to_ready = [watcher.seen["ready"][name] - applied[name] for name in applied]

        # The everyday case: one more model applied while N are already there (a commit that
        # Argo CD syncs), one after another, each timed from its create to its children.
        log(f"N={count}: {SINGLE_APPLIES} more, one at a time")
        singles = []
        for index in range(count, count + SINGLE_APPLIES):
            name = f"model-{index:04d}"
            create(index)
            wait(
                lambda name=name: name in watcher.seen["deployment"] and name in watcher.seen["service"],
                60,
                f"the children of {name}",
                0.005,
            )
            singles.append(
                max(watcher.seen["deployment"][name], watcher.seen["service"][name]) - applied[name]
            )
        total = count + SINGLE_APPLIES
        wait(lambda: len(watcher.seen["ready"]) >= total, 300, f"{total} ModelDeployments to be Ready", 0.5)

        log(f"N={count}: all Ready; restarting the operator for an idle resync")
        operator.stop()
        restarted = time.monotonic()
        operator.start()
        lines = wait(
            lambda: (found := operator.first_reconciles()) and len(found) >= total and found,
            600,
            f"the restarted operator to reconcile {total} objects",
            0.5,
        )
        resync_s = time.monotonic() - restarted
        after_resync = operator.usage()
        return {
            "count": count,
            "replicas": replicas,
            "create_all_s": created_in,
            "all_ready_s": all_ready_in,
            "children_p50_s": statistics.median(to_children),
            "children_p99_s": percentile(to_children, 0.99),
            "ready_p50_s": statistics.median(to_ready),
            "ready_p99_s": percentile(to_ready, 0.99),
            "single_p50_s": statistics.median(singles),
            "single_p99_s": percentile(singles, 0.99),
            "queued_p50_s": statistics.median(waited),
            "queued_p99_s": percentile(waited, 0.99),
            "first_reconcile_p50_s": statistics.median(took),
            "first_reconcile_p99_s": percentile(took, 0.99),
            "idle_rss_mib": idle["rss_mib"],
            "rss_mib": busy["rss_mib"],
            "peak_rss_mib": busy["peak_rss_mib"],
            "cpu_s": busy["cpu_s"],
            "resync_writes": sum(int(line.get("writes", 0)) for line in lines),
            "resync_s": resync_s,
            "resync_rss_mib": after_resync["rss_mib"],
            "resync_cpu_s": after_resync["cpu_s"],
        }
    finally:
        watcher.stop.set()
        operator.stop()
        log(f"N={count}: deleting {namespace}")
        delete_namespace(core, namespace, 600, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, action="append", help="ModelDeployments to create (repeatable)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="pods per ModelDeployment (0: no pods at all)"
    )
    parser.add_argument("--kubeconfig", default=str(ROOT / ".cluster" / "kubeconfig"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    counts = args.count or [100, 1000]

    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", "import modelship.operator"], check=True, cwd=ROOT
    )
    apply_crds(args.kubeconfig)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core = client.CoreV1Api(api)
    log_dir = ROOT / ".build" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    nodes = add_nodes(core, math.ceil(max(counts) * args.replicas / PODS_PER_NODE) + 1)
    results = []
    try:
        for count in counts:
            results.append(run(count, args.replicas, args.kubeconfig, api, log_dir))
            floor = baseline(args.kubeconfig, core, count, int(os.environ.get("MODELSHIP_CONCURRENCY", "16")))
            results[-1] |= {"floor_p50_s": statistics.median(floor), "floor_p99_s": percentile(floor, 0.99)}
    finally:
        for name in nodes:
            try:
                core.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    print(
        f"operator reconcile benchmark on KWOK nodes ({os.cpu_count()} CPUs shared with the control plane, "
        f"{args.replicas} replica(s) per ModelDeployment)"
    )
    header = (
        f"{'N':>5} {'children p50':>13} {'children p99':>13} {'Ready p50':>10} {'Ready p99':>10} "
        f"{'all Ready':>10} {'RSS MiB':>8} {'peak MiB':>9} {'CPU s':>7} {'resync writes':>14} {'resync s':>9}"
    )
    print(header)
    creates = ", ".join(f"N={r['count']}: {r['create_all_s']:.1f}s" for r in results)
    print("children: create -> Deployment and Service exist; Ready: create -> condition Ready=True")
    for r in results:
        print(
            f"{r['count']:>5} {r['children_p50_s']:>12.3f}s {r['children_p99_s']:>12.3f}s "
            f"{r['ready_p50_s']:>9.2f}s {r['ready_p99_s']:>9.2f}s {r['all_ready_s']:>9.1f}s "
            f"{r['rss_mib']:>8.0f} {r['peak_rss_mib']:>9.0f} {r['cpu_s']:>7.1f} "
            f"{r['resync_writes']:>14d} {r['resync_s']:>8.1f}s"
        )
    print(f"creating the ModelDeployments took {creates} (8 client threads)")
    for r in results:
        print(
            f"N={r['count']}: create -> first reconcile starts p50 {r['queued_p50_s']:.3f}s "
            f"p99 {r['queued_p99_s']:.3f}s; that reconcile takes p50 {r['first_reconcile_p50_s']:.3f}s "
            f"p99 {r['first_reconcile_p99_s']:.3f}s; RSS idle {r['idle_rss_mib']:.0f} MiB, "
            f"after the resync {r['resync_rss_mib']:.0f} MiB"
        )
        print(
            f"N={r['count']}: one more ModelDeployment at a time with N present ({SINGLE_APPLIES} of them): "
            f"create -> children p50 {r['single_p50_s']:.3f}s p99 {r['single_p99_s']:.3f}s"
        )
        print(
            f"N={r['count']}: floor without the operator (the same Deployments and Services applied "
            f"directly, as many at once): p50 {r['floor_p50_s']:.3f}s p99 {r['floor_p99_s']:.3f}s"
        )
    print("targets: children p99 < 1 s at N=100; RSS < 250 MiB at N=1000; 0 writes on an idle resync")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
