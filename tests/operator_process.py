"""The operator as a local `kopf run -m modelship.operator` subprocess, with its log lines kept.

Shared by the cluster tests' operators (all namespaces, or scoped by the chart's RBAC) and by
the benches, which each add their own arguments, environment and readiness line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support import ConditionTimeout, wait_until

ROOT = Path(__file__).resolve().parent.parent
KOPF = ROOT / ".venv" / "bin" / "kopf"

LogLine = dict[str, Any]
# A predicate on one log line, or a text its message contains.
Match = Callable[[LogLine], bool] | str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(raw: str) -> LogLine:
    """A JSON log line as Kopf writes it, or anything else (a traceback) as a bare message."""
    try:
        line = json.loads(raw)
    except ValueError:
        line = None
    return line if isinstance(line, dict) else {"message": raw.rstrip("\n"), "severity": "raw"}


def _predicate(match: Match) -> Callable[[LogLine], bool]:
    if isinstance(match, str):
        return lambda line: match in str(line.get("message", ""))
    return match


class KopfProcess:
    """One operator process at a time: `launch` it, read its lines, `stop` it.

    Every stdout line is appended to `log_path` (kept across restarts) and, parsed, to `lines`
    (those of the current process only).
    """

    wait_timeout = 30.0  # default for `wait_for`
    stop_timeout = 30.0  # SIGTERM, then SIGKILL after this

    def __init__(self, log_path: Path, *, name: str) -> None:
        self.log_path = log_path
        self.name = name
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[LogLine] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._output_closed = threading.Event()

    def launch(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        ready: Match,
        timeout: float | None = None,
        liveness_port: int | None = None,
    ) -> None:
        """Start `kopf run -m modelship.operator --log-format=json *args`, with `env` added to this
        process's environment, and wait for its `ready` line; with a `liveness_port`, also for
        its liveness endpoint to accept connections."""
        assert self.process is None, "already running"
        command = [str(KOPF), "run", "-m", "modelship.operator", "--log-format=json", *args]
        if liveness_port is not None:
            command.append(f"--liveness=http://127.0.0.1:{liveness_port}/healthz")
        with self._changed:
            self.lines = []
        self._output_closed = threading.Event()
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        self._reader = threading.Thread(
            target=self._read, args=(self.process, self.lines, self._output_closed), daemon=True
        )
        self._reader.start()
        self.wait_for(ready, timeout=timeout, what="startup")
        if liveness_port is not None:
            # Kopf opens the endpoint only once the startup activity has succeeded, a moment
            # after it logs so.
            wait_until(
                lambda: self._accepts(liveness_port),
                timeout=self.wait_timeout if timeout is None else timeout,
                interval=0.05,
                what=f"the liveness endpoint of operator {self.name} (log: {self.log_path})",
            )

    def _accepts(self, port: int) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            f"operator {self.name} exited; its log is {self.log_path}"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True

    def _read(self, process: subprocess.Popen[str], lines: list[LogLine], closed: threading.Event) -> None:
        assert process.stdout is not None
        with self.log_path.open("a") as log:
            for raw in process.stdout:
                log.write(raw)
                log.flush()
                line = parse(raw)
                with self._changed:
                    lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            closed.set()
            self._changed.notify_all()

    def snapshot(self) -> list[LogLine]:
        with self._changed:
            return list(self.lines)

    def find(self, match: Match) -> LogLine | None:
        """The first line so far that matches (a predicate, or a text in its message)."""
        predicate = _predicate(match)
        return next((line for line in self.snapshot() if predicate(line)), None)

    def wait_for(self, match: Match, *, timeout: float | None = None, what: str = "a log line") -> LogLine:
        """The first line that matches, waiting for it as the reader thread adds lines; fails at
        once, with the log's path, if the process has exited."""
        timeout = self.wait_timeout if timeout is None else timeout
        predicate = _predicate(match)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                if self.process is None or self.process.poll() is not None or self._output_closed.is_set():
                    raise AssertionError(
                        f"operator {self.name} exited while waiting for {what}; its log is {self.log_path}"
                    )
                found = next((line for line in self.lines[checked:] if predicate(line)), None)
                if found is not None:
                    return found
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConditionTimeout(
                        f"timed out after {timeout}s waiting for {what} from operator {self.name}; "
                        f"its log is {self.log_path}"
                    )
                self._changed.wait(remaining)

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a pod: the operator leaves the peering on its way out."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.process = None

    def usage(self) -> dict[str, float]:
        """RSS now and at its peak (MiB), and CPU seconds used, from /proc."""
        assert self.process is not None
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
            "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024,
            "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
        }
