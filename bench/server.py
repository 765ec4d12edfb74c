"""Benchmark of the inference server (issue 4): requests/s and p50/p99 latency at concurrency 1, 16, 64.

    .venv/bin/python bench/server.py [--duration 6] [--threads 2]

One MLP (256 -> 1024 -> 1024 -> 10, float32), one row per request, served by
  (a) onnxruntime in-process, no HTTP: the ceiling (Python threads calling session.run);
  (b) modelship's server, one worker process, with batching (the defaults) and without;
  (c) KServe's Python model server (`kserve` on PyPI, in its own venv .build/bench-venv) serving the
      same ONNX file with onnxruntime through a custom kserve.Model (bench/kserve_onnx_model.py).
The same onnxruntime session settings everywhere (intra-op threads = --threads, no spinning).
Load comes from wrk (Debian's `wrk`), closed loop, the same V2 JSON body for (b) and (c).
Targets: at concurrency 16, modelship >= 3x KServe's requests/s; at concurrency 1, p50 less than 1 ms
above the in-process call. Figures go to stdout and .build/bench/server.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "server_image"))

from loopback import free_port, run_wrk, serving_process  # noqa: E402
from modelship.server.runtime import session_options  # noqa: E402

from tests.server.models import mlp, save  # noqa: E402

OUT = ROOT / ".build" / "bench"
KSERVE_VENV = ROOT / ".build" / "bench-venv"
KSERVE_REQUIREMENTS = ROOT / "bench" / "requirements-kserve.txt"
SIZES = (256, 1024, 1024, 10)
CONCURRENCY = (1, 16, 64)


@dataclass
class Result:
    server: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float


def build_inputs() -> tuple[Path, np.ndarray, Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    model = save(mlp(SIZES, seed=7), OUT / "mlp-256-1024-1024-10.onnx")
    row = np.random.default_rng(7).standard_normal((1, SIZES[0])).astype(np.float32)
    body = OUT / "infer.json"
    body.write_bytes(
        orjson.dumps(
            {
                "id": "bench",
                "inputs": [
                    {"name": "x", "shape": [1, SIZES[0]], "datatype": "FP32", "data": row[0].tolist()}
                ],
            }
        )
    )
    script = OUT / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = assert(io.open("{body}", "rb"))\n'
        'wrk.body = f:read("*a")\n'
        "f:close()\n"
    )
    return model, row, body, script


# ---------------------------------------------------------------------------------------------
# (a) in-process


def in_process(model: Path, row: np.ndarray, threads: int, concurrency: int, seconds: float) -> Result:
    session = ort.InferenceSession(str(model), session_options(threads), providers=["CPUExecutionProvider"])
    feeds = {"x": row}
    for _ in range(200):
        session.run(None, feeds)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    def loop(out: list[float]) -> None:
        while True:
            start = time.perf_counter()
            if start >= deadline:
                return
            session.run(None, feeds)
            out.append(time.perf_counter() - start)

    workers = [threading.Thread(target=loop, args=(out,)) for out in latencies]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    all_latencies = np.concatenate([np.array(out) for out in latencies]) * 1000
    return Result(
        "onnxruntime in-process",
        concurrency,
        len(all_latencies) / elapsed,
        float(np.percentile(all_latencies, 50)),
        float(np.percentile(all_latencies, 99)),
    )


# ---------------------------------------------------------------------------------------------
# servers under wrk


@contextmanager
def running(command: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    with serving_process(command, {**os.environ, **env}, ready_url, log, cwd=ROOT):
        yield


def wrk(url: str, script: Path, concurrency: int, seconds: float, name: str) -> Result:
    run = run_wrk(url, script, concurrency, seconds)
    if run.errors:
        raise RuntimeError(f"{name} answered errors under load: {run.errors}")
    return Result(name, concurrency, run.rps, run.p50_ms, run.p99_ms)


def modelship(model: Path, script: Path, threads: int, seconds: float, batching: bool) -> list[Result]:
    port = free_port()
    name = "modelship, batching" if batching else "modelship, no batching"
    env = {
        "MODELSHIP_MODEL_NAME": "mlp",
        "MODELSHIP_MODEL_URI": str(model),
        "MODELSHIP_HOST": "127.0.0.1",
        "MODELSHIP_PORT": str(port),
        "MODELSHIP_THREADS": str(threads),
        "MODELSHIP_MAX_BATCH_SIZE": "32" if batching else "1",
        "MODELSHIP_MAX_DELAY_MS": "0",
        "MODELSHIP_TERMINATION_LOG": str(OUT / "termination-log"),
        "MODELSHIP_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT / "server_image"),
    }
    url = f"http://127.0.0.1:{port}"
    log = OUT / f"modelship-{'batching' if batching else 'direct'}.log"
    with running([sys.executable, "-m", "modelship.server"], env, f"{url}/v2/health/ready", log):
        return [wrk(f"{url}/v2/models/mlp/infer", script, c, seconds, name) for c in CONCURRENCY]


def kserve_python() -> Path:
    """The venv's python, made (or remade when the requirements changed) on first use."""
    python = KSERVE_VENV / "bin" / "python"
    stamp = KSERVE_VENV / ".requirements-sha256"
    wanted = hashlib.sha256(KSERVE_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing KServe into {KSERVE_VENV} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(KSERVE_REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def kserve(model: Path, script: Path, threads: int, seconds: float) -> list[Result]:
    port = free_port()
    python = kserve_python()
    command = [
        str(python),
        str(ROOT / "bench" / "kserve_onnx_model.py"),
        "--model_name",
        "mlp",
        "--model_file",
        str(model),
        "--threads",
        str(threads),
        "--http_port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with running(command, {}, f"{url}/v2/models/mlp/ready", OUT / "kserve.log"):
        return [
            wrk(f"{url}/v2/models/mlp/infer", script, c, seconds, "KServe 0.21 (Python)") for c in CONCURRENCY
        ]


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load per measurement")
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="onnxruntime threads"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/server.py needs wrk, the load generator: apt-get install -y wrk", file=sys.stderr)
        return 1
    started = time.monotonic()
    model, row, _body, script = build_inputs()
    kserve_python()  # before any timing: the first run installs it
    print(f"model {model.name}, {args.threads} onnxruntime thread(s), {args.duration:g} s per point")

    results = [in_process(model, row, args.threads, c, args.duration) for c in CONCURRENCY]
    results += modelship(model, script, args.threads, args.duration, batching=False)
    results += modelship(model, script, args.threads, args.duration, batching=True)
    results += kserve(model, script, args.threads, args.duration)

    print()
    print(f"{'server':<26} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r.server:<26} {r.concurrency:>4} {r.rps:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}")

    def get(server: str, c: int) -> Result:
        return next(r for r in results if r.server.startswith(server) and r.concurrency == c)

    ceiling = get("onnxruntime", 1)
    kserve16 = get("KServe", 16)
    best16 = max(get("modelship, batching", 16).rps, get("modelship, no batching", 16).rps)
    ratio = best16 / kserve16.rps
    print()
    print(
        f"c=16: modelship {best16:.0f} req/s / KServe {kserve16.rps:.0f} req/s = {ratio:.1f}x (target >= 3x)"
    )
    for name in ("modelship, no batching", "modelship, batching"):
        extra = get(name, 1).p50_ms - ceiling.p50_ms
        print(f"c=1: {name} p50 is {extra:.3f} ms above the in-process call (target < 1 ms)")
    (OUT / "server.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"\n{time.monotonic() - started:.0f} s in all; figures in {OUT / 'server.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
