from decimal import Decimal

import pytest
from modelship.operator.quantities import cpu_threads, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("0.5", Decimal("0.5")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("1024Mi", Decimal(2**30)),
        ("1e3", Decimal(1000)),
        ("1k", Decimal(1000)),
        ("100u", Decimal("0.0001")),
    ],
)
def test_parses_the_forms_kubernetes_accepts(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_spellings_the_api_server_rewrites_compare_equal() -> None:
    assert parse_quantity("0.5") == parse_quantity("500m")
    assert parse_quantity("1024Mi") == parse_quantity("1Gi")


@pytest.mark.parametrize("text", ["lots", "1.2.3", "5 Gi", "", "Gi", True])
def test_rejects_what_kubernetes_rejects(text: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_quantity(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("resources", "threads"),
    [
        ({"limits": {"cpu": "2500m"}, "requests": {"cpu": "1"}}, 2),
        ({"requests": {"cpu": "4"}}, 4),
        ({"requests": {"cpu": "100m"}}, 1),
        ({"requests": {"memory": "1Gi"}}, None),
        ({}, None),
    ],
)
def test_threads_follow_the_cpu_limit_then_the_request(resources: dict, threads: int | None) -> None:
    assert cpu_threads(resources) == threads
