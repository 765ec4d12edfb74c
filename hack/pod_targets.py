"""The local Prometheus's discovery of the real node's model pods, as file_sd targets.

Debian's Prometheus is built without kubernetes_sd, so this does its job for the local cluster:
it watches the pods that Modelship manages on the real node and keeps one targets file per ready
pod (`<pod IP>:<its port named http>`, labelled `namespace`, `pod` and the pod's labels as
kubernetes_sd's usual relabelling names them) in Prometheus's file_sd folder; Prometheus re-reads
the folder every second. Only addresses in the node's pod range are written: a KWOK pod's address
is routed nowhere local, and nothing is ever scraped off this machine.

    .venv/bin/python hack/pod_targets.py KUBECONFIG TARGETS_DIR NODE_NAME POD_IP_PREFIX

`hack/prometheus up` starts it once the real node runs, and `down` stops it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

MANAGED = "app.kubernetes.io/managed-by=modelship"
PREFIX = "node-pod-"
log = logging.getLogger("pod-targets")


def label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def target_of(pod: Any, network: ipaddress.IPv4Network) -> dict[str, Any] | None:
    """The file_sd entry for a ready pod of the node, or None."""
    status = pod.status
    if pod.metadata.deletion_timestamp is not None or not status or not status.pod_ip:
        return None
    if ipaddress.ip_address(status.pod_ip) not in network:
        return None
    if not any(c.type == "Ready" and c.status == "True" for c in status.conditions or ()):
        return None
    ports = [p.container_port for c in pod.spec.containers for p in c.ports or () if p.name == "http"]
    if not ports:
        return None
    labels = {label_name(k): v for k, v in (pod.metadata.labels or {}).items()}
    labels.update(namespace=pod.metadata.namespace, pod=pod.metadata.name)
    return {"targets": [f"{status.pod_ip}:{ports[0]}"], "labels": labels}


def write(folder: Path, pod: Any, target: dict[str, Any] | None) -> None:
    path = folder / f"{PREFIX}{pod.metadata.namespace}_{pod.metadata.name}.json"
    if target is None:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps([target]))
    os.replace(temporary, path)  # Prometheus never reads half a file


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    kubeconfig, folder, node, network = argv[0], Path(argv[1]), argv[2], ipaddress.ip_network(argv[3])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder.mkdir(parents=True, exist_ok=True)
    # The API server is the local cluster's: no proxy, whatever the environment says (the kubernetes
    # client takes HTTP(S)_PROXY from it, and its NO_PROXY rarely names 127.0.0.1).
    for name in [n for n in os.environ if n.lower().endswith("_proxy") and n.lower() != "no_proxy"]:
        del os.environ[name]
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    while True:
        try:
            listing = core.list_pod_for_all_namespaces(
                label_selector=MANAGED, field_selector=f"spec.nodeName={node}"
            )
            present = set()
            for pod in listing.items:
                write(folder, pod, target_of(pod, network))
                present.add(f"{PREFIX}{pod.metadata.namespace}_{pod.metadata.name}.json")
            for stale in folder.glob(f"{PREFIX}*.json"):
                if stale.name not in present:
                    stale.unlink(missing_ok=True)
            stream = watch.Watch().stream(
                core.list_pod_for_all_namespaces,
                label_selector=MANAGED,
                field_selector=f"spec.nodeName={node}",
                resource_version=listing.metadata.resource_version,
                timeout_seconds=300,
            )
            for event in stream:
                pod = event["object"]
                write(folder, pod, None if event["type"] == "DELETED" else target_of(pod, network))
        except Exception as exc:  # the API server restarts with the cluster: list again
            log.warning("watching pods: %s", exc)
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
