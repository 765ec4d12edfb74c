"""A shadow step (issue #16 item 6): what copying requests costs the stable server, and how fast a
wrong-but-healthy canary goes back in its shadow step, with how many wrong answers users got meanwhile.

One run of two parts, whose figures are read together (what copying costs against what it catches):
1. What copying costs the stable server (no cluster; `--overhead-only` runs this part alone): a stable
   server (canary_models.classifier, the server's defaults) with a mirror file written here, as the
   kubelet writes it, copying to a canary server with the same model (every copy agrees). Closed-loop
   load from this process (httpx, `--concurrency` clients) in turns of `--turn-seconds` at 0, 20 and
   100 % copied, ordered ABCCBA `--rounds` times (this shared machine drifts, and two identical
   servers measured once each differ by up to 30 %; see bench/server.py), each turn ending once the
   copies it queued are judged; the requests of each setting summed: requests/s, p50 and p99 of the
   users' requests, the stable server's CPU time a request, and the copies by result (its /metrics).
   `--png` plots requests/s and p99 per setting.
2. A wrong-but-healthy canary, on the local cluster (`hack/cluster up`, which also starts Prometheus on
   127.0.0.1:19090) as in bench/rollout.py: the operator alone (`--standalone`) on a fresh namespace
   whose pods land on KWOK nodes, one local server per revision scraped by Prometheus with the labels
   a cluster gives a pod, and a client routing the users' requests over the Service's ready endpoints
   as kube-proxy would. Version 1 is the classifier, version 2 the same with its classes permuted
   (fast, always 200, every answer wrong), steps `shadow: {percent: 100, duration: 10s}, setWeight:
   25, pause: {}`, analysis `agreement: {min: 0.98, minRequests: 10}`. This process plays the stable
   pods' kubelet: it watches their `modelship.io/mirror` annotation (set by the operator on the KWOK
   pods) and writes the stable server's mirror file with the url (the canary Service's cluster IP)
   rewritten to the canary server's address, once that server is up, and empties it when the
   annotation goes. Each answer's class is checked against canary_models.CLASSIFIER_INPUTS. Measured
   on this process's clock: the annotation first seen on a stable pod (the shadow start), the aborted
   revision seen in the status, the copies the stable server had compared by then, and the wrong
   answers users got (goal 0). The exit status is 1 when the canary is not aborted within
   `--timeout` or any such expectation fails (each printed as a PROBLEM).

    .venv/bin/python bench/shadow.py --png bench/figures/mirror_overhead.png --json out.json
    .venv/bin/python bench/shadow.py --overhead-only --rounds 4

`bench/rollout.py --shadow` and `bench/rollout.py --overhead-only` run this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from modelship.operator import manifests, naming
from modelship.operator.config import OperatorConfig
from modelship.operator.spec import parse as parse_model_deployment
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import (  # noqa: E402
    Client,
    ListWatch,
    RolloutStatus,
    Route,
    ServiceEndpoints,
    add_canary_arguments,
    apply_crds,
    failed,
    log,
    namespace_on_kwok,
    other_operators,
    prometheus_from_hack,
    scrape_interval,
    wait,
)
from benchlib import StandaloneOperator as Operator  # noqa: E402
from loopback import free_port, serving_process  # noqa: E402

from tests.operator import canary_models  # noqa: E402
from tests.operator.models import manifest, model_spec  # noqa: E402
from tests.prometheus_support import ScrapedServer, ScrapedServers  # noqa: E402
from tests.support import ConditionTimeout  # noqa: E402

NAME = "fraud"
REPLICAS = 4
WEIGHT = 25


MIRROR_PERCENTS = (0, 20, 100)  # the overhead's settings: percent of the stable server's requests copied
MIRROR_RESULTS = ("agree", "disagree", "error", "dropped")
OVERHEAD_CANARY = "overhead-canary"  # the `target` the overhead's copies are counted under
SHADOW_PERCENT = 100
SHADOW_DURATION = "10s"
AGREEMENT = {"min": 0.98, "minRequests": 10}


def write_atomically(path: Path, content: str) -> None:
    """As the kubelet updates a downwardAPI file: a whole new file swapped in, never half of one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(content)
    os.replace(fresh, path)


