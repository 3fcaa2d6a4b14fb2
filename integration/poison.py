"""Poison records for the dead-letter tests: seeded generators, produce with coordinates,
and reading a dead-letter topic back.

Every poison generator returns a value and the error kind the connector must give it, so a
test knows the exact dead-letter record to expect for each coordinate.
"""

from __future__ import annotations

import io
import json
import random
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import fastavro
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CkTopicPartition

from connector.schemas import load_object_types
from integration.support import AVRO_DIR, measurement

_MEASUREMENT = load_object_types(AVRO_DIR).get("Measurement")
assert _MEASUREMENT is not None
MEASUREMENT = _MEASUREMENT
AVRO_NAMESPACE = uuid.UUID("8d4b3c1a-52f0-4e0b-9d3f-1f2a6e9c7b55")


@dataclass(frozen=True, slots=True)
class Out:
    """One record to produce: partition, key, value, headers, timestamp."""

    partition: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, str | bytes | None]] = field(default_factory=list)
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int


def produce_records(bootstrap: str, topic: str, records: Iterable[Out]) -> list[tuple[int, int]]:
    """Produce ``records`` in order (idempotent, acks=all); their (partition, offset)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "enable.idempotence": True,
            "message.max.bytes": 40_000_000,
        }
    )
    items = list(records)
    coordinates: list[tuple[int, int]] = [(-1, -1)] * len(items)
    failures: list[str] = []

    def report(index: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                coordinates[index] = (msg.partition(), msg.offset())

        return on_delivery

    for index, item in enumerate(items):
        extra: dict[str, Any] = {}
        if item.timestamp_ms is not None:
            extra["timestamp"] = item.timestamp_ms
        while True:
            try:
                producer.produce(
                    topic,
                    value=item.value,
                    key=item.key,
                    partition=item.partition,
                    headers=item.headers or None,
                    on_delivery=report(index),
                    **extra,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0 and not failures, failures[:3]
    return coordinates


RECENT_MS = int(time.time() * 1000) - 3_600_000
"""A record timestamp an hour old, for records whose dead letters are read back: a dead
letter keeps its record's timestamp, and the broker's time retention (7 days) deletes an
older one at its next check (every 5 minutes)."""


def read_topic(
    bootstrap: str, topic: str, timeout: float = 60.0, *, at_least: int = 0
) -> list[Read]:
    """Every record of ``topic`` from its start to its current end; read again (for at most
    30 s) while there are fewer than ``at_least``, then fail naming what the broker answered
    (e.g. low == high: the records were deleted, as by time retention)."""
    deadline = time.monotonic() + 30
    while True:
        found, answered = _read_once(bootstrap, topic, timeout)
        if len(found) >= at_least:
            return found
        assert time.monotonic() < deadline, (
            f"{topic}: {len(found)} records read, at least {at_least} expected; the broker "
            f"answered: {answered}"
        )
        time.sleep(0.5)


def _read_once(bootstrap: str, topic: str, timeout: float) -> tuple[list[Read], str]:
    """The records of ``topic``, and what the broker answered about its partitions."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        partitions = sorted(metadata.partitions)
        ends = {p: _watermarks(consumer, topic, p) for p in partitions}
        answered = f"metadata error {metadata.error}, (low, high) by partition {ends}"
        consumer.assign([CkTopicPartition(topic, p, lo) for p, (lo, _) in ends.items()])
        position = {p: lo for p, (lo, _) in ends.items()}
        out: list[Read] = []
        deadline = time.monotonic() + timeout
        while any(position[p] < ends[p][1] for p in partitions):
            assert time.monotonic() < deadline, f"reading {topic} took over {timeout:.0f} s"
            for msg in consumer.consume(1000, 1.0):
                assert msg.error() is None, msg.error()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                position[partition] = offset + 1
                out.append(
                    Read(
                        topic,
                        partition,
                        offset,
                        msg.key(),
                        msg.value(),
                        list(msg.headers() or []),  # type: ignore[arg-type]
                        msg.timestamp()[1],
                    )
                )
        return out, answered
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """(low, high) of a partition, asked until the broker gives valid offsets."""
    deadline = time.monotonic() + 30
    while True:
        found = consumer.get_watermark_offsets(
            CkTopicPartition(topic, partition), timeout=30, cached=False
        )
        if found is not None and min(found) >= 0:
            return found
        assert time.monotonic() < deadline, f"no watermarks for {topic}[{partition}]: {found}"
        time.sleep(0.2)


def origin(record: Read) -> tuple[str, int, int]:
    """The original coordinates a dead-letter record names in its Connect headers."""
    headers = dict(record.headers)
    topic, partition, offset = (
        headers[f"__connect.errors.{name}"] for name in ("topic", "partition", "offset")
    )
    assert topic is not None and partition is not None and offset is not None
    return topic.decode(), int(partition), int(offset)


