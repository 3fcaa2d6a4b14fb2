"""The MongoDB backend against a real MongoDB-wire server (FerretDB 1.24 over SQLite).

The backend is called directly with batches of mapped objects of the example types; what
it stored is read back with a separate (sync) client. Every test has a database of its own.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from connector.backends import Outcome
from connector.backends.mongodb import MongoBackend
from connector.backends.mongodb_timeseries import delete_op, repeated
from connector.config import MongoBackendConfig
from connector.errors import FatalBackendError, RetryableError
from connector.records import MappedObject, SourceRecord
from integration.backends import MongoUnderTest, normalised
from integration.processes import free_port
from tests.fakes import TYPES

UTC = dt.UTC
T0 = dt.datetime(2024, 2, 29, 23, 30, 15, 123456, tzinfo=UTC)


def config(server: Any, database: str, **options: Any) -> MongoBackendConfig:
    values: dict[str, Any] = {
        "type": "mongodb",
        "uri": server.uri,
        "database": database,
        "decimals": "string",
    }
    values.update(options)
    return MongoBackendConfig.model_validate(values)


@pytest.fixture
def store(mongo_server: Any) -> MongoUnderTest:
    return MongoUnderTest(mongo_server)


@pytest.fixture
async def backend(mongo_server: Any, store: MongoUnderTest) -> AsyncIterator[MongoBackend]:
    b = MongoBackend(config(mongo_server, store.database), TYPES)
    await b.open()
    yield b
    await b.close()


def raw_documents(store: MongoUnderTest, collection: str) -> list[dict[str, Any]]:
    """The stored documents as the driver decodes them, in _id order."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        store.server.uri, uuidRepresentation="standard", tz_aware=True
    )
    try:
        return list(client[store.database][collection].find().sort("_id", 1))
    finally:
        client.close()


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def measurement(n: int, offset: int, value: float = 1.5, partition: int = 0) -> MappedObject:
    document = {"_id": uid(n), "sensor": "s-1", "value": value, "timestamp": T0}
    return MappedObject(
        TYPES.get("Measurement"), uid(n), document, SourceRecord("m", partition, offset, None, b"")
    )


def event(n: int, offset: int, **fields: Any) -> MappedObject:
    document = {
        "_id": uid(n),
        "app": "shop",
        "level": "INFO",
        "message": "hello",
        "occurred_at": T0,
        "attributes": {},
        "duration_ms": None,
        "device": None,
        **fields,
    }
    return MappedObject(
        TYPES.get("AppEvent"), uid(n), document, SourceRecord("e", 0, offset, None, b"")
    )


def invoice(oid: ObjectId, offset: int, number: str = "INV-1") -> MappedObject:
    document = {
        "_id": oid,
        "number": number,
        "customer": 2**40,
        "issued_at": T0,
        "due_on": dt.date(2024, 3, 31),
        "currency": "EUR",
        "billing_address": {
            "street": "Main St 1",
            "city": "Springfield",
            "postal_code": "12345",
            "country": "US",
        },
        "lines": [
            {
                "sku": "A",
                "description": "apple",
                "quantity": 3,
                "unit_price": decimal.Decimal("0.50"),
            },
            {"sku": "B", "description": "pear", "quantity": 1, "unit_price": decimal.Decimal("2")},
        ],
        "total": decimal.Decimal("3.50"),
        "paid": False,
    }
    return MappedObject(
        TYPES.get("Invoice"), oid, document, SourceRecord("i", 0, offset, None, b"")
    )


def sensor(
    key: str, offset: int, partition: int = 0, tombstone: bool = False, **fields: Any
) -> MappedObject:
    record = SourceRecord("s", partition, offset, key.encode(), None if tombstone else b"{}")
    document = {"_id": key} if tombstone else {"_id": key, "unit": "CELSIUS", **fields}
    return MappedObject(TYPES.get("Sensor"), key, document, record, 0, tombstone)


def outcomes(results: list[Any]) -> list[Outcome]:
    return [r.outcome for r in results]


# -- asymmetric: insert, duplicate, conflict ---------------------------------------------------


