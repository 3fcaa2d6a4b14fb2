"""Object types end to end: Confluent Avro (real Schema Registry), raw Avro and JSON routes.

Several asymmetric types share one topic (the type comes from the writer schema), one of
them written with an older schema version; standard types are upserted and deleted by
tombstones; an incompatible writer schema stops the run naming the schema.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import fastavro
from bson import ObjectId
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connector.documents import canonical_json
from connector.schemas import load_object_types
from integration.kafka_broker import create_topic
from integration.support import (
    AVRO_DIR,
    committed_offsets,
    produce,
    run_connector,
    summary_of,
    unique,
    write_config,
)

TYPES = load_object_types(AVRO_DIR)
UTC = dt.UTC
APP_EVENT_V1 = {  # an older AppEvent: no duration_ms, no device (both defaulted in v2)
    "type": "record",
    "name": "AppEvent",
    "namespace": "io.dataingest.apps",
    "fields": [
        f
        for f in TYPES.get("AppEvent").schema["fields"]
        if f["name"] not in ("duration_ms", "device")
    ],
}


def measurement(i: int) -> dict[str, Any]:
    return {
        "_id": uuid.uuid5(uuid.NAMESPACE_URL, f"m{i}"),
        "sensor": f"sensor-{i % 3}",
        "value": i / 4,
        "timestamp": dt.datetime(2024, 2, 29, 12, 0, tzinfo=UTC) + dt.timedelta(milliseconds=i),
    }


def app_event(i: int, v1: bool = False) -> dict[str, Any]:
    event: dict[str, Any] = {
        "_id": uuid.uuid5(uuid.NAMESPACE_URL, f"e{i}"),
        "app": "checkout",
        "level": "WARN" if i % 2 else "INFO",
        "message": f"slow request {i} – Zürich",
        "occurred_at": dt.datetime(2024, 3, 1, tzinfo=UTC) + dt.timedelta(microseconds=i),
        "attributes": {"route": "/pay", "n": str(i)},
    }
    if not v1:
        event["duration_ms"] = 12.5 + i
        event["device"] = {"model": "Pixel", "os": "Android 15", "app_version": "3.1"}
    return event


def invoice(i: int) -> dict[str, Any]:
    lines = [
        {
            "sku": "A-1",
            "description": "Widget",
            "quantity": 2,
            "unit_price": decimal.Decimal("9.99"),
        },
        {
            "sku": "B-2",
            "description": "Gadget",
            "quantity": 1,
            "unit_price": decimal.Decimal("120.00"),
        },
    ]
    return {
        "_id": ObjectId(f"{i:024x}").binary,
        "number": f"INV-{i:05d}",
        "customer": 1000 + i % 2,
        "issued_at": dt.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        "due_on": dt.date(2024, 3, 31),
        "currency": "CHF",
        "billing_address": {
            "street": "Bahnhofstrasse 1",
            "city": "Zürich",
            "postal_code": "8001",
            "country": "CH",
        },
        "lines": lines,
        "total": decimal.Decimal("139.98"),
        "paid": False,
    }


def stored(db: Path, table: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        return {str(i): json.loads(d) for i, d in conn.execute(f'SELECT _id, doc FROM "{table}"')}


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the SQLite backend stores for a produced object (canonical JSON)."""
    if isinstance(obj.get("_id"), bytes):
        obj = {**obj, "_id": ObjectId(obj["_id"])}
    return json.loads(canonical_json(obj))


