"""`hack/cluster` up/status/down on a second, private cluster, so the shared one keeps running."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support import process_alive

pytestmark = pytest.mark.cluster

CLUSTER = str(ROOT / "hack" / "cluster")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLUSTER, *args], env=env, capture_output=True, text=True, timeout=180)


def _live_pids(run_dir: Path) -> dict[str, int]:
    pids = {}
    for pid_file in run_dir.glob("*.pid"):
        pid = int(pid_file.read_text())
        if process_alive(pid):
            pids[pid_file.stem] = pid
    return pids


def test_up_is_idempotent_and_down_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    env = {
        **os.environ,
        "MODELSHIP_CLUSTER_DIR": str(state),
        "MODELSHIP_APISERVER_PORT": "26443",
        "MODELSHIP_ETCD_PORT": "22379",
        "MODELSHIP_KCM_PORT": "20257",
        "MODELSHIP_SCHEDULER_PORT": "20259",
        "MODELSHIP_KWOK_PORT": "20247",
        "MODELSHIP_KWOK_NODES": "1",
    }
    started: dict[str, int] = {}
    try:
        first = _run(env, "up")
        assert first.returncode == 0, first.stderr
        assert f"export KUBECONFIG={state}/kubeconfig" in first.stdout
        started = _live_pids(state / "run")
        assert set(started) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

        t0 = time.monotonic()
        second = _run(env, "up")
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stderr
        assert time.monotonic() - t0 < 5
        assert _live_pids(state / "run") == started

        status = _run(env, "status")
        assert "kube-apiserver" in status.stdout and "running" in status.stdout
        assert "kwok-node-0" in status.stdout and " Ready" in status.stdout
    finally:
        down = _run(env, "down")
    assert down.returncode == 0, down.stderr
    assert started, "up started nothing"
    for name, pid in started.items():
        assert not process_alive(pid), f"{name} (pid {pid}) still runs after down"
    assert not (state / "etcd").exists()
    assert "stopped" in _run(env, "status").stdout