# --- good records ------------------------------------------------------------------------


def avro_measurement(topic: str, partition: int, n: int) -> dict[str, Any]:
    return {
        "_id": str(uuid.uuid5(AVRO_NAMESPACE, f"{topic}-{partition}-{n}")),
        "sensor": f"sensor-{n % 13}",
        "value": n / 8,
        "timestamp": 1_700_000_000_000 + n,
    }


def avro_body(document: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, MEASUREMENT.parsed, document)
    return out.getvalue()


def framed(schema_id: int, body: bytes) -> bytes:
    """Confluent wire format: magic byte 0, the 4-byte schema id, the Avro body."""
    return b"\x00" + struct.pack(">I", schema_id) + body


# --- poison ------------------------------------------------------------------------------

Poison = Callable[[random.Random], tuple[bytes | None, str]]


def _random_bytes(rng: random.Random) -> tuple[bytes | None, str]:
    # A leading 0xff: neither UTF-8 nor Confluent's magic byte, whatever follows.
    return b"\xff" + rng.randbytes(rng.randint(0, 64)), "decode"


def _invalid_utf8(rng: random.Random) -> tuple[bytes | None, str]:
    return b'{"_id": "' + bytes([rng.choice([0xC0, 0xC1, 0xF5, 0xFE])]) + b'"}', "decode"


def _tombstone(rng: random.Random) -> tuple[bytes | None, str]:
    return None, "rule-violation"


def _json_wrong_type(rng: random.Random) -> tuple[bytes | None, str]:
    document = json.loads(measurement("poison", 0, rng.randint(0, 10**6)))
    field_name, bad = rng.choice([("value", "hot"), ("sensor", 17), ("timestamp", [1])])
    document[field_name] = bad
    return json.dumps(document).encode(), "schema-mismatch"


def _json_missing_field(rng: random.Random) -> tuple[bytes | None, str]:
    document = json.loads(measurement("poison", 0, rng.randint(0, 10**6)))
    del document[rng.choice(["sensor", "value", "timestamp"])]
    return json.dumps(document).encode(), "schema-mismatch"


def _json_not_an_object(rng: random.Random) -> tuple[bytes | None, str]:
    return rng.choice([b"[1, 2]", b"42", b'"text"', b'{"_id": "x", ']), "decode"


def avro_poisons(schema_id: int) -> list[Poison]:
    """Poison for an Avro route whose good records use ``schema_id``."""

    def truncated(rng: random.Random) -> tuple[bytes | None, str]:
        body = avro_body(avro_measurement("poison", 0, rng.randint(0, 10**6)))
        return framed(schema_id, body[: rng.randint(0, len(body) - 8)]), "decode"

    def wrong_magic(rng: random.Random) -> tuple[bytes | None, str]:
        body = avro_body(avro_measurement("poison", 0, rng.randint(0, 10**6)))
        return bytes([rng.randint(1, 255)]) + struct.pack(">I", schema_id) + body, "decode"

    def unknown_id(rng: random.Random) -> tuple[bytes | None, str]:
        body = avro_body(avro_measurement("poison", 0, rng.randint(0, 10**6)))
        return framed(900_000 + rng.randint(0, 3), body), "decode"

    def short(rng: random.Random) -> tuple[bytes | None, str]:
        return b"\x00" + rng.randbytes(rng.randint(0, 3)), "decode"

    return [_random_bytes, truncated, wrong_magic, unknown_id, short, _tombstone]


JSON_POISONS: list[Poison] = [
    _random_bytes,
    _invalid_utf8,
    _tombstone,
    _json_wrong_type,
    _json_missing_field,
    _json_not_an_object,
]


def backend_poisons(backend: str, schema_id: int) -> tuple[list[Poison], list[Poison]]:
    """Poison that only ``backend`` refuses (JSON route, Avro route): PostgreSQL refuses a NUL
    character in text, FerretDB a NaN. SQLite stores every document that fits the type."""

    def json_nul(rng: random.Random) -> tuple[bytes | None, str]:
        document = json.loads(measurement("poison", 0, rng.randint(0, 10**6)))
        document["_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        document["sensor"] = "sensor-\u0000"
        return json.dumps(document).encode(), "backend-rejection"

    def avro_nul(rng: random.Random) -> tuple[bytes | None, str]:
        document = avro_measurement("poison", 0, rng.randint(0, 10**6))
        document["_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        document["sensor"] = "\u0000"
        return framed(schema_id, avro_body(document)), "backend-rejection"

    def avro_nan(rng: random.Random) -> tuple[bytes | None, str]:
        document = avro_measurement("poison", 0, rng.randint(0, 10**6))
        document["_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        document["value"] = float("nan")
        return framed(schema_id, avro_body(document)), "backend-rejection"

    if backend == "postgres":
        return [json_nul], [avro_nul]
    if backend == "mongodb":
        return [], [avro_nan]
    return [], []
