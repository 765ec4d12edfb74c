"""How fast a pod added under keep-alive load gets its share, for each connection budget.

A Service balances connections, not requests: a pod that joins gets nothing from clients already
connected until their connections end. The server ends them (`spec.server.connections`: a
jittered `maxRequests` and `maxAge`, `Connection: close` on a response); this measures what each
setting buys and costs. Each setting, in a fresh namespace on the real node
(`hack/cluster up --real-node`), with the operator alone on it: iris with 3 replicas, Ready;
`wrk -t2 -c8` through the Service's ClusterIP (the route checked to go into the node) for the
whole run; after 10 s the model scales to 4 and, once the new pod is ready, every pod's /metrics
is read each second for 30 s (pod IPs checked the same way). Printed per setting: how long until
the new pod served a fair share (a quarter of the requests, within 5 points, over the last 2 s),
its share over the 10-30 s after it was ready, the reconnects per second all clients made, and
wrk's failed requests. A PNG (`--png`) plots the new pod's share against time, one line per setting.

    .venv/bin/python bench/rebalance.py
    .venv/bin/python bench/rebalance.py --settings 0:0 1000:10s --png .build/rebalance.png
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import apply_crds, operated_namespace  # noqa: E402

from tests.keepalive_load import wrk_load, wrk_result  # noqa: E402
from tests.operator.models import Models  # noqa: E402
from tests.real_node import routed_into_node  # noqa: E402

NAME = "iris"
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}
RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
DEFAULT_SETTINGS = ["0:0", "10000:60s", "1000:10s", "100:2s"]
WATCH_SECONDS = 30
FAIR = 0.25  # a fourth pod's share of the requests
_SAMPLE = re.compile(r"^(modelship_requests_total|modelship_connections_total)\{[^}]*\} ([0-9.e+]+)$", re.M)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    setting: str
    to_fair: float | None = None  # seconds after ready until the new pod served a fair share
    share: float = 0.0  # the new pod's share over 10-30 s after it was ready
    reconnects: float = 0.0  # connections opened per second, all pods
    sent: int = 0
    failed: int = 0
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds after ready, share)


def connections_spec(setting: str) -> dict[str, Any]:
    requests, age = setting.split(":", 1)
    return {"maxRequests": int(requests), "maxAge": age if not age.isdigit() else int(age)}


def pod_counters(http: httpx.Client, ip: str) -> tuple[float, float]:
    """(requests answered, connections accepted) a pod's own /metrics reports."""
    text = http.get(f"http://{ip}:8080/metrics").text
    sums = {"modelship_requests_total": 0.0, "modelship_connections_total": 0.0}
    for name, value in _SAMPLE.findall(text):
        sums[name] += float(value)
    return sums["modelship_requests_total"], sums["modelship_connections_total"]


def one_setting(setting: str, api: client.ApiClient, kubeconfig: str, work: Path) -> Outcome:
    core = client.CoreV1Api(api)
    outcome = Outcome(setting)
    with operated_namespace(api, kubeconfig, work, "bench-rebalance") as ns:
        models = Models(api, ns)
        model = dict(yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())["spec"]["model"])
        server = {"connections": connections_spec(setting)}
        models.create(NAME, {"model": model, "replicas": 3, "resources": RESOURCES, "server": server})
        models.wait_ready(NAME, timeout=240)
        ip = routed_into_node(core.read_namespaced_service(NAME, ns).spec.cluster_ip)
        wrk = wrk_load(f"http://{ip}/v2/models/{NAME}/infer", REQUEST, seconds=120)
        try:
            time.sleep(10)  # the load settles on the three pods: the scenario, not a synchronisation
            before = {p.metadata.name for p in models.pods(NAME)}
            models.patch(NAME, {"spec": {"replicas": 4}})
            models.wait_ready(NAME, timeout=120)
            ready_at = time.monotonic()
            pods = {p.metadata.name: routed_into_node(p.status.pod_ip) for p in models.pods(NAME)}
            [added] = set(pods) - before
            samples: list[tuple[float, dict[str, tuple[float, float]]]] = []
            with httpx.Client(timeout=5, trust_env=False) as http:
                while (now := time.monotonic()) < ready_at + WATCH_SECONDS:
                    samples.append(
                        (now - ready_at, {pod: pod_counters(http, ip) for pod, ip in pods.items()})
                    )
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        finally:
            result = wrk_result(wrk, interrupt=True)
        outcome.sent, outcome.failed = result.sent, result.failed
        summarise(outcome, samples, added)
        return outcome


def summarise(
    outcome: Outcome, samples: list[tuple[float, dict[str, tuple[float, float]]]], added: str
) -> None:
    def share(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]) -> float:
        total = sum(b[p][0] - a[p][0] for p in b)
        return (b[added][0] - a[added][0]) / total if total else 0.0

    for (_, earlier), (at, later) in zip(samples, samples[2:], strict=False):  # over the last 2 s
        outcome.timeline.append((at, share(earlier, later)))
        if outcome.to_fair is None and abs(outcome.timeline[-1][1] - FAIR) <= 0.05:
            outcome.to_fair = at
    late = [(at, counts) for at, counts in samples if at >= 10]
    if len(late) >= 2:
        outcome.share = share(late[0][1], late[-1][1])
    first, last = samples[0], samples[-1]
    opened = sum(last[1][p][1] - first[1][p][1] for p in last[1])
    outcome.reconnects = opened / (last[0] - first[0]) if last[0] > first[0] else 0.0


def plot(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for o in outcomes:
        label = f"maxRequests:maxAge {o.setting} ({o.reconnects:.0f} reconnects/s)"
        axes.plot([t for t, _ in o.timeline], [100 * s for _, s in o.timeline], label=label)
    axes.axhline(100 * FAIR, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("seconds after the fourth pod was ready")
    axes.set_ylabel("its share of the requests (last 2 s), %")
    axes.set_title(f"A pod added under wrk -c8: its share of the requests ({time.strftime('%Y-%m-%d')})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    log(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=DEFAULT_SETTINGS,
        help="maxRequests:maxAge pairs; 0 is no limit (default: %(default)s)",
    )
    parser.add_argument("--png", type=Path, default=ROOT / ".build" / "bench-rebalance" / "rebalance.png")
    parser.add_argument("--kubeconfig", default=str(ROOT / ".cluster" / "kubeconfig"))
    args = parser.parse_args()
    api = config.new_client_from_config(config_file=args.kubeconfig)
    apply_crds(args.kubeconfig)
    work = ROOT / ".build" / "bench-rebalance"
    work.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for setting in args.settings:
        log(f"maxRequests:maxAge {setting}: 3 pods under wrk -c8, then a fourth")
        outcomes.append(one_setting(setting, api, args.kubeconfig, work))
    print(f"\nA fourth pod added under wrk -t2 -c8, {time.strftime('%Y-%m-%d')}:")
    heads = ("maxRequests:maxAge", "to a fair share", "share 10-30s", "reconnects/s", "sent", "failed")
    print(f"{heads[0]:<19} {heads[1]:>15} {heads[2]:>12} {heads[3]:>12} {heads[4]:>8} {heads[5]:>6}")
    for o in outcomes:
        fair = f"{o.to_fair:.0f} s" if o.to_fair is not None else f"> {WATCH_SECONDS} s"
        share = f"{100 * o.share:.0f}%"
        print(f"{o.setting:<19} {fair:>15} {share:>12} {o.reconnects:>12.1f} {o.sent:>8} {o.failed:>6}")
    plot(outcomes, args.png)


if __name__ == "__main__":
    main()