def server_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    """A server's /metrics, parsed as Prometheus parses them."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def sample_value(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    return sum(value for sample, _labels, value in samples if sample == name)


def mirror_counts(samples: list[tuple[str, dict[str, str], float]], target: str) -> dict[str, float]:
    """result -> the requests a stable server copied to `target`, every result present."""
    counts = dict.fromkeys(MIRROR_RESULTS, 0.0)
    for name, labels, value in samples:
        if name == "modelship_mirror_requests_total" and labels.get("target") == target:
            counts[labels["result"]] = counts.get(labels["result"], 0.0) + value
    return counts


def settled(url: str) -> None:
    """Wait until every copy the server queued has been sent and judged."""
    wait(
        lambda: sample_value(server_samples(url), "modelship_mirror_pending_requests") == 0,
        30,
        "the mirror's queue to empty",
        0.05,
    )


def classifier_bodies() -> tuple[list[bytes], list[int]]:
    """The requests of canary_models.CLASSIFIER_INPUTS, and the class each must get."""
    bodies = [json.dumps(request).encode() for request in canary_models.classifier_requests()]
    return bodies, [label for _x, label in canary_models.CLASSIFIER_INPUTS]


# ---- part 1: what copying costs the stable server


@contextmanager
def local_server(model: Path, revision: str, work: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m modelship.server` on 127.0.0.1 with the server's defaults (batching on, one
    onnxruntime thread, as a pod gets them), unscraped; its base URL while the block runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "server_image"), os.environ.get("PYTHONPATH")) if p
        ),
        "MODELSHIP_MODEL_NAME": NAME,
        "MODELSHIP_MODEL_URI": str(model),
        "MODELSHIP_REVISION": revision,
        "MODELSHIP_HOST": "127.0.0.1",
        "MODELSHIP_PORT": str(port),
        "MODELSHIP_TERMINATION_LOG": str(work / f"{revision}.termination-log"),
        **(env or {}),
    }
    command = [sys.executable, "-m", "modelship.server"]
    with serving_process(command, server_env, f"{url}/v2/health/ready", work / f"{revision}.log", ROOT):
        yield url


@dataclass
class MirrorSwitch:
    """The overhead's stable server's mirror file, and the share it names: each change is waited for
    in the server's log (it logs every target it follows), so that a turn never measures the last."""

    path: Path
    log_path: Path
    canary_url: str
    percent: int = 0  # what the server follows now

    def __post_init__(self) -> None:
        self.path.unlink(missing_ok=True)  # no file: no mirroring, as at 0 %

    def set(self, percent: int) -> None:
        if percent == self.percent:
            return
        line = (
            "mirroring off"
            if percent == 0
            else f"mirroring {percent:g}% of inference requests to revision {OVERHEAD_CANARY} "
        )
        before = self.log_path.read_text().count(line)
        content = {"url": self.canary_url, "percent": percent, "revision": OVERHEAD_CANARY}
        write_atomically(self.path, json.dumps(content))
        wait(lambda: self.log_path.read_text().count(line) > before, 10, f"the server to log {line!r}", 0.05)
        self.percent = percent


@dataclass
class Turn:
    percent: int
    seconds: float
    latencies: list[float]  # of the requests answered 200, seconds
    failed: int
    cpu_seconds: float  # the stable server process's
    mirrored: dict[str, float]

    def describe(self) -> str:
        answered = max(1, len(self.latencies))
        p99 = np.percentile(self.latencies, 99) * 1000 if self.latencies else math.nan
        return (
            f"{self.percent:>3}% {answered / self.seconds:>5.0f} req/s, p99 {p99:5.1f} ms, "
            f"{self.cpu_seconds / answered * 1e6:4.0f} us CPU a request, copies {self.mirrored}"
        )


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> Turn:
    """`concurrency` clients, each sending its next request as soon as the last is answered, for `seconds`."""
    turn = Turn(0, 0.0, [], 0, 0.0, {})
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=10, limits=limits, headers=headers) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def client_loop(first: int) -> None:
            sent = first
            while (start := time.perf_counter()) < deadline:
                try:
                    ok = (await http.post(url, content=bodies[sent % len(bodies)])).status_code == 200
                except httpx.TransportError:
                    ok = False
                sent += 1
                if ok:
                    turn.latencies.append(time.perf_counter() - start)
                else:
                    turn.failed += 1

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        turn.seconds = time.perf_counter() - started
    return turn


