"""Every backend against the real servers: exactly one copy of every object, whatever happens.

Each test runs for SQLite, PostgreSQL and the MongoDB-wire server (FerretDB) unless it
needs a server to stop. The connector runs as the real CLI process.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from integration.backends import BackendUnderTest
from integration.kafka_broker import create_topic
from integration.support import (
    AVRO_DIR,
    BackgroundProducer,
    committed_offsets,
    kill,
    measurement,
    measurement_id,
    produce,
    run_connector,
    start_connector,
    summary_of,
    unique,
    write_config,
)

PARTITIONS = 3
SERVERS = pytest.mark.parametrize("backend_under_test", ["postgres", "mongodb"], indirect=True)


def pipeline(
    tmp_path: Path,
    bootstrap: str,
    backend: BackendUnderTest,
    routes: list[dict[str, Any]],
    **sections: Any,
) -> tuple[str, Path]:
    group = unique("group")
    config = write_config(
        tmp_path / "pipeline.yaml", bootstrap, group, routes, backend.section(), **sections
    )
    return group, config


def measurement_pipeline(
    tmp_path: Path, bootstrap: str, backend: BackendUnderTest, partitions: int, **sections: Any
) -> tuple[str, str, Path]:
    """A new Measurement topic and a pipeline file routing it; (topic, group, config)."""
    topic = unique("measurements")
    create_topic(bootstrap, topic, partitions)
    group, config = pipeline(
        tmp_path, bootstrap, backend, [{"topic": topic, "type": "Measurement"}], **sections
    )
    return topic, group, config


def origin(sent: dict[int, int], topic: str) -> dict[str, tuple[int, int]]:
    """_id -> (partition, offset) of every produced Measurement (one producer: offset = n)."""
    return {measurement_id(topic, p, n): (p, n) for p, count in sent.items() for n in range(count)}


def wait_for_rows(
    backend: BackendUnderTest, at_least: int, process: Any, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while len(backend.ids("Measurement")) < at_least:
        assert process.poll() is None, "the connector exited"
        assert time.monotonic() < deadline, f"fewer than {at_least} rows after {timeout} s"
        time.sleep(0.1)


def assert_not_ahead(
    committed: dict[int, int], stored: list[str], ids: dict[str, tuple[int, int]]
) -> None:
    """Every record below a committed offset is stored: nothing committed ahead of the backend."""
    stored_at = {ids[i] for i in stored if i in ids}
    for partition, offset in committed.items():
        missing = [n for n in range(offset) if (partition, n) not in stored_at]
        assert not missing, (
            f"partition {partition}: committed {offset}, {len(missing)} below it not stored"
        )


@SERVERS
def test_sigkill_mid_stream_leaves_exactly_one_copy(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    sigkill_mid_stream(tmp_path, kafka_bootstrap, backend_under_test, writers=1)


@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_sigkill_with_two_batches_in_the_database_leaves_exactly_one_copy(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    """``max_concurrent_writes: 2``: a kill can land with two transactions open at once,
    one of them holding later offsets than the other."""
    sigkill_mid_stream(tmp_path, kafka_bootstrap, backend_under_test, writers=2)


def sigkill_mid_stream(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest, writers: int
) -> None:
    """Five SIGKILLs at random moments while records flow, each followed by a restart;
    nothing is ever committed ahead of the database, and in the end every record is
    stored once and committed."""
    topic, group, config = measurement_pipeline(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        PARTITIONS,
        batching={"max_records": 200, "max_wait_ms": 50, "max_concurrent_writes": writers},
    )
    rng = random.Random(4)
    producer = BackgroundProducer(kafka_bootstrap, topic, PARTITIONS, rate_per_s=2000).start()
    log = tmp_path / "connector.log"
    try:
        for _ in range(5):
            process = start_connector(config, log=log)
            wait_for_rows(
                backend_under_test, len(backend_under_test.ids("Measurement")) + 1, process
            )
            time.sleep(rng.uniform(0.0, 2.0))
            kill(process, signal.SIGKILL)
            process.wait(10)
            ids = origin(dict(producer.sent), topic)
            assert_not_ahead(
                committed_offsets(kafka_bootstrap, group, topic, PARTITIONS),
                backend_under_test.ids("Measurement"),
                ids,
            )
    finally:
        sent = producer.stop()
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = backend_under_test.ids("Measurement")
    assert len(stored) == len(set(stored)), "an object is stored twice"
    assert set(stored) == set(origin(sent, topic)), "objects are missing or unexpected"
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == sent


@SERVERS
def test_database_outage_is_survived_without_committing_ahead(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    topic, group, config = measurement_pipeline(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        PARTITIONS,
        retry={"initial_backoff_ms": 200, "max_backoff_ms": 2000},
    )
    producer = BackgroundProducer(kafka_bootstrap, topic, PARTITIONS, rate_per_s=1500).start()
    log = tmp_path / "connector.log"
    process = start_connector(config, log=log)
    try:
        wait_for_rows(backend_under_test, 500, process)
        samples: list[dict[int, int]] = []
        with backend_under_test.outage():
            started = time.monotonic()
            while time.monotonic() - started < 12:
                assert process.poll() is None, (
                    "the connector died during the outage:\n" + log.read_text()[-4000:]
                )
                if (
                    time.monotonic() - started > 1.5
                ):  # the last acks before the stop are committed by then
                    samples.append(committed_offsets(kafka_bootstrap, group, topic, PARTITIONS))
                time.sleep(0.5)
        stored_after_restart = backend_under_test.ids("Measurement")
        time.sleep(3)
    finally:
        sent = producer.stop()
    assert all(s == samples[0] for s in samples), (
        "offsets were committed while the database was down"
    )
    assert_not_ahead(samples[-1], stored_after_restart, origin(sent, topic))
    kill(process, signal.SIGTERM)
    process.communicate(timeout=40)
    assert process.returncode == 0
    text = log.read_text()
    assert "backend write failed (attempt 1)" in text
    assert "nothing is committed meanwhile" in text
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = backend_under_test.ids("Measurement")
    assert len(stored) == len(set(stored))
    assert set(stored) == set(origin(sent, topic))
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == sent


def test_conflict_is_reported_and_never_overwrites(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    topic, _, config = measurement_pipeline(tmp_path, kafka_bootstrap, backend_under_test, 1)
    first = json.loads(measurement(topic, 0, 0))
    changed = {**first, "value": first["value"] + 1}
    produce(
        kafka_bootstrap,
        topic,
        [
            (0, json.dumps(first).encode()),
            (0, json.dumps(first).encode()),
            (0, json.dumps(changed).encode()),
        ],
    )
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert (summary["ingested"], summary["duplicates"], summary["conflicts"]) == ("1", "1", "1")
    assert (
        f"conflict error at topic '{topic}' partition 0 offset 2: a different Measurement is "
        f"already stored under _id '{first['_id']}' (fields differing: value); first write wins, "
        "this one was not written"
    ) in result.stderr
    stored = backend_under_test.documents("Measurement")
    assert list(stored) == [first["_id"]]
    assert stored[first["_id"]]["value"] == first["value"]


def test_added_field_appears_and_earlier_objects_stay_intact(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    schemas = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, schemas, ignore=shutil.ignore_patterns("*.md"))
    topic, _, config = measurement_pipeline(tmp_path, kafka_bootstrap, backend_under_test, 1)
    v1 = [json.loads(measurement(topic, 0, n)) for n in range(5)]
    produce(kafka_bootstrap, topic, [(0, json.dumps(m).encode()) for m in v1])
    config.write_text(config.read_text().replace(str(AVRO_DIR), str(schemas)))
    assert run_connector(config).returncode == 0
    before = backend_under_test.documents("Measurement")
    assert len(before) == 5

    schema = json.loads((schemas / "Measurement.avsc").read_text())
    schema["fields"].append({"name": "quality", "type": ["null", "string"], "default": None})
    (schemas / "Measurement.avsc").write_text(json.dumps(schema))
    v2 = [{**json.loads(measurement(topic, 0, n)), "quality": "calibrated"} for n in range(5, 8)]
    produce(kafka_bootstrap, topic, [(0, json.dumps(m).encode()) for m in v2])
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    after = backend_under_test.documents("Measurement")
    assert len(after) == 8
    for object_id, document in before.items():
        assert {k: v for k, v in after[object_id].items() if k != "quality"} == document
        assert after[object_id].get("quality") is None
    assert {after[m["_id"]]["quality"] for m in v2} == {"calibrated"}


def test_standard_objects_upsert_and_tombstones_delete(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    sensors, readings = unique("sensors"), unique("measurements")
    create_topic(kafka_bootstrap, sensors, 1)
    create_topic(kafka_bootstrap, readings, 1)
    updates: list[tuple[bytes, dict[str, Any] | None]] = [
        (b"s1", {"_id": "s1", "name": "roof", "unit": "CELSIUS"}),
        (b"s2", {"_id": "s2", "name": "cellar", "unit": "PERCENT"}),
        (b"s1", {"_id": "s1", "name": "roof (moved)", "unit": "CELSIUS"}),
        (b"s2", None),
    ]
    produce(
        kafka_bootstrap,
        sensors,
        [(0, None if v is None else json.dumps(v).encode()) for _, v in updates],
        key=lambda i: updates[i][0],
    )
    linked = [{**json.loads(measurement(readings, 0, n)), "sensor": "s2"} for n in range(4)]
    produce(kafka_bootstrap, readings, [(0, json.dumps(m).encode()) for m in linked])
    _, config = pipeline(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        [{"topic": sensors, "type": "Sensor"}, {"topic": readings, "type": "Measurement"}],
    )
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert (summary["upserted"], summary["deleted"], summary["ingested"]) == ("3", "1", "4")
    sensors_stored = backend_under_test.documents("Sensor")
    assert list(sensors_stored) == ["s1"]
    assert sensors_stored["s1"]["name"] == "roof (moved)"
    assert sorted(backend_under_test.ids("Measurement")) == sorted(m["_id"] for m in linked)
