"""Drives a real server with a client library nobody here wrote, in that library's own venv
(.build/clients-venv, tests/server/clients/requirements.txt): tritonclient's HTTP client and KServe's
Python SDK. tests/server/test_clients.py runs it and judges what it prints.

Reads a job as JSON on stdin: {"suite", "url", "model", "version", "inputs": [{"name", "datatype",
"shape", "data"}], "outputs": [names]}; prints JSON: what the client's health, metadata and inference
calls returned, each output as {"datatype", "shape", "data"} (non-finite floats as NaN/Infinity).
A call the client raises on is reported as {"error": ...}: judging it is the test's job.

Suites: triton-json, triton-binary (tritonclient.http, each also with gzip- and deflate-compressed
requests), kserve-v2-json, kserve-v2-binary (kserve.InferenceRESTClient, protocol v2), kserve-v1
(protocol v1: `instances` in, `predictions` out).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def array_of(spec: dict[str, Any]) -> np.ndarray:
    if spec["datatype"] == "BYTES":
        data = [text.encode("utf-8") for text in spec["data"]]
        return np.array(data, dtype=np.object_).reshape(spec["shape"])
    return np.array(spec["data"], dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])


def described(array: np.ndarray, datatype: str) -> dict[str, Any]:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in flat]
    else:
        data = flat.tolist()
    return {"datatype": datatype, "shape": list(array.shape), "data": data}


def attempt(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def attempt_async(call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await call()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def triton(job: dict[str, Any], binary: bool) -> dict[str, Any]:
    import tritonclient.http as http

    client = http.InferenceServerClient(url=job["url"].removeprefix("http://"), network_timeout=30)
    model, version = job["model"], job["version"]
    result: dict[str, Any] = {
        "live": attempt(client.is_server_live),
        "ready": attempt(client.is_server_ready),
        "model_ready": attempt(lambda: client.is_model_ready(model, version)),
        "server_metadata": attempt(client.get_server_metadata),
        "model_metadata": attempt(lambda: client.get_model_metadata(model, version)),
    }

    def infer(compression: str | None) -> dict[str, Any]:
        inputs = []
        for spec in job["inputs"]:
            tensor = http.InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(array_of(spec), binary_data=binary)
            inputs.append(tensor)
        outputs = [http.InferRequestedOutput(name, binary_data=binary) for name in job["outputs"]]
        answer = client.infer(
            model, inputs, model_version=version, outputs=outputs, request_compression_algorithm=compression
        )
        return {
            name: described(answer.as_numpy(name), answer.get_output(name)["datatype"])
            for name in job["outputs"]
        }

    for compression in (None, "gzip", "deflate"):
        result[f"outputs/{compression or 'plain'}"] = attempt(lambda c=compression: infer(c))
    client.close()
    return result


async def kserve_v2(job: dict[str, Any], binary: bool) -> dict[str, Any]:
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    url, model = job["url"], job["model"]
    result: dict[str, Any] = {
        "live": await attempt_async(lambda: client.is_server_live(url)),
        "ready": await attempt_async(lambda: client.is_server_ready(url)),
        "model_ready": await attempt_async(lambda: client.is_model_ready(url, model)),
    }

    async def infer() -> dict[str, Any]:
        inputs = []
        for spec in job["inputs"]:
            tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
            # KServe's client refuses FP16 in JSON ("use the binary data format"): binary, whatever the mode.
            tensor.set_data_from_numpy(array_of(spec), binary_data=binary or spec["datatype"] == "FP16")
            inputs.append(tensor)
        outputs = [RequestedOutput(name, parameters={"binary_data": binary}) for name in job["outputs"]]
        request = InferRequest(model, inputs, request_outputs=outputs)
        answer = await client.infer(url, request, model_name=model)
        return {out.name: described(out.as_numpy(), out.datatype) for out in answer.outputs}

    result["outputs/plain"] = await attempt_async(infer)
    await client.close()
    return result


async def kserve_v1(job: dict[str, Any]) -> dict[str, Any]:
    from kserve import InferenceRESTClient, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    url, model = job["url"], job["model"]
    result: dict[str, Any] = {
        "live": await attempt_async(lambda: client.is_server_live(url)),
        "model_ready": await attempt_async(lambda: client.is_model_ready(url, model)),
    }
    (spec,) = job["inputs"]
    instances = array_of(spec).tolist()
    result["predictions"] = await attempt_async(
        lambda: client.infer(url, {"instances": instances}, model_name=model)
    )
    await client.close()
    return result


def main() -> None:
    job = json.load(sys.stdin)
    suite = job["suite"]
    if suite in ("triton-json", "triton-binary"):
        result = triton(job, binary=suite == "triton-binary")
    elif suite in ("kserve-v2-json", "kserve-v2-binary"):
        result = asyncio.run(kserve_v2(job, binary=suite == "kserve-v2-binary"))
    elif suite == "kserve-v1":
        result = asyncio.run(kserve_v1(job))
    else:
        raise SystemExit(f"unknown suite {suite!r}")
    json.dump(result, sys.stdout, allow_nan=True)


if __name__ == "__main__":
    main()