def overhead_turn(stable: str, switch: MirrorSwitch, percent: int, concurrency: int, seconds: float) -> Turn:
    """One turn at `percent`: the share set, the load, then the copies left in the queue sent and
    judged, so that the next turn starts with none and this one's counts are all its own."""
    switch.set(percent)
    bodies, _classes = classifier_bodies()
    before = server_samples(stable)
    turn = asyncio.run(closed_loop(f"{stable}/v2/models/{NAME}/infer", bodies, concurrency, seconds))
    settled(stable)
    after = server_samples(stable)
    turn.percent = percent
    turn.cpu_seconds = sample_value(after, "process_cpu_seconds_total") - sample_value(
        before, "process_cpu_seconds_total"
    )
    counted, counted_before = mirror_counts(after, OVERHEAD_CANARY), mirror_counts(before, OVERHEAD_CANARY)
    turn.mirrored = {result: counted[result] - counted_before[result] for result in MIRROR_RESULTS}
    return turn


@dataclass
class Overhead:
    """The turns of one setting, summed."""

    percent: int
    turns: int
    seconds: float
    requests: int
    failed: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float  # the stable server's CPU time per request answered
    mirrored: dict[str, int]
    requests_per_s_vs_off: float = 1.0  # against mirroring 0 %
    p99_vs_off: float = 1.0


def overhead_of(percent: int, turns: list[Turn]) -> Overhead:
    latencies = np.array([latency for turn in turns for latency in turn.latencies])
    seconds = sum(turn.seconds for turn in turns)
    requests = len(latencies)
    return Overhead(
        percent=percent,
        turns=len(turns),
        seconds=seconds,
        requests=requests,
        failed=sum(turn.failed for turn in turns),
        requests_per_s=requests / seconds,
        p50_ms=float(np.percentile(latencies, 50)) * 1000,
        p99_ms=float(np.percentile(latencies, 99)) * 1000,
        cpu_us_per_request=sum(turn.cpu_seconds for turn in turns) / max(1, requests) * 1e6,
        mirrored={result: round(sum(turn.mirrored[result] for turn in turns)) for result in MIRROR_RESULTS},
    )


def mirroring_overhead(args: argparse.Namespace, work: Path) -> list[Overhead]:
    """The stable server's requests/s and latency with 0, 20 and 100 % of its requests copied to a canary
    that answers alike, in turns ordered ABCCBA (each setting as often first as last: this shared machine
    drifts, and the turn after a switch measures differently), the requests of each setting summed."""
    folder = work / "overhead"
    folder.mkdir(parents=True, exist_ok=True)
    stable_model = canary_models.classifier().save(folder)
    canary_model = canary_models.classifier("-retrained").save(folder)  # the same answers, another file
    mirror_file = folder / "stable.mirror"
    with (
        local_server(canary_model, OVERHEAD_CANARY, folder) as canary,
        local_server(
            stable_model, "overhead-stable", folder, {"MODELSHIP_MIRROR_FILE": str(mirror_file)}
        ) as stable,
    ):
        switch = MirrorSwitch(mirror_file, folder / "overhead-stable.log", canary)
        order = [*MIRROR_PERCENTS, *reversed(MIRROR_PERCENTS)] * args.rounds
        log(f"mirroring overhead: {len(order)} turns of {args.turn_seconds:g}s, {args.concurrency} clients")
        # A warm-up (connections, the canary's first requests, the mirror's client), not counted.
        overhead_turn(stable, switch, MIRROR_PERCENTS[-1], args.concurrency, 1.0)
        turns: dict[int, list[Turn]] = {percent: [] for percent in MIRROR_PERCENTS}
        for number, percent in enumerate(order, 1):
            turn = overhead_turn(stable, switch, percent, args.concurrency, args.turn_seconds)
            turns[percent].append(turn)
            log(f"turn {number:>2}: {turn.describe()}")
        switch.set(0)
    results = [overhead_of(percent, turns[percent]) for percent in MIRROR_PERCENTS]
    off = results[0]
    for result in results:
        result.requests_per_s_vs_off = result.requests_per_s / off.requests_per_s
        result.p99_vs_off = result.p99_ms / off.p99_ms
    return results


