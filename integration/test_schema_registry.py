"""Round trip through a real Confluent-compatible Schema Registry (Apicurio, ccompat API)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "confluent_kafka.schema_registry.avro",
    reason="needs confluent-kafka[avro,schemaregistry]",
)

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from integration.schema_registry import SchemaRegistryServer

SUBJECT = "t-value"
SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Reading",
    "namespace": "data_ingest.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "sensor", "type": "string"},
        {"name": "value", "type": ["null", "double"], "default": None},
    ],
}


@pytest.fixture(scope="module")
def registry() -> Iterator[SchemaRegistryServer]:
    """A schema registry server shared by this module's tests."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("needs java and mvn on PATH")
    with SchemaRegistryServer() as server:
        yield server


def test_register_fetch_and_avro_round_trip(registry: SchemaRegistryServer) -> None:
    """Register under ``t-value``, fetch by id, then serialize and deserialize a record."""
    client = SchemaRegistryClient({"url": registry.url})
    schema_str = json.dumps(SCHEMA)

    schema_id = client.register_schema(SUBJECT, Schema(schema_str, "AVRO"))
    assert schema_id > 0
    assert SUBJECT in client.get_subjects()

    fetched = client.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert json.loads(fetched.schema_str) == SCHEMA
    latest = client.get_latest_version(SUBJECT)
    assert latest.schema_id == schema_id

    ctx = SerializationContext("t", MessageField.VALUE)
    serializer = AvroSerializer(client, schema_str, conf={"auto.register.schemas": False})
    deserializer = AvroDeserializer(client)
    record = {"id": 7, "sensor": "s-1", "value": 21.5}

    payload = serializer(record, ctx)
    assert payload is not None
    assert payload[0] == 0  # Confluent wire format: magic byte, then 4-byte schema id
    assert int.from_bytes(payload[1:5], "big") == schema_id
    assert deserializer(payload, ctx) == record
