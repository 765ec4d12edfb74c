"""`hack/argocd up` is idempotent, and `down` stops exactly what `up` started: a Redis and a git
daemon someone else runs on this machine survive it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.argocd.gitops import HACK_ARGOCD
from tests.conftest import ROOT
from tests.operator_process import free_port
from tests.support import process_alive, wait_until

pytestmark = pytest.mark.cluster

STATE = ROOT / ".cluster" / "argocd"
COMPONENTS = ("redis", "git-daemon", "repo-server", "application-controller")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HACK_ARGOCD), *args], capture_output=True, text=True, timeout=300, check=False)


def _pids() -> dict[str, int]:
    return {name: int((STATE / f"{name}.pid").read_text()) for name in COMPONENTS}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def bystanders(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A Redis and a git daemon of someone else's, on ports of their own."""
    redis_port, git_port = free_port(), free_port()
    exec_path = subprocess.run(
        ["git", "--exec-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    procs = [
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                f"{exec_path}/git-daemon",
                "--listen=127.0.0.1",
                f"--port={git_port}",
                f"--base-path={tmp_path}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        for port in (redis_port, git_port):
            wait_until(lambda p=port: _listening(p), timeout=20, what=f"a bystander on port {port}")
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def test_up_is_idempotent_and_down_stops_exactly_what_up_started(
    kubeconfig: str, bystanders: list[subprocess.Popen[bytes]]
) -> None:
    started: dict[str, int] = {}
    try:
        first = _run("up")
        assert first.returncode == 0, first.stderr
        assert "export MODELSHIP_ARGOCD_GIT_URL=git://127.0.0.1:" in first.stdout
        started = _pids()
        assert all(process_alive(pid) for pid in started.values()), started

        again = _run("up")
        assert again.returncode == 0, again.stderr
        assert "started" not in again.stderr, again.stderr
        assert _pids() == started

        status = _run("status")
        assert all(f"argocd {name}" in status.stdout for name in COMPONENTS), status.stdout
        assert "stopped" not in status.stdout, status.stdout
    finally:
        down = _run("down")
    assert down.returncode == 0, down.stderr
    assert started, "up started nothing"
    for name, pid in started.items():
        wait_until(lambda p=pid: not process_alive(p), timeout=10, what=f"{name} (pid {pid}) to exit")
    assert not STATE.exists()
    assert all(proc.poll() is None for proc in bystanders), "down stopped a process it had not started"
    assert "running" not in _run("status").stdout