def report_overhead(results: list[Overhead], args: argparse.Namespace) -> None:
    print(
        f"mirroring overhead, {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs shared by the stable "
        "server, the canary server and the client): the stable server (canary_models.classifier, the "
        f"server's defaults) under {args.concurrency} closed-loop clients (httpx, one process), copying to "
        f"a canary server with the same model; {args.rounds} x ABCCBA turns of {args.turn_seconds:g}s, "
        "summed per setting"
    )
    head = (
        f"{'copied':>6} {'turns':>5} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU/req':>8} {'agree':>6} {'disagree':>8} {'error':>5} {'dropped':>7} {'failed':>6} "
        f"{'req/s vs 0%':>11} {'p99 vs 0%':>9}"
    )
    print(head)
    for r in results:
        m = r.mirrored
        print(
            f"{r.percent:>5}% {r.turns:>5} {r.requests:>8} {r.requests_per_s:>7.0f} {r.p50_ms:>7.2f} "
            f"{r.p99_ms:>7.2f} {r.cpu_us_per_request:>6.0f}us {m['agree']:>6} {m['disagree']:>8} "
            f"{m['error']:>5} {m['dropped']:>7} {r.failed:>6} {r.requests_per_s_vs_off - 1:>+11.1%} "
            f"{r.p99_vs_off - 1:>+9.1%}"
        )


