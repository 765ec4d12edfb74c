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


The shadow scenario (a wrong-but-healthy canary in a shadow step, and what mirroring costs) is
bench/shadow.py; `--shadow` and `--overhead-only` here are aliases that run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from modelship.operator import naming

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shadow  # noqa: E402
from benchlib import (  # noqa: E402
    Client,
    Response,
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

from tests.operator import canary_models  # noqa: E402
from tests.operator.models import manifest, model_spec  # noqa: E402
from tests.prometheus_support import ScrapedServers  # noqa: E402

NAME = "fraud"
REPLICAS = 4
WEIGHT = 25


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
        status = RolloutStatus(custom, namespace, NAME)
        endpoints = ServiceEndpoints(core, discovery, namespace, NAME)
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
    argv = sys.argv[1:]
    if "--shadow" in argv or "--overhead-only" in argv:
        # The commands of the README and the commit log that ran the shadow scenario from here.
        shadow.main([arg for arg in argv if arg != "--shadow"])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_canary_arguments(parser)
    aliases = parser.add_argument_group("aliases of bench/shadow.py (its options pass through)")
    aliases.add_argument("--shadow", action="store_true", help="bench/shadow.py")
    aliases.add_argument("--overhead-only", action="store_true", help="bench/shadow.py --overhead-only")
    args = parser.parse_args(argv)

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
