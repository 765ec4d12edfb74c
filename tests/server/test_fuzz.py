"""Property-based fuzz of the inference API over real HTTP: whatever a client sends, no 500.

Requests are drawn near the valid shape (right names, datatypes and shapes mixed with wrong ones) so
that the fuzz gets past the first checks, plus raw bytes, binary parts and V1 bodies.
"""

from __future__ import annotations

import json
import os
import string
import struct
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from modelship.server.datatypes import DTYPES

from tests.server import models
from tests.server.conftest import Servers

DATATYPES = [
    "BOOL",
    "UINT8",
    "INT8",
    "INT32",
    "INT64",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
    "fp32",
]
NAMES = [
    "x",
    "text",
    "i64",
    "i32",
    "i8",
    "u8",
    "b",
    "f16",
    "f64",
    "y",
    "swapped",
    "total",
    "",
    "é",
    "uint16",
    "bytes",
    "fp16_out",
]
MODELS = ["mlp", "dtypes", "strings", "fixed", "every"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
shapes = st.one_of(
    st.lists(st.integers(min_value=-1, max_value=5), max_size=4),
    st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=3),
    json_values,
)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(shapes)
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(NAMES) | st.text(max_size=4)),
        "datatype": draw(st.sampled_from(DATATYPES)),
        "shape": shape,
    }
    if draw(st.booleans()):
        size = 1
        if isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            for d in shape:
                size *= d
        element = draw(
            st.sampled_from([st.floats(-10, 10), st.integers(-300, 300), st.booleans(), st.text(max_size=3)])
        )
        tensor["data"] = draw(st.lists(element, min_size=size, max_size=size) if size <= 64 else json_values)
    if draw(st.booleans()):
        tensor["parameters"] = draw(
            st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-2, 64) | json_values})
            | json_values
        )
    return tensor


@st.composite
def v2_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=8) | json_values)}
    if draw(st.booleans()):
        body["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(NAMES)},
                    optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data": json_values})},
                ),
                max_size=3,
            )
            | json_values
        )
    if draw(st.booleans()):
        body["id"] = draw(json_values)
    if draw(st.booleans()):
        body["parameters"] = draw(
            st.fixed_dictionaries(
                {}, optional={"binary_data_output": json_values, "classification": json_values}
            )
        )
    return body


# The test models' inputs (tests/server/models.py): name, datatype, shape (-1: the batch dimension).
SIGNATURES: dict[str, list[tuple[str, str, list[int]]]] = {
    "mlp": [("x", "FP32", [-1, 4])],
    "dtypes": [
        ("i64", "INT64", [-1, 2]),
        ("i32", "INT32", [-1, 2]),
        ("i8", "INT8", [-1, 2]),
        ("u8", "UINT8", [-1, 2]),
        ("b", "BOOL", [-1, 2]),
        ("f16", "FP16", [-1, 2]),
        ("f64", "FP64", [-1, 2]),
    ],
    "strings": [("text", "BYTES", [-1, 2])],
    "fixed": [("x", "FP32", [2, 3])],
    "every": [(datatype.lower(), datatype, [-1, -1]) for datatype in models.EVERY_DATATYPE],
}
ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "FP32": st.floats(-1e6, 1e6, width=32),
    "FP64": st.floats(-1e300, 1e300),
    "FP16": st.floats(-1e4, 1e4, width=16),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT8": st.integers(-128, 127),
    "UINT8": st.integers(0, 255),
    "INT16": st.integers(-(2**15), 2**15 - 1),
    "UINT16": st.integers(0, 2**16 - 1),
    "UINT32": st.integers(0, 2**32 - 1),
    "UINT64": st.integers(0, 2**64 - 1),
    "BOOL": st.booleans(),
    "BYTES": st.text(max_size=6),
}


@st.composite
def near_valid_bodies(draw: st.DrawFn, model: str) -> dict[str, Any]:
    """A valid request for `model`, then up to two mutations of the kinds clients get wrong."""
    rows = draw(st.integers(0, 3))
    inputs = []
    for name, datatype, declared in SIGNATURES[model]:
        shape = [rows if d < 0 else d for d in declared]
        size = 1
        for d in shape:
            size *= d
        data = draw(st.lists(ELEMENTS[datatype], min_size=size, max_size=size))
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    body: dict[str, Any] = {"inputs": inputs, "id": draw(st.text(max_size=4))}
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from(inputs))
        mutation = draw(
            st.sampled_from(["datatype", "dim", "extra", "missing", "element", "name", "dup", "outputs"])
        )
        if mutation == "datatype":
            target["datatype"] = draw(st.sampled_from(DATATYPES))
        elif mutation == "dim" and target["shape"]:
            i = draw(st.integers(0, len(target["shape"]) - 1))
            target["shape"][i] = draw(st.integers(0, 6))
        elif mutation == "extra":
            target["data"].append(draw(scalars))
        elif mutation == "missing" and target["data"]:
            target["data"].pop()
        elif mutation == "element" and target["data"]:
            target["data"][0] = draw(scalars | json_values)
        elif mutation == "name":
            target["name"] = draw(st.sampled_from(NAMES))
        elif mutation == "dup":
            inputs.append(dict(target))
        elif mutation == "outputs":
            body["outputs"] = [
                {"name": draw(st.sampled_from(NAMES)), "parameters": {"binary_data": draw(st.booleans())}}
            ]
    return body


