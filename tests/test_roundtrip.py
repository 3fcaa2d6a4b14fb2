"""Round trips for every example object type: generated object → encoded → decoded → mapped.

The mapped document must equal the generated object, whichever format carried it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import io
import json
import math
import uuid
from functools import cache
from typing import Any

import fastavro
import pytest
from bson import ObjectId
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._async.mock_schema_registry_client import (
    AsyncMockSchemaRegistryClient,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.config import parse_config
from connector.mapping import Mapper
from connector.records import SourceRecord
from tests.fakes import AVRO_DIR, TYPES
from tests.strategies import objects, to_avro

TYPE_NAMES = TYPES.names()
FORMATS = ("json", "avro", "avro-raw")


@cache
def mapper() -> tuple[Mapper, dict[str, int]]:
    """One Mapper with a route per (format, type), and the registry ids of the types."""
    registry = AsyncMockSchemaRegistryClient({"url": "mock://roundtrip"})
    routes = [
        {"topic": f"{fmt}-{name}", "type": name, "format": fmt}
        for fmt in FORMATS
        for name in TYPE_NAMES
    ]
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "unused:9092"},
            "schemas": {"dir": str(AVRO_DIR)},
            "schema_registry": {"url": "http://unused:8081"},
            "routes": routes,
            "backend": {"type": "sqlite", "path": "unused.db"},
        },
        "roundtrip.yaml",
        env={},
    )

    async def register() -> dict[str, int]:
        ids = {}
        for t in TYPES:
            ids[t.name] = await registry.register_schema(
                f"{t.name}-value", Schema(json.dumps(t.schema), "AVRO")
            )
        return ids

    return Mapper(config, TYPES, registry), asyncio.run(register())


def to_json(value: Any) -> Any:
    """Plain JSON as a producer would write it: ISO times, base64 bytes, decimal strings."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID | ObjectId):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def encode(fmt: str, type_name: str, obj: dict[str, Any]) -> bytes:
    if fmt == "json":
        return json.dumps(to_json(obj)).encode()
    body = io.BytesIO()
    fastavro.schemaless_writer(body, TYPES.get(type_name).parsed, to_avro(obj))
    if fmt == "avro-raw":
        return body.getvalue()
    schema_id = mapper()[1][type_name]
    return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    fmt = draw(st.sampled_from(FORMATS))
    name = draw(st.sampled_from(TYPE_NAMES))
    return fmt, name, draw(objects(TYPES.get(name).schema))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_type_round_trips_through_every_format(case: tuple[str, str, dict[str, Any]]) -> None:
    fmt, name, obj = case
    m, _ = mapper()
    record = SourceRecord(f"{fmt}-{name}", 0, 7, None, encode(fmt, name, obj))
    asyncio.run(m.prepare([record]))
    mapped = m.map(record)
    assert mapped.object_type.name == name
    assert mapped.object_id == obj["_id"]
    assert mapped.document == obj


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_double_survives_every_format(fmt: str) -> None:
    m, _ = mapper()
    obj = {
        "_id": uuid.UUID(int=1),
        "sensor": "s",
        "value": math.nan,
        "timestamp": dt.datetime(2024, 2, 29, tzinfo=dt.UTC),
    }
    value = (
        json.dumps({**to_json(obj), "value": "NaN"}).encode()
        if fmt == "json"
        else encode(fmt, "Measurement", obj)
    )
    record = SourceRecord(f"{fmt}-Measurement", 0, 1, None, value)
    asyncio.run(m.prepare([record]))
    assert math.isnan(m.map(record).document["value"])
