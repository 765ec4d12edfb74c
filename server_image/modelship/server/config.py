"""The server's settings: command-line flags over the `MODELSHIP_*` environment the operator sets."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_CACHE_DIR = "/tmp/modelship/models"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
# Without a cgroup memory limit (a laptop, a test) the budgets are these.
DEFAULT_REQUEST_MEMORY_BYTES = 1 << 30
DEFAULT_INFLIGHT_MEMORY_BYTES = 2 << 30
# The most requests, and the longest time, a keep-alive connection is used before its client is asked to
# reconnect (each connection draws its own limits below these: connections.py). 0 turns a limit off.
DEFAULT_MAX_CONNECTION_REQUESTS = 100
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 10.0
# Outputs whose predictions are counted (predictions.py): a model's few answers, not its every tensor.
DEFAULT_PREDICTION_OUTPUTS = 4
# How an s3:// bucket is addressed: in the path (`endpoint/bucket/key`, what self-hosted stores serve, their
# names rarely resolving per bucket) or in the host name (`bucket.endpoint/key`, what AWS prefers).
S3_ADDRESSING = ("path", "virtual")


def default_s3_addressing(endpoint: str) -> str:
    """Path style for an S3-compatible store at an endpoint of its own, virtual hosts for AWS itself."""
    return "path" if endpoint else "virtual"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it.

    `termination_log` is where the failure is to be reported: the one setting read before the others are
    checked, so that bad settings are reported where the kubelet looks, as any other failed start.
    """

    def __init__(self, message: str, termination_log: str = DEFAULT_TERMINATION_LOG) -> None:
        super().__init__(message)
        self.termination_log = termination_log


@dataclass(frozen=True)
class Settings:
    model_name: str
    model_uri: str
    model_version: str = "1"
    model_sha256: str | None = None
    revision: str = ""
    threads: int = 1
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    host: str = "0.0.0.0"
    port: int = 8080
    auth_token_file: str | None = None
    cache_dir: str = DEFAULT_CACHE_DIR
    termination_log: str = DEFAULT_TERMINATION_LOG
    max_model_bytes: int = 4 << 30
    max_request_bytes: int = 64 << 20
    grace_period_seconds: float = 25.0
    fetch_attempts: int = 4
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_addressing: str = "virtual"
    max_connection_requests: int = DEFAULT_MAX_CONNECTION_REQUESTS
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    max_request_memory_bytes: int = DEFAULT_REQUEST_MEMORY_BYTES
    max_inflight_memory_bytes: int = DEFAULT_INFLIGHT_MEMORY_BYTES
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    idle_timeout_seconds: float = 30.0
    prediction_outputs: int = DEFAULT_PREDICTION_OUTPUTS
    mirror_file: str = ""
    mirror_poll_seconds: float = 1.0
    mirror_queue: int = 64
    mirror_queue_bytes: int = 16 << 20
    mirror_concurrency: int = 4
    mirror_timeout_seconds: float = 5.0
    log_level: str = "info"
    command: str = "serve"

    @property
    def batching_enabled(self) -> bool:
        return self.max_batch_size > 1


