"""The `fetch` command, which the pod's init container runs: the verified model left in the cache, and a
line in the termination log saying what was fetched (JSON, read by the operator) or why it failed.

It imports only what fetching needs: the init container does not pay for onnxruntime, numpy and the
web stack of `serve` (measured: 1.6-2.1 s and ~97 MiB peak RSS before any byte was fetched, when it
started through the server's whole import).
"""

from __future__ import annotations

import json
import logging
import time

from modelship.server.config import Settings
from modelship.server.errors import ModelLoadError
from modelship.server.fetch import FetchedFile, ModelFile, fetch_file, fetch_model
from modelship.server.s3 import S3Options

log = logging.getLogger("modelship.server")

_TERMINATION_MESSAGE_LIMIT = 4096  # what the kubelet keeps of /dev/termination-log


def report_failure(path: str, message: str) -> None:
    """Log `message` and write it as one line to the termination log, where `kubectl describe` shows it."""
    line = " ".join(message.split())[: _TERMINATION_MESSAGE_LIMIT - 1]
    log.error("%s", line)
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc.strerror or exc)


def s3_options(settings: Settings) -> S3Options:
    return S3Options(
        endpoint=settings.s3_endpoint or None,
        region=settings.s3_region or None,
        addressing=settings.s3_addressing,
    )


def fetch(settings: Settings) -> ModelFile:
    """The verified model file the settings name: what `fetch` leaves in the cache and `serve` loads."""
    return fetch_model(
        settings.model_uri,
        settings.model_sha256,
        settings.cache_dir,
        settings.max_model_bytes,
        attempts=settings.fetch_attempts,
        s3_options=s3_options(settings),
    )


def fetch_success_line(uri: str, fetched: FetchedFile, seconds: float) -> str:
    """The JSON line a successful `fetch` leaves in its termination log, where the operator reads it (the
    kubelet's termination message of the init container): the model's digest, size and fetch time."""

    def line(shown: str) -> str:
        report = {
            "uri": shown,
            "sha256": fetched.sha256,
            "size": fetched.size,
            "fetchSeconds": round(seconds, 3),
            "cached": fetched.cached,
        }
        return json.dumps(report, separators=(",", ":"), ensure_ascii=False)

    text, kept = line(uri), len(uri)
    # The kubelet keeps 4096 bytes: a line cut there would not parse, a URI cut short leaves the rest.
    while (excess := len(text.encode()) + 1 - _TERMINATION_MESSAGE_LIMIT) > 0:
        kept = max(0, kept - excess - 3)
        text = line(uri[:kept] + "...")
    return text


def fetch_command(settings: Settings) -> int:
    """`fetch`: leave the verified model in the cache, and say so in the termination log."""
    started = time.perf_counter()
    try:
        fetched = fetch_file(
            settings.model_uri,
            settings.model_sha256,
            settings.cache_dir,
            settings.max_model_bytes,
            attempts=settings.fetch_attempts,
            s3_options=s3_options(settings),
        )
    except ModelLoadError as exc:
        report_failure(settings.termination_log, f"model fetch failed: {exc}")
        return 1
    seconds = time.perf_counter() - started
    log.info(
        "model %s %s (sha256 %s, %d bytes, %.3fs)",
        settings.model_uri,
        "found verified in the cache" if fetched.cached else f"verified at {fetched.path}",
        fetched.sha256,
        fetched.size,
        seconds,
    )
    try:
        with open(settings.termination_log, "w", encoding="utf-8") as out:
            out.write(fetch_success_line(settings.model_uri, fetched, seconds) + "\n")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", settings.termination_log, exc.strerror or exc)
    return 0
