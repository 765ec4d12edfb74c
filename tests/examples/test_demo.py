"""`make demo` and `make demo-canary` as a user runs them: hack/demo installs the chart's operator,
serves examples/minimal.yaml and prints a real prediction; `hack/demo canary` rolls version 2 out
under live traffic and prints version 2's prediction. Both must exit 0 and say the right label and
version, with a proxy set in the environment that would swallow any request sent through it.

The demo is the cluster's own (namespace modelship-demo, release modelship in modelship-system):
this test ends with `hack/demo stop`, so a demo someone left running is removed.
"""

from __future__ import annotations

import ast
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.no_proxy import BOGUS_PROXY, PROXY_VARIABLES
from tests.real_node import ready_real_node

pytestmark = pytest.mark.cluster

DEMO = ROOT / "hack" / "demo"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.upper() != "NO_PROXY"}
    env.update(dict.fromkeys(PROXY_VARIABLES, BOGUS_PROXY))
    return subprocess.run(
        [str(DEMO), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def demo(kubeconfig: str, k8s_api) -> Iterator[subprocess.CompletedProcess[str]]:  # type: ignore[no-untyped-def]
    from kubernetes import client

    ready_real_node(client.CoreV1Api(k8s_api), "docker.io/modelship/operator:0.1.0", "hack/images")
    try:
        yield _run(timeout=420)
    finally:
        subprocess.run([str(DEMO), "stop"], capture_output=True, timeout=120, check=False)


def test_make_demo_prints_version_1s_prediction(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, _said(demo)
    assert "[demo] prediction: iris version 1 says class 2" in demo.stderr, _said(demo)
    assert '"model_version":"1"' in demo.stdout.replace(" ", ""), _said(demo)


def test_make_demo_canary_rolls_version_2_out_and_prints_its_prediction(
    demo: subprocess.CompletedProcess[str],
) -> None:
    assert demo.returncode == 0, "the demo itself failed; see the test above"
    canary = _run("canary", timeout=420)
    assert canary.returncode == 0, _said(canary)
    assert "[demo] prediction: iris version 2 says class 1" in canary.stderr, _said(canary)
    # The live traffic's own summary ("traffic: N requests sent, answers: {'200': N}"): none lost.
    summary = [line for line in canary.stdout.splitlines() if line.startswith("traffic: ")]
    assert len(summary) == 1, _said(canary)
    answers = ast.literal_eval(summary[0].split("answers: ", 1)[1])
    assert set(answers) == {"200"} and answers["200"] > 0, summary[0]
