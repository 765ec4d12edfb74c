"""Requests lost while a good canary rolls out under keep-alive load, on the real node.

Each run, in a fresh namespace on the local cluster's real node (`hack/cluster up --real-node`):
the operator alone (`--standalone`) on that namespace; iris version 1 from the cluster's model
store with 2 replicas, Ready; then, under keep-alive load through the Service's ClusterIP (the
route checked to go into the node), version 2 with the steps `setWeight: 50, pause: 5s` and a
2 s scale-down delay; the load runs until every pod of version 1 has exited. Printed per run:
requests sent, failed (non-2xx, and connection errors by kind), reconnects the server asked for,
and how long the rollout took. Two kinds of load, one per run in turn (`--load`):
`wrk` (Debian's wrk -t2 -c8, the scenario of the issue that found the losses) and `pool`
(4 single-connection http.client clients plus an httpx pool of 4, no retries).

    .venv/bin/python bench/keepalive.py --runs 3
    .venv/bin/python bench/keepalive.py --runs 5 --load wrk
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import apply_crds, operated_namespace, wait  # noqa: E402

from tests.keepalive_load import KeepAliveLoad, LoadResult, wrk_load, wrk_result  # noqa: E402
from tests.operator.models import Models  # noqa: E402
from tests.real_node import routed_into_node  # noqa: E402

NAME = "iris"
REQUEST = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.9, 3.2, 4.8, 1.8]}]}
STEPS = [{"setWeight": 50}, {"pause": {"duration": "5s"}}]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def example_model(path: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / path).read_text())["spec"]["model"])


def one_run(kind: str, api: client.ApiClient, kubeconfig: str, work: Path) -> tuple[LoadResult, float]:
    core = client.CoreV1Api(api)
    with operated_namespace(api, kubeconfig, work, "bench-keepalive") as ns:
        models = Models(api, ns)
        resources = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
        models.create(NAME, {"model": example_model("minimal.yaml"), "replicas": 2, "resources": resources})
        models.wait_ready(NAME, timeout=180)
        ip = routed_into_node(core.read_namespaced_service(NAME, ns).spec.cluster_ip)
        url = f"http://{ip}/v2/models/{NAME}/infer"
        with KeepAliveLoad(url, REQUEST, connections=1, pooled=0) as probe:
            wait(lambda: probe.result.ok >= 5, 30, "answers through the ClusterIP")
        before = {p.metadata.name for p in models.pods(NAME)}
        pool = KeepAliveLoad(url, REQUEST, connections=4, pooled=4) if kind == "pool" else None
        wrk = wrk_load(url, REQUEST, seconds=300) if kind == "wrk" else None
        if pool is not None:
            pool.start()
        try:
            started = time.monotonic()
            canary = {"steps": STEPS, "scaleDownDelaySeconds": 2}
            models.patch(
                NAME, {"spec": {"model": example_model("canary.yaml"), "rollout": {"canary": canary}}}
            )
            models.wait_ready(NAME, timeout=300)
            wait(
                lambda: not before & {p.metadata.name for p in models.pods(NAME)},
                180,
                "version 1's pods gone",
            )
            took = time.monotonic() - started
        finally:
            result = pool.stop() if pool is not None else wrk_result(wrk, interrupt=True)  # type: ignore[arg-type]
        return result, took


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--load", choices=["both", "wrk", "pool"], default="both")
    parser.add_argument("--kubeconfig", default=str(ROOT / ".cluster" / "kubeconfig"))
    args = parser.parse_args()
    api = config.new_client_from_config(config_file=args.kubeconfig)
    apply_crds(args.kubeconfig)
    work = ROOT / ".build" / "bench-keepalive"
    work.mkdir(parents=True, exist_ok=True)
    kinds = ["wrk", "pool"] if args.load == "both" else [args.load]
    rows = []
    for run in range(args.runs):
        kind = kinds[run % len(kinds)]
        log(f"run {run + 1}/{args.runs}: a good canary rollout under {kind} load")
        result, took = one_run(kind, api, args.kubeconfig, work)
        log(f"  {result} in {took:.1f} s")
        rows.append((run + 1, kind, result, took))
    when = time.strftime("%Y-%m-%d")
    print(f"\nA good canary rollout (2 replicas, setWeight 50, pause 5s) under keep-alive load, {when}:")
    print(f"{'run':>3}  {'load':<5} {'sent':>7} {'failed':>6}  {'reconnects*':>11}  {'rollout':>8}  failures")
    for run, kind, result, took in rows:
        reconnects = str(result.reconnects) if kind == "pool" else "-"
        print(
            f"{run:>3}  {kind:<5} {result.sent:>7} {result.failed:>6}  {reconnects:>11}  {took:>7.1f}s  "
            f"{dict(result.failures) or ''}"
        )
    print(
        "* reconnects of the 4 single-connection clients, each told `Connection: close` "
        "(a pod leaving, or its connection's bound reached)"
    )
    total = sum(r[2].sent for r in rows), sum(r[2].failed for r in rows)
    print(f"total: {total[0]} requests sent, {total[1]} failed")


if __name__ == "__main__":
    main()
