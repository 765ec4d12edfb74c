"""How the autoscaler follows a step load, on CPU utilisation and on in-flight requests, in one run.

For each metric, in a fresh namespace on the real node (`hack/cluster up --real-node`, with its
metrics-server and prometheus-adapter) with the operator alone on it: iris autoscaled from 1 to
`--max` pods, Ready; then `wrk` through the Service's ClusterIP (the route checked to go into the
node) with 1, then 8, then 32 connections (`--steps`), each for `--step-seconds`, then no load
until the model is back to one pod (the HPA's scale-down window shortened to 15 s, as a user
wanting a quick benchmark would; the scale-up keeps the operator's defaults). Every second it
samples the ready pods, the pods that served a request in the last 2 s, the in-flight requests
(Little's law over the last 5 s, summed over the pods) and the server's p99 latency over the last
5 s (Prometheus). Printed per metric and step: the time from the step to the last pod the HPA
added being Ready and taking traffic, the p50 and p99 latency during the step (wrk's, the client's
view), requests sent and failed. A PNG (`--png`) plots replicas, in-flight requests and p99 over
time, one column per metric.

    .venv/bin/python bench/autoscale.py
    .venv/bin/python bench/autoscale.py --steps 1 8 --step-seconds 45 --png .build/autoscale.png
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from benchlib import ROOT, apply_crds, operated_namespace
from kubernetes import client, config

from tests.keepalive_load import wrk_load, wrk_result
from tests.operator.models import Models
from tests.real_node import routed_into_node

NAME = "iris"
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}
METRICS: dict[str, dict[str, Any]] = {
    "cpu": {"metric": "cpu", "targetCPUUtilization": 60},
    "inflightRequests": {"metric": "inflightRequests", "targetInflightRequests": 2},
}
# 250m requested: heavy load is far above 60% of it, one paced client far below.
RESOURCES = {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
QUICK_DOWN = {"scaleDown": {"stabilizationWindowSeconds": 15}}
PROMETHEUS = "http://127.0.0.1:19090"
_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s)\s*$", re.M)


def log(message: str) -> None:
    print(f"[bench-autoscale] {time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass
class Step:
    connections: int
    started: float  # seconds since the run began
    to_serving: float | None = None  # seconds to the last added pod Ready and taking traffic
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    sent: int = 0
    failed: int = 0
    pods: int = 0  # ready pods at the end of the step


@dataclass
class Run:
    metric: str
    steps: list[Step] = field(default_factory=list)
    # (seconds, ready pods, pods serving, in-flight requests, p99 ms)
    samples: list[tuple[float, int, int, float, float]] = field(default_factory=list)
    back_to_one: float | None = None  # seconds from the load's end to one pod


def query(http: httpx.Client, promql: str) -> list[dict[str, Any]]:
    response = http.get(f"{PROMETHEUS}/api/v1/query", params={"query": promql})
    response.raise_for_status()
    return list(response.json()["data"]["result"])


def scalar(http: httpx.Client, promql: str) -> float:
    result = query(http, promql)
    value = float(result[0]["value"][1]) if result else 0.0
    return 0.0 if value != value else value  # NaN (no requests) reads as 0


def wrk_latency_ms(output: str) -> dict[str, float]:
    """wrk's --latency percentiles, in milliseconds."""
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {p: float(v) * scale[u] for p, v, u in _LATENCY.findall(output)}


def sample(http: httpx.Client, models: Models, ns: str, at: float) -> tuple[float, int, int, float, float]:
    pods = models.pods(NAME)
    ready = sum(
        1
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ())
    )
    by_pod = query(http, f'sum by (pod) (increase(modelship_requests_total{{namespace="{ns}"}}[2s])) > 0')
    inflight = scalar(http, f'sum(rate(modelship_request_duration_seconds_sum{{namespace="{ns}"}}[5s]))')
    p99 = scalar(
        http,
        "histogram_quantile(0.99, sum by (le) "
        f'(rate(modelship_request_duration_seconds_bucket{{namespace="{ns}"}}[5s])))',
    )
    return (at, ready, len(by_pod), inflight, 1000 * p99)


