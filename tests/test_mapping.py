"""Mapping records to objects: ids by field, key or coordinates (R10), tombstones (R8)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st

from connector.config import parse_config
from connector.errors import ConfigError, Coordinates, RecordError
from connector.mapping import Mapper, bind_routes, coordinates_id, coordinates_uuid
from connector.records import SourceRecord
from connector.schemas import load_object_types
from tests.fakes import AVRO_DIR, TYPES

MEASUREMENT = {
    "_id": "0b5f3c3e-8f52-4c8e-9b1f-2b7a3c4d5e6f",
    "sensor": "s-1",
    "value": 1.5,
    "timestamp": 0,
}
NAMESPACE = uuid.UUID("5f1d7a3e-2b7c-5e47-9a51-6f0d1c2b8e90")


def config(*routes: dict[str, Any], schemas: str = str(AVRO_DIR)):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "kafka": {"bootstrap_servers": "b"},
            "schemas": {"dir": schemas},
            "routes": list(routes),
            "backend": {"type": "sqlite", "path": "x"},
        },
        "t.yaml",
        env={},
    )


def mapper(type_name: str = "Measurement", id_mode: str = "field", fmt: str = "json") -> Mapper:
    return Mapper(config({"topic": "m", "type": type_name, "id": id_mode, "format": fmt}), TYPES)


def rec(value: Any, key: bytes | None = None, offset: int = 3) -> SourceRecord:
    data = json.dumps(value).encode() if isinstance(value, dict) else value
    return SourceRecord("m", 1, offset, key, data)


def test_field_id_is_used() -> None:
    obj = mapper().map(rec(MEASUREMENT))
    assert obj.object_type.name == "Measurement"
    assert obj.object_id == uuid.UUID(MEASUREMENT["_id"])
    assert obj.document["sensor"] == "s-1"


def test_missing_id_derives_from_coordinates() -> None:
    obj = mapper().map(rec({k: v for k, v in MEASUREMENT.items() if k != "_id"}))
    assert obj.object_id == uuid.uuid5(NAMESPACE, "m/1/3")
    assert obj.document["_id"] == obj.object_id
    again = mapper().map(rec({k: v for k, v in MEASUREMENT.items() if k != "_id"}))
    assert again.object_id == obj.object_id


@given(st.text(min_size=1, max_size=20), st.integers(0, 10_000), st.integers(0, 2**62))
def test_derived_ids_are_deterministic_distinct_and_typed(
    topic: str, partition: int, offset: int
) -> None:
    here, there = Coordinates(topic, partition, offset), Coordinates(topic, partition, offset + 1)
    for id_type in ("string", "uuid", "long", "ObjectId"):
        assert coordinates_id(here, id_type) == coordinates_id(here, id_type)
        assert coordinates_id(here, id_type) != coordinates_id(there, id_type)
    assert coordinates_uuid(here).version == 5
    assert 0 <= coordinates_id(here, "long") < 2**63
    assert isinstance(coordinates_id(here, "ObjectId"), ObjectId)


def test_id_from_key_and_coordinates_modes() -> None:
    sensor = {"_id": "s-9", "name": "roof", "unit": "LUX"}
    assert mapper("Sensor", "key").map(rec(sensor, key=b"s-9")).object_id == "s-9"
    assert (
        mapper("Sensor", "key")
        .map(rec({k: v for k, v in sensor.items() if k != "_id"}, key=b"s-7"))
        .document["_id"]
        == "s-7"
    )
    customer = mapper("Customer", "coordinates").map(rec({"_id": 1, "name": "ACME"}))
    assert customer.object_id == coordinates_id(Coordinates("m", 1, 3), "long")


def test_standard_tombstone_deletes_by_key() -> None:
    obj = mapper("Customer").map(rec(None, key=b"42"))
    assert obj.tombstone and obj.object_id == 42 and obj.document == {"_id": 42}


@pytest.mark.parametrize(
    ("type_name", "mode", "value", "key", "message"),
    [
        (
            "Measurement",
            "field",
            None,
            b"k",
            "rule-violation error at topic 'm' partition 1 offset 3: tombstone (null value) on a route "
            "of asymmetric type Measurement: asymmetric objects are insert-only and cannot be deleted (R8)",
        ),
        (
            "Customer",
            "field",
            None,
            None,
            "rule-violation error at topic 'm' partition 1 offset 3: the record key is null, but it "
            "must carry the Customer _id (id: key, or a tombstone)",
        ),
        (
            "Customer",
            "field",
            None,
            b"forty-two",
            "decode error at topic 'm' partition 1 offset 3: the record key is not a long _id of "
            "Customer (invalid literal for int() with base 10: 'forty-two')",
        ),
        (
            "Sensor",
            "key",
            {"_id": "s-1", "name": "n", "unit": "LUX"},
            b"s-2",
            "rule-violation error at topic 'm' partition 1 offset 3: the record's _id 's-1' differs "
            "from its key 's-2' (id: key); send the same value in both, or drop _id from the value",
        ),
        (
            "Measurement",
            "field",
            {**MEASUREMENT, "value": "warm"},
            None,
            "schema-mismatch error at topic 'm' partition 1 offset 3: does not fit object type "
            "Measurement: field value: expected double, got string 'warm'",
        ),
        (
            "Measurement",
            "field",
            b"[1, 2]",
            None,
            "decode error at topic 'm' partition 1 offset 3: value is a JSON list, expected a JSON object",
        ),
        (
            "Measurement",
            "field",
            b"\xff\xfe",
            None,
            "decode error at topic 'm' partition 1 offset 3: value is not UTF-8 text (byte 0); the "
            "json format expects UTF-8 JSON",
        ),
    ],
)
def test_record_errors(
    type_name: str, mode: str, value: Any, key: bytes | None, message: str
) -> None:
    with pytest.raises(RecordError) as info:
        mapper(type_name, mode).map(rec(value, key))
    assert str(info.value) == message


def test_customer_without_id_cannot_derive_an_int_id(tmp_path: Path) -> None:
    (tmp_path / "Tag.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Tag",
                "objectType": "asymmetric",
                "fields": [{"name": "_id", "type": "int"}, {"name": "t", "type": "string"}],
            }
        )
    )
    types = load_object_types(tmp_path)
    m = Mapper(config({"topic": "m", "type": "Tag"}, schemas=str(tmp_path)), types)
    with pytest.raises(RecordError) as info:
        m.map(rec({"t": "x"}))
    assert str(info.value) == (
        "rule-violation error at topic 'm' partition 1 offset 3: the record has no _id and "
        "Tag._id is an int, which cannot hold an id derived from its coordinates (R10); send _id"
    )
    with pytest.raises(ConfigError) as config_error:
        bind_routes(
            config({"topic": "m", "type": "Tag", "id": "coordinates"}, schemas=str(tmp_path)),
            types,
            "p.yaml",
        )
    assert str(config_error.value) == (
        "p.yaml: routes[0].id: Tag._id is an int, which cannot hold an id derived from "
        "coordinates; use id: field or id: key, or declare _id as string, uuid, long or ObjectId"
    )


def test_routes_are_bound_to_declared_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        bind_routes(
            config(
                {"topic": "a", "type": "Measurment"},
                {
                    "topic": "b",
                    "type": "Sensor",
                    "format": "avro-raw",
                    "writer_schema": str(tmp_path / "none.avsc"),
                },
            ),
            TYPES,
            "p.yaml",
        )
    assert str(info.value).splitlines() == [
        f"p.yaml: routes[0].type: Measurment is not declared in {AVRO_DIR} (declared: AppEvent, "
        "Customer, Invoice, Measurement, Sensor)",
        f"p.yaml: routes[1].writer_schema: cannot read {tmp_path / 'none.avsc'}: [Errno 2] No "
        f"such file or directory: '{tmp_path / 'none.avsc'}'",
    ]


def test_object_id_fields_become_object_ids_from_avro() -> None:
    invoice_type = TYPES.get("Invoice")
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    document = {
        "_id": oid.binary,
        "number": "1",
        "customer": 7,
        "issued_at": 0,
        "due_on": 0,
        "currency": "EUR",
        "billing_address": {"street": "s", "city": "c", "postal_code": "p", "country": "CH"},
        "lines": [],
        "total": b"\x00",
        "paid": False,
    }
    body = io.BytesIO()
    fastavro.schemaless_writer(body, invoice_type.parsed, document)
    obj = mapper("Invoice", fmt="avro-raw").map(rec(body.getvalue()))
    assert obj.object_id == oid
    assert obj.document["_id"] == oid


def test_unrouted_topic_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="no route matches this topic"):
        mapper().map(SourceRecord("other", 0, 0, None, b"{}"))
