"""Connect-shaped configs: flat keys, validation by the pipeline models, secrets redacted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from connector.connect_config import (
    HIDDEN,
    SecretFilter,
    flatten,
    normalize,
    pipeline_of,
    redact,
    secrets_of,
    unflatten,
)
from connector.errors import ConfigError
from tests.fakes import AVRO_DIR

NESTED = {
    "kafka": {
        "bootstrap_servers": "127.0.0.1:9092",
        "group_id": "g",
        "properties": {"session.timeout.ms": 6000, "client.id": "x"},
        "security": {
            "protocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "PLAIN", "username": "u", "password": "s3cr3t-sasl"},
        },
    },
    "schemas": {"dir": str(AVRO_DIR)},
    "routes": [{"topic": "a", "type": "Measurement"}, {"topic": "b", "type": "Measurement"}],
    "backend": {"type": "postgres", "dsn": "postgresql://ingest:pg-pass-1@db:5432/sync"},
    "batching": {"max_records": 100},
    "commit": {"interval_ms": 50},
}


def test_flatten_and_unflatten_round_trip_with_client_properties() -> None:
    flat = flatten(NESTED)
    assert flat["kafka.properties.session.timeout.ms"] == "6000"
    assert flat["routes.1.topic"] == "b"
    assert flat["batching.max_records"] == "100"
    tree = unflatten(flat)
    assert tree["kafka"]["properties"] == {"session.timeout.ms": "6000", "client.id": "x"}
    assert tree["routes"] == [
        {"topic": "a", "type": "Measurement"},
        {"topic": "b", "type": "Measurement"},
    ]


def test_flat_strings_validate_into_the_same_pipeline_as_the_nested_file() -> None:
    config = pipeline_of("c", flatten(NESTED), Path("/"), env={})
    assert config.batching.max_records == 100 and config.commit.interval_ms == 50
    assert config.kafka.properties == {"session.timeout.ms": "6000", "client.id": "x"}
    assert [r.topic for r in config.routes] == ["a", "b"]


def test_nested_json_values_are_accepted_as_well() -> None:
    flat = normalize({"name": "c", "kafka": NESTED["kafka"], "routes.0.topic": "a"})
    assert flat["kafka.group_id"] == "g" and flat["routes.0.topic"] == "a"


def test_problems_name_the_flat_key() -> None:
    flat = {**flatten(NESTED), "batching.max_recordz": "5", "routes.0.format": ""}
    with pytest.raises(ConfigError) as info:
        pipeline_of("c", flat, Path("/"), env={})
    text = "\n".join(info.value.problems)
    assert "batching.max_recordz: unknown key" in text
    assert "routes.0.format:" in text


def test_connect_keys_are_checked() -> None:
    flat = {**flatten(NESTED), "connector.class": "FileStreamSink", "tasks.max": "0"}
    with pytest.raises(ConfigError) as info:
        pipeline_of("c", {**flat, "name": "other"}, Path("/"), env={})
    problems = info.value.problems
    assert any(p.startswith("connector.class: 'FileStreamSink'") for p in problems)
    assert any(p.startswith("tasks.max:") for p in problems)
    assert any(p.startswith("name: 'other' differs") for p in problems)


def test_redaction_hides_passwords_tokens_and_url_passwords() -> None:
    flat = {
        **flatten(NESTED),
        "schema_registry.basic_auth_user_info": "sr:sr-pass",
        "kafka.security.tls.key_password": "tls-pass",
        "kafka.properties.sasl.jaas.config": "org... password='x';",
        "backend.uri": "mongodb://user:mongo-pass@h/",
    }
    shown = redact(flat)
    text = repr(shown)
    for secret in ("s3cr3t-sasl", "pg-pass-1", "sr-pass", "tls-pass", "mongo-pass", "password='x'"):
        assert secret not in text
    assert shown["kafka.security.sasl.password"] == HIDDEN
    assert shown["backend.dsn"] == f"postgresql://ingest:{HIDDEN}@db:5432/sync"
    assert shown["kafka.security.sasl.username"] == "u"


def test_the_secret_filter_hides_secret_values_in_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = pipeline_of("c", flatten(NESTED), Path("/"), env={})
    assert {"s3cr3t-sasl", "pg-pass-1"} <= secrets_of(config)
    hide = SecretFilter()
    hide.secrets = secrets_of(config)
    logger = logging.getLogger("test.secret")
    caplog.handler.addFilter(hide)
    try:
        logger.warning("connecting with %s to %s", "s3cr3t-sasl", config.backend.dsn)  # type: ignore[union-attr]
        try:
            raise RuntimeError("refused: password s3cr3t-sasl")
        except RuntimeError:
            logger.exception("failed")
    finally:
        caplog.handler.removeFilter(hide)
    assert "s3cr3t-sasl" not in caplog.text and "pg-pass-1" not in caplog.text
    assert f"connecting with {HIDDEN} to postgresql://ingest:{HIDDEN}@db" in caplog.text
    assert f"RuntimeError: refused: password {HIDDEN}" in caplog.text
