"""The inference server under heavy input, before and after the memory budget work: peak RSS against body
size, health-probe latency while a large request is handled, requests/s of small requests.

    .venv/bin/python bench/server_limits.py [--before-ref 86a6067] [--after-ref worktree]
        [--sizes 1 4 16 32 48 60] [--duration 6] [--rounds 2] [--threads 2] [--pod-memory-mib 512]
        [--png bench/figures/server_limits.png]

Each side is a git ref (its `server_image`, extracted with `git archive` into a temporary folder) or
`worktree` (a copy of this checkout's `server_image` as the run finds it), served as
`python -m modelship.server` with PYTHONPATH=<that tree>/server_image and this interpreter, one server
at a time, on a free port of 127.0.0.1. The tree's `modelship.server` is checked to be the one imported
(the editable install puts this checkout's `server_image` on sys.path too, after PYTHONPATH). Both sides
get the memory budgets a 512 MiB pod gets by default, a quarter of it per request and half in flight
(MODELSHIP_MAX_REQUEST_MEMORY_BYTES, MODELSHIP_MAX_INFLIGHT_MEMORY_BYTES; a server from before the
budgets ignores them), MODELSHIP_MAX_REQUEST_BYTES at its default of 64 MiB, 2 onnxruntime threads, and
the server's defaults otherwise (batching on).

1. Peak RSS against body size. A "wide" model (x FP32 [batch, 1024] -> y = x @ w, FP32 [batch, 1]: the
   body grows with the rows, the output stays small) gets one request of 1 row, then of 1, 4, 16, 32,
   48, 60 MiB (`--sizes`), as JSON (`0.123456,` per number) and as binary (Triton's binary tensor
   extension: a JSON header, then the raw little-endian float32). Each request goes to a fresh server
   that has answered one 1-row request of the same kind (its lazy setup is not the body's cost), whose
   high-water mark is then reset (`5` written to /proc/<pid>/clear_refs); the figure is VmHWM after
   the request minus VmRSS before it, with the HTTP status (a 413 is a result: the request was over
   the budget) and the time the request took.
2. Probe latency during a large request: the largest JSON body that the "after" server answered with
   200 in (1) (else 16 MiB) is sent from a thread while GET /v2/health/ready goes every 20 ms on a
   connection of its own; max and p99 of the probes sent during the request, and how many took over 1 s.
3. Requests/s: the small MLP of the tests (4 -> 8 -> 3), one row per JSON request, `wrk` (Debian's) at
   1 and 16 connections for `--duration` seconds each, in `--rounds` rounds whose order alternates
   (before then after, after then before): the mean req/s, p50 and p99, and after/before.

Figures go to stdout (a markdown table, dated, for the README) and .build/bench/server_limits.json, the
servers' logs to .build/bench/server_limits-logs/; `--png` plots peak RSS against body size and the
probes' latency over time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loopback import free_port, run_wrk, serving_process  # noqa: E402

from tests.server.models import mlp, save, wide  # noqa: E402
from tests.support import proc_status_kib  # noqa: E402

OUT = ROOT / ".build" / "bench"
LOGS = OUT / "server_limits-logs"  # the servers' output, the last run's of each kind
MIB = 1 << 20
FEATURES = 1024
WIDE = "wide"
SMALL = "iris"
MODES = ("json", "binary")
DEFAULT_SIZES = (1, 4, 16, 32, 48, 60)
CONCURRENCY = (1, 16)
MAX_REQUEST_BYTES = 64 * MIB  # the server's default, set explicitly
PROBE_PERIOD = 0.02
PROBE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 300.0
START_TIMEOUT = 120.0
HEADER_LENGTH = "Inference-Header-Content-Length"
# What a number takes in a JSON body: "0.123456,".
JSON_NUMBER_CHARS = 9


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_average() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return 0.0


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


# ---------------------------------------------------------------------------------------------
# the two trees


@dataclass
class Tree:
    side: str  # "before" or "after"
    ref: str  # a git ref or "worktree"
    label: str  # what the tables call it: the ref and its commit
    path: Path  # the folder that holds modelship/ (PYTHONPATH)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def materialize(side: str, ref: str, tmp: Path) -> Tree:
    dest = tmp / side
    if ref == "worktree":
        # A copy: the tree may change while the benchmark runs, and every server of a side is to be the same.
        dirty = git("status", "--porcelain", "--", "server_image")
        head = git("rev-parse", "--short", "HEAD")
        label = (
            f"worktree ({head}{' + uncommitted changes' if dirty else ''}, as of {time.strftime('%H:%M')})"
        )
        shutil.copytree(
            ROOT / "server_image", dest / "server_image", ignore=shutil.ignore_patterns("__pycache__")
        )
        return Tree(side, ref, label, dest / "server_image")
    commit = git("rev-parse", "--short", f"{ref}^{{commit}}")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", commit, "server_image"], stdout=subprocess.PIPE
    )
    try:
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True, timeout=120)
    finally:
        if archive.stdout is not None:
            archive.stdout.close()
        if archive.wait(timeout=60) != 0:
            raise RuntimeError(f"git archive {commit} server_image failed")
    label = ref if ref == commit else f"{ref} ({commit})"
    return Tree(side, ref, label, dest / "server_image")


# ---------------------------------------------------------------------------------------------
# models and bodies


def wide_model(path: Path) -> Path:
    """x FP32 [batch, 1024] -> y FP32 [batch, 1], the row sums (tests/server/models.py)."""
    return save(wide(FEATURES), path)


def json_numbers(count: int, rng: np.random.Generator) -> bytes:
    """`count` numbers in [0, 1) as `np.char.mod('%.6f', a)` joined with commas writes them, made with
    numpy's array arithmetic on the digits: the same text, 20 times faster than a string per number."""
    micro = rng.integers(0, 1_000_000, count)
    text = np.empty((count, JSON_NUMBER_CHARS), dtype=np.uint8)
    text[:, 0], text[:, 1], text[:, -1] = ord("0"), ord("."), ord(",")
    for k in range(6):
        text[:, 7 - k] = micro // 10**k % 10 + ord("0")
    return text.tobytes()[:-1]


