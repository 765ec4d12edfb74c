"""How fast a bad canary is rolled back, and how many requests fail meanwhile.

One run on the local cluster (`hack/cluster up`, which also starts Prometheus on 127.0.0.1:19090):
start the operator (`kopf run -m modelship.operator --standalone`, watching one fresh namespace
whose pods land on KWOK nodes), create a ModelDeployment at version 1 with 4 replicas and the
steps `setWeight: 25, pause: {}`, wait until it is Ready, and ask for version 2. KWOK pods serve
nothing, so the traffic is made here: two real inference servers (`python -m modelship.server`),
one per revision (a healthy model for the stable one, for the canary a model that answers 500 to
some requests), scraped by Prometheus with the `namespace` and `pod` labels a cluster gives them.
A client routes requests the way kube-proxy would: round-robin over the ready endpoints of the
Service's EndpointSlices (watched), each endpoint's pod mapped through its revision label to the
local server of that revision. Every other request that reaches the canary fails.

Measured on this process's clock: t0, the first failing response; t1, the first moment the
EndpointSlices hold no ready canary endpoint (all traffic back on stable); the requests that
failed between the two; and when the operator's status showed the first failed measurement, the
aborted revision and the Degraded condition. The machine's cores are shared by the control plane,
the operator, Prometheus, both servers and the client.

    .venv/bin/python bench/rollout.py
    .venv/bin/python bench/rollout.py --interval 5s --failure-limit 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines
from modelship.operator import naming

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import StandaloneOperator as Operator  # noqa: E402
from benchlib import apply_crds, delete_namespace, wait  # noqa: E402

from tests.conftest import KWOK_ONLY, fresh_namespace_name  # noqa: E402
from tests.operator import canary_models  # noqa: E402
from tests.operator.models import manifest, model_spec  # noqa: E402
from tests.prometheus_support import Prometheus, ScrapedServer, ScrapedServers  # noqa: E402

NAME = "fraud"
REPLICAS = 4
WEIGHT = 25


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class ListWatch:
    """The objects of one list call kept current in a thread: a list, then a watch from its
    resourceVersion (so that no change between the two is lost), relisted when the version is
    too old. `changed(objects, now)` is called in that thread after the list and every event,
    `now` being when this process learnt of it."""

    def __init__(
        self, what: str, call: Callable[..., Any], changed: Callable[[dict[str, Any], float], None]
    ) -> None:
        self.what = what
        self.call = call
        self.changed = changed
        self.objects: dict[str, Any] = {}
        self.listed = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.listed.wait(60):
            raise TimeoutError(f"the {self.what} watch did not start: {self.error!r}")

    def stop(self) -> None:
        self.stopped.set()

    def check(self) -> None:
        """Raise what stopped the thread: from then on `objects` would silently grow stale."""
        if self.error is not None:
            raise RuntimeError(f"the {self.what} watch failed") from self.error

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                listing = json.loads(self.call(_preload_content=False).data)
                self.objects = {item["metadata"]["name"]: item for item in listing["items"]}
                self.changed(self.objects, time.monotonic())
                self.listed.set()
                self._watch(listing["metadata"]["resourceVersion"])
        except BaseException as exc:
            self.error = exc
            if not self.stopped.is_set():
                log(f"the {self.what} watch failed: {exc!r}")

    def _watch(self, version: str) -> None:
        """Follow events until the version is too old (then the caller relists) or we stop."""
        while not self.stopped.is_set():
            response = self.call(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=30,
                _preload_content=False,
            )
            try:
                for line in iter_resp_lines(response):
                    now = time.monotonic()
                    event = json.loads(line)
                    body = event["object"]
                    if event["type"] == "ERROR":
                        if body.get("code") == 410:
                            return
                        raise RuntimeError(f"{self.what} watch: {body}")
                    version = body["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    name = body["metadata"]["name"]
                    if event["type"] == "DELETED":
                        self.objects.pop(name, None)
                    else:
                        self.objects[name] = body
                    self.changed(self.objects, now)
                    if self.stopped.is_set():
                        return
            finally:
                response.release_conn()


@dataclass(frozen=True)
class Endpoint:
    pod: str
    revision: str


class ServiceEndpoints:
    """The ready endpoints of the model's Service, from its EndpointSlices, with each pod's
    revision; and a timeline of how many ready endpoints each revision had."""

    def __init__(self, core: client.CoreV1Api, discovery: client.DiscoveryV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.revisions: dict[str, str] = {}  # pod -> revision; a pod's labels do not change
        self.ready: tuple[Endpoint, ...] = ()
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self.updated = threading.Condition()
        self.watch = ListWatch(
            "EndpointSlice",
            lambda **kw: discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={NAME}", **kw
            ),
            self._changed,
        )

    def _revision(self, pod: str) -> str | None:
        if pod not in self.revisions:
            try:
                metadata = self.core.read_namespaced_pod(pod, self.namespace).metadata
            except ApiException as exc:
                if exc.status == 404:
                    return None  # gone already: it serves nothing
                raise
            labels = (metadata.labels if metadata else None) or {}
            self.revisions[pod] = labels.get(naming.LABEL_REVISION, "")
        return self.revisions[pod]

    def _changed(self, slices: dict[str, Any], now: float) -> None:
        ready = []
        for body in slices.values():
            for endpoint in body.get("endpoints") or ():
                # An absent `ready` means ready, as kube-proxy reads it.
                target = endpoint.get("targetRef") or {}
                if (endpoint.get("conditions") or {}).get("ready") is False or target.get("kind") != "Pod":
                    continue
                revision = self._revision(target["name"])
                if revision is not None:
                    ready.append(Endpoint(target["name"], revision))
        counts: dict[str, int] = {}
        for endpoint in ready:
            counts[endpoint.revision] = counts.get(endpoint.revision, 0) + 1
        with self.updated:
            self.ready = tuple(sorted(ready, key=lambda e: e.pod))
            if not self.timeline or self.timeline[-1][1] != counts:
                self.timeline.append((now, counts))
            self.updated.notify_all()

    def wait_ready(self, timeout: float) -> tuple[Endpoint, ...]:
        """The ready endpoints, waiting for at least one."""
        with self.updated:
            if not self.updated.wait_for(lambda: self.ready, timeout):
                raise TimeoutError(f"no ready endpoint of Service {NAME} for {timeout:.0f}s")
            return self.ready

    def counts(self) -> dict[str, int]:
        with self.updated:
            return dict(self.timeline[-1][1]) if self.timeline else {}


class RolloutStatus:
    """When the ModelDeployment's status showed what, as this process saw it."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.body: dict[str, Any] = {}
        self.first_seen: dict[str, float] = {}
        self.degraded_message = ""
        self.watch = ListWatch(
            "ModelDeployment",
            lambda **kw: custom.list_namespaced_custom_object(
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                field_selector=f"metadata.name={NAME}",
                **kw,
            ),
            self._changed,
        )

    def _changed(self, objects: dict[str, Any], now: float) -> None:
        self.body = objects.get(NAME) or {}
        status = self.body.get("status") or {}
        rollout = status.get("rollout") or {}
        failures = int((rollout.get("analysis") or {}).get("failures") or 0)
        for count in range(1, failures + 1):
            self.first_seen.setdefault(f"failures>={count}", now)
        if rollout.get("abortedRevision"):
            self.first_seen.setdefault(f"aborted:{rollout['abortedRevision']}", now)
        for condition in status.get("conditions") or ():
            if condition["type"] == "Degraded" and condition["status"] == "True":
                self.first_seen.setdefault("degraded", now)
                self.degraded_message = condition.get("message", "")

    def ready(self) -> bool:
        generation = (self.body.get("metadata") or {}).get("generation")
        return any(
            c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == generation
            for c in (self.body.get("status") or {}).get("conditions") or ()
        )

    def rollout(self) -> dict[str, Any]:
        return dict((self.body.get("status") or {}).get("rollout") or {})


