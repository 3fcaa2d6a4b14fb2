"""How failures of the Schema Registry are classified while writer schemas are fetched.

401/403 and a 404 that is not a registry's answer stop the run (no retry can fix them);
an unknown schema id is a record error; 5xx, refused connections and timeouts are retried.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError

from connector.config import parse_config
from connector.errors import ConnectorError, RecordError, RecordErrorKind, RetryableError
from connector.formats.avro_format import public_url
from connector.mapping import Mapper
from connector.records import SourceRecord
from tests.fakes import AVRO_DIR, TYPES

SECRET = "s3cret-Pa55"
MEASUREMENT = TYPES.get("Measurement")
assert MEASUREMENT is not None
DOCUMENT: dict[str, Any] = {
    "_id": "6513270e-269e-4d37-b2a7-4de452e6b438",
    "sensor": "sensor-00",
    "value": 17.5,
    "timestamp": 1_700_000_000_000,
}


class FakeRegistry:
    """Answers ``get_schema`` from a script: an exception to raise or a schema to return."""

    def __init__(self, *answers: BaseException | Schema) -> None:
        self.answers = list(answers)
        self.calls: list[int] = []

    async def get_schema(self, schema_id: int) -> Schema:
        self.calls.append(schema_id)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def mapper(registry: FakeRegistry, url: str = "https://sr.example:8081") -> Mapper:
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "unused:9092"},
            "schemas": {"dir": str(AVRO_DIR)},
            "schema_registry": {"url": url, "basic_auth_user_info": f"ingest:{SECRET}"},
            "routes": [{"topic": "m", "type": "Measurement", "format": "avro"}],
            "backend": {"type": "sqlite", "path": "unused.db"},
        },
        "registry.yaml",
        env={},
    )
    return Mapper(config, TYPES, registry)  # type: ignore[arg-type]


def record(offset: int, schema_id: int = 7) -> SourceRecord:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, MEASUREMENT.parsed, DOCUMENT)
    return SourceRecord(
        "m", 2, offset, None, b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()
    )


MEASUREMENT_SCHEMA = Schema(json.dumps(MEASUREMENT.schema), "AVRO")
HINT = "check schema_registry.basic_auth_user_info / the registry's ACLs"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            SchemaRegistryError(401, -1, "Unknown Schema Registry Error: b''"),
            "schema registry https://sr.example:8081 answered HTTP 401 (authentication failed) "
            f"when fetching schema id 7; {HINT}",
        ),
        (
            SchemaRegistryError(403, 40301, "User is denied operation Read on Subject: m-value"),
            "schema registry https://sr.example:8081 answered HTTP 403 (access denied) when "
            "fetching schema id 7: User is denied operation Read on Subject: m-value; "
            f"{HINT}",
        ),
    ],
)
def test_refused_credentials_stop_at_once_without_the_secret(
    error: SchemaRegistryError, message: str
) -> None:
    m = mapper(FakeRegistry(error))
    with pytest.raises(ConnectorError) as info:
        asyncio.run(m.prepare([record(0)]))
    assert not isinstance(info.value, RetryableError | RecordError)
    assert str(info.value) == message
    assert SECRET not in str(info.value)


def test_credentials_in_the_url_are_not_shown() -> None:
    url = f"https://ingest:{SECRET}@sr.example:8081/apis/ccompat/v7"
    m = mapper(FakeRegistry(SchemaRegistryError(401, -1, "")), url)
    with pytest.raises(ConnectorError) as info:
        asyncio.run(m.prepare([record(0)]))
    assert str(info.value).startswith(
        "schema registry https://sr.example:8081/apis/ccompat/v7 answered HTTP 401"
    )
    assert SECRET not in str(info.value)


def test_public_url_drops_user_info_from_every_url() -> None:
    assert public_url(f"https://u:{SECRET}@a:8081,http://b:8081/x,https://u@c") == (
        "https://a:8081,http://b:8081/x,https://c"
    )


def test_unknown_schema_id_is_a_decode_error_of_its_records_fetched_once() -> None:
    registry = FakeRegistry(SchemaRegistryError(404, 40403, "Schema 7 not found"))
    m = mapper(registry)
    records = [record(10), record(11)]
    asyncio.run(m.prepare(records))
    asyncio.run(m.prepare(records))
    assert registry.calls == [7]
    for r in records:
        with pytest.raises(RecordError) as info:
            m.map(r)
        assert info.value.kind is RecordErrorKind.DECODE
        assert str(info.value) == (
            f"decode error at topic 'm' partition 2 offset {r.offset}: schema id 7 is not in "
            "the schema registry https://sr.example:8081: Schema 7 not found; was the record "
            "written with another registry?"
        )


@pytest.mark.parametrize(
    "error",
    [
        SchemaRegistryError(404, -1, "Unknown Schema Registry Error: b''"),
        SchemaRegistryError(404, None, None),  # type: ignore[arg-type]  # a JSON body of another API
    ],
)
def test_404_that_is_not_a_registry_answer_stops_naming_the_url(
    error: SchemaRegistryError,
) -> None:
    m = mapper(FakeRegistry(error), "http://sr.example:8080")
    with pytest.raises(ConnectorError) as info:
        asyncio.run(m.prepare([record(0)]))
    assert not isinstance(info.value, RetryableError | RecordError)
    assert str(info.value) == (
        "schema registry http://sr.example:8080 answered HTTP 404 without a schema registry "
        "error code when fetching schema id 7; check schema_registry.url: it must be the "
        "Confluent-compatible API (for Apicurio Registry it ends in /apis/ccompat/v7)"
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            SchemaRegistryError(503, 50003, "Error while forwarding the request to the leader"),
            "schema registry https://sr.example:8081 failed to serve schema id 7: Error while "
            "forwarding the request to the leader (HTTP status code 503, SR code 50003)",
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "schema registry https://sr.example:8081 unreachable: ConnectionRefusedError: "
            "[Errno 111] Connection refused",
        ),
        (
            TimeoutError("timed out"),
            "schema registry https://sr.example:8081 unreachable: TimeoutError: timed out",
        ),
    ],
)
def test_outages_are_retryable_and_not_remembered(error: Exception, message: str) -> None:
    registry = FakeRegistry(error, MEASUREMENT_SCHEMA)
    m = mapper(registry)
    with pytest.raises(RetryableError) as info:
        asyncio.run(m.prepare([record(0)]))
    assert str(info.value) == message
    asyncio.run(m.prepare([record(0)]))  # the retry asks again, and now it answers
    assert registry.calls == [7, 7]
    mapped = m.map(record(0))
    assert (str(mapped.object_id), mapped.document["value"]) == (DOCUMENT["_id"], 17.5)
