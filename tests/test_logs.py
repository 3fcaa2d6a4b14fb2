"""Log lines: JSON fields, record coordinates, and secrets redacted from every line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from connector.config import parse_config
from connector.errors import Coordinates
from connector.logs import REDACT, Redactor, coordinates, secrets_of, set_connector, setup_logging

SASL_PASSWORD = "sasl-Pa55word!"
KEY_PASSWORD = "tls-key-pw-77"
DB_PASSWORD = "pg%40secret"  # percent-encoded '@' in the DSN
SR_PASSWORD = "registry-pw-9"


def config_with_secrets() -> dict[str, object]:
    return {
        "kafka": {
            "bootstrap_servers": "b:9093",
            "security": {
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "password": SASL_PASSWORD},
                "tls": {"cert_file": "c.pem", "key_file": "k.pem", "key_password": KEY_PASSWORD},
            },
        },
        "schemas": {"dir": "avro"},
        "schema_registry": {
            "url": "http://r:8081",
            "basic_auth_user_info": f"reg-user:{SR_PASSWORD}",
        },
        "routes": [{"topic": "t", "type": "Measurement"}],
        "backend": {"type": "postgres", "dsn": f"postgresql://ingest:{DB_PASSWORD}@db:5432/sync"},
    }


def test_secrets_of_a_config() -> None:
    config = parse_config(config_with_secrets(), "p.yaml", env={})
    found = set(secrets_of(config))
    assert {SASL_PASSWORD, KEY_PASSWORD, DB_PASSWORD, "pg@secret", SR_PASSWORD} <= found
    assert "ingest" not in found and "u" not in found


def test_secrets_in_client_properties_and_plugin_settings() -> None:
    found = set(
        secrets_of({"properties": {"sasl.password": "p1", "sasl.jaas.config": "j2"}, "token": "t3"})
    )
    assert found >= {"p1", "j2", "t3"}


def test_redactor_masks_known_secrets_and_url_passwords() -> None:
    redact = Redactor()
    redact.add(["abc", "abcdef"])
    assert redact("x abcdef y abc") == "x *** y ***"
    assert redact("cannot connect to mongodb://app:hunter2@h:27017/") == (
        "cannot connect to mongodb://app:***@h:27017/"
    )
    assert redact("no secret here") == "no secret here"


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    yield capsys
    logging.getLogger().handlers.clear()


def test_json_lines_carry_the_fields(captured: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    set_connector("group-a")
    REDACT.add(secrets_of(parse_config(config_with_secrets(), "p.yaml", env={})))
    log = logging.getLogger("connector.pipeline")
    where = Coordinates("measurements", 2, 41)
    log.error("bad record with %s", SASL_PASSWORD, extra=coordinates(where))
    log.info("plain line")
    try:
        raise RuntimeError(f"dsn postgresql://ingest:{DB_PASSWORD}@db/x")
    except RuntimeError:
        log.exception("failed")
    lines = [json.loads(line) for line in captured.readouterr().err.splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["level"] == "ERROR"
    assert first["logger"] == "connector.pipeline"
    assert first["message"] == "bad record with ***"
    assert (first["topic"], first["partition"], first["offset"]) == ("measurements", 2, 41)
    assert first["connector"] == "group-a"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "topic" not in lines[1]
    assert "RuntimeError" in lines[2]["exception"]
    text = json.dumps(lines)
    for secret in (SASL_PASSWORD, DB_PASSWORD):
        assert secret not in text


def test_text_lines_are_redacted_too(captured: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "text")
    REDACT.add([KEY_PASSWORD])
    logging.getLogger("aiokafka").warning("key password %s rejected", KEY_PASSWORD)
    err = captured.readouterr().err
    assert "WARNING aiokafka: key password *** rejected" in err
    assert KEY_PASSWORD not in err


def test_error_lines_of_the_cli_are_redacted(captured: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from connector.cli import _report

    REDACT.add(["cli-secret-42"])
    _report(
        Namespace(log_format="text"), ["login cli-secret-42 refused by postgresql://u:pw9@h/db"]
    )
    assert captured.readouterr().err == "error: login *** refused by postgresql://u:***@h/db\n"
