"""The real node of `hack/cluster up --real-node`, as the tests that need it find it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

REAL_NODE_LABEL = "modelship.io/node-kind=real"


def is_ready(obj: Any) -> bool:
    """A pod's or a node's Ready condition is True."""
    return any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions or [])


def ready_real_node(core: Any, image: str, build: str) -> Any:
    """The Ready real node holding `image` (its full name, docker.io/...); fails the test, saying
    what to run, when there is none (`build`: the command that puts the image there)."""
    nodes = core.list_node(label_selector=REAL_NODE_LABEL).items
    if not nodes:
        pytest.fail("the cluster has no real node: run `hack/cluster up --real-node`", pytrace=False)
    node = nodes[0]
    if not is_ready(node):
        pytest.fail(f"the real node {node.metadata.name} is not Ready", pytrace=False)
    images = {name for found in node.status.images or [] for name in found.names or []}
    if image not in images:
        pytest.fail(f"{image} is not on the real node: run `{build}`", pytrace=False)
    return node


def routed_into_node(ip: str) -> str:
    """`ip`, once the host's routing table sends it into the local cluster's node (the veth pair
    `ms-*` of hack/cluster) or to loopback; fails the test before any packet is sent otherwise,
    for without the real node a ClusterIP would leave the machine through the default route."""
    route = subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True, timeout=10)
    words = route.stdout.split()
    device = words[words.index("dev") + 1] if "dev" in words else ""
    if route.returncode != 0 or not (device.startswith("ms-") or device == "lo"):
        pytest.fail(
            f"{ip} is not routed into the local node ({route.stdout.strip() or route.stderr.strip()})"
        )
    return ip
