"""What the benchmarks of one server process on 127.0.0.1 share: a free port, the process started and
waited for until ready (and always stopped), and wrk (Debian's) driving it: a warm-up, a timed
closed-loop run, and its figures read from the text it prints."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str  # wrk's lines about non-2xx answers and socket errors; empty when there were none


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving_process(
    command: list[str], env: Mapping[str, str], ready_url: str, log: Path, cwd: Path, timeout: float = 120
) -> Iterator[subprocess.Popen[bytes]]:
    """The process, once `ready_url` answers 200; RuntimeError (with the log's path) if it exits or is
    not ready in time. Terminated (then killed) on the way out, whatever happened."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=dict(env), stdout=out, stderr=out, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {proc.returncode} at start; see {log}")
            # trust_env=False: loopback, never through HTTP_PROXY (which pip, for KServe, may need).
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready_url, timeout=1, trust_env=False).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} not ready after {timeout:.0f} s; see {log}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise RuntimeError(f"wrk's output has no {pattern!r}:\n{text}")
    return match.group(1)


def run_wrk(url: str, script: Path, concurrency: int, seconds: float) -> WrkRun:
    """A second of warm-up (connections, caches), then `seconds` of load from `concurrency` connections."""
    threads = 1 if concurrency == 1 else 2
    base = ["wrk", f"-t{threads}", f"-c{concurrency}", "--latency", "--timeout", "5s", "-s", str(script)]
    subprocess.run([*base, "-d1s", url], check=True, capture_output=True, timeout=60)
    out = subprocess.run(
        [*base, f"-d{seconds:g}s", url], check=True, capture_output=True, text=True, timeout=seconds + 60
    ).stdout
    errors = "; ".join(
        line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line
    )
    return WrkRun(
        float(_found(r"Requests/sec:\s+([\d.]+)", out)),
        _ms(_found(r"^\s+50%\s+(\S+)", out)),
        _ms(_found(r"^\s+99%\s+(\S+)", out)),
        errors,
    )