async def test_insert_duplicate_conflict(backend: MongoBackend, store: MongoUnderTest) -> None:
    first = await backend.ingest([measurement(1, 0), measurement(2, 1, value=2.0)])
    assert outcomes(first) == [Outcome.INSERTED, Outcome.INSERTED]
    again = await backend.ingest([measurement(1, 2), measurement(2, 3, value=9.0)])
    assert again[0].outcome is Outcome.DUPLICATE
    assert again[0].reason is None
    assert again[1].outcome is Outcome.CONFLICT
    assert again[1].reason == (
        "a different Measurement is already stored under _id "
        "'00000000-0000-0000-0000-000000000002' (fields differing: value); "
        "first write wins, this one was not written"
    )
    stored_at = T0.replace(microsecond=123000)  # a BSON date holds milliseconds
    assert raw_documents(store, "Measurement") == [
        {"_id": uid(1), "sensor": "s-1", "value": 1.5, "timestamp": stored_at},
        {"_id": uid(2), "sensor": "s-1", "value": 2.0, "timestamp": stored_at},
    ]


async def test_key_order_and_microseconds_do_not_make_a_conflict(backend: MongoBackend) -> None:
    await backend.ingest([measurement(1, 0)])
    replay = measurement(1, 1)
    replay.document = {
        "timestamp": T0.replace(microsecond=123999).astimezone(dt.timezone(dt.timedelta(hours=2))),
        "value": 1.5,
        "sensor": "s-1",
        "_id": uid(1),
    }
    assert outcomes(await backend.ingest([replay])) == [Outcome.DUPLICATE]


