"""What the API server would do with a ModelDeployment on create, without an API server.

The CRD's openAPIV3Schema is applied the way the API server applies it: its defaults first (nested ones
too), then the structural schema (jsonschema, which reads the same keywords) and every CEL rule
(`x-kubernetes-validations`, with cel-python) on the defaulted object. Not emulated, so a test that needs
them goes to the cluster (tests/operator/test_validation_cluster.py): transition rules (they name
`oldSelf` and run only on update), the pruning of unknown fields, and the `format` of integers
(int32/int64 ranges). Kubernetes' own CEL functions that the CRD uses (`isQuantity`, `quantity`,
`compareTo`) read quantities with the operator's own parser, which follows apimachinery's grammar.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import celpy
import jsonschema
from modelship.operator.quantities import parse_quantity

from tests.operator.test_crd import crd

Schema = Mapping[str, Any]


@functools.cache
def model_deployment_schema() -> Schema:
    schema: Schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def defaulted(body: Mapping[str, Any], schema: Schema | None = None) -> dict[str, Any]:
    """The body with the schema's defaults filled in, as the API server stores it."""
    value = copy.deepcopy(dict(body))
    _default(schema or model_deployment_schema(), value)
    return value


def _default(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for name, item in value.items():
                if name not in (schema.get("properties") or {}):
                    _default(extra, item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def refusals(body: Mapping[str, Any], schema: Schema | None = None) -> list[str]:
    """Why the API server would refuse to create this (already defaulted) body; [] when it would not."""
    schema = schema or model_deployment_schema()
    found = [
        f"{_path(error.absolute_path)}: {error.message}"
        for error in jsonschema.Draft4Validator(schema).iter_errors(body)
    ]
    found += [f"{path}: {message}" for path, message in _rule_failures(schema, body, ())]
    return found


def rules(schema: Schema | None = None) -> Iterator[Mapping[str, Any]]:
    """Every CEL rule of the schema (`x-kubernetes-validations` entries), wherever it stands."""
    node = schema or model_deployment_schema()
    yield from node.get("x-kubernetes-validations") or ()
    subs = [*(node.get("properties") or {}).values(), *(node.get("anyOf") or ())]
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), Mapping):
            subs.append(node[key])
    for sub in subs:
        yield from rules(sub)


def _path(parts: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts) or "."


def _rule_failures(schema: Schema, value: Any, path: tuple[Any, ...]) -> Iterator[tuple[str, str]]:
    for rule in schema.get("x-kubernetes-validations") or ():
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: the API server runs it on update only
        ok, error = _holds(rule["rule"], value)
        if not ok:
            yield _path(path), (rule.get("message") or f"failed rule: {rule['rule']}") + error
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = properties.get(name, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield from _rule_failures(sub, item, (*path, name))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _rule_failures(schema["items"], item, (*path, index))


def _holds(rule: str, value: Any) -> tuple[bool, str]:
    """Whether the rule is true of `self`; a runtime error counts as false, as on the API server."""
    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError as exc:
        return False, f" ({exc.args[0]})"
    return result is True or result == celpy.celtypes.BoolType(True), ""


# ---------------------------------------------------------------------------------------------
# Kubernetes' CEL library, the part the CRD uses


def _quantity_value(text: str) -> Decimal | None:
    try:
        return parse_quantity(text)
    except ValueError:
        return None


def _is_quantity(text: Any) -> celpy.celtypes.BoolType:
    return celpy.celtypes.BoolType(_quantity_value(str(text)) is not None)


def _quantity(text: Any) -> Decimal:
    value = _quantity_value(str(text))
    if value is None:
        raise ValueError(f"quantities: invalid quantity {text!r}")
    return value


def _compare_to(a: Decimal, b: Decimal) -> celpy.celtypes.IntType:
    return celpy.celtypes.IntType((a > b) - (a < b))


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "isQuantity": _is_quantity,
    "quantity": _quantity,
    "compareTo": _compare_to,
}


@functools.cache
def _program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=_FUNCTIONS)