def plot_overhead(results: list[Overhead], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rps, p99) = plt.subplots(1, 2, figsize=(8, 3.5))
    labels = [f"{r.percent}%" for r in results]
    rps.bar(labels, [r.requests_per_s for r in results], color="tab:blue")
    rps.set_ylabel("requests/s")
    p99.bar(labels, [r.p99_ms for r in results], color="tab:orange")
    p99.set_ylabel("p99 latency, ms")
    for axes in (rps, p99):
        axes.set_xlabel("requests copied to the canary")
    figure.suptitle(
        f"The stable server under mirroring ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} shared CPUs)",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    log(f"plot written to {path}")


# ---- part 2: a wrong-but-healthy canary in a shadow step


def shadow_rollout_settings(interval: str, failure_limit: int) -> dict[str, Any]:
    return {
        "canary": {
            "steps": [
                {"shadow": {"percent": SHADOW_PERCENT, "duration": SHADOW_DURATION}},
                {"setWeight": WEIGHT},
                {"pause": {}},
            ],
            "analysis": {
                "interval": interval,
                "failureLimit": failure_limit,
                "minRequests": 5,
                "agreement": dict(AGREEMENT),
            },
        }
    }


class Kubelet:
    """Does for the local stable server what the kubelet does for a stable pod: the pods' mirror
    annotation into its mirror file (the downwardAPI volume), with the url, the canary Service's
    cluster IP, rewritten to the local canary server's address. KWOK pods have no kubelet; the one
    local server plays every stable pod, so the file follows the annotation of any of them. The
    file names the canary only once its local server is up (a pod is annotated only once a canary
    pod is ready, its server up); an annotation gone empties it."""

    def __init__(self, core: client.CoreV1Api, namespace: str, stable: str, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.annotation: str | None = None
        self.annotations: list[str] = []  # every distinct value seen, in order
        self.canary_url: str | None = None
        self.written = ""
        self.first_seen: dict[str, float] = {}
        self.watch = ListWatch(
            "stable Pod",
            lambda **kw: core.list_namespaced_pod(
                namespace, label_selector=f"{naming.LABEL_REVISION}={stable}", **kw
            ),
            self._changed,
        )

    def _changed(self, pods: dict[str, Any], now: float) -> None:
        live = [pod for pod in pods.values() if not pod["metadata"].get("deletionTimestamp")]
        values = [(pod["metadata"].get("annotations") or {}).get(naming.ANNOTATION_MIRROR) for pod in live]
        on = [value for value in values if value]
        with self.lock:
            if on:
                self.first_seen.setdefault("annotated", now)
                if len(on) == len(values):
                    self.first_seen.setdefault("all annotated", now)
                for value in on:
                    if value not in self.annotations:
                        self.annotations.append(value)
                self.annotation = on[0]
            else:
                if "annotated" in self.first_seen:
                    self.first_seen.setdefault("gone", now)
                self.annotation = None
            self._write(now)

    def canary_up(self, url: str) -> None:
        with self.lock:
            self.canary_url = url
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        if self.annotation is None:
            content = ""
        elif self.canary_url is None:
            return  # nothing to copy to yet
        else:
            content = json.dumps({**json.loads(self.annotation), "url": self.canary_url})
        if content == self.written:
            return
        write_atomically(self.path, content)
        self.written = content
        self.first_seen.setdefault("file on" if content else "file off", now)


class MirrorSampler:
    """The stable server's counts of copies to one canary, read from its /metrics every `period` in a
    thread, so that what had been compared at a given moment can be read afterwards."""

    def __init__(self, url: str, target: str, period: float = 0.2) -> None:
        self.url = url
        self.target = target
        self.period = period
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self.stopped.is_set():
            now = time.monotonic()
            try:
                self.timeline.append((now, mirror_counts(server_samples(self.url), self.target)))
            except httpx.HTTPError as exc:
                log(f"reading the stable server's metrics failed: {exc!r}")
            self.stopped.wait(self.period)

    def at(self, moment: float) -> dict[str, float]:
        """The counts of the last reading at or before `moment`."""
        before = [counts for t, counts in self.timeline if t <= moment]
        return dict(before[-1]) if before else dict.fromkeys(MIRROR_RESULTS, 0.0)

    def first_compared(self) -> float | None:
        return next((t for t, counts in self.timeline if counts["agree"] + counts["disagree"] > 0), None)

    def last(self) -> dict[str, float]:
        return dict(self.timeline[-1][1]) if self.timeline else dict.fromkeys(MIRROR_RESULTS, 0.0)


@dataclass
class ShadowFigures:
    aborted: bool
    shadow_to_abort: float | None  # seconds from the annotation first seen to abortedRevision seen
    events: list[tuple[str, float | None]]  # (what, seconds after the annotation first seen)
    compared_before_abort: dict[str, int]  # the stable server's counts when the abort was seen
    mirrored_in_all: dict[str, int]  # ... when the bench ended (copies stop with the annotation)
    user_requests: int
    user_failed: int
    wrong_answers: int  # 200s with another class than version 1's: goal 0
    user_requests_during_shadow: int  # between the annotation first seen and the abort
    requests_per_s: float
    routed_to_canary: int  # user requests sent to a canary endpoint of the model's Service: goal 0
    canary_endpoints_max: int  # ready canary endpoints the model's Service ever had: goal 0
    annotation: str | None  # the operator's annotation, as first seen
    canary_service_ip: str | None  # the cluster IP of the canary's own Service, when it was looked at
    degraded_message: str
    analysis: dict[str, Any]  # status.rollout.analysis at the end
    problems: list[str]


def shadow_figures(
    traffic: Client,
    endpoints: ServiceEndpoints,
    status: RolloutStatus,
    kubelet: Kubelet,
    sampler: MirrorSampler,
    marks: dict[str, float],
    canary: str,
    service_ip: str | None,
    problems: list[str],
) -> ShadowFigures:
    t_shadow = kubelet.first_seen.get("annotated")
    t_abort = status.first_seen.get(f"aborted:{canary}")
    origin = t_shadow if t_shadow is not None else marks["patched"]

    def after(moment: float | None) -> float | None:
        return None if moment is None else moment - origin

    responses = list(traffic.responses)
    during = [r for r in responses if t_shadow is not None and t_shadow <= r.done <= (t_abort or math.inf)]
    span = (responses[-1].done - responses[0].done) if len(responses) > 1 else 0.0
    return ShadowFigures(
        aborted=t_abort is not None,
        shadow_to_abort=None if t_shadow is None or t_abort is None else t_abort - t_shadow,
        events=[
            ("local canary server up", after(marks.get("canary up"))),
            ("version 2 asked for", after(marks["patched"])),
            ("status: canary revision", after(marks.get("canary"))),
            ("mirror annotation on a stable pod", after(t_shadow)),
            (f"... on all {REPLICAS} stable pods", after(kubelet.first_seen.get("all annotated"))),
            ("stable's mirror file names the canary", after(kubelet.first_seen.get("file on"))),
            ("stable: first copy compared", after(sampler.first_compared())),
            ("status: 1st failed measurement", after(status.first_seen.get("failures>=1"))),
            ("status: abortedRevision set", after(t_abort)),
            ("status: Degraded=True", after(status.first_seen.get("degraded"))),
            ("annotation gone from every stable pod", after(kubelet.first_seen.get("gone"))),
            ("stable's mirror file emptied", after(kubelet.first_seen.get("file off"))),
        ],
        compared_before_abort={
            k: round(v) for k, v in sampler.at(t_abort if t_abort is not None else math.inf).items()
        },
        mirrored_in_all={k: round(v) for k, v in sampler.last().items()},
        user_requests=len(responses),
        user_failed=sum(1 for r in responses if failed(r)),
        wrong_answers=sum(1 for r in responses if r.wrong),
        user_requests_during_shadow=len(during),
        requests_per_s=len(responses) / span if span > 0 else 0.0,
        routed_to_canary=sum(1 for r in responses if r.revision == canary),
        canary_endpoints_max=max((counts.get(canary, 0) for _t, counts in endpoints.timeline), default=0),
        annotation=kubelet.annotations[0] if kubelet.annotations else None,
        canary_service_ip=service_ip,
        degraded_message=status.degraded_message,
        analysis=dict(status.rollout().get("analysis") or {}),
        problems=problems,
    )


def report_shadow(result: ShadowFigures, settings: dict[str, str], others: set[str]) -> None:
    print(
        f"wrong-but-healthy canary in a shadow step, on the local cluster, {time.strftime('%Y-%m-%d')} "
        f"({os.cpu_count()} CPUs shared by the control plane, the operator, Prometheus, two servers and the "
        "client; KWOK pods, real servers, the kubelet's part played here)"
    )
    print("settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    print(f"{'event':<40} {'after the annotation':>20}")
    for what, seconds in result.events:
        shown = "-" if seconds is None else f"{seconds:.2f}s"
        print(f"{what:<40} {shown:>20}")
    shown = "NOT ABORTED" if result.shadow_to_abort is None else f"{result.shadow_to_abort:.2f}s"
    print(f"time from shadow start to abort: {shown}")
    c, m = result.compared_before_abort, result.mirrored_in_all
    print(
        f"copies compared before the abort: {c['agree'] + c['disagree']} (agree {c['agree']}, disagree "
        f"{c['disagree']}; error {c['error']}, dropped {c['dropped']}); all told: agree {m['agree']}, "
        f"disagree {m['disagree']}, error {m['error']}, dropped {m['dropped']}"
    )
    print(
        f"wrong answers served: {result.wrong_answers} (goal 0) of {result.user_requests} user requests "
        f"({result.requests_per_s:.0f}/s; {result.user_requests_during_shadow} between the annotation and "
        f"the abort), {result.user_failed} failed; routed to a canary pod: {result.routed_to_canary}; ready "
        f"canary endpoints in the model's Service: at most {result.canary_endpoints_max}"
    )
    print(f"annotation: {result.annotation} (canary Service's cluster IP: {result.canary_service_ip})")
    print(f"Degraded: {result.degraded_message}")
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    if others:
        print(f"WARNING: other operators watched every namespace during the run: {', '.join(sorted(others))}")


def canary_service_ip(core: client.CoreV1Api, namespace: str, canary: str) -> str | None:
    try:
        service = core.read_namespaced_service(naming.deployment_name(NAME, canary), namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return service.spec.cluster_ip if service.spec else None


class ShadowCanaryRun:
    """The phases of one wrong-but-healthy canary run, on one namespace with its operator, and what they
    share: version 1 served (its server, the kubelet's part, the users' traffic), version 2 asked for and
    its server up, then the abort waited for."""

    def __init__(
        self,
        args: argparse.Namespace,
        api: client.ApiClient,
        work: Path,
        servers: ScrapedServers,
        operator: Operator,
    ) -> None:
        self.args, self.work, self.namespace, self.servers = args, work, operator.namespace, servers
        self.operator_env = operator.env
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.status = RolloutStatus(self.custom, self.namespace, NAME)
        self.endpoints = ServiceEndpoints(self.core, client.DiscoveryV1Api(api), self.namespace, NAME)
        self.bodies, self.classes = classifier_bodies()
        self.routes: dict[str, Route] = {}
        self.marks: dict[str, float] = {}
        self.problems: list[str] = []
        self.kubelet: Kubelet | None = None
        self.traffic: Client | None = None
        self.sampler: MirrorSampler | None = None
        self.service_ip: str | None = None

    def serve_version_1(self) -> ScrapedServer:
        self.status.watch.start()
        self.endpoints.watch.start()
        rollout = shadow_rollout_settings(self.args.interval, self.args.failure_limit)
        spec = model_spec(version="1", replicas=REPLICAS, rollout=rollout)
        self.custom.create_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, manifest(NAME, spec)
        )
        wait(self.status.ready, 120, "version 1 to be Ready")
        stable = self.status.body["status"]["model"]["revision"]
        log(f"stable revision {stable}; starting its server, the kubelet's part and the traffic")
        mirror_file = self.work / "stable.mirror"
        server = self.servers.start(
            canary_models.classifier().save(self.work),
            namespace=self.namespace,
            revision=stable,
            model_name=NAME,
            env={"MODELSHIP_MIRROR_FILE": str(mirror_file)},
        )
        self.kubelet = Kubelet(self.core, self.namespace, stable, mirror_file)
        self.kubelet.watch.start()
        self.routes[stable] = Route(server, self.bodies, self.classes)
        wait(lambda: self.endpoints.counts() == {stable: REPLICAS}, 60, f"{REPLICAS} ready stable endpoints")
        traffic = self.traffic = Client(self.endpoints, self.routes, self.args.pause)
        traffic.start()
        wait(lambda: len(traffic.responses) >= 20, 30, "the first answers")
        return server

    def shadow_version_2(self, stable_server: ScrapedServer) -> str:
        """Ask for version 2, its server started first; the canary revision.

        A server takes seconds to start here, a KWOK pod a fraction of one to be ready, and the operator
        annotates the stable pods as soon as a canary pod is ready: started after the canary revision is
        known, the canary server would come up seconds after the shadow step started, where a real pod
        is ready only once its server is. So its revision is predicted and the server started before
        the patch; a wrong prediction starts another one (the lag then shows among the events)."""
        assert self.kubelet is not None
        patch = {"spec": {"model": model_spec(version="2")["model"]}}
        predicted = self.predicted_revision(patch)
        canary_server = self.start_canary(predicted)
        self.custom.patch_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, NAME, patch
        )
        self.marks["patched"] = time.monotonic()
        canary: str = wait(lambda: self.status.rollout().get("canaryRevision"), 60, "a canary revision")
        self.marks["canary"] = time.monotonic()
        self.sampler = MirrorSampler(stable_server.url, canary)
        self.sampler.start()
        if canary != predicted:
            log(f"WARNING: canary revision {canary}, not the {predicted} predicted; starting its server now")
            canary_server = self.start_canary(canary)
        self.routes[canary] = Route(canary_server, self.bodies, self.classes)
        self.kubelet.canary_up(canary_server.url)
        return canary

    def predicted_revision(self, patch: dict[str, Any]) -> str:
        """The revision the operator will give the ModelDeployment once patched: the object as the API
        server would store it (a server-side dry run fills in the schema's defaults), through the
        operator's own functions and its server image setting."""
        body = cast(
            dict[str, Any],
            self.custom.patch_namespaced_custom_object(
                naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, NAME, patch, dry_run="All"
            ),
        )
        server_image = OperatorConfig.from_env({**os.environ, **self.operator_env}).server_image
        return manifests.desired_revision(parse_model_deployment(body), server_image=server_image).revision

    def start_canary(self, revision: str) -> ScrapedServer:
        log(f"starting the server of canary revision {revision}")
        server = self.servers.start(
            canary_models.permuted_classifier().save(self.work),
            namespace=self.namespace,
            revision=revision,
            model_name=NAME,
        )
        self.marks["canary up"] = time.monotonic()
        return server

    def wait_abort(self, canary: str) -> None:
        """Until the canary is aborted and the stable pods' annotation is gone; what does not come in
        time is a problem of the run."""
        kubelet, traffic = self.kubelet, self.traffic
        assert kubelet is not None and traffic is not None
        try:
            wait(lambda: kubelet.first_seen.get("annotated"), 60, "the mirror annotation on a stable pod")
        except ConditionTimeout:
            self.problems.append("the operator annotated no stable pod within 60s")
            return
        self.service_ip = canary_service_ip(self.core, self.namespace, canary)
        log("shadow step on; waiting for the abort")

        def aborted() -> bool:
            for part in (traffic, self.status.watch, self.endpoints.watch, kubelet.watch):
                part.check()
            return f"aborted:{canary}" in self.status.first_seen

        try:
            wait(aborted, self.args.timeout, "the canary to be aborted")
        except ConditionTimeout:
            self.problems.append(f"the canary was not aborted within {self.args.timeout:.0f}s")
            return
        try:
            wait(
                lambda: "gone" in kubelet.first_seen and not kubelet.written,
                30,
                "the mirror annotation to leave the stable pods",
            )
        except ConditionTimeout:
            self.problems.append("the mirror annotation was still on a stable pod 30s after the abort")

    def finish(self, stable_server: ScrapedServer, canary: str) -> ShadowFigures:
        """A little more traffic (none of it may reach the canary either), then the figures."""
        assert self.traffic is not None and self.kubelet is not None and self.sampler is not None
        time.sleep(2)
        self.traffic.stop()
        settled(stable_server.url)
        time.sleep(2 * self.sampler.period)
        self.sampler.stop()
        result = shadow_figures(
            self.traffic,
            self.endpoints,
            self.status,
            self.kubelet,
            self.sampler,
            self.marks,
            canary,
            self.service_ip,
            self.problems,
        )
        if result.wrong_answers:
            self.problems.append(f"{result.wrong_answers} wrong answers reached users")
        wanted = f"http://{self.service_ip}:{naming.SERVICE_PORT}"
        if result.annotation is not None and json.loads(result.annotation).get("url") != wanted:
            self.problems.append(f"the annotation's url is not the canary Service's address {wanted}")
        return result

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.kubelet is not None:
            self.kubelet.watch.stop()
        self.status.watch.stop()
        self.endpoints.watch.stop()


def run_shadow_canary(args: argparse.Namespace, api: client.ApiClient, work: Path) -> ShadowFigures:
    """Version 1 serves; version 2, the same classifier with its classes permuted, is shadowed at 100 %
    and must be aborted on agreement before a user gets one of its answers."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    prometheus = prometheus_from_hack()
    settings = {
        "steps": f"shadow {SHADOW_PERCENT}% {SHADOW_DURATION}, setWeight {WEIGHT}, pause {{}}",
        "analysis interval": args.interval,
        "failureLimit": str(args.failure_limit),
        "minRequests": "5",
        "agreement": f"min {AGREEMENT['min']} minRequests {AGREEMENT['minRequests']}",
        "scrape interval": scrape_interval(prometheus),
        "replicas": str(REPLICAS),
        "client pause": f"{args.pause * 1000:.0f}ms",
    }
    apply_crds(args.kubeconfig)
    others = other_operators(custom)
    if others:
        log(f"WARNING: other operators watch every namespace and will act beside ours: {sorted(others)}")
    servers = ScrapedServers(prometheus, work)
    with namespace_on_kwok(core) as namespace:
        operator = Operator(args.kubeconfig, namespace, prometheus.url, work / "operator.log")
        run = ShadowCanaryRun(args, api, work, servers, operator)
        try:
            log(f"starting the operator on namespace {namespace} (log: {operator.log_path})")
            operator.start()
            stable_server = run.serve_version_1()
            canary = run.shadow_version_2(stable_server)
            run.wait_abort(canary)
            result = run.finish(stable_server, canary)
        finally:
            others |= other_operators(custom)
            if others:
                log(f"WARNING: other operators watched every namespace during the run: {sorted(others)}")
            run.stop()
            servers.stop_all()  # also removes their Prometheus target files
            operator.stop()
    report_shadow(result, settings, others)
    return result


def run_shadow(args: argparse.Namespace, api: client.ApiClient | None, work: Path) -> dict[str, Any]:
    overhead = mirroring_overhead(args, work)
    report_overhead(overhead, args)
    if args.png:
        plot_overhead(overhead, args.png)
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "overhead": {
            "concurrency": args.concurrency,
            "turn_seconds": args.turn_seconds,
            "rounds": args.rounds,
            "settings": [asdict(result) for result in overhead],
        },
    }
    if api is not None:
        print()
        canary = run_shadow_canary(args, api, work)
        figures["canary"] = {
            **{k: v for k, v in asdict(canary).items() if k != "events"},
            "events": dict(canary.events),
        }
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_canary_arguments(parser)
    parser.add_argument(
        "--overhead-only", action="store_true", help="the mirroring overhead alone (no cluster needed)"
    )
    overhead = parser.add_argument_group("the mirroring overhead")
    overhead.add_argument(
        "--concurrency", type=int, default=8, help="overhead: closed-loop clients (default 8)"
    )
    overhead.add_argument(
        "--turn-seconds", type=float, default=3.0, help="overhead: seconds of one turn (default 3)"
    )
    overhead.add_argument(
        "--rounds", type=int, default=2, help="overhead: ABCCBA rounds of 0, 20, 100 %% (default 2)"
    )
    overhead.add_argument("--png", type=Path, help="overhead: plot req/s and p99 per setting into this file")
    args = parser.parse_args(argv)

    # SIGTERM cleans up as Ctrl-C does: the `finally` blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = ROOT / ".build" / "bench" / "shadow"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sys.exit(run_and_write(args, work))


def run_and_write(args: argparse.Namespace, work: Path) -> int:
    """The scenario, its figures written to `--json`; its exit status: 1 when the canary was not aborted
    in time, a user got a wrong answer, or anything else the run expects did not happen (each printed as
    a PROBLEM)."""
    api = None if args.overhead_only else config.new_client_from_config(config_file=args.kubeconfig)
    try:
        figures = run_shadow(args, api, work)
    finally:
        if api is not None:
            api.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if figures.get("canary", {}).get("problems") else 0


if __name__ == "__main__":
    main()