@dataclass
class Body:
    mode: str
    rows: int
    content: bytes
    headers: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.content)


def make_body(mode: str, target: int | None, seed: int = 0) -> Body:
    """A request for the wide model of about `target` bytes; one row when `target` is None."""
    rng = np.random.default_rng(seed)
    if mode == "json":
        head = b'{"inputs":[{"name":"x","shape":[%d,%d],"datatype":"FP32","data":['
        rows = 1 if target is None else max(1, (target - 80) // (FEATURES * JSON_NUMBER_CHARS))
        content = head % (rows, FEATURES) + json_numbers(rows * FEATURES, rng) + b"]}]}"
        return Body(mode, rows, content, {"content-type": "application/json"})
    rows = 1 if target is None else max(1, (target - 160) // (FEATURES * 4))
    data = rng.random((rows, FEATURES), dtype=np.float32).astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, FEATURES],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return Body(mode, rows, header + data, headers)


def size_label(body: Body) -> str:
    return "1 row" if body.rows == 1 else f"{body.size / MIB:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# a server


@dataclass
class Server:
    pid: int
    url: str
    log: Path


@dataclass
class Budgets:
    pod_memory: int

    @property
    def per_request(self) -> int:
        return self.pod_memory // 4

    @property
    def inflight(self) -> int:
        return self.pod_memory // 2


def server_env(
    tree: Tree, model: Path, name: str, port: int, work: Path, budgets: Budgets, threads: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    env.update(
        {
            "PYTHONPATH": str(tree.path),
            "MODELSHIP_MODEL_NAME": name,
            "MODELSHIP_MODEL_URI": str(model),
            "MODELSHIP_THREADS": str(threads),
            "MODELSHIP_HOST": "127.0.0.1",
            "MODELSHIP_PORT": str(port),
            "MODELSHIP_TERMINATION_LOG": str(work / f"termination-log-{tree.side}"),
            "MODELSHIP_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            # Ignored by a server from before the budgets.
            "MODELSHIP_MAX_REQUEST_MEMORY_BYTES": str(budgets.per_request),
            "MODELSHIP_MAX_INFLIGHT_MEMORY_BYTES": str(budgets.inflight),
            "MODELSHIP_LOG_LEVEL": "warning",
        }
    )
    return env


def check_import(tree: Tree, work: Path) -> None:
    """The server the tree's PYTHONPATH gives is the tree's own, not this checkout's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    env["PYTHONPATH"] = str(tree.path)
    found = subprocess.run(
        [sys.executable, "-c", "import modelship.server as s; print(s.__file__)"],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.path.resolve()):
        raise RuntimeError(f"{tree.side}: modelship.server comes from {found}, not from {tree.path}")


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class StartError(RuntimeError):
    """The server did not get ready: the side's later steps are skipped."""


@contextlib.contextmanager
def serving(
    tree: Tree, model: Path, name: str, work: Path, budgets: Budgets, threads: int, tag: str
) -> Iterator[Server]:
    port = free_port()
    env = server_env(tree, model, name, port, work, budgets, threads)
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{tree.side}-{tag}.log"
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        try:
            proc = stack.enter_context(
                serving_process(
                    [sys.executable, "-m", "modelship.server"],
                    env,
                    f"{url}/v2/health/ready",
                    log_path,
                    cwd=work,
                    timeout=START_TIMEOUT,
                )
            )
        except RuntimeError as exc:
            raise StartError(f"{tree.side} server: {exc}:\n{tail(log_path)}") from None
        yield Server(proc.pid, url, log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"{tree.side} server died ({proc.returncode}); {log_path}:\n{tail(log_path)}")


# ---------------------------------------------------------------------------------------------
# 1. peak RSS against body size


def reset_peak(pid: int) -> None:
    """VmHWM back to the current RSS; raises when the kernel does not (checked, not assumed)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    hwm, rss = proc_status_kib(pid, "VmHWM"), proc_status_kib(pid, "VmRSS")
    if hwm > rss + 1024:
        raise RuntimeError(f"writing 5 to /proc/{pid}/clear_refs left VmHWM at {hwm} kB over VmRSS {rss} kB")


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer
    seconds: float
    error: str = ""


def post(url: str, body: Body, timeout: float = REQUEST_TIMEOUT) -> Outcome:
    started = time.perf_counter()
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            response = client.post(url, content=body.content, headers=body.headers)
        outcome = Outcome(response.status_code, time.perf_counter() - started)
        if response.status_code == 200:
            try:
                shape = response.json()["outputs"][0]["shape"]
            except (ValueError, LookupError, TypeError) as exc:
                shape = f"unreadable ({type(exc).__name__}: {exc})"
            if shape != [body.rows, 1]:
                outcome.error = f"output shape {shape}, expected {[body.rows, 1]}"
        else:
            outcome.error = response.text[:300]
        return outcome
    except httpx.HTTPError as exc:
        return Outcome(None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")


@dataclass
class MemoryPoint:
    mode: str
    size: str  # "1 row" or "N MiB"
    body_bytes: int
    rows: int
    rss_before_mib: float
    peak_increase_mib: float
    times_body: float  # peak increase / body size
    status: int | None
    seconds: float
    error: str = ""


def memory_point(
    tree: Tree, model: Path, target: int | None, mode: str, common: dict[str, Any]
) -> MemoryPoint:
    body = make_body(mode, target)
    with serving(tree, model, WIDE, tag=f"memory-{mode}", **common) as server:
        url = f"{server.url}/v2/models/{WIDE}/infer"
        warm = post(url, make_body(mode, None, seed=1), timeout=30)
        reset_peak(server.pid)
        before = proc_status_kib(server.pid, "VmRSS")
        outcome = post(url, body)
        peak = proc_status_kib(server.pid, "VmHWM")
    if warm.status != 200:  # measured all the same: a refusal may come before what fails
        outcome.error = f"the 1-row warm-up answered {fmt_status(warm.status)}: {warm.error}; {outcome.error}"
    increase = (peak - before) / 1024
    return MemoryPoint(
        mode,
        size_label(body),
        body.size,
        body.rows,
        before / 1024,
        increase,
        increase * MIB / body.size,
        outcome.status,
        outcome.seconds,
        outcome.error,
    )


# ---------------------------------------------------------------------------------------------
# 2. probe latency during a large request


@dataclass
class ProbeRun:
    body_bytes: int
    request_status: int | None
    request_seconds: float
    request_error: str
    # (seconds since the request was sent, probe latency in seconds, status or None on a timeout)
    probes: list[tuple[float, float, int | None]] = field(default_factory=list)
    during: int = 0
    max_ms: float = 0.0
    p99_ms: float = 0.0
    over_1s: int = 0
    failed: int = 0


def probe_run(tree: Tree, model: Path, body: Body, common: dict[str, Any]) -> ProbeRun:
    with serving(tree, model, WIDE, tag="probe", **common) as server:
        url = f"{server.url}/v2/models/{WIDE}/infer"
        ready = f"{server.url}/v2/health/ready"
        done: list[Outcome] = []
        sender = threading.Thread(target=lambda: done.append(post(url, body)), daemon=True)
        probes: list[tuple[float, float, int | None]] = []
        with httpx.Client(trust_env=False, timeout=PROBE_TIMEOUT) as client:
            client.get(ready)  # the connection is open before the clock starts
            began = time.perf_counter()
            after_end: float | None = None
            k = -10  # 0.2 s of probes before the request, as a baseline
            while True:
                now = time.perf_counter()
                if k == 0 and not sender.is_alive() and not done:
                    sender.start()
                if after_end is None and k > 0 and not sender.is_alive():
                    after_end = now
                if after_end is not None and now - after_end > 0.2:
                    break
                if now - began > REQUEST_TIMEOUT + 30:
                    raise RuntimeError(f"{tree.side}: the large request outlived its own timeout")
                sent = began + (k + 10) * PROBE_PERIOD
                if sent > now:
                    time.sleep(sent - now)
                start = time.perf_counter()
                try:
                    status: int | None = client.get(ready).status_code
                except httpx.HTTPError:
                    status = None
                probes.append((start - began - 10 * PROBE_PERIOD, time.perf_counter() - start, status))
                k += 1
        sender.join(timeout=REQUEST_TIMEOUT + 30)
    outcome = done[0] if done else Outcome(None, 0.0, "the request did not finish")
    run = ProbeRun(body.size, outcome.status, outcome.seconds, outcome.error, probes)
    during = [lat for t, lat, _ in probes if 0 <= t <= outcome.seconds]
    run.during = len(during)
    run.failed = sum(1 for t, _, s in probes if 0 <= t <= outcome.seconds and s != 200)
    if during:
        ms = np.array(during) * 1000
        run.max_ms = float(ms.max())
        run.p99_ms = float(np.percentile(ms, 99))
        run.over_1s = int((ms > 1000).sum())
    return run


# ---------------------------------------------------------------------------------------------
# 3. requests/s of small requests (wrk)


@dataclass
class Load:
    round: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str = ""


def wrk(url: str, script: Path, concurrency: int, seconds: float, round_: int) -> Load:
    run = run_wrk(url, script, concurrency, seconds)
    return Load(round_, concurrency, run.rps, run.p50_ms, run.p99_ms, run.errors)


def small_requests(work: Path) -> tuple[Path, Path]:
    model = save(mlp(), work / f"{SMALL}.onnx")
    row = np.random.default_rng(7).random(4).astype(np.float32)
    numbers = ",".join(np.char.mod("%.6f", row).tolist())
    body = work / "iris.json"
    body.write_text(f'{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[{numbers}]}}]}}')
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = assert(io.open("{body}", "rb"))\n'
        'wrk.body = f:read("*a")\n'
        "f:close()\n"
    )
    return model, script


def throughput(
    tree: Tree, model: Path, script: Path, seconds: float, round_: int, common: dict[str, Any]
) -> list[Load]:
    with serving(tree, model, SMALL, tag="throughput", **common) as server:
        url = f"{server.url}/v2/models/{SMALL}/infer"
        return [wrk(url, script, c, seconds, round_) for c in CONCURRENCY]


def mean_load(loads: list[Load], concurrency: int) -> Load | None:
    """The mean over the rounds at one concurrency."""
    mine = [x for x in loads if x.concurrency == concurrency]
    if not mine:
        return None
    return Load(
        len(mine),
        concurrency,
        float(np.mean([x.rps for x in mine])),
        float(np.mean([x.p50_ms for x in mine])),
        float(np.mean([x.p99_ms for x in mine])),
        "; ".join(x.errors for x in mine if x.errors),
    )


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Side:
    side: str
    ref: str
    label: str
    memory: list[MemoryPoint] = field(default_factory=list)
    probe: ProbeRun | None = None
    load: list[Load] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cannot_start: bool = False


def attempt(side: Side, what: str, work: Any) -> Any:
    """`work()`, or None with the error recorded and printed: one side failing leaves the other's figures.
    Once a side's server has failed to start, the side's later steps are skipped."""
    if side.cannot_start:
        return None
    try:
        return work()
    except Exception as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        side.errors.append(message)
        side.cannot_start = isinstance(exc, StartError)
        log(f"{side.side} FAILED {message}")
        return None


def fmt_status(status: int | None) -> str:
    return "no answer" if status is None else str(status)


def memory_cell(p: MemoryPoint | None) -> str:
    if p is None:
        return "error"
    mib = p.peak_increase_mib
    increase = f"+{mib:.1f} MiB" if abs(mib) >= 1 else f"+{mib * 1024:.0f} KiB"
    return f"{increase} ({p.times_body:.1f}x), {fmt_status(p.status)}, {p.seconds:.2f} s"


def find_point(side: Side, mode: str, size: str) -> MemoryPoint | None:
    return next((p for p in side.memory if p.mode == mode and p.size == size), None)


def table(sides: list[Side], header: str, size_labels: list[str]) -> str:
    before, after = sides
    lines = [header, ""]
    lines += [
        "Peak RSS increase of the server for one request (VmHWM after - VmRSS before; x: of the body), "
        "HTTP status, time:",
        "",
        "| body | JSON before | JSON after | binary before | binary after |",
        "|---|---|---|---|---|",
    ]
    for size in size_labels:
        cells = [memory_cell(find_point(s, mode, size)) for mode in MODES for s in (before, after)]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", "| memory / body size | JSON before | JSON after | binary before | binary after |"]
    lines.append("|---|---|---|---|---|")
    for size in ("1 row", size_labels[-1]):
        cells = []
        for mode in MODES:
            for s in (before, after):
                p = find_point(s, mode, size)
                cells.append("error" if p is None else f"{p.times_body:.1f}x ({fmt_status(p.status)})")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    probe = next((s.probe for s in sides if s.probe is not None), None)
    body = f"{probe.body_bytes / MIB:.0f} MiB JSON" if probe else "large JSON"
    lines += ["", f"GET /v2/health/ready every 20 ms during one {body} request:", ""]
    lines += ["| | before | after |", "|---|---|---|"]
    rows: list[tuple[str, Any]] = [
        ("the request", lambda r: f"{fmt_status(r.request_status)} in {r.request_seconds:.2f} s"),
        ("probes during it", lambda r: f"{r.during} ({r.failed} not 200)"),
        ("probe latency max", lambda r: f"{r.max_ms:.0f} ms"),
        ("probe latency p99", lambda r: f"{r.p99_ms:.0f} ms"),
        ("probes over 1 s", lambda r: str(r.over_1s)),
    ]
    for name, show in rows:
        cells = ["error" if s.probe is None else show(s.probe) for s in sides]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rounds = max((x.round + 1 for s in sides for x in s.load), default=0)
    lines += [
        "",
        f"Small requests (MLP 4->8->3, one row, JSON), wrk, the mean of {rounds} round(s) (each round's "
        "req/s in brackets):",
        "",
    ]
    lines += [
        "| connections | before req/s | after req/s | after/before | before p50 / p99 | after p50 / p99 |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        b, a = mean_load(before.load, c), mean_load(after.load, c)
        ratio = f"{a.rps / b.rps:.2f}" if a and b and b.rps else "-"

        def pct(x: Load | None) -> str:
            if x is None:
                return "error"
            extra = f" ({x.errors})" if x.errors else ""
            return f"{x.p50_ms:.2f} / {x.p99_ms:.2f} ms{extra}"

        rps = [
            "error" if x is None else f"{x.rps:.0f}" + (f" ({each})" if x.round > 1 else "")
            for x, each in (
                (b, ", ".join(f"{y.rps:.0f}" for y in before.load if y.concurrency == c)),
                (a, ", ".join(f"{y.rps:.0f}" for y in after.load if y.concurrency == c)),
            )
        ]
        lines.append(f"| {c} | {rps[0]} | {rps[1]} | {ratio} | {pct(b)} | {pct(a)} |")
    return "\n".join(lines)


def plot(sides: list[Side], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, probes) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"before": "--", "after": "-"}
    colors = {
        ("json", "before"): "tab:blue",
        ("json", "after"): "tab:green",
        ("binary", "before"): "tab:orange",
        ("binary", "after"): "tab:red",
    }
    for s in sides:
        for mode in MODES:
            color = colors[mode, s.side]
            points = sorted((p for p in s.memory if p.mode == mode), key=lambda p: p.body_bytes)
            if not points:
                continue
            x = [p.body_bytes / MIB for p in points]
            y = [p.peak_increase_mib for p in points]
            memory.plot(
                x,
                y,
                styles[s.side],
                color=color,
                # before under after, and visible where they coincide
                linewidth=3.5 if s.side == "before" else 1.5,
                alpha=0.5 if s.side == "before" else 1.0,
                label=f"{mode}, {s.side}",
            )
            ok = [(xi, yi) for xi, yi, p in zip(x, y, points, strict=True) if p.status == 200]
            refused = [(xi, yi) for xi, yi, p in zip(x, y, points, strict=True) if p.status != 200]
            if ok:
                memory.plot(*zip(*ok, strict=True), "o", color=color, markersize=4)
            if refused:
                memory.plot(*zip(*refused, strict=True), "x", color=color, markersize=8)
        if s.probe is not None:
            t = [p[0] for p in s.probe.probes]
            lat = [max(p[1] * 1000, 0.01) for p in s.probe.probes]
            line = probes.plot(
                t,
                lat,
                styles[s.side],
                marker=".",
                linewidth=0.8,
                label=f"{s.side} (request: {fmt_status(s.probe.request_status)} in "
                f"{s.probe.request_seconds:.2f} s)",
            )
            probes.axvline(s.probe.request_seconds, color=line[0].get_color(), linewidth=0.8, linestyle=":")
    memory.set_xlabel("request body, MiB")
    memory.set_ylabel("peak RSS increase of the server, MiB")
    memory.set_title("One request: peak RSS increase (x: refused)")
    memory.legend(fontsize=8)
    probes.set_yscale("log")
    probes.set_xlabel("seconds since the large request was sent (dotted: its answer)")
    probes.set_ylabel("GET /v2/health/ready latency, ms")
    probe = next((s.probe for s in sides if s.probe is not None), None)
    size = f"{probe.body_bytes / MIB:.0f} MiB " if probe else ""
    probes.set_title(f"Readiness probes every 20 ms during a {size}JSON request")
    probes.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    log(f"plot written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before-ref", default="86a6067", help="git ref or 'worktree' (default: %(default)s)"
    )
    parser.add_argument(
        "--after-ref", default="worktree", help="git ref or 'worktree' (default: %(default)s)"
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=list(DEFAULT_SIZES),
        help="body sizes, MiB (default: %(default)s)",
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of wrk per point (default: 6)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="wrk rounds per side, the order alternating; the table has their mean (default: 2)",
    )
    parser.add_argument("--threads", type=int, default=2, help="MODELSHIP_THREADS (default: 2)")
    parser.add_argument(
        "--pod-memory-mib",
        type=int,
        default=512,
        help="budgets as a pod of this memory limit gets (default: 512)",
    )
    parser.add_argument("--png", type=Path, help="write the figure here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/server_limits.py needs wrk, the load generator: apt-get install -y wrk", file=sys.stderr)
        return 1
    if any(s * MIB > MAX_REQUEST_BYTES for s in args.sizes):
        parser.error(f"--sizes: at most {MAX_REQUEST_BYTES // MIB} MiB (MODELSHIP_MAX_REQUEST_BYTES)")
    started = time.monotonic()
    load_before = load_average()
    if load_before > 0.5:
        log(f"the load average is {load_before:.2f} already: other work shares the CPUs, req/s will be noisy")
    budgets = Budgets(args.pod_memory_mib * MIB)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="server-limits-") as tmp_name:
        tmp = Path(tmp_name)
        work = tmp / "work"
        work.mkdir()
        trees = [materialize("before", args.before_ref, tmp), materialize("after", args.after_ref, tmp)]
        for tree in trees:
            check_import(tree, work)
        date = time.strftime("%Y-%m-%d")
        header = (
            f"**The server under heavy input** (`make bench-server-limits`, i.e. `.venv/bin/python "
            f"bench/server_limits.py`), {date}, {cpu_model()}, {os.cpu_count()} CPUs, "
            f"{args.threads} onnxruntime threads; before: {trees[0].label}, after: {trees[1].label}; "
            f"budgets of a {args.pod_memory_mib} MiB pod: {budgets.per_request // MIB} MiB per request, "
            f"{budgets.inflight // MIB} MiB in flight (MODELSHIP_MAX_REQUEST_MEMORY_BYTES / "
            f"MODELSHIP_MAX_INFLIGHT_MEMORY_BYTES), MODELSHIP_MAX_REQUEST_BYTES 64 MiB, batching on."
        )
        print(header, flush=True)
        wide = wide_model(work / f"{WIDE}.onnx")
        common: dict[str, Any] = {"work": work, "budgets": budgets, "threads": args.threads}
        sides = [Side(t.side, t.ref, t.label) for t in trees]
        targets: list[int | None] = [None, *(s * MIB for s in args.sizes)]

        # 1. peak RSS against body size
        for tree, side in zip(trees, sides, strict=True):
            for mode in MODES:
                for target in targets:
                    name = "1 row" if target is None else f"{target // MIB} MiB"
                    point = attempt(
                        side,
                        f"memory, {mode} {name}",
                        lambda t=tree, m=mode, s=target: memory_point(t, wide, s, m, common),
                    )
                    if point is not None:
                        side.memory.append(point)
                        log(
                            f"{tree.side} {mode:<6} {point.size:>6} ({point.body_bytes} bytes): "
                            f"+{point.peak_increase_mib:.1f} MiB ({point.times_body:.1f}x), "
                            f"{fmt_status(point.status)} in {point.seconds:.2f} s"
                            + (f" [{point.error[:200]}]" if point.error else "")
                        )

        # 2. probes during the largest JSON request "after" answers
        accepted = [p for p in sides[1].memory if p.mode == "json" and p.status == 200 and p.rows > 1]
        probe_target = max(accepted, key=lambda p: p.body_bytes).body_bytes if accepted else 16 * MIB
        probe_body = make_body("json", probe_target)
        log(f"probe latency during a {probe_body.size / MIB:.1f} MiB JSON request")
        for tree, side in zip(trees, sides, strict=True):
            side.probe = attempt(side, "probes", lambda t=tree: probe_run(t, wide, probe_body, common))
            if side.probe is not None:
                r = side.probe
                log(
                    f"{tree.side}: request {fmt_status(r.request_status)} in {r.request_seconds:.2f} s; "
                    f"{r.during} probes, max {r.max_ms:.0f} ms, p99 {r.p99_ms:.0f} ms, {r.over_1s} over 1 s"
                )

        # 3. requests/s, in rounds of alternating order (before, after; after, before; ...): the load on a
        # shared machine drifts, and which side goes first should not decide the ratio
        small, script = small_requests(work)
        for round_ in range(args.rounds):
            order = list(zip(trees, sides, strict=True))
            for tree, side in order if round_ % 2 == 0 else order[::-1]:
                loads = attempt(
                    side,
                    f"throughput, round {round_ + 1}",
                    lambda t=tree, r=round_: throughput(t, small, script, args.duration, r, common),
                )
                side.load += loads or []
                for x in loads or []:
                    log(
                        f"{tree.side} round {round_ + 1} c={x.concurrency}: {x.rps:.0f} req/s, "
                        f"p50 {x.p50_ms:.2f} ms, p99 {x.p99_ms:.2f} ms"
                    )

    size_labels = ["1 row", *(f"{s} MiB" for s in args.sizes)]
    print()
    print(table(sides, header, size_labels))
    print(
        f"\n(load average {load_before:.2f} before the benchmark started: above 0, other work shared "
        "the CPUs)"
    )
    result = {
        "date": date,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "max_request_bytes": MAX_REQUEST_BYTES,
        "max_request_memory_bytes": budgets.per_request,
        "max_inflight_memory_bytes": budgets.inflight,
        "probe_body_bytes": probe_body.size,
        "load_average_start_end": [load_before, load_average()],
        "sides": [asdict(s) for s in sides],
    }
    path = OUT / "server_limits.json"
    path.write_text(json.dumps(result, indent=2))
    if args.png:
        plot(
            sides,
            args.png,
            f"Server under heavy input, {date}: before {trees[0].label}, after {trees[1].label}",
        )
    failed = [f"{s.side}: {e}" for s in sides for e in s.errors]
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    print(f"\n{time.monotonic() - started:.0f} s in all; figures in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