def test_several_types_on_one_topic_via_the_schema_registry_and_all_formats(
    tmp_path: Path, kafka_bootstrap: str, schema_registry_url: str
) -> None:
    mixed, raw, reference = unique("objects"), unique("raw-measurements"), unique("reference")
    for topic in (mixed, raw, reference):
        create_topic(kafka_bootstrap, topic, 3)
    registry = SchemaRegistryClient({"url": schema_registry_url})
    conf = {
        "auto.register.schemas": True,
        "subject.name.strategy": topic_record_subject_name_strategy,
    }

    def serializer(schema: dict[str, Any]) -> AvroSerializer:
        return AvroSerializer(registry, json.dumps(schema), conf=conf)

    ser = {
        "Measurement": serializer(TYPES.get("Measurement").schema),
        "AppEvent": serializer(TYPES.get("AppEvent").schema),
        "AppEventV1": serializer(APP_EVENT_V1),
        "Invoice": serializer(TYPES.get("Invoice").schema),
    }
    ctx = SerializationContext(mixed, MessageField.VALUE)
    objects = (
        [("Measurement", measurement(i)) for i in range(300)]
        + [("AppEvent", app_event(i)) for i in range(200)]
        + [("AppEventV1", app_event(i, v1=True)) for i in range(200, 300)]
        + [("Invoice", invoice(i)) for i in range(50)]
    )
    produce(
        kafka_bootstrap,
        mixed,
        ((i % 3, ser[kind](obj, ctx)) for i, (kind, obj) in enumerate(objects)),
    )

    raw_schema = TYPES.get("Measurement").parsed

    def raw_body(obj: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, raw_schema, obj)
        return out.getvalue()

    produce(kafka_bootstrap, raw, ((0, raw_body(measurement(i))) for i in range(1000, 1100)))

    reference_records = [
        (
            b"sensor-0",
            {"_id": "sensor-0", "name": "boiler", "unit": "CELSIUS", "installed_on": "2023-05-01"},
        ),
        (
            b"sensor-1",
            {
                "_id": "sensor-1",
                "name": "attic",
                "unit": "PERCENT",
                "location": {"lat": 47.37, "lon": 8.54},
            },
        ),
        (b"sensor-0", {"_id": "sensor-0", "name": "boiler (replaced)", "unit": "CELSIUS"}),
        (b"sensor-1", None),  # tombstone: sensor-1 is deleted
    ]
    produce(
        kafka_bootstrap,
        reference,
        ((0, None if v is None else json.dumps(v).encode()) for _, v in reference_records),
        key=lambda i: reference_records[i][0],
    )

    db = tmp_path / "ingest.db"
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka_bootstrap,
        unique("group"),
        [
            {"topic": mixed, "type_from": "writer_schema", "format": "avro"},
            {"topic": raw, "type": "Measurement", "format": "avro-raw"},
            {"topic": reference, "type": "Sensor", "format": "json"},
        ],
        {"type": "sqlite", "path": str(db)},
        schema_registry={"url": schema_registry_url},
    )
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert (summary["ingested"], summary["upserted"], summary["deleted"]) == ("750", "3", "1")

    measurements = stored(db, "Measurement")
    assert len(measurements) == 400
    for i in (0, 299, 1000, 1099):
        obj = measurement(i)
        assert measurements[str(obj["_id"])] == as_stored(obj)
    events = stored(db, "AppEvent")
    assert len(events) == 300
    assert events[str(app_event(7)["_id"])] == as_stored(app_event(7))
    old = app_event(250, v1=True)
    assert events[str(old["_id"])] == as_stored({**old, "duration_ms": None, "device": None})
    invoices = stored(db, "invoices")  # Invoice declares "collection": "invoices"
    assert len(invoices) == 50
    assert invoices[f"{3:024x}"] == as_stored(invoice(3))
    assert invoices[f"{3:024x}"]["total"] == "139.98"
    # sensor-1 was deleted by a tombstone: readers of the view no longer see it, and its
    # marker keeps a replay of an older upsert from bringing it back.
    with sqlite3.connect(db) as conn:
        markers = conn.execute('SELECT _id FROM "Sensor" WHERE _deleted').fetchall()
    assert markers == [("sensor-1",)]
    assert stored(db, "Sensor_live") == {
        "sensor-0": {
            "_id": "sensor-0",
            "name": "boiler (replaced)",
            "unit": "CELSIUS",
            "location": None,
            "installed_on": None,
        }
    }


def test_incompatible_writer_schema_stops_the_run_naming_it(
    tmp_path: Path, kafka_bootstrap: str, schema_registry_url: str
) -> None:
    topic = unique("measurements")
    create_topic(kafka_bootstrap, topic, 1)
    registry = SchemaRegistryClient({"url": schema_registry_url})
    good = AvroSerializer(registry, json.dumps(TYPES.get("Measurement").schema))
    incompatible = {
        "type": "record",
        "name": "Measurement",
        "namespace": "io.dataingest.iot",
        "fields": [
            {"name": "_id", "type": "string"},
            {"name": "sensor", "type": "string"},
            {"name": "value", "type": "string"},
            {"name": "timestamp", "type": "long"},
        ],
    }
    bad = AvroSerializer(
        registry,
        json.dumps(incompatible),
        conf={
            "auto.register.schemas": True,
            "subject.name.strategy": lambda ctx, name: f"{topic}-v-bad",
        },
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    values = [good(measurement(i), ctx) for i in range(5)]
    values.append(bad({"_id": "x", "sensor": "s", "value": "hot", "timestamp": 1}, ctx))
    values += [good(measurement(i), ctx) for i in range(5, 8)]
    produce(kafka_bootstrap, topic, ((0, v) for v in values))
    bad_id = int.from_bytes(values[5][1:5], "big")

    group = unique("group")
    config = write_config(
        tmp_path / "pipeline.yaml",
        kafka_bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "avro"}],
        {"type": "sqlite", "path": str(tmp_path / "ingest.db")},
        schema_registry={"url": schema_registry_url},
    )
    result = run_connector(config)
    assert result.returncode == 1
    assert (
        f"error: schema-mismatch error at topic '{topic}' partition 0 offset 5: writer schema "
        f"io.dataingest.iot.Measurement (schema id {bad_id}) cannot be resolved onto object type "
        f"Measurement ({AVRO_DIR}/Measurement.avsc): reader type: double not compatible with "
        "writer type: string at field value"
    ) in result.stderr
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 5}
    assert len(stored(tmp_path / "ingest.db", "Measurement")) == 5