def _dumps(body: Any) -> bytes:
    # The standard library, not orjson: the bodies hold integers wider than 64 bits on purpose.
    return json.dumps(body).encode()


def _check(response: httpx.Response) -> None:
    event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics shows how deep the fuzz got
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text)
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)
    elif "inference-header-content-length" in response.headers:
        length = int(response.headers["inference-header-content-length"])
        assert isinstance(orjson.loads(response.content[:length])["outputs"], list)
    else:
        response.json()


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    return httpx.Client(timeout=30)


def _url(servers: Servers, model: str) -> str:
    return getattr(servers, model).url


# MODELSHIP_FUZZ_EXAMPLES=5000 for a longer hunt than CI's.
FUZZ = settings(
    max_examples=int(os.environ.get("MODELSHIP_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data(), versioned=st.booleans(), binary_output=st.booleans())
def test_near_valid_v2_requests_never_get_a_500(
    servers: Servers, client: httpx.Client, data: st.DataObject, versioned: bool, binary_output: bool
) -> None:
    model = data.draw(st.sampled_from(MODELS))
    body = data.draw(near_valid_bodies(model))
    body["parameters"] = {"binary_data_output": binary_output}
    path = f"/v2/models/{model}/versions/3/infer" if versioned else f"/v2/models/{model}/infer"
    _check(client.post(_url(servers, model) + path, content=_dumps(body)))


@FUZZ
@given(model=st.sampled_from(MODELS), body=v2_bodies())
def test_v2_json_requests_never_get_a_500(
    servers: Servers, client: httpx.Client, model: str, body: dict[str, Any]
) -> None:
    _check(client.post(f"{_url(servers, model)}/v2/models/{model}/infer", content=_dumps(body)))


def _to_binary(tensor: dict[str, Any]) -> bytes | None:
    """The tensor's data in the binary extension's encoding, or None if its data does not convert."""
    data = tensor.get("data")
    if not isinstance(data, list):
        return None
    try:
        if tensor["datatype"] == "BYTES":
            raw = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in data)
        else:
            with np.errstate(all="ignore"):  # a float too big for FP16 becomes inf, as a client's would
                raw = np.array(data, dtype=DTYPES[tensor["datatype"]]).tobytes()
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return None
    del tensor["data"]
    tensor["parameters"] = {"binary_data_size": len(raw)}
    return raw


@FUZZ
@given(data=st.data(), cut=st.integers(-3, 3))
def test_near_valid_binary_requests_never_get_a_500(
    servers: Servers, client: httpx.Client, data: st.DataObject, cut: int
) -> None:
    model = data.draw(st.sampled_from(MODELS))
    body = data.draw(near_valid_bodies(model))
    chunks = []
    for tensor in body["inputs"]:
        if data.draw(st.booleans()):
            raw = _to_binary(tensor)
            if raw is not None:
                chunks.append(raw)
    binary = b"".join(chunks)
    binary = binary[:cut] if cut < 0 else binary + bytes(cut)  # a few bytes missing or too many
    head = _dumps(body)
    headers = {"Inference-Header-Content-Length": str(len(head))}
    _check(
        client.post(f"{_url(servers, model)}/v2/models/{model}/infer", content=head + binary, headers=headers)
    )


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    body=v2_bodies(),
    binary=st.binary(max_size=80),
    header=st.one_of(
        st.none(),
        st.integers(-5, 4000).map(str),
        st.text(string.ascii_letters + string.digits + "-.", max_size=4),
    ),
)
def test_binary_requests_never_get_a_500(
    servers: Servers,
    client: httpx.Client,
    model: str,
    body: dict[str, Any],
    binary: bytes,
    header: str | None,
) -> None:
    head = _dumps(body)
    headers = {"Inference-Header-Content-Length": header if header is not None else str(len(head))}
    _check(
        client.post(f"{_url(servers, model)}/v2/models/{model}/infer", content=head + binary, headers=headers)
    )


@FUZZ
@given(model=st.sampled_from(MODELS), raw=st.binary(max_size=200))
def test_raw_bytes_never_get_a_500(servers: Servers, client: httpx.Client, model: str, raw: bytes) -> None:
    url = _url(servers, model)
    _check(client.post(f"{url}/v2/models/{model}/infer", content=raw))
    _check(client.post(f"{url}/v1/models/{model}:predict", content=raw))


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    instances=st.lists(
        st.lists(st.floats(-5, 5) | st.integers(-5, 5) | st.text(max_size=2), min_size=1, max_size=5)
        | st.dictionaries(st.sampled_from(NAMES), json_values, max_size=3)
        | json_values,
        max_size=4,
    ),
)
def test_v1_requests_never_get_a_500(
    servers: Servers, client: httpx.Client, model: str, instances: Any
) -> None:
    url = _url(servers, model)
    _check(client.post(f"{url}/v1/models/{model}:predict", content=_dumps({"instances": instances})))
