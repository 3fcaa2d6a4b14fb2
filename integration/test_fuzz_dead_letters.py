"""Fuzzed poison records through a JSON and an Avro route (errors.tolerance: all).

Seeded and reproducible: poison records of every kind (random bytes, truncated Avro, wrong
magic byte, unknown schema id, JSON of wrong types or missing required fields, invalid
UTF-8, tombstones on an asymmetric route, and what only the backend refuses: NUL
characters for PostgreSQL, NaN for FerretDB) interleaved with good records over 6
partitions of each topic. Every good record must be stored exactly once, the set of
dead-letter coordinates must equal the set of poison coordinates, and the committed offsets
must equal the end offsets; with SIGKILLs during the run the dead-letter topic may hold
duplicates but no other coordinates.

The suite runs 1,000 poison + 5,000 good records; ``make fuzz`` (DATA_INGEST_FUZZ=full)
runs the issue's 10,000 + 50,000.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from integration.backends import BackendUnderTest
from integration.kafka_broker import create_topic
from integration.poison import (
    JSON_POISONS,
    MEASUREMENT,
    RECENT_MS,
    Out,
    Poison,
    avro_body,
    avro_measurement,
    avro_poisons,
    backend_poisons,
    framed,
    origin,
    produce_records,
    read_topic,
)
from integration.support import (
    committed_offsets,
    kill,
    measurement,
    measurement_id,
    run_connector,
    start_connector,
    summary_of,
    unique,
    write_config,
)

PARTITIONS = 6
FULL = os.environ.get("DATA_INGEST_FUZZ") == "full"
POISON, GOOD = (10_000, 50_000) if FULL else (1_000, 5_000)
SEED = 20261203


@dataclass(slots=True)
class Plan:
    """What was produced: poison coordinates with their kinds and values, good ids."""

    poison: dict[tuple[str, int, int], tuple[str, bytes | None]]
    good_ids: set[str]
    ends: dict[str, dict[int, int]]


def plan_topic(
    rng: random.Random,
    topic: str,
    poison_count: int,
    good_count: int,
    good_value: Any,
    good_id: Any,
    poisons: list[Poison],
) -> tuple[list[Out], list[tuple[str, str] | None]]:
    """Records of one topic, and per record (kind, "poison") or None for a good one."""
    flags = [True] * poison_count + [False] * good_count
    rng.shuffle(flags)
    written: Counter[int] = Counter()
    records: list[Out] = []
    notes: list[tuple[str, str] | None] = []
    for poisoned in flags:
        partition = rng.randrange(PARTITIONS)
        if poisoned:
            value, kind = rng.choice(poisons)(rng)
            records.append(Out(partition, value, None, [("fuzz", b"poison")], RECENT_MS))
            notes.append((kind, "poison"))
        else:
            n = written[partition]
            written[partition] += 1
            records.append(Out(partition, good_value(topic, partition, n)))
            notes.append(None)
            good_id(topic, partition, n)
    return records, notes


def produce_plan(
    bootstrap: str, registry_url: str, backend: str, poison_count: int, good_count: int
) -> tuple[Plan, str, str]:
    json_topic, avro_topic = unique("fuzz-json"), unique("fuzz-avro")
    for topic in (json_topic, avro_topic):
        create_topic(bootstrap, topic, PARTITIONS)
    registry = SchemaRegistryClient({"url": registry_url})
    schema_id = registry.register_schema(
        f"{avro_topic}-value", Schema(json.dumps(MEASUREMENT.schema), "AVRO")
    )
    rng = random.Random(SEED)
    json_extra, avro_extra = backend_poisons(backend, schema_id)
    good_ids: set[str] = set()

    def json_good(topic: str, partition: int, n: int) -> bytes:
        return measurement(topic, partition, n)

    def avro_good(topic: str, partition: int, n: int) -> bytes:
        return framed(schema_id, avro_body(avro_measurement(topic, partition, n)))

    def json_id(topic: str, partition: int, n: int) -> None:
        good_ids.add(measurement_id(topic, partition, n))

    def avro_id(topic: str, partition: int, n: int) -> None:
        good_ids.add(avro_measurement(topic, partition, n)["_id"])

    plan = Plan({}, good_ids, {})
    half_poison, half_good = poison_count // 2, good_count // 2
    for topic, good_value, good_id, poisons in (
        (json_topic, json_good, json_id, JSON_POISONS + json_extra),
        (avro_topic, avro_good, avro_id, avro_poisons(schema_id) + avro_extra),
    ):
        records, notes = plan_topic(
            rng, topic, half_poison, half_good, good_value, good_id, poisons
        )
        coordinates = produce_records(bootstrap, topic, records)
        ends: Counter[int] = Counter()
        for record, note, (partition, offset) in zip(records, notes, coordinates, strict=True):
            ends[partition] = max(ends[partition], offset + 1)
            if note is not None:
                plan.poison[(topic, partition, offset)] = (note[0], record.value)
        plan.ends[topic] = {p: ends[p] for p in range(PARTITIONS)}
    assert len(plan.poison) == poison_count and len(good_ids) == good_count
    return plan, json_topic, avro_topic


def setup_fuzz(
    tmp_path: Path, bootstrap: str, registry_url: str, backend: BackendUnderTest
) -> tuple[Plan, Path, str, str]:
    """Produce the fuzz records; the plan, the pipeline file, its group and its DLQ topic."""
    plan, json_topic, avro_topic = produce_plan(bootstrap, registry_url, backend.name, POISON, GOOD)
    group, dlq = unique("group"), unique("fuzz-dlq")
    config = write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [
            {"topic": json_topic, "type": "Measurement", "format": "json"},
            {"topic": avro_topic, "type": "Measurement", "format": "avro"},
        ],
        backend.section(),
        schema_registry={"url": registry_url},
        errors={"tolerance": "all", "dead_letter_queue": {"topic": dlq, "partitions": 3}},
        batching={"max_records": 1000, "max_wait_ms": 100},
    )
    return plan, config, group, dlq


def check_outcome(
    bootstrap: str,
    backend: BackendUnderTest,
    plan: Plan,
    group: str,
    dlq: str,
    *,
    exact: bool,
) -> int:
    """The delivery promise after a fuzz run; returns how many dead-letter records there are."""
    letters = read_topic(bootstrap, dlq, timeout=300, at_least=len(plan.poison))
    coordinates = [origin(r) for r in letters]
    assert set(coordinates) == set(plan.poison), (
        f"missing {len(set(plan.poison) - set(coordinates))}, "
        f"unexpected {len(set(coordinates) - set(plan.poison))}"
    )
    if exact:
        assert len(coordinates) == len(plan.poison)
    for letter, where in zip(letters, coordinates, strict=True):
        kind, value = plan.poison[where]
        headers = dict(letter.headers)
        assert (letter.value, letter.key, headers["fuzz"]) == (value, None, b"poison"), where
        assert headers["__data_ingest.error.kind"] == kind.encode(), (where, headers)
    ids = backend.ids("Measurement")
    assert len(ids) == len(set(ids)), "an object is stored twice"
    assert set(ids) == plan.good_ids, (
        f"missing {len(plan.good_ids - set(ids))}, extra {len(set(ids) - plan.good_ids)}"
    )
    for topic, ends in plan.ends.items():
        assert committed_offsets(bootstrap, group, topic, PARTITIONS) == ends, topic
    return len(letters)


def test_fuzzed_poison_records_land_in_the_dead_letter_topic_and_nothing_else(
    tmp_path: Path,
    kafka_bootstrap: str,
    schema_registry_url: str,
    backend_under_test: BackendUnderTest,
) -> None:
    plan, config, group, dlq = setup_fuzz(
        tmp_path, kafka_bootstrap, schema_registry_url, backend_under_test
    )
    started = time.monotonic()
    result = run_connector(config, timeout=1200)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["dead-lettered"] == str(POISON)
    assert summary["ingested"] == str(GOOD)
    dead = check_outcome(kafka_bootstrap, backend_under_test, plan, group, dlq, exact=True)
    print(
        f"fuzz {backend_under_test.name}: {POISON + GOOD} records, {POISON} poison, "
        f"{len(backend_under_test.ids('Measurement'))} stored, {dead} dead-lettered, "
        f"{took:.1f} s (connector process)"
    )


@pytest.mark.parametrize("backend_under_test", ["sqlite"], indirect=True)
def test_fuzz_with_5_sigkills_dead_letters_every_poison_record_at_least_once(
    tmp_path: Path,
    kafka_bootstrap: str,
    schema_registry_url: str,
    backend_under_test: BackendUnderTest,
) -> None:
    plan, config, group, dlq = setup_fuzz(
        tmp_path, kafka_bootstrap, schema_registry_url, backend_under_test
    )
    rng = random.Random(SEED + 1)
    log = tmp_path / "connector.log"
    mid_stream = 0
    for _ in range(5):
        before = log.read_text().count("dead-lettered to") if log.exists() else 0
        process = start_connector(config, log=log)
        # Kill once it dead-letters again (mid-stream), or after 30 s when nothing is left.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            if log.exists() and log.read_text().count("dead-lettered to") > before:
                mid_stream += 1
                time.sleep(rng.uniform(0.0, 0.5))
                break
            time.sleep(0.05)
        kill(process, signal.SIGKILL)
        process.wait(10)
    result = run_connector(config, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    dead = check_outcome(kafka_bootstrap, backend_under_test, plan, group, dlq, exact=False)
    assert mid_stream >= 1
    print(
        f"fuzz with 5 SIGKILLs ({mid_stream} while dead-lettering): {dead} dead-letter "
        f"records for {POISON} poison records"
    )
