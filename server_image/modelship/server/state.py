"""What the routes share: settings, metrics, the loaded model and its runner, the mirror, and the server's
phase."""

from __future__ import annotations

import enum
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelship.server.batching import BatchingRunner, DirectRunner
from modelship.server.config import Settings
from modelship.server.errors import ModelLoadError
from modelship.server.memory import MemoryBudget
from modelship.server.metrics import Metrics
from modelship.server.mirror import Mirror
from modelship.server.runtime import ModelRuntime


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"


def read_token(path: str) -> bytes:
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the auth token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ModelLoadError(f"the auth token file {path} is empty")
    return token


class ServerState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.model_name, settings.model_version, settings.revision)
        self.token = read_token(settings.auth_token_file) if settings.auth_token_file else None
        self.phase = Phase.LOADING
        self.runtime: ModelRuntime | None = None
        self.runner: DirectRunner | BatchingRunner | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.inflight = 0
        self.memory = MemoryBudget(settings.max_request_memory_bytes, settings.max_inflight_memory_bytes)
        # Large bodies are decoded and large responses encoded here, off the event loop; as many threads
        # as onnxruntime's, since the two share the pod's CPUs (the memory budget bounds what waits).
        self.codec = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="codec")
        # Shadow traffic to a canary, when the mirror file names one (started by main.serve).
        self.mirror = Mirror(settings, self.metrics, self.codec)

    def attach(self, runtime: ModelRuntime, load_seconds: float) -> None:
        """Serve this model from now on (called on the event loop, once it is loaded and warm)."""
        s = self.settings
        # Several runs at once use the cores between them; onnxruntime's run() releases the GIL.
        self.executor = ThreadPoolExecutor(max_workers=s.threads, thread_name_prefix="onnxruntime")
        if s.batching_enabled and runtime.signature.batched:
            runner = BatchingRunner(
                runtime,
                self.executor,
                self.metrics,
                max_batch_size=s.max_batch_size,
                max_delay_seconds=s.max_delay_ms / 1000.0,
            )
            runner.start()
            self.runner = runner
        else:
            self.runner = DirectRunner(runtime, self.executor, self.metrics)
        self.metrics.predictions.watch(runtime.signature, s.prediction_outputs)
        self.runtime = runtime
        self.metrics.model_loaded(runtime.sha256, load_seconds)
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY

    @property
    def batching(self) -> bool:
        return isinstance(self.runner, BatchingRunner)

    def begin_drain(self) -> None:
        self.phase = Phase.DRAINING
        self.mirror.stop_enqueueing()

    def request_started(self) -> None:
        self.inflight += 1
        self.metrics.inflight.inc()

    def request_finished(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()

    async def close(self) -> None:
        await self.mirror.close()
        if self.runner is not None:
            await self.runner.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.codec.shutdown(wait=False, cancel_futures=True)
