"""Schema evolution: writer v1 records read as the declared reader type v2 (Avro rules)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._async.mock_schema_registry_client import (
    AsyncMockSchemaRegistryClient,
)

from connector.config import parse_config
from connector.errors import Coordinates, RecordError, RecordErrorKind
from connector.formats.avro_format import SchemaMismatch, resolve
from connector.mapping import Mapper, coordinates_id
from connector.records import SourceRecord
from connector.schemas import load_object_types

READER_V2 = {
    "type": "record",
    "name": "Reading",
    "namespace": "io.example",
    "objectType": "asymmetric",
    "fields": [
        {"name": "_id", "type": "string"},
        {"name": "count", "type": "long"},
        {"name": "ratio", "type": "double"},
        {"name": "sensor", "type": "string", "aliases": ["device"]},
        {"name": "unit", "type": "string", "default": "celsius"},
    ],
}


def writer(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Reading", "namespace": "io.example", "fields": list(fields)}


V1_FIELDS = [
    {"name": "_id", "type": "string"},
    {"name": "count", "type": "int"},  # int -> long
    {"name": "ratio", "type": "float"},  # float -> double
    {"name": "device", "type": "string"},  # renamed to sensor (alias)
    {"name": "legacy", "type": "string"},  # removed in v2
    # unit: added in v2 with a default
]
V1_RECORD = {"_id": "r-1", "count": 41, "ratio": 0.5, "device": "dev-7", "legacy": "x"}
V2_DOCUMENT = {"_id": "r-1", "count": 41, "ratio": 0.5, "sensor": "dev-7", "unit": "celsius"}


@pytest.fixture
def types(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "Reading.avsc").write_text(json.dumps(READER_V2))
    return load_object_types(tmp_path)


def body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


@pytest.mark.parametrize(
    ("change", "writer_fields", "record", "expected"),
    [
        (
            "added field with default",
            [f for f in V1_FIELDS if f["name"] != "legacy"],
            {k: v for k, v in V1_RECORD.items() if k != "legacy"},
            V2_DOCUMENT,
        ),
        ("int -> long", V1_FIELDS, V1_RECORD, V2_DOCUMENT),
        ("float -> double", V1_FIELDS, V1_RECORD, V2_DOCUMENT),
        ("renamed via alias", V1_FIELDS, V1_RECORD, V2_DOCUMENT),
        ("removed field", V1_FIELDS, V1_RECORD, V2_DOCUMENT),
        (
            "same schema",
            [f for f in READER_V2["fields"] if f["name"] != "unit"]
            + [{"name": "unit", "type": "string"}],
            {"_id": "r-1", "count": 41, "ratio": 0.5, "sensor": "dev-7", "unit": "kelvin"},
            {**V2_DOCUMENT, "unit": "kelvin"},
        ),
    ],
)
def test_compatible_changes(types, change: str, writer_fields, record, expected) -> None:  # type: ignore[no-untyped-def]
    target = types.get("Reading")
    w = writer(*writer_fields)
    resolved = resolve(w, "v1", target)
    data = body(w, record)
    doc = fastavro.schemaless_reader(io.BytesIO(data), resolved.writer, resolved.reader)
    assert doc == expected, change


def test_identical_schema_reads_without_resolution(types) -> None:  # type: ignore[no-untyped-def]
    resolved = resolve(READER_V2, "same", types.get("Reading"))
    assert resolved.reader is None


@pytest.mark.parametrize(
    ("writer_fields", "message"),
    [
        (
            [
                {"name": "_id", "type": "string"},
                {"name": "count", "type": "string"},
                {"name": "ratio", "type": "double"},
                {"name": "sensor", "type": "string"},
            ],
            "writer schema io.example.Reading (schema id 9) cannot be resolved onto object type "
            "Reading ({file}): reader type: long not compatible with writer type: string at "
            "field count",
        ),
        (
            [
                {"name": "_id", "type": "string"},
                {"name": "ratio", "type": "double"},
                {"name": "sensor", "type": "string"},
            ],
            "writer schema io.example.Reading (schema id 9) cannot be resolved onto object type "
            "Reading ({file}): field count is missing in the writer and has no default in the "
            "reader",
        ),
        (
            [
                {"name": "_id", "type": "string"},
                {"name": "count", "type": "long"},
                {"name": "ratio", "type": "double"},
                {"name": "sensor", "type": "long"},
            ],
            "writer schema io.example.Reading (schema id 9) cannot be resolved onto object type "
            "Reading ({file}): reader type: string not compatible with writer type: long at "
            "field sensor",
        ),
    ],
)
def test_incompatible_change_is_refused_naming_both_schemas_and_the_field(
    types,
    writer_fields,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    target = types.get("Reading")
    with pytest.raises(SchemaMismatch) as info:
        resolve(writer(*writer_fields), "schema id 9", target)
    assert str(info.value) == message.format(file=target.file)


def test_writer_without_id_gets_a_derived_id(types, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w = writer(*[f for f in V1_FIELDS if f["name"] != "_id"])
    path = tmp_path / "writer-no-id.avsc"
    path.write_text(json.dumps(w))
    route = {"topic": "raw", "type": "Reading", "format": "avro-raw", "writer_schema": str(path)}
    mapper = Mapper(config(types, [route]), types)
    record = SourceRecord(
        "raw", 2, 40, None, body(w, {k: v for k, v in V1_RECORD.items() if k != "_id"})
    )
    mapped = mapper.map(record)
    derived = coordinates_id(Coordinates("raw", 2, 40), "string")
    assert mapped.object_id == derived
    assert mapped.document == {**V2_DOCUMENT, "_id": derived}


def config(types, routes):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "kafka": {"bootstrap_servers": "unused:9092"},
            "schemas": {"dir": types.directory},
            "schema_registry": {"url": "http://unused:8081"},
            "routes": routes,
            "backend": {"type": "sqlite", "path": "unused.db"},
        },
        "evolution.yaml",
        env={},
    )


def test_confluent_records_of_v1_and_v2_on_one_topic(types) -> None:  # type: ignore[no-untyped-def]
    registry = AsyncMockSchemaRegistryClient({"url": "mock://evolution"})
    w1 = writer(*V1_FIELDS)
    bad = writer({"name": "_id", "type": "string"}, {"name": "count", "type": "string"})

    async def register() -> tuple[int, int, int]:
        v1 = await registry.register_schema("t-value", Schema(json.dumps(w1), "AVRO"))
        v2 = await registry.register_schema("t2-value", Schema(json.dumps(READER_V2), "AVRO"))
        v3 = await registry.register_schema("t3-value", Schema(json.dumps(bad), "AVRO"))
        return v1, v2, v3

    v1, v2, v3 = asyncio.run(register())
    mapper = Mapper(
        config(types, [{"topic": "t", "type": "Reading", "format": "avro"}]), types, registry
    )

    def framed(schema_id: int, data: bytes) -> bytes:
        return b"\x00" + schema_id.to_bytes(4, "big") + data

    records = [
        SourceRecord("t", 0, 0, None, framed(v1, body(w1, V1_RECORD))),
        SourceRecord("t", 0, 1, None, framed(v2, body(READER_V2, {**V2_DOCUMENT, "_id": "r-2"}))),
        SourceRecord("t", 0, 2, None, framed(v3, body(bad, {"_id": "r-3", "count": "many"}))),
    ]
    asyncio.run(mapper.prepare(records))
    assert mapper.map(records[0]).document == V2_DOCUMENT
    assert mapper.map(records[1]).document == {**V2_DOCUMENT, "_id": "r-2"}
    with pytest.raises(RecordError) as info:
        mapper.map(records[2])
    assert str(info.value) == (
        f"schema-mismatch error at topic 't' partition 0 offset 2: writer schema "
        f"io.example.Reading (schema id {v3}) cannot be resolved onto object type Reading "
        f"({types.get('Reading').file}): reader type: long not compatible with writer type: "
        "string at field count; field ratio, sensor is missing in the writer and has no default "
        "in the reader"
    )


def test_raw_avro_with_a_writer_schema_file(types, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w1 = writer(*V1_FIELDS)
    path = tmp_path / "writer-v1.avsc"
    path.write_text(json.dumps(w1))
    route = {"topic": "raw", "type": "Reading", "format": "avro-raw", "writer_schema": str(path)}
    mapper = Mapper(config(types, [route]), types)
    record = SourceRecord("raw", 3, 9, None, body(w1, V1_RECORD))
    assert mapper.map(record).document == V2_DOCUMENT


def test_wrong_framing_is_a_decode_error(types) -> None:  # type: ignore[no-untyped-def]
    registry = AsyncMockSchemaRegistryClient({"url": "mock://framing"})
    mapper = Mapper(
        config(types, [{"topic": "t", "type": "Reading", "format": "avro"}]), types, registry
    )
    record = SourceRecord("t", 1, 5, None, b'{"_id": "json by mistake"}')
    asyncio.run(mapper.prepare([record]))
    with pytest.raises(RecordError) as info:
        mapper.map(record)
    assert str(info.value) == (
        "decode error at topic 't' partition 1 offset 5: not in the Confluent Avro wire format "
        "(magic byte 0x00 and a 4-byte schema id); the value starts with 0x7b; is the route's "
        "format right?"
    )


def test_unknown_schema_id_is_a_decode_error_naming_the_record_and_the_id(types) -> None:  # type: ignore[no-untyped-def]
    registry = AsyncMockSchemaRegistryClient({"url": "mock://unknown"})
    mapper = Mapper(
        config(types, [{"topic": "t", "type": "Reading", "format": "avro"}]), types, registry
    )
    record = SourceRecord("t", 0, 3, None, b"\x00\x00\x00\x01\x00" + b"\x02a")
    asyncio.run(mapper.prepare([record]))
    with pytest.raises(RecordError) as info:
        mapper.map(record)
    assert info.value.kind is RecordErrorKind.DECODE
    assert str(info.value) == (
        "decode error at topic 't' partition 0 offset 3: schema id 256 is not in the schema "
        "registry http://unused:8081: Schema Not Found; was the record written with another "
        "registry?"
    )