def one_metric(metric: str, args: argparse.Namespace, api: client.ApiClient, work: Path) -> Run:
    run = Run(metric)
    with operated_namespace(api, args.kubeconfig, work, "bench-autoscale") as ns:
        models = Models(api, ns)
        model = dict(yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())["spec"]["model"])
        scaling = {"minReplicas": 1, "maxReplicas": args.max, **METRICS[metric], "behavior": QUICK_DOWN}
        models.create(NAME, {"model": model, "resources": RESOURCES, "autoscaling": scaling})
        models.wait_ready(NAME, timeout=240)
        ip = routed_into_node(client.CoreV1Api(api).read_namespaced_service(NAME, ns).spec.cluster_ip)
        url = f"http://{ip}/v2/models/{NAME}/infer"
        begin = time.monotonic()
        with httpx.Client(timeout=5, trust_env=False) as http:

            def tick() -> tuple[float, int, int, float, float]:
                s = sample(http, models, ns, time.monotonic() - begin)
                run.samples.append(s)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - begin - s[0])))
                return s

            for connections in args.steps:
                step = Step(connections, time.monotonic() - begin)
                log(f"{metric}: {connections} connections for {args.step_seconds} s")
                wrk = wrk_load(
                    url,
                    REQUEST,
                    seconds=args.step_seconds,
                    threads=min(2, connections),  # wrk needs a connection per thread
                    connections=connections,
                    latency=True,
                )
                peak = max((s[1] for s in run.samples), default=1)
                while wrk.poll() is None:
                    at, ready, serving, _, _ = tick()
                    if ready > peak and serving >= ready:
                        peak = ready
                        step.to_serving = at - step.started
                result = wrk_result(wrk)
                latency = wrk_latency_ms(result.output)
                step.p50_ms, step.p99_ms = latency.get("50", 0.0), latency.get("99", 0.0)
                step.sent, step.failed, step.pods = result.sent, result.failed, run.samples[-1][1]
                run.steps.append(step)
            ended = time.monotonic() - begin
            log(f"{metric}: no load until one pod is left (at most {args.settle_seconds} s)")
            while time.monotonic() - begin < ended + args.settle_seconds:
                if tick()[1] == 1 and len(models.pods(NAME)) == 1:
                    run.back_to_one = run.samples[-1][0] - ended
                    break
    return run


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, len(runs), figsize=(6 * len(runs), 7), sharex="col", squeeze=False)
    for column, r in enumerate(runs):
        t = [s[0] for s in r.samples]
        axes[0][column].step(t, [s[1] for s in r.samples], where="post", label="ready pods")
        axes[0][column].step(t, [s[2] for s in r.samples], where="post", label="pods serving", linestyle="--")
        axes[0][column].set_title(f"metric: {r.metric}")
        axes[0][column].set_ylabel("pods")
        axes[0][column].legend(fontsize=8)
        axes[1][column].plot(t, [s[3] for s in r.samples])
        axes[1][column].set_ylabel("in-flight requests (all pods)")
        axes[2][column].plot(t, [s[4] for s in r.samples])
        axes[2][column].set_ylabel("server p99, ms (5 s)")
        axes[2][column].set_xlabel("seconds")
        for row in axes:
            for step in r.steps:
                row[column].axvline(step.started, color="grey", linewidth=0.8, linestyle=":")
    steps = " → ".join(str(s.connections) for s in runs[0].steps)
    figure.suptitle(f"Step load {steps} connections ({time.strftime('%Y-%m-%d')})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    log(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=list(METRICS))
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 8, 32], help="connections per step")
    parser.add_argument("--step-seconds", type=int, default=60)
    parser.add_argument("--settle-seconds", type=int, default=240)
    parser.add_argument("--max", type=int, default=4, help="maxReplicas")
    parser.add_argument("--png", type=Path, default=ROOT / ".build" / "bench-autoscale" / "autoscale.png")
    parser.add_argument("--kubeconfig", default=str(ROOT / ".cluster" / "kubeconfig"))
    args = parser.parse_args()
    api = config.new_client_from_config(config_file=args.kubeconfig)
    apply_crds(args.kubeconfig)
    work = ROOT / ".build" / "bench-autoscale"
    work.mkdir(parents=True, exist_ok=True)
    runs = [one_metric(metric, args, api, work) for metric in args.metrics]
    print(f"\nStep load through the Service, wrk -t2, {time.strftime('%Y-%m-%d')} (maxReplicas {args.max}):")
    heads = ("metric", "connections", "to new pods serving", "pods", "p50 ms", "p99 ms", "sent", "failed")
    widths = (-17, 11, 19, 4, 7, 7, 8, 6)
    print(" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for r in runs:
        for s in r.steps:
            serving = f"{s.to_serving:.0f} s" if s.to_serving is not None else "no new pod"
            print(
                f"{r.metric:<17} {s.connections:>11} {serving:>19} {s.pods:>4} {s.p50_ms:>7.1f} "
                f"{s.p99_ms:>7.1f} {s.sent:>8} {s.failed:>6}"
            )
        back = f"{r.back_to_one:.0f} s" if r.back_to_one is not None else f"> {args.settle_seconds} s"
        print(f"{r.metric:<17} back to one pod {back} after the load ended")
    plot(runs, args.png)


if __name__ == "__main__":
    main()
