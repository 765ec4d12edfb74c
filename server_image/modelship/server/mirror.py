"""Shadow traffic: a share of the inference requests this server answers, sent again to a canary revision,
whose answers are compared with ours (agreement.py) and counted in `modelship_mirror_requests_total`.

Which canary, and how much: a small JSON file (`MODELSHIP_MIRROR_FILE`), re-read every
`MODELSHIP_MIRROR_POLL_SECONDS`: `{"url": ..., "percent": ..., "revision": ..., "tolerance": ...}`. The
operator writes it as an annotation of the stable pods, which a downwardAPI volume projects into the file:
a pod annotation reaches the file within seconds, through the kubelet's sync of that pod, without
restarting it, where a ConfigMap volume follows only at the kubelet's periodic sync (about a minute); and
the pod needs no API token to watch anything. The kubelet swaps the file atomically (a symlink), so a read
sees the old content or the new one, never half; reading a file this small every second costs nothing.
Empty, absent, percent 0 or not valid: no mirroring (an invalid content is logged once, never fatal).

The user's request never waits for the mirror and never fails because of it:
- sampled (each request with probability percent/100: random, not every n-th, so that a client that
  cycles through a few kinds of request cannot alias with the sampling and have one kind mirrored only)
  before the body is let go, only then is a reference kept (no copy); enqueued with `put_nowait` once
  the response is ready, and only if it is a 200;
- the queue is bounded in requests and in bytes (bodies and our outputs, until judged): past either,
  the request is dropped and counted;
- a few workers send with one shared client, each exchange bounded by `MODELSHIP_MIRROR_TIMEOUT_SECONDS`;
  a canary that is down, slow or answers errors costs only `error` counts.
With no mirror file the server starts none of this, and a request costs one attribute check (`target`).

The client is aiohttp's, not httpx's (which the server uses to fetch models): every copy is sent on the
stable server's own event loop and CPU, so what the client costs is taken from the users' requests.
Measured on 2026-12-07 (2 cores, `bench/shadow.py --overhead-only`): a copy cost the stable server
1.3-1.6 ms of CPU with httpx, 0.3-0.4 ms with aiohttp, against some 0.4 ms a request served (at 100 %
copied, 1680-1696 us of CPU a request with httpx, 771-812 us with aiohttp); one POST alone costs 1.4-1.6 ms
of client CPU with httpx, 0.24 ms with aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from modelship.server.agreement import UnreadableAnswer, Verdict, compare, v1_outputs, v2_outputs
from modelship.server.config import Settings
from modelship.server.metrics import Metrics, MirrorResult, MirrorSeries
from modelship.server.protocol import HEADER_LENGTH

log = logging.getLogger("modelship.server.mirror")

DEFAULT_TOLERANCE = 0.001
# The header a mirrored request carries (this server's revision): a server never mirrors such a request
# again, so that two servers that name each other cannot echo requests back and forth.
MIRROR_HEADER = "x-modelship-mirror"
# The request headers a mirrored request keeps: how to read the body, and who may send it.
FORWARDED_HEADERS = ("content-type", "content-encoding", HEADER_LENGTH, "authorization")
# A revision is a label value (at most 63 characters in Kubernetes), and here a metric label too.
MAX_REVISION_CHARS = 63
# Answers at least this large are read and compared on a codec thread (endpoints.OFFLOAD_BYTES's measure).
_OFFLOAD_BYTES = 64 << 10
# Distinct invalid contents remembered so as to be logged once each.
_MAX_WARNED = 64


class MirrorFileError(ValueError):
    """The mirror file's content is not a mirror target; the message says why."""


@dataclass(frozen=True)
class MirrorTarget:
    """The canary requests are mirrored to: its base URL (no trailing slash), the share of requests in
    percent, its revision (the `target` label), and the tolerance of float outputs."""

    url: str
    percent: float
    revision: str
    tolerance: float = DEFAULT_TOLERANCE


