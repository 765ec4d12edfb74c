"""Fixtures for the server tests: real ONNX files, a real server process on 127.0.0.1, a local model host."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import loopback
from tests.server import models
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    models.save(models.mlp(), folder / "mlp.onnx")
    models.save(models.dtypes(), folder / "dtypes.onnx")
    models.save(models.strings(), folder / "strings.onnx")
    models.save(models.fixed(), folder / "fixed.onnx")
    models.save(models.every(), folder / "every.onnx")
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """`python -m modelship.server` as a user starts it, on a free port of 127.0.0.1."""

    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> ServerProcess:
        env = {**os.environ, **self.env, "MODELSHIP_HOST": "127.0.0.1", "MODELSHIP_PORT": str(self.port)}
        env.setdefault("MODELSHIP_THREADS", "2")
        # The source tree, whatever copy of the package the venv holds.
        paths = (str(ROOT / "server_image"), env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.log_path = log_dir / f"server-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelship.server", *self.args], env=env, stdout=log, stderr=log
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        wait_until(self.ready, timeout=timeout, interval=0.05, what=f"server on port {self.port} to be ready")
        return self

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers for one test; all are stopped at its end."""
    started: list[ServerProcess] = []

    def start(env: Mapping[str, str], *args: str, wait: bool = True) -> ServerProcess:
        env = {"MODELSHIP_TERMINATION_LOG": str(tmp_path / "termination-log"), **env}
        server = ServerProcess(env=dict(env), args=list(args)).start(tmp_path)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


@dataclass
class Servers:
    mlp: ServerProcess
    dtypes: ServerProcess
    strings: ServerProcess
    fixed: ServerProcess
    every: ServerProcess
    auth: ServerProcess
    token: str


@pytest.fixture(scope="session")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One server per test model, started side by side (each start mostly waits on imports)."""
    logs = tmp_path_factory.mktemp("server-logs")
    token_file = logs / "token"
    token_file.write_text("s3cret-token\n")

    def env(name: str, **more: str) -> dict[str, str]:
        return {
            "MODELSHIP_MODEL_NAME": name,
            "MODELSHIP_MODEL_VERSION": "3",
            "MODELSHIP_MODEL_URI": str(model_dir / f"{name}.onnx"),
            "MODELSHIP_TERMINATION_LOG": str(logs / f"{name}-termination-log"),
            "MODELSHIP_REVISION": "rev-a",
            **more,
        }

    procs = {
        "mlp": ServerProcess(env(name="mlp", MODELSHIP_MAX_BATCH_SIZE="8", MODELSHIP_MAX_DELAY_MS="20")),
        "dtypes": ServerProcess(env(name="dtypes")),
        "strings": ServerProcess(env(name="strings")),
        "fixed": ServerProcess(env(name="fixed")),
        "every": ServerProcess(env(name="every")),
        "auth": ServerProcess(
            {
                **env(name="mlp", MODELSHIP_MAX_BATCH_SIZE="1"),
                "MODELSHIP_AUTH_TOKEN_FILE": str(token_file),
            }
        ),
    }
    try:
        for proc in procs.values():
            proc.start(logs)
        for proc in procs.values():
            proc.wait_ready()
        yield Servers(**procs, token="s3cret-token")
    finally:
        for proc in procs.values():
            proc.stop()


@dataclass
class ModelHost:
    """A tiny HTTP server on 127.0.0.1 that serves files, 404s, truncated bodies and flaky starts."""

    url: str
    files: dict[str, bytes]
    truncated: dict[str, bytes]
    # path -> how many more requests get a 503 before the file is served
    flaky: dict[str, int]
    hits: dict[str, int]
    # path -> an event the response waits for (a download that takes as long as the test wants)
    gates: dict[str, threading.Event]


@pytest.fixture
def model_host() -> Iterator[ModelHost]:
    files: dict[str, bytes] = {}
    truncated: dict[str, bytes] = {}
    flaky: dict[str, int] = {}
    hits: dict[str, int] = {}
    gates: dict[str, threading.Event] = {}

    class Handler(loopback.Handler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            gate = gates.get(self.path)
            if gate is not None:
                gate.wait(timeout=60)
            if flaky.get(self.path, 0) > 0:
                flaky[self.path] -= 1
                self.reply(503)
                return
            if self.path in truncated:
                body = truncated[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) * 2))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                return
            found = files.get(self.path)
            if found is None:
                self.reply(404)
            else:
                self.reply(200, found)

    with loopback.serving(Handler) as url:
        yield ModelHost(url, files, truncated, flaky, hits, gates)
