"""A KServe custom model serving an ONNX file with onnxruntime: how a KServe user serves a custom model
with kserve's Python model server. Runs in the benchmark's own venv (.build/bench-venv), not ours.

    python bench/kserve_onnx_model.py --model_name mlp --model_file mlp.onnx --threads 2 --http_port 8080
"""

from __future__ import annotations

import argparse
import logging
import uuid

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse

_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
}


class OnnxModel(kserve.Model):
    def __init__(self, name: str, model_file: str, threads: int) -> None:
        super().__init__(name)
        self.model_file = model_file
        self.threads = threads
        self.load()

    def load(self) -> bool:
        # The same session settings as modelship's server, so that only the serving layer differs.
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.model_file, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.outputs = [(o.name, _DATATYPES[o.type]) for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {inp.name: inp.as_numpy() for inp in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = [
            InferOutput(name=name, shape=list(array.shape), datatype=datatype, data=array)
            for (name, datatype), array in zip(self.outputs, results, strict=True)
        ]
        return InferResponse(
            model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4())
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.model_file, args.threads)
    server = kserve.ModelServer(workers=1, enable_grpc=False, enable_latency_logging=False)
    # KServe logs every request twice by default (access log and timings); modelship logs none. Quiet both
    # so that the comparison measures the serving path, not logging.
    for noisy in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server.start([model])
