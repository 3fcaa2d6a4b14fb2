"""PostgreSQL specifics against a real cluster: typed columns, start-up checks, rejections,
retryable start-up, a read-only check, tables from before tombstone markers."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connector.backends import Outcome
from connector.backends.postgres import PostgresBackend
from connector.config import PostgresBackendConfig
from connector.errors import FatalBackendError, RetryableError
from connector.records import MappedObject, SourceRecord
from connector.schemas import load_object_types
from integration.backends import PostgresUnderTest
from integration.kafka_broker import create_topic
from integration.processes import free_port
from integration.support import (
    AVRO_DIR,
    DATA_INGEST,
    committed_offsets,
    produce,
    run_connector,
    unique,
    write_config,
)

TYPES = load_object_types(AVRO_DIR)


def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


INVOICE = {
    "_id": "65a1b2c3d4e5f60718293a4b",
    "number": "INV-1",
    "customer": 1001,
    "issued_at": "2024-02-29T23:30:00+01:00",
    "due_on": "2024-03-31",
    "billing_address": {
        "street": "Bahnhofstrasse 1",
        "city": "Zürich",
        "postal_code": "8001",
        "country": "CH",
    },
    "lines": [{"sku": "A", "description": "Widget", "quantity": 2, "unit_price": "9.99"}],
    "total": "19.98",
}


def test_values_land_in_typed_columns(
    tmp_path: Path, kafka_bootstrap: str, postgres_server: Any
) -> None:
    backend = PostgresUnderTest(postgres_server)
    topic = unique("invoices")
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, [(0, json.dumps(INVOICE).encode())])
    config = write_config(
        tmp_path / "p.yaml",
        kafka_bootstrap,
        unique("g"),
        [{"topic": topic, "type": "Invoice"}],
        backend.section(),
    )
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = fetch(postgres_server.dsn, f'SELECT * FROM "{backend.schema}".invoices')
    assert row["_id"] == "65a1b2c3d4e5f60718293a4b"
    assert row["customer"] == 1001
    assert row["issued_at"] == dt.datetime(2024, 2, 29, 22, 30, tzinfo=dt.UTC)
    assert row["due_on"] == dt.date(2024, 3, 31)
    assert row["total"] == decimal.Decimal("19.98")
    assert row["currency"] == "EUR"  # the Avro default
    assert json.loads(row["billing_address"])["city"] == "Zürich"
    assert json.loads(row["lines"]) == [
        {"description": "Widget", "quantity": 2, "sku": "A", "unit_price": "9.99"}
    ]
    assert (row["_topic"], row["_partition"], row["_offset"]) == (topic, 0, 0)
    indexes = fetch(
        postgres_server.dsn,
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1",
        backend.schema,
    )
    assert sorted(r["indexname"] for r in indexes) == [
        "AppEvent_pkey",
        "Customer_pkey",
        "Measurement_pkey",
        "Measurement_sensor_idx",
        "Sensor_pkey",
        "invoices_customer_idx",
        "invoices_pkey",
    ]


def test_incompatible_table_is_refused_before_consuming(
    tmp_path: Path, kafka_bootstrap: str, postgres_server: Any
) -> None:
    backend = PostgresUnderTest(postgres_server)
    fetch(postgres_server.dsn, f'CREATE SCHEMA "{backend.schema}"')
    fetch(
        postgres_server.dsn,
        f'CREATE TABLE "{backend.schema}"."Measurement" (_id uuid PRIMARY KEY, sensor text NOT NULL, '
        "value text NOT NULL, timestamp timestamptz NOT NULL, _topic text NOT NULL, _partition integer NOT NULL, _offset bigint NOT NULL)",
    )
    topic, group = unique("measurements"), unique("g")
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, [(0, b"{}")])
    config = write_config(
        tmp_path / "p.yaml",
        kafka_bootstrap,
        group,
        [{"topic": topic, "type": "Measurement"}],
        backend.section(),
    )
    result = run_connector(config)
    assert result.returncode == 1
    assert (
        f"error: table {backend.schema}.Measurement (Measurement): column value is text but field value "
        f'needs double precision; migrate it (ALTER TABLE "{backend.schema}"."Measurement" ALTER COLUMN '
        '"value" TYPE double precision) or rename the field'
    ) in result.stderr
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 0}

    check = subprocess.run(
        [DATA_INGEST, "validate", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 1
    assert "column value is text but field value needs double precision" in check.stderr


def test_validate_reports_the_tables(
    tmp_path: Path, kafka_bootstrap: str, postgres_server: Any
) -> None:
    backend = PostgresUnderTest(postgres_server)
    topic = unique("measurements")
    create_topic(kafka_bootstrap, topic, 1)
    config = write_config(
        tmp_path / "p.yaml",
        kafka_bootstrap,
        unique("g"),
        [{"topic": topic, "type": "Measurement"}],
        backend.section(),
    )
    check = subprocess.run(
        [DATA_INGEST, "validate", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    assert (
        f"database ingest, schema {backend.schema}: AppEvent: to create; Customer: to create; "
        "invoices: to create; Measurement: to create; Sensor: to create"
    ) in check.stdout
    assert check.stdout.rstrip().endswith(": OK")


def test_a_value_postgres_refuses_rejects_only_its_object(postgres_server: Any) -> None:
    schema = f"t_{uuid.uuid4().hex[:8]}"
    measurement = TYPES.get("Measurement")

    def obj(i: int, sensor: str) -> MappedObject:
        doc = {
            "_id": uuid.UUID(int=i),
            "sensor": sensor,
            "value": 1.0,
            "timestamp": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        }
        return MappedObject(measurement, doc["_id"], doc, SourceRecord("m", 0, i, None, b"x"))

    async def run() -> list[Any]:
        backend = PostgresBackend(
            PostgresBackendConfig(type="postgres", dsn=postgres_server.dsn, schema=schema), TYPES
        )
        await backend.open()
        try:
            return await backend.ingest([obj(1, "a"), obj(2, "nul\x00byte"), obj(3, "c")])
        finally:
            await backend.close()

    results = asyncio.run(run())
    assert [r.outcome for r in results] == [Outcome.INSERTED, Outcome.REJECTED, Outcome.INSERTED]
    assert (
        results[1].reason
        == 'PostgreSQL refused it: invalid byte sequence for encoding "UTF8": 0x00'
    )
    rows = fetch(postgres_server.dsn, f'SELECT sensor FROM "{schema}"."Measurement" ORDER BY _id')
    assert [r["sensor"] for r in rows] == ["a", "c"]


def backend_for(dsn: str, schema: str, **options: Any) -> PostgresBackend:
    config = PostgresBackendConfig(type="postgres", dsn=dsn, schema=schema, **options)
    return PostgresBackend(config, TYPES)


def schema_exists(dsn: str, schema: str) -> bool:
    return bool(fetch(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))


def test_nothing_listening_is_retryable_at_open_and_open_may_be_called_again() -> None:
    async def run() -> None:
        backend = backend_for(f"postgresql://postgres@127.0.0.1:{free_port()}/x", "s")
        try:
            for step in (backend.open, backend.open, backend.check):
                started = time.monotonic()
                with pytest.raises(RetryableError) as info:
                    await step()
                assert time.monotonic() - started < 5
                assert str(info.value).startswith(
                    "PostgreSQL unavailable while connecting: ConnectionRefusedError: "
                )
        finally:
            await backend.close()

    asyncio.run(run())


def test_a_server_coming_back_is_opened_by_the_retry(postgres_server: Any) -> None:
    schema = f"t_{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        backend = backend_for(postgres_server.dsn, schema)
        try:
            with postgres_server.outage(), pytest.raises(RetryableError):
                await backend.open()
            await backend.open()
            assert [r.outcome for r in await backend.ingest([reading(1)])] == [Outcome.INSERTED]
        finally:
            await backend.close()

    asyncio.run(run())


def test_a_database_that_does_not_exist_is_fatal(postgres_server: Any) -> None:
    async def run() -> None:
        backend = backend_for(postgres_server.dsn_for("no_such_db"), "s")
        with pytest.raises(FatalBackendError) as info:
            await backend.open()
        assert str(info.value) == (
            'backend.dsn: database "no_such_db" does not exist; create the database or fix the DSN'
        )
        await backend.close()

    asyncio.run(run())


def test_check_creates_nothing(postgres_server: Any) -> None:
    schema = f"t_{uuid.uuid4().hex[:8]}"

    async def run() -> str:
        backend = backend_for(postgres_server.dsn, schema)
        try:
            return await backend.check()
        finally:
            await backend.close()

    description = asyncio.run(run())
    assert description.endswith(
        f"schema {schema}: AppEvent: to create; Customer: to create; invoices: to create; "
        "Measurement: to create; Sensor: to create"
    )
    assert not schema_exists(postgres_server.dsn, schema)


def test_check_reports_a_table_from_before_markers_without_changing_it(
    postgres_server: Any,
) -> None:
    """A Sensor table of an earlier version: check() reports the update and leaves it; open()
    adds _deleted, lets the fields be NULL in markers, and creates the reader view."""
    schema = f"t_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server.dsn
    fetch(dsn, f'CREATE SCHEMA "{schema}"')
    fetch(
        dsn,
        f'CREATE TABLE "{schema}"."Sensor" (_id text NOT NULL, name text NOT NULL, '
        "unit text NOT NULL, location jsonb, installed_on date, _topic text NOT NULL, "
        "_partition integer NOT NULL, _offset bigint NOT NULL, PRIMARY KEY (_id))",
    )
    fetch(
        dsn,
        f"""INSERT INTO "{schema}"."Sensor" VALUES ('s1', 'roof', 'LUX', NULL, NULL, 'sensors', 0, 4)""",
    )
    columns = (
        "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = $1::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )
    before = fetch(dsn, columns, f'"{schema}"."Sensor"')

    async def run() -> list[Any]:
        backend = backend_for(dsn, schema)
        try:
            description = await backend.check()
            assert description.endswith(
                "Sensor: to migrate for tombstone markers (_deleted, view Sensor_live)"
            )
            assert await asyncio.to_thread(fetch, dsn, columns, f'"{schema}"."Sensor"') == before
            await backend.open()
            return await backend.ingest(
                [sensor_object("s2", 5, name="cellar"), sensor_object("s1", 6, tombstone=True)]
            )
        finally:
            await backend.close()

    assert [r.outcome for r in asyncio.run(run())] == [Outcome.UPSERTED, Outcome.DELETED]
    live = fetch(dsn, f'SELECT _id, name FROM "{schema}"."Sensor_live" ORDER BY _id')
    assert [(r["_id"], r["name"]) for r in live] == [("s2", "cellar")]
    marker = fetch(dsn, f'SELECT * FROM "{schema}"."Sensor" WHERE _deleted')
    assert [dict(r) for r in marker] == [
        {
            "_id": "s1",
            "name": None,
            "unit": None,
            "location": None,
            "installed_on": None,
            "_topic": "sensors",
            "_partition": 0,
            "_offset": 6,
            "_deleted": True,
        }
    ]


def reading(i: int) -> MappedObject:
    doc = {
        "_id": uuid.UUID(int=i),
        "sensor": "s1",
        "value": 1.0,
        "timestamp": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    }
    return MappedObject(
        TYPES.get("Measurement"), doc["_id"], doc, SourceRecord("m", 0, i, None, b"")
    )


def sensor_object(key: str, offset: int, tombstone: bool = False, **fields: Any) -> MappedObject:
    record = SourceRecord("sensors", 0, offset, key.encode(), None if tombstone else b"")
    document = {"_id": key} if tombstone else {"_id": key, "unit": "LUX", **fields}
    return MappedObject(TYPES.get("Sensor"), key, document, record, 0, tombstone)