def parse_mirror_file(text: str) -> MirrorTarget | None:
    """The target the file's content names; None: mirroring off (blank, or percent 0). Raises
    MirrorFileError for anything else that is not a target."""
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MirrorFileError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MirrorFileError("not a JSON object")
    percent = _number(obj.get("percent"), "percent")
    if not 0 <= percent <= 100:
        raise MirrorFileError(f"percent must be between 0 and 100, got {percent}")
    if percent == 0:
        return None  # off, whatever else it says
    url = _url(obj.get("url"))
    revision = obj.get("revision")
    if not isinstance(revision, str) or not 0 < len(revision) <= MAX_REVISION_CHARS:
        raise MirrorFileError(f"revision must be a string of 1 to {MAX_REVISION_CHARS} characters")
    tolerance = _number(obj.get("tolerance", DEFAULT_TOLERANCE), "tolerance")
    if tolerance < 0:
        raise MirrorFileError(f"tolerance must not be negative, got {tolerance}")
    return MirrorTarget(url=url, percent=percent, revision=revision, tolerance=tolerance)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MirrorFileError(f"{name} must be a number, got {value!r}")
    return float(value)


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise MirrorFileError("url must be a string")
    try:
        # httpx's parser (the server's, for model downloads): what it accepts is what the file may say.
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise MirrorFileError(f"url {value!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise MirrorFileError(f"url must be http(s)://host[:port][/path], got {value!r}")
    return value.rstrip("/")


@dataclass(frozen=True)
class _Mirrored:
    """A request to send again, with what it is compared against."""

    url: str
    tolerance: float
    series: MirrorSeries
    v1: bool
    body: bytes
    headers: dict[str, str]
    results: Mapping[str, np.ndarray]
    output_names: tuple[str, ...]
    size: int


class Mirror:
    """The mirror of one server: the file's watcher, the queue, the workers that send and compare.

    `target` is what the request path reads: None while mirroring is off, draining included.
    """

    def __init__(self, settings: Settings, metrics: Metrics, codec: Executor) -> None:
        self.target: MirrorTarget | None = None
        self._settings = settings
        self._metrics = metrics
        self._codec = codec
        self._series: MirrorSeries | None = None  # the target's
        self._accepting = True
        self._text: str | None = None  # the file's content last read
        self._warned: set[str] = set()
        self._queue: asyncio.Queue[_Mirrored] | None = None
        self._bytes = 0  # held by queued and unjudged requests
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._v2_path = f"/v2/models/{settings.model_name}/infer"
        self._v1_path = f"/v1/models/{settings.model_name}:predict"

    # -------------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        """Read the file, and keep reading it; start the workers. Nothing when no mirror file is set."""
        s = self._settings
        if not s.mirror_file:
            return
        self._queue = asyncio.Queue(maxsize=s.mirror_queue)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.mirror_concurrency),
            timeout=aiohttp.ClientTimeout(total=s.mirror_timeout_seconds),
            # The canary's Service address, never through a proxy the environment may name.
            trust_env=False,
            headers={"user-agent": "modelship-mirror"},
            # The request's own content-type goes along, and none where it had none (aiohttp would add
            # application/octet-stream to a body of bytes).
            skip_auto_headers=("content-type",),
        )
        self.reload()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(), name="mirror-watch")]
        self._tasks += [
            loop.create_task(self._work(), name=f"mirror-{i}") for i in range(s.mirror_concurrency)
        ]
        log.info("mirroring follows %s", s.mirror_file)

    def stop_enqueueing(self) -> None:
        """The drain: no more requests are mirrored; those queued still go."""
        self._accepting = False
        self.target = None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().series.count(MirrorResult.DROPPED)
                self._metrics.mirror_pending.dec()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -------------------------------------------------------------------------------------------
    # the file

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.mirror_poll_seconds)
            try:
                self.reload()
            except Exception:  # a bug of ours: the watcher must go on, with mirroring off
                log.exception("reading the mirror file failed; mirroring off")
                self._text = None
                self._follow(None)

    def reload(self) -> None:
        """Read the file and follow what it says now."""
        path = self._settings.mirror_file
        try:
            text = Path(path).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            text = ""
            self._warn_once(f"oserror:{exc}", f"cannot read the mirror file {path}: {exc}; mirroring off")
        if text == self._text:
            return
        self._text = text
        try:
            target = parse_mirror_file(text)
        except MirrorFileError as exc:
            self._warn_once(
                f"content:{hash(text)}", f"the mirror file {path} is not valid ({exc}); mirroring off"
            )
            target = None
        self._follow(target)

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED:
            self._warned.clear()
        self._warned.add(key)
        log.warning("%s", message)

    def _follow(self, target: MirrorTarget | None) -> None:
        if not self._accepting or target == self.target:
            return
        if target is None:
            log.info("mirroring off")
        else:
            log.info(
                "mirroring %g%% of inference requests to revision %s at %s (tolerance %g)",
                target.percent,
                target.revision,
                target.url,
                target.tolerance,
            )
            self._series = self._metrics.mirror_series(target.revision)
        self.target = target

    # -------------------------------------------------------------------------------------------
    # the request path

    def sample(self, headers: Mapping[str, str]) -> bool:
        """Whether to mirror this request (asked only while `target` is set)."""
        target = self.target
        return (
            target is not None and random.random() * 100.0 < target.percent and MIRROR_HEADER not in headers
        )

    def offer(
        self,
        v1: bool,
        body: bytes,
        headers: Mapping[str, str],
        results: Mapping[str, np.ndarray],
        output_names: tuple[str, ...],
    ) -> None:
        """Queue a sampled request that was answered 200, with our results; never waits, never raises."""
        target, series, queue = self.target, self._series, self._queue
        if target is None or series is None or queue is None:
            return  # turned off since it was sampled
        size = len(body) + sum(array.nbytes for array in results.values())
        if queue.full() or self._bytes + size > self._settings.mirror_queue_bytes:
            series.count(MirrorResult.DROPPED)
            return
        forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
        forwarded[MIRROR_HEADER] = self._settings.revision
        queue.put_nowait(
            _Mirrored(
                url=target.url + (self._v1_path if v1 else self._v2_path),
                tolerance=target.tolerance,
                series=series,
                v1=v1,
                body=body,
                headers=forwarded,
                results=results,
                output_names=output_names,
                size=size,
            )
        )
        self._bytes += size
        self._metrics.mirror_pending.inc()

    # -------------------------------------------------------------------------------------------
    # the workers

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            try:
                item.series.count(await self._exchange(item))
            except asyncio.CancelledError:
                item.series.count(MirrorResult.DROPPED)
                raise
            except Exception:
                log.exception("mirroring a request to %s failed", item.url)
                item.series.count(MirrorResult.ERROR)
            finally:
                self._bytes -= item.size
                self._metrics.mirror_pending.dec()

    async def _exchange(self, item: _Mirrored) -> MirrorResult:
        """Send one mirrored request, and compare the answer."""
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout(self._settings.mirror_timeout_seconds),
                self._session.post(item.url, data=item.body, headers=item.headers) as response,
            ):
                # The whole answer, an error's too: the connection goes back to the pool for the next.
                answer = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("mirrored request to %s: %s", item.url, type(exc).__name__)
            return MirrorResult.ERROR
        item.series.duration.observe(time.perf_counter() - started)
        if response.status != 200:
            log.debug("mirrored request to %s answered %d", item.url, response.status)
            return MirrorResult.ERROR
        header_length = response.headers.get(HEADER_LENGTH)
        if len(answer) < _OFFLOAD_BYTES:
            verdict = _judge(item, answer, header_length)
        else:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(self._codec, _judge, item, answer, header_length)
        if verdict.agree:
            return MirrorResult.AGREE
        log.debug("mirrored request to %s: the canary disagrees: %s", item.url, verdict.reason)
        return MirrorResult.DISAGREE


def _judge(item: _Mirrored, answer: bytes, header_length: str | None) -> Verdict:
    """How the canary's 200 answer to `item` compares with our results."""
    try:
        canary = (
            v1_outputs(answer, item.results, item.output_names)
            if item.v1
            else v2_outputs(answer, header_length)
        )
    except UnreadableAnswer as exc:
        return Verdict(False, f"unreadable answer: {exc}")
    return compare(item.results, canary, item.tolerance)
