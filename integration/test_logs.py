"""--log-format json on a real run: SASL_SSL to the broker with a password, a PostgreSQL DSN
with a password, progress lines, a record error and the shutdown. Every stderr line is a
JSON object with the documented fields, and no secret appears anywhere in the output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from integration.backends import PostgresUnderTest
from integration.kafka_broker import SaslSslKafka
from integration.support import DATA_INGEST, measurement, produce, unique, write_config

PARTITIONS = 3
PER_PARTITION = 400
BAD_PARTITION = 1
DB_PASSWORD = "db-Secret-4711"


def test_json_log_lines_carry_the_fields_and_no_secret(
    tmp_path: Path, kafka_sasl_broker: SaslSslKafka, postgres_server: Any
) -> None:
    topic, group = unique("json-logs"), unique("json-logs")
    kafka_sasl_broker.broker.create_topic(topic, partitions=PARTITIONS)
    plain = kafka_sasl_broker.broker.bootstrap_servers
    good = [(p, measurement(topic, p, i)) for i in range(PER_PARTITION) for p in range(PARTITIONS)]
    produce(plain, topic, [*good, (BAD_PARTITION, b"{not json")])

    backend = PostgresUnderTest(postgres_server)
    # The test server trusts loopback, so it accepts any password: it is there to be hidden.
    user = postgres_server.user
    dsn = postgres_server.dsn.replace(f"//{user}@", f"//{user}:{DB_PASSWORD}@")
    assert DB_PASSWORD in dsn
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka_sasl_broker.bootstrap_servers,
        group,
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        {"type": "postgres", "dsn": dsn, "schema": backend.schema},
        batching={"max_records": 50, "max_wait_ms": 20},
    )
    data = yaml.safe_load(config.read_text())
    data["kafka"]["security"] = {
        "protocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": kafka_sasl_broker.username,
            "password": "${KAFKA_TEST_PASSWORD}",
        },
        "tls": {"ca_file": str(kafka_sasl_broker.ca_file)},
    }
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    options = ["--until-caught-up", "--progress-interval", "0.1"]
    result = subprocess.run(
        [
            DATA_INGEST,
            "--log-level",
            "DEBUG",
            "--log-format",
            "json",
            "run",
            "-c",
            str(config),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "KAFKA_TEST_PASSWORD": kafka_sasl_broker.password},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (tmp_path / "stderr.jsonl").write_text(result.stderr)

    for secret in (kafka_sasl_broker.password, DB_PASSWORD):
        assert secret not in result.stdout + result.stderr

    lines = [json.loads(line) for line in result.stderr.splitlines()]
    # Every stage that logs is in the JSON stream, DEBUG lines included (the commits).
    loggers = {line["logger"] for line in lines}
    assert {"connector", "connector.progress", "connector.sources.confluent"} <= loggers, loggers
    assert any(
        line["level"] == "DEBUG" and line["message"].startswith("committed") for line in lines
    ), lines
    for line in lines:
        assert {"time", "level", "logger", "message", "connector"} <= set(line), line
        assert line["connector"] == group
        assert line["time"].endswith("Z")
    messages = [line["message"] for line in lines]
    starting = f"starting: {topic} into backend postgres as group {group} (engine confluent)"
    assert starting in messages
    assert any(m.startswith("progress: ") for m in messages)
    errors = [line for line in lines if line["message"].startswith("decode error at")]
    assert errors, messages[-5:]
    record_error = errors[0]
    assert record_error["level"] == "ERROR"
    assert record_error["topic"] == topic
    assert record_error["partition"] == BAD_PARTITION
    assert record_error["offset"] == PER_PARTITION
    assert any(m.startswith("stopped after") for m in messages)

    summary = json.loads(result.stdout)
    assert summary["error"] == record_error["message"]
    assert summary["records"] <= PARTITIONS * PER_PARTITION
