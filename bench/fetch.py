"""Benchmark of the model fetch: the same object from a real S3 server on loopback, by our init container's
fetcher and by KServe's storage initializer.

    .venv/bin/python bench/fetch.py [--size-mib 1024] [--runs 3] [--json PATH]

The object is --size-mib of random bytes (a file, not a model: only the fetch is measured), put with boto3
into versitygw (the model store of the local cluster, `hack/cluster addon-bin versitygw`), POSIX backend,
on 127.0.0.1, fixed root keys. Then, in turns A B A B ... in one run of this script:
  (a) modelship: `python -m modelship.server fetch` as the pod's init container runs it (the environment
      the operator writes: MODELSHIP_MODEL_URI=s3://..., MODELSHIP_MODEL_SHA256, MODELSHIP_S3_ENDPOINT, the
      AWS keys); obstore streams the object, hashing it as it lands, fsyncs, renames it into the cache.
  (b) KServe: `kserve-storage==0.21.0` from PyPI, in a venv of its own (.build/fetch-bench-venv, from
      bench/requirements-kserve-storage.txt), called as its storage-initializer image's entrypoint calls
      it (configure_logging(), then Storage.download_files(uris, out_dirs)), with the environment KServe's
      controller gives it for an S3-compatible store: AWS_ENDPOINT_URL, S3_ENDPOINT, S3_USE_HTTPS=0,
      AWS_DEFAULT_REGION and the AWS keys (of these its code reads only AWS_ENDPOINT_URL, the region and
      the keys; boto3's download_file does the transfer: 8 MiB ranged GETs on 10 threads, in one worker
      process that a multiprocessing pool forks for the object). It checks no digest and does not fsync.
Both run with the same keys, a HOME of their own (no ~/.aws), no proxy; the cache (a) and the output
folder (b) are emptied before every run, as either would otherwise find the file there; nothing else is
dropped (the object stays in the page cache of the S3 server's disk for both alike).

The figures, per fetcher, over its --runs runs:
- s: wall time of the fetching process, start to exit (interpreter start and imports included: what an
  init container costs a pod's start); `own s`: the time the fetcher reports itself (ours: fetchSeconds
  in the termination log; KServe: its "Model downloaded in" line), the median of both;
- MB/s: size (10^6 bytes) / wall time: the median and the range;
- peak RSS MiB: the kernel's high-water RSS of the largest process of the fetcher's tree (KServe's pool
  worker counts), the largest of the runs. A small wrapper (python -I -S, os and time only) posix_spawns
  the fetcher and reads the rusage os.wait4 returns, which holds the largest RSS of the child and of the
  descendants it reaped. The wrapper, not this script, spawns it because Linux carries the spawning
  process's own high-water mark into the child at exec (the wrapper's is ~9 MiB, below any Python's);
- tree PSS MiB: the sum of PSS (/proc/PID/smaps_rollup) over every process of the fetcher's tree, sampled
  every 0.1 s, the largest sample of the runs: what the tree holds together, shared pages (a forked
  worker's copy of its parent's imports) counted once; a peak shorter than the interval can be missed;
- sha256: every fetched file is hashed here afterwards and must be the object's bytes; `verifies` says
  whether the fetcher itself checks the digest (ours refuses a file whose sha256 is not the expected one;
  KServe's storage initializer checks none).
The ratios are ours / KServe's (throughput above 1 and memory below 1 favour ours).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from loopback import free_port  # noqa: E402

OUT = ROOT / ".build" / "bench" / "fetch"
KSERVE_VENV = ROOT / ".build" / "fetch-bench-venv"
KSERVE_REQUIREMENTS = ROOT / "bench" / "requirements-kserve-storage.txt"
ACCESS_KEY = "MODELSHIPBENCHACCESS"
SECRET_KEY = "modelship-bench-secret-never-shown"
REGION = "us-east-1"
BUCKET, KEY = "bench", "model.onnx"
URI = f"s3://{BUCKET}/{KEY}"
CHUNK = 1 << 20
MIB = 1 << 20
PSS_INTERVAL = 0.1
OURS, KSERVE = "modelship fetch", "KServe storage-initializer 0.21"

# What KServe's storage-initializer image runs (its scripts/initializer-entrypoint): pairs of URI and folder.
KSERVE_ENTRYPOINT = """
import sys
from kserve_storage import Storage, configure_logging
configure_logging()
Storage.download_files(sys.argv[1::2], sys.argv[2::2])
"""

# The measuring wrapper: spawns argv[2:], writes "wall_seconds maxrss_kib" to argv[1], exits as the child.
WRAPPER = """
import os, sys, time
began = time.monotonic()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - began
with open(sys.argv[1], "w") as out:
    out.write(f"{wall} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the S3 server


def versitygw_binary() -> Path:
    """`hack/cluster addon-bin versitygw`, else where `hack/cluster build-addons` leaves it in the cache."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(
            [str(ROOT / "hack" / "cluster"), "addon-bin", "versitygw"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        if found.returncode == 0 and found.stdout.strip():
            return Path(found.stdout.strip())
    version = ""
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "VERSITYGW_VERSION":
            version = value.strip()
    cache = Path(os.environ.get("MODELSHIP_CACHE") or Path.home() / ".cache" / "modelship")
    return cache / "addons" / f"versitygw-{version}" / "versitygw"


@dataclass(frozen=True)
class S3Store:
    endpoint: str  # http://127.0.0.1:PORT

    def client(self) -> Any:
        """A boto3 client of the root user, path-style, bounded in time."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=10,
                read_timeout=300,
            ),
        )

    def put(self, bucket: str, key: str, path: Path) -> None:
        client = self.client()
        client.create_bucket(Bucket=bucket)
        with open(path, "rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body)


@contextlib.contextmanager
def versitygw(folder: Path, log_path: Path) -> Iterator[S3Store]:
    """versitygw serving `folder` on a free port of 127.0.0.1 until the block ends."""
    binary = versitygw_binary()
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"no versitygw at {binary}: run `hack/cluster build-addons`")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # The keys in the environment, not on the command line, where any `ps` would show them.
    env = {**os.environ, "ROOT_ACCESS_KEY_ID": ACCESS_KEY, "ROOT_SECRET_ACCESS_KEY": SECRET_KEY}
    command = [str(binary), "--port", f"127.0.0.1:{port}", "--region", REGION, "--quiet"]
    command += ["posix", str(folder)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    store = S3Store(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"versitygw exited with {proc.returncode}; see {log_path}")
            # Any answer will do (an unsigned request is refused): the listener is up and speaks HTTP.
            with contextlib.suppress(httpx.TransportError):
                httpx.get(store.endpoint + "/", timeout=2, trust_env=False)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"versitygw did not answer on port {port} in 30 s; see {log_path}")
            time.sleep(0.05)
        yield store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def random_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`, written in chunks; their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# the fetchers


def kserve_python() -> Path:
    """The venv's python, made (or remade when the requirements changed) on first use."""
    python = KSERVE_VENV / "bin" / "python"
    stamp = KSERVE_VENV / ".requirements-sha256"
    wanted = hashlib.sha256(KSERVE_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"installing kserve-storage into {KSERVE_VENV} (once) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True, timeout=300)
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
        timeout=1200,
    )
    stamp.write_text(wanted)
    return python


def package_version(python: Path, package: str) -> str:
    return subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


@dataclass(frozen=True)
class Fetcher:
    name: str
    verifies: bool  # whether the fetcher itself checks the digest
    command: list[str]
    env: dict[str, str]
    folder: Path  # emptied before each run
    fetched: Path  # where the file lands
    own_seconds: Callable[[Path], float | None]  # the fetch time it reports, from its log


def base_env(home: Path) -> dict[str, str]:
    """What a container would have: a PATH, a locale, an empty HOME (no ~/.aws), the keys, no proxy."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def ours(work: Path, store: S3Store, sha256: str, size: int) -> Fetcher:
    cache = work / "cache"
    termination_log = work / "termination-log"
    env = {
        **base_env(work / "home-ours"),
        "PYTHONPATH": str(ROOT / "server_image"),  # the source tree, whatever copy the venv holds
        "MODELSHIP_MODEL_NAME": "bench",
        "MODELSHIP_MODEL_URI": URI,
        "MODELSHIP_MODEL_SHA256": sha256,
        "MODELSHIP_CACHE_DIR": str(cache),
        "MODELSHIP_S3_ENDPOINT": store.endpoint,
        "MODELSHIP_TERMINATION_LOG": str(termination_log),
        "MODELSHIP_MAX_MODEL_BYTES": str(size + MIB),
    }

    def own_seconds(_log: Path) -> float | None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return float(json.loads(termination_log.read_text())["fetchSeconds"])
        return None

    return Fetcher(
        OURS,
        True,
        [sys.executable, "-m", "modelship.server", "fetch"],
        env,
        cache,
        cache / f"{sha256}.onnx",
        own_seconds,
    )


def kserve(work: Path, store: S3Store, python: Path) -> Fetcher:
    out = work / "kserve-out"
    host = store.endpoint.removeprefix("http://")
    env = {
        **base_env(work / "home-kserve"),
        # What KServe's controller sets from an S3 secret's annotations (s3-endpoint, s3-usehttps=0).
        "S3_ENDPOINT": host,
        "S3_USE_HTTPS": "0",
        "AWS_ENDPOINT_URL": store.endpoint,
    }

    def own_seconds(log_path: Path) -> float | None:
        found = re.search(r"Model downloaded in ([\d.]+) seconds", log_path.read_text(errors="replace"))
        return float(found.group(1)) if found else None

    return Fetcher(
        KSERVE, False, [str(python), "-c", KSERVE_ENTRYPOINT, URI, str(out)], env, out, out / KEY, own_seconds
    )


# ---------------------------------------------------------------------------------------------
# measuring one run


def process_tree(root: int) -> list[int]:
    """The descendants of `root` (not `root` itself), from every process's parent in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def pss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


class TreePss:
    """The largest sum of PSS over the descendants of a process, sampled in a thread until stopped."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, sum(pss_bytes(pid) for pid in process_tree(self.root)))
            self.stopped.wait(PSS_INTERVAL)

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join(timeout=10)
        return self.peak


@dataclass(frozen=True)
class Run:
    fetcher: str
    turn: int
    wall_s: float
    own_s: float | None
    mb_s: float
    peak_rss_mib: float
    tree_pss_mib: float
    sha256_ok: bool


def measure(fetcher: Fetcher, turn: int, sha256: str, size: int, timeout: float) -> Run:
    shutil.rmtree(fetcher.folder, ignore_errors=True)
    Path(fetcher.env["HOME"]).mkdir(parents=True, exist_ok=True)
    slug = "modelship" if fetcher.name == OURS else "kserve"
    log_path, figures = OUT / f"{slug}-{turn}.log", OUT / f"{slug}-{turn}.rusage"
    figures.unlink(missing_ok=True)
    command = [sys.executable, "-I", "-S", "-c", WRAPPER, str(figures), *fetcher.command]
    with open(log_path, "wb") as out:
        # A session of its own: on a timeout the whole tree (KServe's pool worker too) is killed.
        proc = subprocess.Popen(
            command, env=fetcher.env, stdout=out, stderr=subprocess.STDOUT, cwd=OUT, start_new_session=True
        )
    pss = TreePss(proc.pid)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise RuntimeError(f"{fetcher.name} took over {timeout:.0f} s; see {log_path}") from None
    finally:
        peak_pss = pss.stop()
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{fetcher.name} exited with {code}; see {log_path}:\n{tail}")
    wall_text, maxrss_text = figures.read_text().split()
    wall = float(wall_text)
    ok = fetcher.fetched.is_file() and sha256_of(fetcher.fetched) == sha256
    shutil.rmtree(fetcher.folder, ignore_errors=True)
    return Run(
        fetcher.name,
        turn,
        wall,
        fetcher.own_seconds(log_path),
        size / wall / 1e6,
        int(maxrss_text) / 1024,  # ru_maxrss is in KiB on Linux
        peak_pss / MIB,
        ok,
    )


# ---------------------------------------------------------------------------------------------
# the report


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Summary:
    fetcher: str
    runs: int
    median_s: float
    median_own_s: float | None
    median_mb_s: float
    min_mb_s: float
    max_mb_s: float
    peak_rss_mib: float
    tree_pss_mib: float
    verifies: bool
    all_sha256_ok: bool


def summarize(fetcher: Fetcher, runs: list[Run]) -> Summary:
    mine = [r for r in runs if r.fetcher == fetcher.name]
    own = [r.own_s for r in mine if r.own_s is not None]
    return Summary(
        fetcher.name,
        len(mine),
        statistics.median(r.wall_s for r in mine),
        statistics.median(own) if own else None,
        statistics.median(r.mb_s for r in mine),
        min(r.mb_s for r in mine),
        max(r.mb_s for r in mine),
        max(r.peak_rss_mib for r in mine),
        max(r.tree_pss_mib for r in mine),
        fetcher.verifies,
        all(r.sha256_ok for r in mine),
    )


def print_table(summaries: list[Summary]) -> None:
    print(
        f"{'fetcher':<34} {'runs':>4} {'median s':>9} {'own s':>7} {'median MB/s':>12} {'min-max MB/s':>14} "
        f"{'peak RSS MiB':>13} {'tree PSS MiB':>13} {'verifies sha256':>16} {'bytes ok':>8}"
    )
    for s in summaries:
        own = f"{s.median_own_s:.2f}" if s.median_own_s is not None else "?"
        print(
            f"{s.fetcher:<34} {s.runs:>4} {s.median_s:>9.2f} {own:>7} {s.median_mb_s:>12.1f} "
            f"{f'{s.min_mb_s:.1f}-{s.max_mb_s:.1f}':>14} {s.peak_rss_mib:>13.1f} {s.tree_pss_mib:>13.1f} "
            f"{'yes' if s.verifies else 'no':>16} {'yes' if s.all_sha256_ok else 'NO':>8}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the object (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each fetcher, in turns (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be at least 1")
    size = args.size_mib * MIB
    # Slower than 5 MB/s, or a minute of start-up more, is a fetch gone wrong, not a figure.
    timeout = 60 + size / 5e6
    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    python = kserve_python()  # before any timing: the first run installs it
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    host = machine()
    versions = {
        "kserve-storage": package_version(python, "kserve-storage"),
        "kserve boto3": package_version(python, "boto3"),
        "modelship obstore": package_version(Path(sys.executable), "obstore"),
    }

    with tempfile.TemporaryDirectory(prefix="fetch-", dir=OUT) as scratch:
        work = Path(scratch)
        with versitygw(work / "s3", OUT / "versitygw.log") as store:
            source = work / "object"
            log(f"writing {args.size_mib} MiB of random bytes and putting them at {URI} with boto3 ...")
            sha256 = random_file(source, size)
            store.put(BUCKET, KEY, source)
            source.unlink()
            fetchers = (ours(work, store, sha256, size), kserve(work, store, python))
            runs: list[Run] = []
            for turn in range(1, args.runs + 1):
                for fetcher in fetchers:
                    run = measure(fetcher, turn, sha256, size, timeout)
                    log(
                        f"{fetcher.name} #{turn}: {run.wall_s:.2f} s, {run.mb_s:.1f} MB/s, peak RSS "
                        f"{run.peak_rss_mib:.1f} MiB, tree PSS {run.tree_pss_mib:.1f} MiB, "
                        f"sha256 {'ok' if run.sha256_ok else 'WRONG'}"
                    )
                    runs.append(run)

    summaries = [summarize(f, runs) for f in fetchers]
    a, b = summaries
    print()
    print(
        f"{args.size_mib} MiB from versitygw on 127.0.0.1, {args.runs} run(s) each, in turns; {when}; "
        f"{host['cpu']}, {host['cores']} cores, load {host['loadavg_at_start']} at start"
    )
    print(", ".join(f"{name} {version}" for name, version in versions.items()))
    print()
    print_table(summaries)
    print()
    print(
        f"ours/KServe: throughput {a.median_mb_s / b.median_mb_s:.2f}x, peak RSS "
        f"{a.peak_rss_mib / b.peak_rss_mib:.2f}x, tree PSS {a.tree_pss_mib / b.tree_pss_mib:.2f}x"
    )
    print(
        "KServe's storage initializer checks no digest: its bytes were hashed here, after the fact. Ours "
        "hashes as it writes, and fsyncs before it renames the file into the cache; KServe does not fsync."
    )
    bad = [s.fetcher for s in summaries if not s.all_sha256_ok]
    if bad:
        print(f"WRONG BYTES from: {', '.join(bad)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": when,
                    "machine": host,
                    "versions": versions,
                    "size_bytes": size,
                    "summaries": [asdict(s) for s in summaries],
                    "runs": [asdict(r) for r in runs],
                },
                indent=2,
            )
        )
    print(f"\n{time.monotonic() - started:.0f} s in all; logs in {OUT}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