def parse_cpu_max(text: str) -> int | None:
    """CPUs a cgroup v2 `cpu.max` line ("quota period" or "max period") allows, rounded up; None: no limit."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def default_threads(cpu_max_path: Path = CGROUP_CPU_MAX) -> int:
    """The pod's CPU limit when the cgroup has one, else the CPUs this process may run on.

    onnxruntime's own default counts the host's cores and ignores the limit, which oversubscribes
    a limited pod on a big node.
    """
    try:
        limit = parse_cpu_max(cpu_max_path.read_text())
    except OSError:
        limit = None
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return min(limit, available) if limit else available


def parse_memory_max(text: str) -> int | None:
    """Bytes a cgroup v2 `memory.max` line allows; None: no limit ("max")."""
    value = text.strip()
    if not value.isdigit():
        return None
    limit = int(value)
    return limit if limit > 0 else None


def memory_limit(memory_max_path: Path = CGROUP_MEMORY_MAX) -> int | None:
    try:
        return parse_memory_max(memory_max_path.read_text())
    except OSError:
        return None


def default_memory_budgets(limit: int | None) -> tuple[int, int]:
    """(one request, all requests in flight) as parts of the pod's memory limit.

    A quarter for one request and half for all of them leaves the other half to the process itself
    (interpreter, onnxruntime, the model's weights and arena), so that no request, nor several at once,
    can push the pod over its limit and get it OOM-killed with every request in flight on it.
    """
    if limit is None:
        return DEFAULT_REQUEST_MEMORY_BYTES, DEFAULT_INFLIGHT_MEMORY_BYTES
    return limit // 4, limit // 2


# (flag, env suffix, type, help). The flag's dest is the Settings field of the same name.
_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("model_name", "MODEL_NAME", str, "name the model is served under (required)"),
    ("model_version", "MODEL_VERSION", str, "version the model is served under"),
    (
        "model_uri",
        "MODEL_URI",
        str,
        "file://, plain path, http(s):// or s3://bucket/key URI of the .onnx file (required)",
    ),
    ("model_sha256", "MODEL_SHA256", str, "expected sha256 of the model file (required for http(s), s3)"),
    ("revision", "REVISION", str, "label of the deployment revision, added to every metric"),
    ("threads", "THREADS", int, "onnxruntime intra-op threads (default: the cgroup CPU limit)"),
    ("max_batch_size", "MAX_BATCH_SIZE", int, "rows merged into one run; 1 turns batching off"),
    ("max_delay_ms", "MAX_DELAY_MS", float, "longest a request waits for a batch to fill"),
    ("host", "HOST", str, "address to listen on"),
    ("port", "PORT", int, "port to listen on"),
    ("auth_token_file", "AUTH_TOKEN_FILE", str, "file holding the bearer token inference requests need"),
    ("cache_dir", "CACHE_DIR", str, "folder downloaded models are kept in, named by their sha256"),
    ("termination_log", "TERMINATION_LOG", str, "file the reason of a failed start is written to"),
    ("max_model_bytes", "MAX_MODEL_BYTES", int, "largest model file accepted"),
    ("max_request_bytes", "MAX_REQUEST_BYTES", int, "largest request body accepted"),
    ("grace_period_seconds", "GRACE_PERIOD_SECONDS", float, "longest drain after SIGTERM"),
    ("fetch_attempts", "FETCH_ATTEMPTS", int, "tries of a model download before giving up"),
    (
        "s3_endpoint",
        "S3_ENDPOINT",
        str,
        "http(s):// URL of the S3-compatible store of s3:// models; absent: AWS S3. Credentials come from "
        "the AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, IRSA, IMDS)",
    ),
    (
        "s3_region",
        "S3_REGION",
        str,
        "region of the s3:// bucket (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)",
    ),
    (
        "s3_addressing",
        "S3_ADDRESSING",
        str,
        "path (endpoint/bucket/key) or virtual (bucket.endpoint/key); default path with an S3 endpoint, "
        "virtual without",
    ),
    (
        "max_connection_requests",
        "MAX_CONNECTION_REQUESTS",
        int,
        "requests after which a keep-alive connection is closed (drawn in [n/2, n]); 0: no limit",
    ),
    (
        "max_connection_age_seconds",
        "MAX_CONNECTION_AGE_SECONDS",
        float,
        "age after which a keep-alive connection is closed (drawn in [t/2, t]); 0: no limit",
    ),
    (
        "max_request_memory_bytes",
        "MAX_REQUEST_MEMORY_BYTES",
        int,
        "memory one request may use: body, tensors, outputs, response (default: 1/4 of the cgroup limit)",
    ),
    (
        "max_inflight_memory_bytes",
        "MAX_INFLIGHT_MEMORY_BYTES",
        int,
        "memory all requests in flight may use together; more wait (default: 1/2 of the cgroup limit)",
    ),
    ("header_timeout_seconds", "HEADER_TIMEOUT_SECONDS", float, "longest a request's headers may take"),
    ("body_timeout_seconds", "BODY_TIMEOUT_SECONDS", float, "longest a request's body may take"),
    (
        "idle_timeout_seconds",
        "IDLE_TIMEOUT_SECONDS",
        float,
        "longest a connection may sit without a request (new or kept alive) before it is closed",
    ),
    (
        "prediction_outputs",
        "PREDICTION_OUTPUTS",
        int,
        "outputs (the first that are labels, class scores or one number a row) whose predictions are "
        "counted in modelship_predictions_total; 0: none",
    ),
    (
        "mirror_file",
        "MIRROR_FILE",
        str,
        "file naming the canary that a share of inference requests is mirrored to (mirror.py), "
        "re-read while serving; empty or absent: no mirroring",
    ),
    ("mirror_poll_seconds", "MIRROR_POLL_SECONDS", float, "how often the mirror file is read"),
    ("mirror_queue", "MIRROR_QUEUE", int, "mirrored requests waiting to be sent; more are dropped"),
    (
        "mirror_queue_bytes",
        "MIRROR_QUEUE_BYTES",
        int,
        "bytes (bodies and our outputs) the mirrored requests not yet judged may hold; more are dropped",
    ),
    ("mirror_concurrency", "MIRROR_CONCURRENCY", int, "mirrored requests sent at once"),
    (
        "mirror_timeout_seconds",
        "MIRROR_TIMEOUT_SECONDS",
        float,
        "longest a canary may take to answer a mirrored request (then it counts as an error)",
    ),
    ("log_level", "LOG_LEVEL", str, "debug, info, warning or error"),
)


ENV_PREFIX = "MODELSHIP_"
# What the operator's pod template sets (tests/contract holds it to this): variable -> Settings field.
ENVIRONMENT: Mapping[str, str] = {ENV_PREFIX + suffix: name for name, suffix, _kind, _text in _OPTIONS}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelship.server",
        description="Serve one ONNX model over the Open Inference Protocol. Every flag can also be "
        "given as MODELSHIP_<FLAG> in the environment; a flag wins over the environment.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "fetch"),
        help="serve (default), or fetch: download and verify the model into the cache, then exit",
    )
    for name, env, _kind, text in _OPTIONS:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, help=f"{text} [{ENV_PREFIX}{env}]"
        )
    return parser


def _convert(name: str, kind: type, raw: str) -> object:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}"
        ) from None
    return value


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and environment, checked; raises ConfigError naming the bad setting."""
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    raw: dict[str, str] = {}
    for name, suffix, _kind, _text in _OPTIONS:
        value = getattr(args, name)
        if value is None:
            value = env.get(ENV_PREFIX + suffix)
        if value is not None and value != "":
            raw[name] = value
    try:
        return _settings(args.command, raw)
    except ConfigError as exc:
        exc.termination_log = raw.get("termination_log", DEFAULT_TERMINATION_LOG)
        raise


def _settings(command: str, raw: Mapping[str, str]) -> Settings:
    values: dict[str, object] = {"command": command}
    for name, _suffix, kind, _text in _OPTIONS:
        if name in raw:
            values[name] = _convert(name, kind, raw[name]) if kind is not str else raw[name]
    for required in ("model_name", "model_uri"):
        if not values.get(required):
            raise ConfigError(
                f"{required} is required (--{required.replace('_', '-')} or MODELSHIP_{required.upper()})"
            )
    if isinstance(values.get("model_sha256"), str):
        values["model_sha256"] = str(values["model_sha256"]).lower()
    if "threads" not in values:
        values["threads"] = default_threads()
    if "s3_addressing" not in values:
        values["s3_addressing"] = default_s3_addressing(str(values.get("s3_endpoint", "")))
    if "max_request_memory_bytes" not in values or "max_inflight_memory_bytes" not in values:
        per_request, inflight = default_memory_budgets(memory_limit())
        values.setdefault("max_request_memory_bytes", per_request)
        per_request_set = values["max_request_memory_bytes"]
        assert isinstance(per_request_set, int)
        values.setdefault("max_inflight_memory_bytes", max(inflight, per_request_set))
    settings = Settings(**values)  # type: ignore[arg-type]
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if s.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {s.threads}")
    if s.max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be at least 1, got {s.max_batch_size}")
    if not 0 <= s.max_delay_ms <= 60_000:
        raise ConfigError(f"max_delay_ms must be between 0 and 60000, got {s.max_delay_ms}")
    if not 0 < s.port < 65536:
        raise ConfigError(f"port must be between 1 and 65535, got {s.port}")
    if s.max_model_bytes < 1 or s.max_request_bytes < 1:
        raise ConfigError("max_model_bytes and max_request_bytes must be positive")
    if s.grace_period_seconds < 0:
        raise ConfigError(f"grace_period_seconds must not be negative, got {s.grace_period_seconds}")
    if s.model_sha256 is not None:
        digest = s.model_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"model_sha256 must be 64 hex digits, got {s.model_sha256!r}")
    if s.fetch_attempts < 1:
        raise ConfigError(f"fetch_attempts must be at least 1, got {s.fetch_attempts}")
    _check_s3(s)
    if s.max_connection_requests < 0:
        raise ConfigError(f"max_connection_requests must not be negative, got {s.max_connection_requests}")
    if not s.max_connection_age_seconds >= 0:  # NaN too: it would never close a connection
        raise ConfigError(
            f"max_connection_age_seconds must not be negative, got {s.max_connection_age_seconds}"
        )
    if s.max_request_memory_bytes < 1 or s.max_inflight_memory_bytes < s.max_request_memory_bytes:
        raise ConfigError(
            "max_request_memory_bytes must be positive and at most max_inflight_memory_bytes, got "
            f"{s.max_request_memory_bytes} and {s.max_inflight_memory_bytes}"
        )
    for name in (
        "header_timeout_seconds",
        "body_timeout_seconds",
        "idle_timeout_seconds",
        "mirror_poll_seconds",
        "mirror_timeout_seconds",
    ):
        if not getattr(s, name) > 0:  # NaN too
            raise ConfigError(f"{name} must be positive, got {getattr(s, name)}")
    if s.prediction_outputs < 0:
        raise ConfigError(f"prediction_outputs must not be negative, got {s.prediction_outputs}")
    for name in ("mirror_queue", "mirror_queue_bytes", "mirror_concurrency"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(s, name)}")
    if s.log_level not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"log_level must be debug, info, warning or error, got {s.log_level!r}")


def _check_s3(s: Settings) -> None:
    if s.s3_addressing not in S3_ADDRESSING:
        raise ConfigError(f"s3_addressing must be path or virtual, got {s.s3_addressing!r}")
    if s.s3_endpoint:
        parts = urlsplit(s.s3_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"s3_endpoint must be an http:// or https:// URL with a host, got {s.s3_endpoint!r}"
            )
        try:
            parts.port  # noqa: B018 (urlsplit checks the port only when asked)
        except ValueError:
            raise ConfigError(f"s3_endpoint has an invalid port: {s.s3_endpoint!r}") from None