async def test_invoice_is_stored_as_atlas_device_sync_stored_it(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    obj = invoice(oid, 0)
    assert outcomes(await backend.ingest([obj])) == [Outcome.INSERTED]
    assert raw_documents(store, "invoices") == [
        {
            "_id": oid,
            "number": "INV-1",
            "customer": 2**40,
            "issued_at": dt.datetime(2024, 2, 29, 23, 30, 15, 123000, tzinfo=UTC),
            "due_on": dt.datetime(2024, 3, 31, tzinfo=UTC),
            "currency": "EUR",
            "billing_address": {
                "street": "Main St 1",
                "city": "Springfield",
                "postal_code": "12345",
                "country": "US",
            },
            "lines": [
                {"sku": "A", "description": "apple", "quantity": 3, "unit_price": "0.50"},
                {"sku": "B", "description": "pear", "quantity": 1, "unit_price": "2"},
            ],
            "total": "3.50",
            "paid": False,
        }
    ]
    # The canonical JSON form equals the SQLite probe's but for the date and the micros.
    expected = normalised(obj.document)
    expected["due_on"] = "2024-03-31T00:00:00Z"
    expected["issued_at"] = "2024-02-29T23:30:15.123Z"
    assert store.documents("invoices") == {str(oid): expected}
    assert store.ids("invoices") == [str(oid)]
    assert outcomes(await backend.ingest([invoice(oid, 1)])) == [Outcome.DUPLICATE]


async def test_event_with_map_and_embedded_device_round_trips(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    obj = event(
        1,
        0,
        attributes={"path": "/cart", "user": "u1"},
        duration_ms=12.5,
        device={"model": "X", "os": "Android", "app_version": "1.2"},
    )
    assert outcomes(await backend.ingest([obj])) == [Outcome.INSERTED]
    expected = normalised(obj.document)
    expected["occurred_at"] = "2024-02-29T23:30:15.123Z"
    assert store.documents("AppEvent") == {str(uid(1)): expected}


async def test_a_rejected_document_does_not_stop_the_others(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    results = await backend.ingest(
        [
            measurement(1, 0),
            event(2, 1, attributes={"$where": "x"}),  # the server refuses the key
            measurement(3, 2, value=float("nan")),  # FerretDB: refused before sending
            measurement(4, 3, value=float("inf")),  # FerretDB refuses infinities
            event(5, 4, attributes={"a\x00b": "x"}),  # not valid BSON at all
            event(6, 5, attributes={"ok": "fine"}),
            measurement(7, 6),
        ]
    )
    assert outcomes(results) == [
        Outcome.INSERTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.INSERTED,
        Outcome.INSERTED,
    ]
    assert (
        results[1].reason == "invalid key: \"$where\" (key must not start with '$' sign) (code 2)"
    )
    assert results[2].reason == (
        "document cannot be stored: field value: NaN cannot be written to FerretDB v1.24.2, "
        "which drops the connection on NaN; send null or a number"
    )
    assert results[3].reason == (
        'invalid value: { "value": +Inf } (infinity values are not allowed) (code 2)'
    )
    assert results[4].reason == (
        "document cannot be stored: not valid BSON: Invalid document: "
        "Key names must not contain the NULL byte"
    )
    assert sorted(store.ids("Measurement")) == [str(uid(1)), str(uid(7))]
    assert store.ids("AppEvent") == [str(uid(6))]
    # The connection survived: the next batch goes through.
    assert outcomes(await backend.ingest([measurement(8, 7)])) == [Outcome.INSERTED]


async def test_nan_in_a_nested_field_is_named(backend: MongoBackend) -> None:
    oid = ObjectId()
    obj = invoice(oid, 0)
    obj.document["lines"][1]["extra"] = [1.0, float("nan")]
    [result] = await backend.ingest([obj])
    assert result == type(result)(
        Outcome.REJECTED,
        "document cannot be stored: field lines[1].extra[1]: NaN cannot be written to "
        "FerretDB v1.24.2, which drops the connection on NaN; send null or a number",
    )


async def test_same_id_twice_in_one_batch(backend: MongoBackend, store: MongoUnderTest) -> None:
    await backend.ingest([measurement(9, 0, value=9.0)])
    results = await backend.ingest(
        [
            measurement(1, 1),
            measurement(1, 2),
            measurement(1, 3, value=2.0),
            measurement(9, 4, value=1.0),  # stored earlier with 9.0
            measurement(9, 5, value=1.0),
            measurement(9, 6, value=9.0),
        ]
    )
    assert outcomes(results) == [
        Outcome.INSERTED,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.CONFLICT,
        Outcome.CONFLICT,
        Outcome.DUPLICATE,
    ]
    assert results[2].reason == (
        "a different Measurement is already stored under _id "
        "'00000000-0000-0000-0000-000000000001' (fields differing: value); "
        "first write wins, this one was not written"
    )
    docs = store.documents("Measurement")
    assert sorted(docs) == [str(uid(1)), str(uid(9))]
    assert [docs[str(uid(1))]["value"], docs[str(uid(9))]["value"]] == [1.5, 9.0]


async def test_time_series_collections_are_looked_up_before_inserting(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    """Time-series collections have no unique _id, so the backend reads the batch's _ids
    first. FerretDB has no time series: the path is forced onto a plain collection here."""
    await backend.ingest([measurement(1, 0), measurement(2, 1)])
    backend._timeseries.add("Measurement")
    sent: list[list[Any]] = []
    insert_many = backend._insert_many

    async def spy(collection: str, items: list[Any]) -> dict[int, dict[str, Any]]:
        sent.append([item.key for item in items])
        return await insert_many(collection, items)

    backend._insert_many = spy  # type: ignore[method-assign]
    results = await backend.ingest(
        [
            measurement(1, 2),
            measurement(2, 3, value=7.0),
            measurement(3, 4),
            measurement(3, 5, value=8.0),
            measurement(2, 6),
        ]
    )
    assert outcomes(results) == [
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.INSERTED,
        Outcome.CONFLICT,
        Outcome.DUPLICATE,
    ]
    assert results[3].reason == (
        "a different Measurement is already stored under _id "
        "'00000000-0000-0000-0000-000000000003' (fields differing: value); "
        "first write wins, this one was not written"
    )
    assert sent == [[uid(3)]]  # only the new _id was sent
    docs = store.documents("Measurement")
    assert {k: v["value"] for k, v in docs.items()} == {
        str(uid(1)): 1.5,
        str(uid(2)): 1.5,
        str(uid(3)): 1.5,
    }
    # Inserted into a time-series collection: tagged with its coordinates and write id.
    tag = raw_documents(store, "Measurement")[2]["_kafka"]
    assert {k: tag[k] for k in ("topic", "partition", "offset")} == {
        "topic": "m",
        "partition": 0,
        "offset": 4,
    }
    assert isinstance(tag["write"], ObjectId)
    # A re-applied batch is a duplicate: the tag does not take part in the comparison.
    assert outcomes(await backend.ingest([measurement(3, 4)])) == [Outcome.DUPLICATE]


async def test_a_surplus_copy_is_deleted_by_its_write_id_only(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    """FerretDB keeps _id unique, so two copies of one object cannot be stored to show the
    clean-up end to end (tests/test_mongodb_offline.py checks which copy stays). What the
    server can show: the copy count query, and that a delete by write id removes exactly
    that copy, not another copy of the object."""
    backend._timeseries.add("Measurement")
    await backend.ingest([measurement(1, 0), measurement(2, 1)])
    assert await repeated(backend._collection("Measurement"), [uid(1), uid(2)]) == {}
    [first, second] = raw_documents(store, "Measurement")
    other = {**first, "_kafka": {**first["_kafka"], "write": ObjectId()}}
    assert await backend._write_ops("Measurement", "delete", [delete_op(other)], [0]) == {}
    assert len(raw_documents(store, "Measurement")) == 2
    assert await backend._write_ops("Measurement", "delete", [delete_op(first)], [0]) == {}
    assert raw_documents(store, "Measurement") == [second]


async def test_duplicate_in_another_unique_index_is_rejected_not_a_conflict(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.server.uri)
    try:
        client[store.database]["invoices"].create_index("number", unique=True)
    finally:
        client.close()
    a, b = ObjectId("65a1b2c3d4e5f60718293a4b"), ObjectId("65a1b2c3d4e5f60718293a4c")
    results = await backend.ingest([invoice(a, 0), invoice(b, 1)])
    assert outcomes(results) == [Outcome.INSERTED, Outcome.REJECTED]
    assert results[1].reason is not None
    assert results[1].reason.startswith("E11000 duplicate key error")
    assert store.ids("invoices") == [str(a)]


async def test_tombstone_on_an_asymmetric_type_is_rejected(backend: MongoBackend) -> None:
    obj = measurement(1, 0)
    obj.tombstone = True
    [result] = await backend.ingest([obj])
    assert result.outcome is Outcome.REJECTED
    assert result.reason == (
        "a tombstone cannot delete the asymmetric type Measurement; its objects are "
        "insert-only (R8)"
    )


# -- standard types: upsert, latest offset wins, tombstones ------------------------------------


async def test_standard_upsert_latest_offset_wins_and_tombstones_delete(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    results = await backend.ingest(
        [sensor("s1", 0, name="a"), sensor("s2", 1, name="b"), sensor("s1", 2, name="c")]
    )
    assert outcomes(results) == [Outcome.UPSERTED] * 3
    assert raw_documents(store, "Sensor") == [
        {
            "_id": "s1",
            "unit": "CELSIUS",
            "name": "c",
            "_kafka": {"topic": "s", "partition": 0, "offset": 2},
        },
        {
            "_id": "s2",
            "unit": "CELSIUS",
            "name": "b",
            "_kafka": {"topic": "s", "partition": 0, "offset": 1},
        },
    ]
    # An older offset of the same partition, replayed: reported done, nothing changes.
    assert outcomes(await backend.ingest([sensor("s1", 1, name="stale")])) == [Outcome.UPSERTED]
    assert outcomes(await backend.ingest([sensor("s1", 0, tombstone=True)])) == [Outcome.DELETED]
    assert store.documents("Sensor") == {
        "s1": {"_id": "s1", "unit": "CELSIUS", "name": "c"},
        "s2": {"_id": "s2", "unit": "CELSIUS", "name": "b"},
    }
    # The same offset again (a redelivery) and newer ones replace.
    results = await backend.ingest(
        [sensor("s1", 2, name="c2"), sensor("s2", 7, name="b2"), sensor("s2", 5, name="older")]
    )
    assert outcomes(results) == [Outcome.UPSERTED] * 3
    assert store.documents("Sensor") == {
        "s1": {"_id": "s1", "unit": "CELSIUS", "name": "c2"},
        "s2": {"_id": "s2", "unit": "CELSIUS", "name": "b2"},
    }
    # Another partition is not ordered against this one: its write replaces.
    await backend.ingest([sensor("s2", 0, partition=1, name="p1")])
    assert store.documents("Sensor")["s2"]["name"] == "p1"
    assert raw_documents(store, "Sensor")[1]["_kafka"] == {
        "topic": "s",
        "partition": 1,
        "offset": 0,
    }
    results = await backend.ingest(
        [sensor("s1", 9, tombstone=True), sensor("zz", 10, tombstone=True)]
    )
    assert outcomes(results) == [Outcome.DELETED, Outcome.DELETED]
    assert store.ids("Sensor") == ["s2"]
    # Upsert then tombstone of one _id in one batch: the tombstone is the last word.
    results = await backend.ingest([sensor("s3", 11, name="x"), sensor("s3", 12, tombstone=True)])
    assert outcomes(results) == [Outcome.UPSERTED, Outcome.DELETED]
    assert store.ids("Sensor") == ["s2"]


async def test_a_stale_replay_first_in_the_batch_does_not_skip_the_rest(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    """FerretDB stops even an unordered update at its first error without saying so; the
    backend sends ordered updates and resends what follows an error."""
    await backend.ingest([sensor("s1", 5, name="a"), sensor("s4", 5, name="a")])
    results = await backend.ingest(
        [
            sensor("s1", 1, name="stale"),
            sensor("s2", 6, name="new"),
            sensor("s4", 0, name="stale too"),
            sensor("s3", 7, name="x"),
            sensor("s5", 8, name="y"),
        ]
    )
    assert outcomes(results) == [Outcome.UPSERTED] * 5
    assert {k: v["name"] for k, v in store.documents("Sensor").items()} == {
        "s1": "a",
        "s2": "new",
        "s3": "x",
        "s4": "a",
        "s5": "y",
    }


async def test_standard_and_asymmetric_in_one_batch(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    results = await backend.ingest(
        [sensor("s1", 0, name="a"), measurement(1, 0), sensor("s1", 1, name="b")]
    )
    assert outcomes(results) == [Outcome.UPSERTED, Outcome.INSERTED, Outcome.UPSERTED]
    assert store.documents("Sensor") == {"s1": {"_id": "s1", "unit": "CELSIUS", "name": "b"}}
    assert "_kafka" not in raw_documents(store, "Measurement")[0]


async def test_unstorable_standard_object_is_rejected_alone(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    results = await backend.ingest(
        [sensor("s1", 0, name="a"), sensor("s2", 1, location={"lat": float("nan"), "lon": 0.0})]
    )
    assert outcomes(results) == [Outcome.UPSERTED, Outcome.REJECTED]
    assert results[1].reason == (
        "document cannot be stored: field location.lat: NaN cannot be written to "
        "FerretDB v1.24.2, which drops the connection on NaN; send null or a number"
    )
    assert store.ids("Sensor") == ["s1"]


async def test_a_standard_object_the_server_refuses_is_rejected_with_what_it_superseded(
    backend: MongoBackend, store: MongoUnderTest
) -> None:
    results = await backend.ingest(
        [
            sensor("s1", 0, name="a"),
            sensor("s2", 1, name="b"),
            sensor("s2", 2, name="c", location={"$lat": 1.0}),  # FerretDB refuses the key
            sensor("s3", 3, name="d"),
        ]
    )
    assert outcomes(results) == [
        Outcome.UPSERTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.UPSERTED,
    ]
    assert results[2].reason == "invalid key: \"$lat\" (key must not start with '$' sign) (code 2)"
    assert results[1].reason == (
        "not written: the Sensor with the same _id at offset 2 of this batch, which supersedes "
        "it, was rejected: invalid key: \"$lat\" (key must not start with '$' sign) (code 2)"
    )
    assert sorted(store.ids("Sensor")) == ["s1", "s3"]


# -- failures ----------------------------------------------------------------------------------


async def test_outage_raises_retryable_and_the_retry_works(
    mongo_server: Any, store: MongoUnderTest
) -> None:
    b = MongoBackend(config(mongo_server, store.database, server_selection_timeout_ms=500), TYPES)
    await b.open()
    try:
        assert outcomes(await b.ingest([measurement(1, 0)])) == [Outcome.INSERTED]
        with mongo_server.outage():
            started = time.monotonic()
            with pytest.raises(RetryableError, match=r"unavailable while writing the batch"):
                await b.ingest([measurement(2, 1)])
            with pytest.raises(RetryableError):
                await b.ingest([measurement(2, 1)])
            assert time.monotonic() - started < 5
        results = await b.ingest([measurement(2, 1), measurement(1, 2)])
        assert outcomes(results) == [Outcome.INSERTED, Outcome.DUPLICATE]
    finally:
        await b.close()
    assert sorted(store.ids("Measurement")) == [str(uid(1)), str(uid(2))]


async def test_nothing_listening_is_retryable_at_open_within_the_default_timeout() -> None:
    """The pipeline retries open() like a write: it must raise, soon, and may be called
    again (no client left behind)."""
    b = MongoBackend(
        MongoBackendConfig(type="mongodb", uri=f"mongodb://127.0.0.1:{free_port()}/", database="x"),
        TYPES,
    )
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(RetryableError, match=r"^MongoDB unavailable while connecting: "):
            await b.open()
        assert time.monotonic() - started < 8  # server_selection_timeout_ms: 5 s by default
    with pytest.raises(RetryableError, match=r"^MongoDB unavailable while connecting: "):
        await b.check()
    await b.close()


async def test_open_after_a_failed_open_works(mongo_server: Any, store: MongoUnderTest) -> None:
    b = MongoBackend(config(mongo_server, store.database), TYPES)
    try:
        with mongo_server.outage(), pytest.raises(RetryableError):
            await b.open()
        await b.open()
        assert outcomes(await b.ingest([measurement(1, 0)])) == [Outcome.INSERTED]
    finally:
        await b.close()


def databases(store: MongoUnderTest) -> list[str]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.server.uri)
    try:
        return client.list_database_names()
    finally:
        client.close()


async def test_check_creates_nothing(mongo_server: Any, store: MongoUnderTest) -> None:
    b = MongoBackend(config(mongo_server, store.database), TYPES)
    try:
        description = await b.check()
    finally:
        await b.close()
    assert description.endswith(
        "collections present: none; created on first write: AppEvent, Customer, Measurement, "
        "Sensor, invoices"
    )
    assert store.database not in databases(store)


async def test_timeseries_is_refused_by_ferretdb_at_open(
    mongo_server: Any, store: MongoUnderTest
) -> None:
    b = MongoBackend(
        config(
            mongo_server,
            store.database,
            timeseries={"Measurement": {"time_field": "timestamp", "meta_field": "sensor"}},
        ),
        TYPES,
    )
    ferretdb = f"FerretDB {mongo_server.ferretdb_version}"
    message = (
        f"backend.timeseries.Measurement: the server (MongoDB {mongo_server.version} "
        f"({ferretdb})) has no time-series collections ({ferretdb} does not implement them); "
        "remove backend.timeseries, or use MongoDB 7.0 or later"
    )
    for step in (b.check, b.open):
        with pytest.raises(FatalBackendError) as info:
            await step()
        assert str(info.value) == message
    await b.close()
    assert store.database not in databases(store)


async def test_decimal128_is_refused_on_ferretdb_at_open(
    mongo_server: Any, store: MongoUnderTest
) -> None:
    b = MongoBackend(config(mongo_server, store.database, decimals="decimal128"), TYPES)
    with pytest.raises(FatalBackendError) as info:
        await b.open()
    assert str(info.value) == (
        f"backend.decimals: FerretDB {mongo_server.ferretdb_version} cannot store Decimal128 "
        "values (it drops the connection on them); set decimals: string to store decimals as text"
    )
    await b.close()


async def test_invalid_database_name_is_fatal(mongo_server: Any) -> None:
    b = MongoBackend(config(mongo_server, "no/slash"), TYPES)
    with pytest.raises(FatalBackendError, match=r"^backend.database: "):
        await b.open()
    await b.close()


async def test_check_describes_server_database_and_collections(
    backend: MongoBackend, mongo_server: Any, store: MongoUnderTest
) -> None:
    await backend.ingest([measurement(1, 0)])
    assert await backend.check() == (
        f"MongoDB {mongo_server.version} (FerretDB {mongo_server.ferretdb_version}) at "
        f"127.0.0.1:{mongo_server.port}, database {store.database!r} (write concern "
        "w=majority j=true wtimeout=30000 ms): collections present: Measurement; "
        "created on first write: AppEvent, Customer, Sensor, invoices"
    )