@dataclass
class Response:
    done: float  # monotonic time the response (or the transport error) arrived
    revision: str
    status: int  # 0: no answer at all


@dataclass
class Route:
    server: ScrapedServer
    requests: list[bytes]  # sent in turn
    turn: int = 0

    def next_body(self) -> bytes:
        body = self.requests[self.turn % len(self.requests)]
        self.turn += 1
        return body


@dataclass
class Client:
    """One client thread sending requests one after another, each to the next ready endpoint
    round-robin (kube-proxy picks at random; round-robin gives the same split without the noise)."""

    endpoints: ServiceEndpoints
    routes: dict[str, Route]  # revision -> the local server standing in for its pods
    pause: float
    responses: list[Response] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=60)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("the client thread failed") from self.error

    def _run(self) -> None:
        try:
            self._send()
        except BaseException as exc:
            self.error = exc

    def _send(self) -> None:
        turn = 0
        with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as http:
            while not self.stopped.is_set():
                ready = self.endpoints.wait_ready(timeout=30)
                endpoint = ready[turn % len(ready)]
                turn += 1
                route = self.routes.get(endpoint.revision)
                if route is None:
                    raise RuntimeError(
                        f"pod {endpoint.pod} has revision {endpoint.revision!r}, neither the stable nor "
                        "the canary one (another operator acting in the namespace?)"
                    )
                try:
                    status = http.post(route.server.infer_url, content=route.next_body()).status_code
                except httpx.TransportError:
                    status = 0
                self.responses.append(Response(time.monotonic(), endpoint.revision, status))
                self.stopped.wait(self.pause)


