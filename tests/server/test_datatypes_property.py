"""Property: tensors of every V2 datatype, generated (extremes, NaN, infinities, signed zeros, empty
tensors, any Unicode text), sent to a real server process in JSON or in the binary extension (chosen per
tensor) and asked back in either form (per output), come back exactly as in-process onnxruntime
computes them from the same arrays; an answer all in JSON has the shape the published spec gives it."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.server import models
from tests.server.conftest import Servers
from tests.server.test_oip_spec import SPEC
from tests.server.wire import NUMPY, Tensor, outputs_of, request_body

DATATYPES = list(models.EVERY_DATATYPE)


@pytest.fixture(scope="module")
def response_schema() -> jsonschema.protocols.Validator:
    components = yaml.safe_load(SPEC.read_text())["components"]
    return jsonschema.Draft4Validator(
        {"$ref": "#/components/schemas/inference_response", "components": components}
    )


@pytest.fixture(scope="module")
def session(model_dir: Any) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "every.onnx"), providers=["CPUExecutionProvider"])


def _elements(datatype: str) -> st.SearchStrategy[Any] | None:
    if datatype == "BYTES":
        return st.text(max_size=6)
    return None  # hypothesis's own for the dtype: every value, NaN, infinities and subnormals included


@st.composite
def tensors(draw: st.DrawFn, datatype: str) -> Tensor:
    shape = draw(st.tuples(st.integers(0, 3), st.integers(0, 4)))
    array = draw(hnp.arrays(NUMPY[datatype], shape, elements=_elements(datatype)))
    return Tensor(datatype.lower(), datatype, array, binary=draw(st.booleans()))


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[Tensor], list[dict[str, Any]] | None, dict[str, Any]]:
    inputs = [draw(tensors(datatype)) for datatype in DATATYPES]
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["parameters"] = {"binary_data_output": draw(st.booleans())}
    how = draw(st.sampled_from(["all by default", "all by []", "some"]))
    if how == "all by default":
        return inputs, None, extra
    if how == "all by []":
        return inputs, [], extra
    names = draw(st.lists(st.sampled_from([f"{d.lower()}_out" for d in DATATYPES]), min_size=1, unique=True))
    outputs = [
        {"name": name, "parameters": {"binary_data": draw(st.booleans())}}
        if draw(st.booleans())
        else {"name": name}
        for name in names
    ]
    return inputs, outputs, extra


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, onnxruntime {want.shape}"
    if want.dtype.kind == "f":
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, onnxruntime {want.dtype}"
        # NaN is NaN however it travelled; every other value bit for bit, the sign of zero included.
        both_nan = np.isnan(got) & np.isnan(want)
        assert np.array_equal(
            got.view(f"u{got.itemsize}")[~both_nan], want.view(f"u{want.itemsize}")[~both_nan]
        ), f"{what}: {got!r} != {want!r}"
    elif want.dtype == object:
        assert got.tolist() == want.tolist(), f"{what}: {got!r} != {want!r}"
    else:
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, onnxruntime {want.dtype}"
        assert np.array_equal(got, want), f"{what}: {got!r} != {want!r}"


PROPERTY = settings(
    max_examples=int(os.environ.get("MODELSHIP_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(request=requests())
def test_every_datatype_comes_back_as_onnxruntime_computes_it(
    servers: Servers,
    session: ort.InferenceSession,
    response_schema: jsonschema.protocols.Validator,
    request: Any,
) -> None:
    inputs, outputs, extra = request
    body, headers = request_body(inputs, outputs, **extra)
    response = httpx.post(
        f"{servers.every.url}/v2/models/every/infer", content=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text

    feeds = {t.name: t.array for t in inputs}
    names = [o.name for o in session.get_outputs()]
    wanted = [o["name"] for o in outputs] if outputs else names
    expected = dict(zip(names, session.run(None, feeds), strict=True))
    got = outputs_of(response)
    if "inference-header-content-length" not in response.headers:
        response_schema.validate(json.loads(response.content))
    assert list(got) == wanted
    for name in wanted:
        datatype, array = got[name]
        assert datatype == name.removesuffix("_out").upper()
        _same(array, expected[name], name)
