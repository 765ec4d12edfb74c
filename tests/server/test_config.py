"""Settings from flags and the MODELSHIP_* environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelship.server.config import (
    DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    DEFAULT_MAX_CONNECTION_REQUESTS,
    ConfigError,
    default_memory_budgets,
    default_threads,
    load_settings,
    memory_limit,
    parse_cpu_max,
    parse_memory_max,
)

BASE = {"MODELSHIP_MODEL_NAME": "m", "MODELSHIP_MODEL_URI": "/models/m.onnx"}


def test_environment_fills_every_setting() -> None:
    env = {
        **BASE,
        "MODELSHIP_MODEL_VERSION": "7",
        "MODELSHIP_MODEL_SHA256": "AB" * 32,
        "MODELSHIP_REVISION": "r2",
        "MODELSHIP_THREADS": "3",
        "MODELSHIP_MAX_BATCH_SIZE": "16",
        "MODELSHIP_MAX_DELAY_MS": "2.5",
        "MODELSHIP_PORT": "9000",
        "MODELSHIP_AUTH_TOKEN_FILE": "/secrets/token",
        "MODELSHIP_CACHE_DIR": "/models",
        "MODELSHIP_TERMINATION_LOG": "/tmp/t",
        "MODELSHIP_MAX_MODEL_BYTES": "1000",
        "MODELSHIP_MAX_REQUEST_BYTES": "2000",
        "MODELSHIP_GRACE_PERIOD_SECONDS": "5",
        "MODELSHIP_FETCH_ATTEMPTS": "2",
        "MODELSHIP_MAX_CONNECTION_REQUESTS": "50",
        "MODELSHIP_MAX_CONNECTION_AGE_SECONDS": "2.5",
    }
    s = load_settings([], env)
    assert (s.model_name, s.model_version, s.model_uri) == ("m", "7", "/models/m.onnx")
    assert s.model_sha256 == "ab" * 32  # compared in lower case
    assert (s.revision, s.threads, s.max_batch_size, s.max_delay_ms) == ("r2", 3, 16, 2.5)
    assert (s.port, s.auth_token_file, s.cache_dir, s.termination_log) == (
        9000,
        "/secrets/token",
        "/models",
        "/tmp/t",
    )
    assert (s.max_model_bytes, s.max_request_bytes, s.grace_period_seconds, s.fetch_attempts) == (
        1000,
        2000,
        5,
        2,
    )
    assert (s.max_connection_requests, s.max_connection_age_seconds) == (50, 2.5)
    assert s.command == "serve" and s.batching_enabled


def test_connections_are_bounded_by_default_and_zero_turns_a_bound_off() -> None:
    s = load_settings([], BASE)
    assert (s.max_connection_requests, s.max_connection_age_seconds) == (
        DEFAULT_MAX_CONNECTION_REQUESTS,
        DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    )
    assert DEFAULT_MAX_CONNECTION_REQUESTS > 0 and DEFAULT_MAX_CONNECTION_AGE_SECONDS > 0
    off = {**BASE, "MODELSHIP_MAX_CONNECTION_REQUESTS": "0", "MODELSHIP_MAX_CONNECTION_AGE_SECONDS": "0"}
    s = load_settings([], off)
    assert (s.max_connection_requests, s.max_connection_age_seconds) == (0, 0.0)


def test_flags_win_over_the_environment() -> None:
    s = load_settings(["fetch", "--model-name", "other", "--max-batch-size", "1"], BASE)
    assert s.command == "fetch" and s.model_name == "other" and s.model_uri == "/models/m.onnx"
    assert not s.batching_enabled


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MODELSHIP_MODEL_URI": "/m.onnx"}, "model_name is required"),
        ({**BASE, "MODELSHIP_THREADS": "0"}, "threads must be at least 1"),
        ({**BASE, "MODELSHIP_PORT": "http"}, "port must be an integer"),
        ({**BASE, "MODELSHIP_MAX_DELAY_MS": "-1"}, "max_delay_ms"),
        ({**BASE, "MODELSHIP_MODEL_SHA256": "abc"}, "64 hex digits"),
        ({**BASE, "MODELSHIP_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        ({**BASE, "MODELSHIP_MAX_CONNECTION_REQUESTS": "-1"}, "max_connection_requests must not be negative"),
        ({**BASE, "MODELSHIP_MAX_CONNECTION_REQUESTS": "10s"}, "max_connection_requests must be an integer"),
        ({**BASE, "MODELSHIP_MAX_CONNECTION_AGE_SECONDS": "-0.5"}, "max_connection_age_seconds must not be"),
        ({**BASE, "MODELSHIP_MAX_CONNECTION_AGE_SECONDS": "nan"}, "max_connection_age_seconds must not be"),
    ],
)
def test_bad_settings_name_themselves(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings([], env)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("junk", None)],
)
def test_cgroup_cpu_limit_rounds_up(text: str, cpus: int | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_default_threads_follow_the_cgroup_limit(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")
    assert default_threads(cpu_max) == 1
    assert default_threads(tmp_path / "missing") >= 1


MIB = 1 << 20


def test_memory_budgets_follow_the_cgroup_limit(tmp_path: Path) -> None:
    assert parse_memory_max("max\n") is None
    assert parse_memory_max("536870912\n") == 512 * MIB
    assert default_memory_budgets(512 * MIB) == (128 * MIB, 256 * MIB)
    limit_file = tmp_path / "memory.max"
    limit_file.write_text("1073741824\n")
    assert memory_limit(limit_file) == 1 << 30
    assert memory_limit(tmp_path / "absent") is None


def test_a_request_budget_set_alone_raises_the_inflight_default_with_it() -> None:
    settings = load_settings([], {**BASE, "MODELSHIP_MAX_REQUEST_MEMORY_BYTES": str(3 << 30)})
    assert settings.max_request_memory_bytes == 3 << 30
    assert settings.max_inflight_memory_bytes >= 3 << 30
    with pytest.raises(ConfigError, match="max_request_memory_bytes"):
        load_settings(
            [],
            {
                **BASE,
                "MODELSHIP_MAX_REQUEST_MEMORY_BYTES": str(2 * MIB),
                "MODELSHIP_MAX_INFLIGHT_MEMORY_BYTES": str(MIB),
            },
        )
    with pytest.raises(ConfigError, match="body_timeout_seconds"):
        load_settings([], {**BASE, "MODELSHIP_BODY_TIMEOUT_SECONDS": "0"})


def test_s3_settings_default_to_aws_and_path_style_with_an_endpoint() -> None:
    s = load_settings([], BASE)
    assert (s.s3_endpoint, s.s3_region, s.s3_addressing) == ("", "", "virtual")
    store = {
        **BASE,
        "MODELSHIP_S3_ENDPOINT": "http://s3.modelship-store.svc.cluster.local",
        "MODELSHIP_S3_REGION": "eu-west-1",
    }
    s = load_settings([], store)
    assert (s.s3_endpoint, s.s3_region, s.s3_addressing) == (
        "http://s3.modelship-store.svc.cluster.local",
        "eu-west-1",
        "path",
    )
    assert load_settings([], {**store, "MODELSHIP_S3_ADDRESSING": "virtual"}).s3_addressing == "virtual"
    assert load_settings([], {**BASE, "MODELSHIP_S3_ADDRESSING": "path"}).s3_addressing == "path"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({**BASE, "MODELSHIP_S3_ADDRESSING": "host"}, "s3_addressing must be path or virtual, got 'host'"),
        ({**BASE, "MODELSHIP_S3_ENDPOINT": "s3.example.com"}, "s3_endpoint must be an http:// or https://"),
        (
            {**BASE, "MODELSHIP_S3_ENDPOINT": "ftp://s3.example.com"},
            "s3_endpoint must be an http:// or https://",
        ),
        ({**BASE, "MODELSHIP_S3_ENDPOINT": "http://s3.example.com:port"}, "s3_endpoint has an invalid port"),
    ],
)
def test_bad_s3_settings_name_themselves(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings([], env)
