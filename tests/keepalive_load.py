"""Bounded keep-alive load, as real clients send it: for the rollout tests and benchmarks.

Two kinds of client run at once against one URL (a ClusterIP checked with
`tests.real_node.routed_into_node`, or loopback):
- `connections` threads, each holding one HTTP/1.1 connection (`http.client`) and sending one
  request at a time on it: pipelining off, as most clients do;
- `pooled` threads sharing one `httpx.Client` whose pool keeps up to `pooled` connections, as
  tritonclient, `requests.Session` or Go's `http.Client` do.
Neither retries: a request that fails counts, by status code or by exception type. A client
reconnects only when the server said `Connection: close` (or closed an idle connection, which
http.client notices before it sends). `wrk_load` runs Debian's wrk the same way, for the issue's
own scenario (`wrk -t2 -c8`).
"""

from __future__ import annotations

import collections
import http.client
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

MAX_SECONDS = 600.0  # no load runs longer than this, whatever the caller forgets
PACE = 0.002  # seconds between two requests of one client: the cores are shared with the cluster


def _version(body: bytes) -> str:
    """The `model_version` an Open Inference Protocol answer names ("?" if it names none)."""
    try:
        return str(orjson.loads(body).get("model_version", "?"))
    except (orjson.JSONDecodeError, AttributeError):
        return "?"


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    reconnects: int = 0
    output: str = ""  # what the load generator printed, when it is a program (wrk)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def __str__(self) -> str:
        return (
            f"{self.sent} sent, {self.ok} answered 2xx, {self.failed} failed {dict(self.failures)}, "
            f"{self.reconnects} reconnects"
        )


class KeepAliveLoad:
    def __init__(
        self, url: str, body: dict[str, Any], *, connections: int = 4, pooled: int = 4, pace: float = PACE
    ) -> None:
        self.url = url
        self.pace = pace  # seconds each client waits between two requests
        self.body = orjson.dumps(body)
        self.connections = connections
        self.pooled = pooled
        self.result = LoadResult()
        self.answered: list[tuple[float, str]] = []  # (time.monotonic(), model_version) of each 2xx
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deadline = 0.0

    def versions(self, since: float = 0.0) -> collections.Counter[str]:
        """2xx answers by the model version that gave them, since a `time.monotonic()` instant."""
        with self._lock:
            return collections.Counter(version for at, version in self.answered if at >= since)

    def _count(self, outcome: str | None, reconnected: bool = False, body: bytes = b"") -> None:
        version = _version(body) if outcome is None else ""
        with self._lock:
            self.result.sent += 1
            if outcome is None:
                self.result.ok += 1
                self.answered.append((time.monotonic(), version))
            else:
                self.result.failures[outcome] += 1
            self.result.reconnects += reconnected

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _one_connection(self) -> None:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
        headers = {"Content-Type": "application/json"}
        try:
            while self._running():
                reconnected = conn.sock is None and self.result.sent > 0
                try:
                    conn.request("POST", parts.path, body=self.body, headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                    outcome = None if 200 <= response.status < 300 else str(response.status)
                    self._count(outcome, reconnected, body)
                    if response.will_close:
                        conn.close()  # the server said Connection: close: the next request reconnects
                except (OSError, http.client.HTTPException) as exc:
                    self._count(type(exc).__name__, reconnected)
                    conn.close()
                time.sleep(self.pace)
        finally:
            conn.close()

    def _pooled(self, pool: httpx.Client) -> None:
        while self._running():
            try:
                response = pool.post(
                    self.url, content=self.body, headers={"Content-Type": "application/json"}
                )
                self._count(None if response.is_success else str(response.status_code), body=response.content)
            except httpx.HTTPError as exc:
                self._count(type(exc).__name__)
            time.sleep(self.pace)

    def __enter__(self) -> KeepAliveLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, max_seconds: float = MAX_SECONDS) -> None:
        self._deadline = time.monotonic() + min(max_seconds, MAX_SECONDS)
        limits = httpx.Limits(max_connections=self.pooled, max_keepalive_connections=self.pooled)
        self._pool = httpx.Client(limits=limits, timeout=10, transport=httpx.HTTPTransport(retries=0))
        self._threads = [
            threading.Thread(target=self._one_connection, daemon=True) for _ in range(self.connections)
        ]
        self._threads += [
            threading.Thread(target=self._pooled, args=(self._pool,), daemon=True) for _ in range(self.pooled)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._pool.close()
        return self.result


def wrk_load(
    url: str,
    body: dict[str, Any],
    *,
    seconds: float,
    threads: int = 2,
    connections: int = 8,
    latency: bool = False,
) -> subprocess.Popen[str]:
    """Start `wrk -t2 -c8` POSTing `body` for `seconds` (at most MAX_SECONDS); read it with `wrk_result`."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is missing: run hack/deps")
    script = Path(tempfile.mkdtemp()) / "post.lua"
    payload = orjson.dumps(body).decode()
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{payload}]]\n'
    )
    duration = f"{int(min(seconds, MAX_SECONDS))}s"
    return subprocess.Popen(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}",
            "--timeout",
            "10s",
            "-s",
            str(script),
            *(["--latency"] if latency else []),
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_result(process: subprocess.Popen[str], *, interrupt: bool = False) -> LoadResult:
    """wrk's counts once it ends; `interrupt` ends it now (on SIGINT wrk stops and reports)."""
    if interrupt and process.poll() is None:
        process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=MAX_SECONDS + 30)
    result = LoadResult(output=out)
    sent = re.search(r"(\d+) requests in", out)
    if not sent:
        raise AssertionError(f"wrk printed no total:\n{out}")
    result.sent = int(sent.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        result.failures["non-2xx"] = int(non_2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        for kind, count in zip(("connect", "read", "write", "timeout"), errors.groups(), strict=True):
            if int(count):
                result.failures[f"socket {kind}"] = int(count)
    result.ok = result.sent - result.failures["non-2xx"]
    return result
