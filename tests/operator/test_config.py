import pytest
from modelship.operator.config import ConfigError, OperatorConfig


def test_defaults() -> None:
    config = OperatorConfig.from_env({})
    assert config.server_image == "modelship/server:0.1.0"
    assert config.peering_priority is None
    assert config.peering_lifetime == 60
    assert config.ignore_namespaces is None


def test_ignored_namespaces_are_one_kopf_pattern() -> None:
    config = OperatorConfig.from_env({"MODELSHIP_IGNORE_NAMESPACES": " !mst-*, mst-keep "})
    assert config.ignore_namespaces == "!mst-*, mst-keep"


def test_values_from_the_environment() -> None:
    config = OperatorConfig.from_env(
        {
            "MODELSHIP_SERVER_IMAGE": "registry.local/server:2",
            "MODELSHIP_PEERING_PRIORITY": "100",
            "MODELSHIP_PEERING_LIFETIME": "10",
            "MODELSHIP_CONCURRENCY": "4",
        }
    )
    assert (config.server_image, config.peering_priority, config.peering_lifetime, config.concurrency) == (
        "registry.local/server:2",
        100,
        10,
        4,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODELSHIP_PEERING_PRIORITY": "high"}, "expected an integer"),
        ({"MODELSHIP_CONCURRENCY": "0"}, "at least 1"),
    ],
)
def test_bad_values_are_named(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OperatorConfig.from_env(env)
