"""errors.tolerance: all end to end: the exact dead-letter record of every error kind, a
dead-letter topic that is unavailable, and the circuit breaker. Real broker, real backends,
the real CLI process."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from integration.backends import BackendUnderTest
from integration.kafka_broker import create_topic
from integration.poison import RECENT_MS, Out, Read, produce_records, read_topic
from integration.support import (
    committed_offsets,
    kill,
    measurement,
    measurement_id,
    run_connector,
    sqlite_rows,
    start_connector,
    summary_of,
    unique,
    write_config,
)

ENGINES = pytest.mark.parametrize("engine", ["confluent", "aiokafka"])
T0 = RECENT_MS
BIG_TOPIC = {"max.message.bytes": "40000000"}
BACKEND_CLASS = {
    "sqlite": "connector.backends.sqlite.SqliteBackend",
    "postgres": "connector.backends.postgres.PostgresBackend",
    "mongodb": "connector.backends.mongodb.MongoBackend",
}


def errors_section(dlq_topic: str, **extra: Any) -> dict[str, Any]:
    return {
        "tolerance": "all",
        "conflict": "dlq",
        "dead_letter_queue": {"topic": dlq_topic, "delivery_timeout_ms": 2000},
        **extra,
    }


def rejected_value(backend: str, topic: str) -> tuple[bytes, str] | None:
    """A record the backend refuses, with the start of its reason; None for SQLite, which
    stores every document that fits the type."""
    document = json.loads(measurement(topic, 0, 7))
    if backend == "postgres":
        document["sensor"] = "sensor-\u0000"
        return json.dumps(document).encode(), "PostgreSQL refused it: "
    if backend == "mongodb":
        document["sensor"] = "x" * 17_000_000  # over MongoDB's 16 MiB document limit
        return json.dumps(document).encode(), "document cannot be stored: the document is "
    return None


@ENGINES
def test_every_error_kind_gives_its_exact_dead_letter_record(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest, engine: str
) -> None:
    backend = backend_under_test.name
    topic, dlq, group = unique("measurements"), unique("dlq"), unique("group")
    create_topic(kafka_bootstrap, topic, 2, config=BIG_TOPIC)
    create_topic(kafka_bootstrap, dlq, 1, config=BIG_TOPIC)
    first = json.loads(measurement(topic, 0, 5))
    conflicting = json.dumps({**first, "value": -1.0}).encode()
    rejected = rejected_value(backend, topic)
    good = {0, 2, 5, 8}
    p0 = [
        measurement(topic, 0, 0),
        b'{"_id": "broken", "value": 1.',
        measurement(topic, 0, 2),
        json.dumps({**json.loads(measurement(topic, 0, 3)), "value": "hot"}).encode(),
        None,  # a tombstone on an asymmetric route
        measurement(topic, 0, 5),
        conflicting,  # the _id of offset 5 with another document
        rejected[0] if rejected else measurement(topic, 0, 7),
        measurement(topic, 0, 8),
    ]
    if rejected is None:
        good.add(7)
    records = [
        Out(0, value, f"k{i}".encode(), [("trace", f"t{i}".encode()), ("empty", b"")], T0 + i)
        for i, value in enumerate(p0)
    ] + [Out(1, measurement(topic, 1, i), None, [], T0 + 100 + i) for i in range(5)]
    produce_records(kafka_bootstrap, topic, records)
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka_bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        backend_under_test.section(),
        engine=engine,
        errors=errors_section(dlq),
    )

    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    poison = [1, 3, 4, 6] + ([] if rejected is None else [7])
    letters = read_topic(kafka_bootstrap, dlq, at_least=len(poison))
    assert summary_of(result.stdout)["dead-lettered"] == str(len(poison))
    assert [origin_offset(r) for r in letters] == poison  # one partition: in order

    def expected(offset: int, stage: str, executing: str, kind: str, message: str) -> None:
        letter = next(r for r in letters if origin_offset(r) == offset)
        original = records[offset]
        assert (letter.key, letter.value, letter.timestamp_ms) == (
            original.key,
            original.value,
            original.timestamp_ms,
        )
        context = [
            ("__connect.errors.topic", topic.encode()),
            ("__connect.errors.partition", b"0"),
            ("__connect.errors.offset", str(offset).encode()),
            ("__connect.errors.connector.name", group.encode()),
            ("__connect.errors.task.id", b"0"),
            ("__connect.errors.stage", stage.encode()),
            ("__connect.errors.class.name", executing.encode()),
            ("__connect.errors.exception.class.name", b"connector.errors.RecordError"),
        ]
        headers = letter.headers
        assert headers[: len(original.headers)] == original.headers
        rest = headers[len(original.headers) :]
        assert rest[: len(context)] == context
        (name, text), *ours = rest[len(context) :]
        assert name == "__connect.errors.exception.message"
        assert text is not None
        assert text.decode().startswith(
            f"{kind} error at topic '{topic}' partition 0 offset {offset}: {message}"
        ), text.decode()[:300]
        assert ours == [
            ("__data_ingest.error.kind", kind.encode()),
            ("__data_ingest.object.type", b"Measurement"),
        ]

    decoder = "connector.formats.json_format.JsonDecoder"
    expected(
        1,
        "VALUE_CONVERTER",
        decoder,
        "decode",
        "value is not valid JSON: Expecting ',' delimiter at line 1 column 29",
    )
    expected(3, "VALUE_CONVERTER", decoder, "schema-mismatch", "does not fit object type")
    expected(
        4,
        "TRANSFORMATION",
        "connector.mapping.Mapper",
        "rule-violation",
        "tombstone (null value) on a route of asymmetric type Measurement",
    )
    expected(6, "TASK_PUT", BACKEND_CLASS[backend], "conflict", "")
    if rejected is not None:
        expected(
            7,
            "TASK_PUT",
            BACKEND_CLASS[backend],
            "backend-rejection",
            f"the backend rejected Measurement _id {json.loads(rejected[0])['_id']}: "
            + rejected[1],
        )

    ids = backend_under_test.ids("Measurement")
    assert sorted(ids) == sorted(
        [measurement_id(topic, 0, i) for i in good]
        + [measurement_id(topic, 1, i) for i in range(5)]
    )
    assert committed_offsets(kafka_bootstrap, group, topic, 2) == {0: 9, 1: 5}

    again = run_connector(config)  # nothing new: nothing dead-lettered twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(again.stdout)["records"] == "0"
    assert len(read_topic(kafka_bootstrap, dlq, at_least=len(poison))) == len(poison)


def origin_offset(record: Read) -> int:
    value = dict(record.headers)["__connect.errors.offset"]
    assert value is not None
    return int(value)


@ENGINES
def test_an_unavailable_dead_letter_topic_is_retried_and_nothing_is_committed_past_it(
    tmp_path: Path, kafka_bootstrap: str, engine: str
) -> None:
    topic, dlq, group = unique("measurements"), unique("dlq"), unique("group")
    create_topic(kafka_bootstrap, topic, 1)
    create_topic(kafka_bootstrap, dlq, 1)
    values = [measurement(topic, 0, i) for i in range(300)]
    values[120] = b"not json"
    produce_records(kafka_bootstrap, topic, [Out(0, v) for v in values[:120]])
    config = sqlite_config(
        tmp_path,
        kafka_bootstrap,
        group,
        topic,
        engine=engine,
        errors=errors_section(dlq),
        retry={"initial_backoff_ms": 200, "max_backoff_ms": 1000},
    )
    log = tmp_path / "connector.log"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

    process = start_connector(config, log=log)
    try:
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 120}, "120")
        admin.delete_topics([dlq])[dlq].result(timeout=30)  # the dead-letter topic goes away
        produce_records(kafka_bootstrap, topic, [Out(0, v) for v in values[120:]])
        wait_for(lambda: "dead-letter produce failed (attempt 3)" in log.read_text(), "retries")
        assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 120}
        create_topic(kafka_bootstrap, dlq, 1)  # it is back
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 300}, "300")
        kill(process, signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            kill(process, signal.SIGKILL)
            process.wait(10)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert summary_of(stdout)["dead-lettered"] == "1"
    assert [origin_offset(r) for r in read_topic(kafka_bootstrap, dlq, at_least=1)] == [120]
    assert sorted(backend_ids(tmp_path)) == sorted(
        measurement_id(topic, 0, i) for i in range(300) if i != 120
    )


def sqlite_config(tmp_path: Path, bootstrap: str, group: str, topic: str, **sections: Any) -> Path:
    """A pipeline file: ``topic`` as JSON Measurements into ``tmp_path/ingest.db``."""
    return write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        {"type": "sqlite", "path": str(tmp_path / "ingest.db")},
        **sections,
    )


def backend_ids(tmp_path: Path) -> list[str]:
    return [row[0] for row in sqlite_rows(tmp_path / "ingest.db", "Measurement")]


def test_circuit_breaker_stops_a_run_where_every_record_fails(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic, dlq, group = unique("measurements"), unique("dlq"), unique("group")
    create_topic(kafka_bootstrap, topic, 2)
    produce_records(kafka_bootstrap, topic, [Out(i % 2, b"{broken") for i in range(20_000)])
    # The breaker's defaults: ratio 0.5 over 1000 records.
    config = sqlite_config(tmp_path, kafka_bootstrap, group, topic, errors=errors_section(dlq))
    result = run_connector(config)
    assert result.returncode == 1
    assert (
        "error: circuit breaker: 1000 of the last 1000 records failed (ratio 1.00, "
        "errors.max_failure_ratio 0.50 over errors.failure_window 1000); the last one: decode "
        f"error at topic '{topic}' partition"
    ) in result.stderr, result.stderr[-3000:]
    committed = committed_offsets(kafka_bootstrap, group, topic, 2)
    dead = read_topic(kafka_bootstrap, dlq)  # created by the connector (create: true)
    assert sum(committed.values()) < 1000
    assert len(dead) <= 1000
    assert {(r.value, r.key) for r in dead} <= {(b"{broken", None)}


def test_missing_dead_letter_topic_that_may_not_be_created_stops_at_start(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic, dlq = unique("measurements"), unique("dlq")
    create_topic(kafka_bootstrap, topic, 1)
    errors = errors_section(dlq)
    errors["dead_letter_queue"]["create"] = False
    config = sqlite_config(tmp_path, kafka_bootstrap, unique("group"), topic, errors=errors)
    result = run_connector(config, timeout=60)
    assert result.returncode == 1
    assert (
        f"error: errors.dead_letter_queue.topic: topic '{dlq}' does not exist; create it, or "
        "set errors.dead_letter_queue.create: true"
    ) in result.stderr
