"""What the benchmarks on the local cluster share: the CRDs applied, waits with deadlines, the
standalone operator on a fresh namespace (on KWOK nodes or under Pod Security `restricted`), the
local Prometheus of `hack/prometheus`, and, for the rollout benchmarks (bench/rollout.py,
bench/shadow.py), watches of a ModelDeployment and its Service's EndpointSlices with a client that
routes requests over the ready endpoints the way kube-proxy would.

The benchmarks run as scripts (`python bench/<name>.py`), so this folder is on sys.path.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines
from modelship.operator import naming

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import KWOK_ONLY, RESTRICTED, fresh_namespace_name  # noqa: E402
from tests.no_proxy import drop_proxy_variables  # noqa: E402
from tests.operator_process import KopfProcess  # noqa: E402
from tests.prometheus_support import Prometheus, ScrapedServer  # noqa: E402
from tests.support import wait_until  # noqa: E402

# Before any client is made: the benchmarks talk to the local cluster only, never through a proxy.
drop_proxy_variables()

CRD_NAMES = ("modeldeployments.modelship.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """wait_until with the benchmarks' positional order."""
    return wait_until(check, timeout=timeout, interval=interval, what=what)


def apply_crds(kubeconfig: str) -> None:
    bin_dir = subprocess.run(
        [str(ROOT / "hack" / "cluster"), "bin-dir"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    kubectl = [str(Path(bin_dir) / "kubectl"), "--kubeconfig", kubeconfig]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for name in CRD_NAMES:
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s"],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def delete_namespace(core: client.CoreV1Api, name: str, timeout: float, interval: float) -> None:
    """Delete a namespace and wait until it is gone: the next run should not share the cluster
    with this one's garbage collection."""
    core.delete_namespace(name, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait(gone, timeout, f"namespace {name} to be deleted", interval)


class StandaloneOperator(KopfProcess):
    """The operator alone (`--standalone`) on one namespace, its analysis asking `prometheus_url`."""

    def __init__(self, kubeconfig: str, namespace: str, prometheus_url: str, log_path: Path) -> None:
        super().__init__(log_path, name="bench")
        self.env = {"KUBECONFIG": kubeconfig, "MODELSHIP_PROMETHEUS_URL": prometheus_url}
        self.namespace = namespace

    def start(self) -> None:
        self.launch(
            [f"--namespace={self.namespace}", "--standalone"],
            self.env,
            ready="Activity 'startup' succeeded",
            timeout=60,
        )


@contextlib.contextmanager
def operated_namespace(api: client.ApiClient, kubeconfig: str, work: Path, prefix: str) -> Iterator[str]:
    """A fresh namespace under Pod Security `restricted`, with the operator alone on it (no
    Prometheus); both gone, the namespace waited out, when the block ends."""
    core = client.CoreV1Api(api)
    name = fresh_namespace_name(prefix)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED)))
    operator = StandaloneOperator(kubeconfig, name, "", work / f"operator-{name}.log")
    operator.start()
    try:
        yield name
    finally:
        operator.stop()
        delete_namespace(core, name, 300, 0.5)


# ---- the rollout benchmarks: watches, the kube-proxy-like client, Prometheus, the namespace


def add_canary_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a canary run on the local cluster that bench/rollout.py and bench/shadow.py share."""
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

    def __init__(
        self, core: client.CoreV1Api, discovery: client.DiscoveryV1Api, namespace: str, name: str
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.name = name
        self.revisions: dict[str, str] = {}  # pod -> revision; a pod's labels do not change
        self.ready: tuple[Endpoint, ...] = ()
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self.updated = threading.Condition()
        self.watch = ListWatch(
            "EndpointSlice",
            lambda **kw: discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={name}", **kw
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
                raise TimeoutError(f"no ready endpoint of Service {self.name} for {timeout:.0f}s")
            return self.ready

    def counts(self) -> dict[str, int]:
        with self.updated:
            return dict(self.timeline[-1][1]) if self.timeline else {}


class RolloutStatus:
    """When the ModelDeployment's status showed what, as this process saw it."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, name: str) -> None:
        self.name = name
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
                field_selector=f"metadata.name={name}",
                **kw,
            ),
            self._changed,
        )

    def _changed(self, objects: dict[str, Any], now: float) -> None:
        self.body = objects.get(self.name) or {}
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
    wrong: bool = False  # a 200 whose class is not the request's (only where the route knows the classes)


@dataclass
class Route:
    server: ScrapedServer
    requests: list[bytes]  # sent in turn
    classes: list[int] | None = None  # the right class of each request; None: answers are not checked
    turn: int = 0

    def next_request(self) -> tuple[bytes, int | None]:
        """The next body to send, and the class its answer must give (None: not checked)."""
        index = self.turn % len(self.requests)
        self.turn += 1
        return self.requests[index], None if self.classes is None else self.classes[index]


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
                body, expected = route.next_request()
                wrong = False
                try:
                    answer = http.post(route.server.infer_url, content=body)
                    status = answer.status_code
                    wrong = (
                        expected is not None and status == 200 and predicted_class(answer.content) != expected
                    )
                except httpx.TransportError:
                    status = 0
                self.responses.append(Response(time.monotonic(), endpoint.revision, status, wrong))
                self.stopped.wait(self.pause)


def failed(response: Response) -> bool:
    return response.status == 0 or response.status >= 500


def predicted_class(answer: bytes) -> int | None:
    """The class a V2 JSON answer of canary_models' classifiers gives (the argmax of its scores)."""
    try:
        [output] = json.loads(answer)["outputs"]
        scores: list[float] = output["data"]
    except (ValueError, KeyError, TypeError):
        return None
    return max(range(len(scores)), key=scores.__getitem__)


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


@contextlib.contextmanager
def namespace_on_kwok(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace whose pods land on KWOK nodes; deleted, and waited for, at the end."""
    name = fresh_namespace_name("bench-rollout")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, annotations=KWOK_ONLY)))
    try:
        yield name
    finally:
        log(f"deleting namespace {name}")
        delete_namespace(core, name, 300, 0.5)
