"""Prometheus metrics of one served model. Names and labels are an interface: canary analysis and
autoscaling query them, so they change only together with those queries."""

from __future__ import annotations

import enum

from modelship.server.predictions import Predictions
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LABELS = ("model", "version", "revision")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Canaries mirrored to over the process's life that get series of their own (one a rollout); later ones
# share the target OTHER_TARGET, so that a long-lived stable pod's series stay bounded.
MAX_MIRROR_TARGETS = 8
OTHER_TARGET = "other"

# The `_created` series double the output and nothing we know of queries them.
disable_created_metrics()


class MirrorResult(enum.StrEnum):
    """What became of a mirrored request (mirror.py): the `result` label of modelship_mirror_requests."""

    AGREE = "agree"
    DISAGREE = "disagree"
    ERROR = "error"  # the canary answered other than 200, or not in time, or not at all
    DROPPED = "dropped"  # never sent: the mirror's queue was full, or the server stopped first


class Metrics:
    """The server's metrics in a registry of their own (so that several servers can live in one test)."""

    def __init__(self, model: str, version: str, revision: str) -> None:
        self.registry = CollectorRegistry()
        self._labels = (model, version, revision)
        r = self.registry
        self._requests = Counter(
            "modelship_requests",
            "Inference requests (V2 infer and V1 predict) by HTTP status code.",
            [*LABELS, "code"],
            registry=r,
        )
        self.request_duration = self._histogram(
            "modelship_request_duration_seconds",
            "Time from receiving an inference request to its response.",
            LATENCY_BUCKETS,
        )
        self.inference_duration = self._histogram(
            "modelship_inference_duration_seconds",
            "Time of one onnxruntime run (one batch).",
            LATENCY_BUCKETS,
        )
        self.batch_size = self._histogram(
            "modelship_batch_size", "Requests merged into one onnxruntime run.", BATCH_BUCKETS
        )
        self.queue_duration = self._histogram(
            "modelship_queue_duration_seconds",
            "Time a request waited before its onnxruntime run started.",
            QUEUE_BUCKETS,
        )
        self.inflight = self._gauge("modelship_inflight_requests", "Inference requests being handled now.")
        self.model_load_seconds = self._gauge(
            "modelship_model_load_seconds", "Time it took to fetch, verify, load and warm up the model."
        )
        self._model_info = Gauge(
            "modelship_model_info",
            "The served model; always 1.",
            [*LABELS, "sha256"],
            registry=r,
        )
        # Reconnects a second, and how many of them the server asked for (connections.py): whether
        # clients that keep their connections are being spread onto new pods.
        self.connections = self._counter(
            "modelship_connections", "HTTP connections accepted (new connections, reconnects included)."
        )
        self.connections_recycled = self._counter(
            "modelship_connections_recycled",
            "Keep-alive connections the server asked to close (Connection: close) because they had "
            "answered their share of requests or reached their age.",
        )
        # What the model answers (predictions.py): canary analysis compares its distribution between
        # revisions. Labels beyond ours: the output and its bin.
        self._predictions = Counter(
            "modelship_predictions",
            "Predicted rows by output and bin (label, argmax class or regression bucket), "
            "for the first MODELSHIP_PREDICTION_OUTPUTS outputs that have bins.",
            [*LABELS, "output", "bin"],
            registry=r,
        )
        self.predictions = Predictions(
            lambda output, name: self._predictions.labels(*self._labels, output, name)
        )
        # Shadow traffic (mirror.py): how a canary's answers to mirrored requests compare with ours.
        self._mirror_requests = Counter(
            "modelship_mirror_requests",
            "Inference requests mirrored to a canary revision (target), by how its answer compared "
            "with this server's: agree, disagree, error (not 200, timeout, unreachable) or dropped.",
            [*LABELS, "target", "result"],
            registry=r,
        )
        self._mirror_duration = Histogram(
            "modelship_mirror_duration_seconds",
            "Time a canary took to answer a mirrored request, as this server saw it (sent to answered).",
            [*LABELS, "target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mirror_pending = self._gauge(
            "modelship_mirror_pending_requests",
            "Mirrored requests queued, or being sent and compared (at most MODELSHIP_MIRROR_QUEUE + "
            "MODELSHIP_MIRROR_CONCURRENCY): whether the mirror keeps up.",
        )
        self._mirror_series: dict[str, MirrorSeries] = {}
        ProcessCollector(registry=r)
        self._by_code: dict[int, Counter] = {}

    def _histogram(self, name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
        """The one series of a histogram labelled with this server's model, version and revision."""
        return Histogram(name, text, LABELS, buckets=buckets, registry=self.registry).labels(*self._labels)

    def _counter(self, name: str, text: str) -> Counter:
        return Counter(name, text, LABELS, registry=self.registry).labels(*self._labels)

    def _gauge(self, name: str, text: str) -> Gauge:
        return Gauge(name, text, LABELS, registry=self.registry).labels(*self._labels)

    def count_request(self, code: int) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(*self._labels, str(code))
        child.inc()

    def mirror_series(self, target: str) -> MirrorSeries:
        """The series of a mirror target, made (at zero) the first time it is asked for; past
        MAX_MIRROR_TARGETS targets, those of OTHER_TARGET."""
        series = self._mirror_series.get(target)
        if series is not None:
            return series
        if len(self._mirror_series.keys() - {OTHER_TARGET}) >= MAX_MIRROR_TARGETS:
            target = OTHER_TARGET
            series = self._mirror_series.get(target)
            if series is not None:
                return series
        series = self._mirror_series[target] = MirrorSeries(
            {
                result: self._mirror_requests.labels(*self._labels, target, result.value)
                for result in MirrorResult
            },
            self._mirror_duration.labels(*self._labels, target),
        )
        return series

    def model_loaded(self, sha256: str, seconds: float) -> None:
        self.model_load_seconds.set(seconds)
        self._model_info.labels(*self._labels, sha256).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MirrorSeries:
    """The series of one mirror target: a counter per result, and the canary's answer times."""

    def __init__(self, results: dict[MirrorResult, Counter], duration: Histogram) -> None:
        self._results = results
        self.duration = duration

    def count(self, result: MirrorResult) -> None:
        self._results[result].inc()
