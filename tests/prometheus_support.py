"""The local Prometheus of `hack/prometheus` for tests: scrape targets added by writing files, real
inference servers it scrapes, and traffic for them.

Fixtures (a test module enables them with `pytest_plugins = ["tests.prometheus_support"]`, and
imports this module only under TYPE_CHECKING, so that pytest imports it first and rewrites its asserts):
- `prometheus`: the running Prometheus (started by `hack/prometheus up` when it is not);
- `scraped_servers`: starts `python -m modelship.server` processes that Prometheus scrapes with
  the target labels `namespace` and `pod`, as it scrapes a pod in a cluster; all are stopped and
  unregistered at the end of the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.support import wait_until

HACK_PROMETHEUS = ROOT / "hack" / "prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Prometheus:
    url: str
    targets: Path  # the folder of file_sd targets files

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The series of an instant query (raises on an error answer)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{promql}: {body}"
        return list(body["data"]["result"])

    def register(self, address: str, labels: Mapping[str, str]) -> Path:
        """Have `address` (host:port serving /metrics) scraped with these target labels; returns the file."""
        path = self.targets / f"{uuid.uuid4().hex}.json"
        # Written aside and renamed, so that Prometheus never reads half a file; the dot keeps the
        # temporary name outside the *.json pattern.
        temporary = self.targets / f".{path.name}.tmp"
        temporary.write_text(json.dumps([{"targets": [address], "labels": dict(labels)}]))
        temporary.replace(path)
        return path

    def requests_by_pod(self, namespace: str, window: str) -> dict[str, float]:
        """The inference requests each pod of a namespace answered over the last `window`."""
        series = self.query(
            f'sum by (pod) (increase(modelship_requests_total{{namespace="{namespace}"}}[{window}]))'
        )
        return {s["metric"]["pod"]: float(s["value"][1]) for s in series}

    def wait_scraped(self, selector: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the series `selector` selects are in Prometheus, and return them."""
        return wait_until(
            lambda: self.query(selector), timeout=timeout, interval=0.2, what=f"Prometheus to have {selector}"
        )


@pytest.fixture(scope="session")
def prometheus() -> Prometheus:
    """The local Prometheus (`hack/prometheus`); `up` returns at once when it already runs."""
    out = subprocess.run([str(HACK_PROMETHEUS), "up"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"hack/prometheus up failed: {out.stderr.strip()}")
    exports = dict(re.findall(r"^export (\w+)=(.*)$", out.stdout, re.MULTILINE))
    return Prometheus(exports["MODELSHIP_PROMETHEUS_URL"], Path(exports["MODELSHIP_PROMETHEUS_TARGETS"]))


@dataclass
class ScrapedServer:
    """A real inference server process that Prometheus scrapes as one pod of a revision."""

    model_name: str
    namespace: str
    revision: str
    pod: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    target_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.model_name}/infer"

    def traffic(self, requests: list[Mapping[str, Any]], *, pause: float = 0.01) -> Traffic:
        """Requests to this server in the background while the `with` block runs."""
        return Traffic(self.infer_url, requests, pause=pause)

    def infer(self, request: Mapping[str, Any]) -> int:
        """Send one inference request; its HTTP status."""
        return httpx.post(self.infer_url, json=dict(request), timeout=30).status_code

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {self.process.returncode}:\n{self.log_path.read_text()}"
            )
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.target_file is not None:
            self.target_file.unlink(missing_ok=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class ScrapedServers:
    prometheus: Prometheus
    folder: Path
    started: list[ScrapedServer] = field(default_factory=list)

    def start(
        self,
        model_file: Path,
        *,
        namespace: str,
        revision: str,
        model_name: str = "canary",
        env: Mapping[str, str] | None = None,
    ) -> ScrapedServer:
        """Start a server for `model_file`, wait until it is ready and Prometheus has scraped it."""
        port = free_port()
        pod = f"{model_name}-{revision}-{port}"
        log_path = self.folder / f"{pod}.log"
        server_env = {
            **os.environ,
            # The source tree, whatever copy of the package the venv holds.
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "server_image"), os.environ.get("PYTHONPATH")) if p
            ),
            "MODELSHIP_MODEL_NAME": model_name,
            "MODELSHIP_MODEL_URI": str(model_file),
            "MODELSHIP_REVISION": revision,
            "MODELSHIP_HOST": "127.0.0.1",
            "MODELSHIP_PORT": str(port),
            "MODELSHIP_THREADS": "1",
            # One request per onnxruntime run: a request that fails cannot take others down with it.
            "MODELSHIP_MAX_BATCH_SIZE": "1",
            "MODELSHIP_TERMINATION_LOG": str(self.folder / f"{pod}.termination-log"),
            **(env or {}),
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "modelship.server"], env=server_env, stdout=log, stderr=log
            )
        server = ScrapedServer(model_name, namespace, revision, pod, port, process, log_path)
        self.started.append(server)
        wait_until(server.ready, timeout=60, interval=0.05, what=f"the server {pod} to be ready")
        server.target_file = self.prometheus.register(
            f"127.0.0.1:{port}", {"namespace": namespace, "pod": pod}
        )
        self.prometheus.wait_scraped(f'modelship_model_info{{namespace="{namespace}",pod="{pod}"}}')
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def scraped_servers(prometheus: Prometheus, tmp_path: Path) -> Iterator[ScrapedServers]:
    servers = ScrapedServers(prometheus, tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


class Traffic:
    """Inference requests sent one after another from a thread until stopped, statuses counted.

    `requests` are sent in turn (three good and one failing request: a quarter fails); `pause`
    paces them, so that a test does not spend the machine's CPUs on traffic.
    """

    def __init__(self, url: str, requests: list[Mapping[str, Any]], *, pause: float = 0.01) -> None:
        self.url = url
        self.requests = [json.dumps(dict(r)).encode() for r in requests]
        self.pause = pause
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
            turn = 0
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, content=self.requests[turn % len(self.requests)])
                    self.statuses[response.status_code] += 1
                except httpx.TransportError:
                    self.statuses[0] += 1  # no answer at all: the test sees it in the counts
                turn += 1
                self._stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
