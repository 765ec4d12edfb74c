"""The Open Inference Protocol's published REST spec drives schemathesis against a real server process:
whatever it generates, valid or not, the server never answers 5xx, refuses what the spec refuses with a
4xx, and what it answers in JSON has the spec's shape.

The spec is `tests/server/oip/open_inference_rest.yaml`, kserve/open-inference-protocol's
`specification/protocol/open_inference_rest.yaml` at commit 18d5991, unchanged. It is adapted in memory:
- its `${MODEL_NAME}` path templates are not OpenAPI's; they become `{MODEL_NAME}`;
- the protocol's text makes the version optional (`v2/models/${MODEL_NAME}[/versions/${MODEL_VERSION}]`),
  the YAML lists only the versioned paths: the unversioned ones are added;
- for valid (positive) cases, names are narrowed to the model under test (its name and version, its
  inputs and outputs, the protocol's datatypes), so generation gets past the first checks;
  invalid (negative) cases stay free.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from tests.server import models
from tests.server.conftest import ServerProcess, Servers

SPEC = Path(__file__).parent / "oip" / "open_inference_rest.yaml"
DATATYPES = [*models.EVERY_DATATYPE]
CHECKS = [not_a_server_error, negative_data_rejection, response_schema_conformance, content_type_conformance]


def adapted_spec(model: str, version: str, inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        path = path.replace("${", "{")
        paths[path] = item
        if "/versions/{MODEL_VERSION}" in path:
            unversioned = copy.deepcopy(item)
            unversioned["parameters"] = [p for p in item["parameters"] if p["name"] != "MODEL_VERSION"]
            for operation in unversioned.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] += "-unversioned"
            paths[path.replace("/versions/{MODEL_VERSION}", "")] = unversioned
    for item in paths.values():
        for parameter in item.get("parameters", []):
            parameter["schema"]["enum"] = [model if parameter["name"] == "MODEL_NAME" else version]
    schemas = spec["components"]["schemas"]
    schemas["request_input"]["properties"]["name"]["enum"] = inputs
    schemas["request_input"]["properties"]["datatype"]["enum"] = DATATYPES
    schemas["request_output"]["properties"]["name"]["enum"] = outputs
    spec["paths"] = paths
    return spec


OIP = settings(
    max_examples=int(os.environ.get("MODELSHIP_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def http() -> requests.Session:
    return requests.Session()


MODELS = {
    # name -> (inputs, outputs)
    "mlp": (["x"], ["y"]),
    "every": ([d.lower() for d in DATATYPES], [f"{d.lower()}_out" for d in DATATYPES]),
}


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("model", sorted(MODELS))
@OIP
@given(data=st.data())
def test_what_the_published_spec_generates_never_gets_a_5xx(
    servers: Servers, http: requests.Session, model: str, mode: str, data: st.DataObject
) -> None:
    server: ServerProcess = getattr(servers, model)
    case = data.draw(_strategy(model, mode))
    response = case.call_and_validate(base_url=server.url, session=http, checks=CHECKS, timeout=30)
    event(f"{case.method} {case.path}: {response.status_code}")  # --hypothesis-show-statistics


@functools.cache
def _strategy(model: str, mode: str) -> st.SearchStrategy[Any]:
    schema = schemathesis.openapi.from_dict(adapted_spec(model, "3", *MODELS[model]))
    generation = (
        schemathesis.GenerationMode.POSITIVE if mode == "positive" else schemathesis.GenerationMode.NEGATIVE
    )
    return schema.as_strategy(generation_mode=generation)
