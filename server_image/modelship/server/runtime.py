"""The onnxruntime side: one InferenceSession with explicit threads, its signature, a warm-up, and runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
from modelship.server.datatypes import DTYPES, ORT_DATATYPES
from modelship.server.errors import ModelLoadError
from modelship.server.fetch import ModelFile
from modelship.server.protocol import Signature, TensorSpec
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

log = logging.getLogger("modelship.server.runtime")

# What onnxruntime raises when a run fails (as opposed to our bugs), and on whose side the fault lies.
# InvalidArgument: the inputs break a rule of the graph that the signature cannot show (two dynamic
# dimensions that must agree, a value out of a Gather's range): the client's to fix, 400. The rest is
# the model failing on inputs that match its signature (a kernel error, memory it cannot allocate): 500,
# with onnxruntime's message, so that canary analysis counts a model that breaks on valid input.
_CLIENT_ERRORS: tuple[type[Exception], ...] = (ort_errors.InvalidArgument,)
_MODEL_ERRORS: tuple[type[Exception], ...] = (
    ort_errors.Fail,
    ort_errors.RuntimeException,
    ort_errors.NotImplemented,
    ort_errors.InvalidGraph,
    ort_errors.EPFail,
)


class InferenceError(Exception):
    """onnxruntime refused or failed to run the graph on these inputs; `status` says whose fault."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
        what = "the model refuses these inputs" if status < 500 else "the model failed on these inputs"
        self.message = f"{what}: {message}"


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """Explicit threads: onnxruntime's default counts the host's cores and ignores the pod's CPU limit.

    Spinning is off because the intra-op workers share the pod's few cores with the event loop that
    parses and encodes requests; a spinning worker would take CPU from it between runs.

    The CPU memory arena is off: it keeps every chunk it ever grew to, so one request whose outputs only
    the run can size (a ConstantOfShape of its input's values) left the process at its peak for good (95 MiB
    to 1,415 MiB, after a 413). Without it each run's tensors go back when the run ends; measured on the
    tests' MLPs, a run costs the same (4-8-3: 9.6-10.4 µs with it, 8.8-9.1 without; 256-1024-1024-10:
    241-244 µs against 241-266, the noise of the machine).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return options


def _spec(arg: Any, what: str) -> TensorSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"{what} {arg.name!r} has type {arg.type}, which the inference protocol cannot carry "
            "(supported: tensors of bool, (u)int8-64, float16/32/64 and string)"
        )
    # onnxruntime gives a fixed dimension as an int, a symbolic one as its name, an anonymous one as None.
    dims = tuple(arg.shape or ())
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in dims)
    symbols = tuple(dim if isinstance(dim, str) and dim else None for dim in dims)
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape, symbols=symbols)


def signature_of(session: ort.InferenceSession) -> Signature:
    inputs = tuple(_spec(arg, "input") for arg in session.get_inputs())
    outputs = tuple(_spec(arg, "output") for arg in session.get_outputs())
    return Signature(inputs=inputs, outputs=outputs, batched=_has_batch_dimension((*inputs, *outputs)))


def _has_batch_dimension(specs: tuple[TensorSpec, ...]) -> bool:
    """Whether rows of several requests may be stacked and each caller's rows cut back out: every
    tensor's first dimension is dynamic, they are not named apart (a model whose inputs name them
    differently takes them of different sizes), and the first dimension's name appears nowhere else
    (x[n] -> y[n, n] mixes rows: stacked, each caller would get the others' columns)."""
    if not all(spec.shape and spec.shape[0] == -1 for spec in specs):
        return False
    firsts = {spec.symbols[0] for spec in specs if spec.symbols and spec.symbols[0] is not None}
    if len(firsts) > 1:
        return False
    return not any(symbol in firsts for spec in specs for symbol in spec.symbols[1:])


def dummy_feeds(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Zeros (empty strings) of the declared shapes, `rows` on a batched model's first dimension."""
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [max(dim, 1) for dim in spec.shape]
        if signature.batched:
            shape[0] = rows
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=DTYPES[spec.datatype])
    return feeds


class ModelRuntime:
    """A loaded model: run() may be called from several threads at once (onnxruntime allows it)."""

    def __init__(self, session: ort.InferenceSession, sha256: str) -> None:
        self.session = session
        self.sha256 = sha256
        self.signature = signature_of(session)
        self._output_names = list(self.signature.output_names)

    @classmethod
    def load(cls, model: ModelFile, threads: int) -> ModelRuntime:
        try:
            session = ort.InferenceSession(
                model.data, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise ModelLoadError(f"{model.source} is not a loadable ONNX model: {_first_line(exc)}") from None
        return cls(session, model.sha256)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._output_names, feeds)
        except _CLIENT_ERRORS as exc:
            raise InferenceError(_first_line(exc), 400) from None
        except _MODEL_ERRORS as exc:
            raise InferenceError(_first_line(exc), 500) from None
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, max_batch_size: int) -> None:
        """Run dummy batches so that the first real request does not pay for allocations and kernels."""
        sizes = [1, max_batch_size] if self.signature.batched and max_batch_size > 1 else [1]
        for rows in sizes:
            try:
                self.run(dummy_feeds(self.signature, rows))
            except InferenceError as exc:
                raise ModelLoadError(f"warm-up inference with {rows} row(s) of zeros failed: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