def failed(response: Response) -> bool:
    return response.status == 0 or response.status >= 500


def prometheus_from_hack() -> Prometheus:
    out = subprocess.run(
        [str(ROOT / "hack" / "prometheus"), "env"], check=True, capture_output=True, text=True, cwd=ROOT
    )
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    prometheus = Prometheus(
        exports["MODELSHIP_PROMETHEUS_URL"], Path(exports["MODELSHIP_PROMETHEUS_TARGETS"])
    )
    try:
        httpx.get(f"{prometheus.url}/-/ready", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise SystemExit(
            f"Prometheus is not ready on {prometheus.url} ({exc}); run `hack/cluster up`"
        ) from exc
    return prometheus


def scrape_interval(prometheus: Prometheus) -> str:
    """The scrape interval of the running Prometheus, from its loaded configuration."""
    body = httpx.get(f"{prometheus.url}/api/v1/status/config", timeout=10).json()
    loaded = yaml.safe_load(body["data"]["yaml"])
    return str(loaded.get("global", {}).get("scrape_interval", "?"))


def other_operators(custom: client.CustomObjectsApi) -> set[str]:
    """Operators alive in a cluster-wide Kopf peering (the tests' operators, a demo's): they watch
    every namespace, the bench's too, and would act there beside its standalone operator."""
    now = datetime.datetime.now(datetime.UTC)
    alive = set()
    listing = cast(dict[str, Any], custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings"))
    for peering in listing["items"]:
        for identity, peer in (peering.get("status") or {}).items():
            if not isinstance(peer, dict) or "lastseen" not in peer:
                continue
            lastseen = datetime.datetime.fromisoformat(peer["lastseen"])
            if lastseen + datetime.timedelta(seconds=int(peer.get("lifetime", 60))) > now:
                alive.add(f"{identity} (peering {peering['metadata']['name']})")
    return alive


@contextmanager
def namespace_on_kwok(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace whose pods land on KWOK nodes; deleted, and waited for, at the end."""
    name = fresh_namespace_name("bench-rollout")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, annotations=KWOK_ONLY)))
    try:
        yield name
    finally:
        log(f"deleting namespace {name}")
        delete_namespace(core, name, 300, 0.5)


def rollout_settings(interval: str, failure_limit: int) -> dict[str, Any]:
    return {
        "canary": {
            "steps": [{"setWeight": WEIGHT}, {"pause": {}}],
            "analysis": {
                "interval": interval,
                "failureLimit": failure_limit,
                "minRequests": 5,
                "successRate": 0.95,
            },
        }
    }


@dataclass
class Figures:
    t0: float
    t1: float
    failed: int
    requests: int
    canary_requests: int
    events: list[tuple[str, float | None]]  # (what, seconds after t0)
    canary_after_t1: int
    degraded_message: str
    requests_per_s: float


def figures(
    responses: list[Response],
    timeline: list[tuple[float, dict[str, int]]],
    status: RolloutStatus,
    canary: str,
    stable: str,
) -> Figures:
    t0 = next(r.done for r in responses if failed(r))
    t1 = next(t for t, counts in timeline if t > t0 and counts.get(canary, 0) == 0)
    between = [r for r in responses if t0 <= r.done <= t1]
    full = next(
        (
            t
            for t, counts in timeline
            if t > t0 and counts.get(stable, 0) >= REPLICAS and not counts.get(canary)
        ),
        None,
    )

    def after_t0(key: str) -> float | None:
        seen = status.first_seen.get(key)
        return None if seen is None else seen - t0

    return Figures(
        t0=t0,
        t1=t1,
        failed=sum(1 for r in between if failed(r)),
        requests=len(between),
        canary_requests=sum(1 for r in between if r.revision == canary),
        events=[
            ("first failing response (t0)", 0.0),
            ("status: 1st failed measurement", after_t0("failures>=1")),
            ("status: abortedRevision set", after_t0(f"aborted:{canary}")),
            ("status: Degraded=True", after_t0("degraded")),
            ("no ready canary endpoint (t1)", t1 - t0),
            (f"{REPLICAS} ready stable endpoints", None if full is None else full - t0),
        ],
        canary_after_t1=sum(1 for r in responses if r.done > t1 and r.revision == canary),
        degraded_message=status.degraded_message,
        requests_per_s=len(between) / (t1 - t0) if t1 > t0 else 0.0,
    )


def report(result: Figures, settings: dict[str, str], others: set[str]) -> None:
    print(
        f"bad canary rollback on the local cluster ({os.cpu_count()} CPUs shared by the control plane, "
        "the operator, Prometheus, two servers and the client; KWOK pods, real servers)"
    )
    print("settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    print(f"{'event':<34} {'after t0':>9}")
    for what, seconds in result.events:
        shown = "-" if seconds is None else f"{seconds:.2f}s"
        print(f"{what:<34} {shown:>9}")
    share = result.failed / result.requests if result.requests else 0.0
    print(f"t0 -> t1 (first failing response -> 100% of traffic on stable): {result.t1 - result.t0:.2f}s")
    print(
        f"requests answered in t0..t1: {result.requests} ({result.requests_per_s:.0f}/s), "
        f"{result.canary_requests} by the canary; failed: {result.failed} ({share:.1%} of all)"
    )
    print(f"canary responses after t1 (sent before it): {result.canary_after_t1}")
    print(f"Degraded: {result.degraded_message}")
    if others:
        print(f"WARNING: other operators watched every namespace during the run: {', '.join(sorted(others))}")


def run(args: argparse.Namespace, api: client.ApiClient, work: Path) -> Figures:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    discovery = client.DiscoveryV1Api(api)
    prometheus = prometheus_from_hack()
    settings = {
        "analysis interval": args.interval,
        "failureLimit": str(args.failure_limit),
        "minRequests": "5",
        "successRate": "0.95",
        "scrape interval": scrape_interval(prometheus),
        "replicas": str(REPLICAS),
        "setWeight": str(WEIGHT),
        "client pause": f"{args.pause * 1000:.0f}ms",
    }
    apply_crds(args.kubeconfig)
    others = other_operators(custom)
    if others:
        log(f"WARNING: other operators watch every namespace and will act beside ours: {sorted(others)}")
    servers = ScrapedServers(prometheus, work)
    with namespace_on_kwok(core) as namespace:
        operator = Operator(args.kubeconfig, namespace, prometheus.url, work / "operator.log")
        status = RolloutStatus(custom, namespace)
        endpoints = ServiceEndpoints(core, discovery, namespace)
        traffic: Client | None = None
        try:
            log(f"starting the operator on namespace {namespace} (log: {operator.log_path})")
            operator.start()
            status.watch.start()
            endpoints.watch.start()
            spec = model_spec(
                version="1", replicas=REPLICAS, rollout=rollout_settings(args.interval, args.failure_limit)
            )
            custom.create_namespaced_custom_object(
                naming.GROUP, naming.VERSION, namespace, naming.PLURAL, manifest(NAME, spec)
            )
            wait(status.ready, 120, "version 1 to be Ready")
            custom.patch_namespaced_custom_object(
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                NAME,
                {"spec": {"model": model_spec(version="2")["model"]}},
            )
            rollout = wait(
                lambda: status.rollout().get("canaryRevision") and status.rollout(), 60, "a canary revision"
            )
            canary, stable = rollout["canaryRevision"], rollout["stableRevision"]
            log(f"stable revision {stable}, canary revision {canary}; starting their servers")
            healthy, broken = canary_models.healthy(), canary_models.broken_labels()
            assert broken.failing_request is not None
            routes = {
                stable: Route(
                    servers.start(healthy.save(work), namespace=namespace, revision=stable, model_name=NAME),
                    [json.dumps(healthy.request).encode()],
                ),
                canary: Route(
                    servers.start(broken.save(work), namespace=namespace, revision=canary, model_name=NAME),
                    [json.dumps(broken.request).encode(), json.dumps(broken.failing_request).encode()],
                ),
            }
            split = {stable: REPLICAS - 1, canary: 1}
            wait(lambda: endpoints.counts() == split, 60, f"ready endpoints {split}")
            log("traffic on; waiting for the rollback")
            traffic = Client(endpoints, routes, args.pause)
            traffic.start()

            def rolled_back() -> bool:
                for part in (traffic, status.watch, endpoints.watch):
                    part.check()
                return f"aborted:{canary}" in status.first_seen and endpoints.counts().get(canary, 0) == 0

            wait(rolled_back, args.timeout, "the canary to be aborted and its endpoint gone")
            # A little longer, so that the stable revision's return to full size is seen too.
            wait(lambda: endpoints.counts().get(stable, 0) >= REPLICAS, 60, f"{REPLICAS} stable endpoints")
            traffic.stop()
            result = figures(traffic.responses, list(endpoints.timeline), status, canary, stable)
        finally:
            others |= other_operators(custom)
            if others:
                log(f"WARNING: other operators watched every namespace during the run: {sorted(others)}")
            if traffic is not None:
                traffic.stop()
            status.watch.stop()
            endpoints.watch.stop()
            servers.stop_all()  # also removes their Prometheus target files
            operator.stop()
    report(result, settings, others)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", default="2s", help="analysis interval (default 2s)")
    parser.add_argument(
        "--failure-limit", type=int, default=2, help="failed measurements that abort (default 2)"
    )
    parser.add_argument(
        "--pause", type=float, default=0.01, help="seconds between two requests (default 0.01)"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the rollback")
    parser.add_argument("--kubeconfig", default=str(ROOT / ".cluster" / "kubeconfig"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    # SIGTERM cleans up as Ctrl-C does: the `finally` blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = ROOT / ".build" / "bench" / "rollout"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    try:
        result = run(args, api, work)
    finally:
        api.close()
    if args.json:
        fields = {k: v for k, v in vars(result).items() if k != "events"}
        args.json.write_text(json.dumps({**fields, "events": dict(result.events)}, indent=2))


if __name__ == "__main__":
    main()
