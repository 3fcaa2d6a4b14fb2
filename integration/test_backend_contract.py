"""The backend contract against every real backend: tombstone markers, idempotent re-apply.

Each test runs for SQLite, PostgreSQL and the MongoDB-wire server (FerretDB), calling the
backend directly with mapped objects. What readers see is read back the documented way
(``BackendUnderTest``: the ``_live`` views, the MongoDB marker filter); the markers
themselves, and the purge statements of the README, with the backends' own clients.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pymongo
import pytest
from pydantic import TypeAdapter

from connector.backends import Backend, Outcome, create_backend
from connector.config import BackendConfig
from connector.records import MappedObject, SourceRecord
from integration.backends import BackendUnderTest, MongoUnderTest, PostgresUnderTest
from tests.fakes import TYPES


def backend_of(under_test: BackendUnderTest) -> Backend:
    config = TypeAdapter(BackendConfig).validate_python(under_test.section())
    return create_backend(config, TYPES)


@pytest.fixture
async def backend(backend_under_test: BackendUnderTest) -> AsyncIterator[Backend]:
    b = backend_of(backend_under_test)
    await b.open()
    yield b
    await b.close()


def sensor(
    key: str, offset: int, partition: int = 0, tombstone: bool = False, **fields: Any
) -> MappedObject:
    record = SourceRecord("sensors", partition, offset, key.encode(), None if tombstone else b"")
    document = {"_id": key} if tombstone else {"_id": key, "name": "x", "unit": "LUX", **fields}
    return MappedObject(TYPES.get("Sensor"), key, document, record, 0, tombstone)


def measurement(n: int, offset: int) -> MappedObject:
    key = uuid.UUID(int=n)
    document = {
        "_id": key,
        "sensor": "s1",
        "value": n / 2,
        "timestamp": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    }
    return MappedObject(
        TYPES.get("Measurement"), key, document, SourceRecord("m", 0, offset, None, b"")
    )


def outcomes(results: list[Any]) -> list[Outcome]:
    return [r.outcome for r in results]


async def off_loop(read: Callable[..., Any], *args: Any) -> Any:
    """Run a reader (it has event loops of its own) beside the test's loop."""
    return await asyncio.to_thread(read, *args)


def names(under_test: BackendUnderTest) -> dict[str, str]:
    """The Sensors a reader sees, by _id: their names."""
    return {k: v["name"] for k, v in under_test.documents("Sensor").items()}


# -- the stored state, markers included, with each backend's own client --------------------


def _pg(under_test: BackendUnderTest, query: str) -> list[Any]:
    assert isinstance(under_test, PostgresUnderTest)

    async def run() -> list[Any]:
        conn = await asyncpg.connect(under_test.server.dsn)
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    return asyncio.run(run())


def _mongo(under_test: BackendUnderTest, work: Callable[[Any], Any]) -> Any:
    assert isinstance(under_test, MongoUnderTest)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        under_test.server.uri, uuidRepresentation="standard", tz_aware=True
    )
    try:
        return work(client[under_test.database])
    finally:
        client.close()


def markers(under_test: BackendUnderTest) -> dict[str, tuple[str, int, int]]:
    """The tombstone markers of Sensor by _id: the tombstone's (topic, partition, offset)."""
    if under_test.name == "sqlite":
        with sqlite3.connect(under_test.section()["path"]) as conn:
            rows = conn.execute(
                'SELECT _id, _topic, _partition, _offset FROM "Sensor" WHERE _deleted'
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}
    if under_test.name == "postgres":
        schema = under_test.section()["schema"]
        rows = _pg(
            under_test,
            f'SELECT _id, _topic, _partition, _offset FROM "{schema}"."Sensor" WHERE _deleted',
        )
        return {r["_id"]: (r["_topic"], r["_partition"], r["_offset"]) for r in rows}
    docs = _mongo(under_test, lambda db: list(db["Sensor"].find({"_deleted": True})))
    for doc in docs:
        assert set(doc) == {"_id", "_deleted", "_kafka"}
    return {
        d["_id"]: (d["_kafka"]["topic"], d["_kafka"]["partition"], d["_kafka"]["offset"])
        for d in docs
    }


def purge(under_test: BackendUnderTest, topic: str, partition: int, below: int) -> None:
    """The README's purge of the markers below an offset that every group has committed."""
    if under_test.name == "sqlite":
        with sqlite3.connect(under_test.section()["path"]) as conn:
            conn.execute(
                'DELETE FROM "Sensor" WHERE _deleted AND _topic = ? AND _partition = ? '
                "AND _offset < ?",
                (topic, partition, below),
            )
    elif under_test.name == "postgres":
        schema = under_test.section()["schema"]
        _pg(
            under_test,
            f'DELETE FROM "{schema}"."Sensor" WHERE _deleted AND _topic = {topic!r} '
            f"AND _partition = {partition} AND _offset < {below}",
        )
    else:
        _mongo(
            under_test,
            lambda db: db["Sensor"].delete_many(
                {
                    "_deleted": True,
                    "_kafka.topic": topic,
                    "_kafka.partition": partition,
                    "_kafka.offset": {"$lt": below},
                }
            ),
        )


def stored_state(under_test: BackendUnderTest) -> Any:
    """Everything stored for Measurement and Sensor, markers and coordinates included."""
    if under_test.name == "sqlite":
        with sqlite3.connect(under_test.section()["path"]) as conn:
            return [
                conn.execute(f'SELECT * FROM "{t}" ORDER BY _id').fetchall()
                for t in ("Measurement", "Sensor")
            ]
    if under_test.name == "postgres":
        schema = under_test.section()["schema"]
        return [
            [dict(r) for r in _pg(under_test, f'SELECT * FROM "{schema}"."{t}" ORDER BY _id')]
            for t in ("Measurement", "Sensor")
        ]
    return _mongo(
        under_test,
        lambda db: [list(db[t].find().sort("_id", 1)) for t in ("Measurement", "Sensor")],
    )


# -- tombstone markers ---------------------------------------------------------------------


async def test_a_deleted_standard_object_does_not_come_back_from_a_stale_upsert(
    backend: Backend, backend_under_test: BackendUnderTest
) -> None:
    """upsert@5, tombstone@7, then upsert@5 again: from a replay on the same member, and from
    a stale group member's in-flight batch (a second backend instance): still gone. An
    upsert at the tombstone's own offset cannot bring it back either; upsert@9 does."""
    under_test = backend_under_test
    assert outcomes(await backend.ingest([sensor("s1", 5, name="v5")])) == [Outcome.UPSERTED]
    assert outcomes(await backend.ingest([sensor("s1", 7, tombstone=True)])) == [Outcome.DELETED]
    assert await off_loop(under_test.ids, "Sensor") == []
    assert await off_loop(markers, under_test) == {"s1": ("sensors", 0, 7)}

    assert outcomes(await backend.ingest([sensor("s1", 5, name="v5")])) == [Outcome.UPSERTED]
    stale = backend_of(under_test)
    await stale.open()
    try:
        await stale.ingest([sensor("s1", 5, name="v5"), sensor("s1", 7, name="same offset")])
    finally:
        await stale.close()
    assert await off_loop(under_test.ids, "Sensor") == []
    assert await off_loop(markers, under_test) == {"s1": ("sensors", 0, 7)}

    assert outcomes(await backend.ingest([sensor("s1", 9, name="v9")])) == [Outcome.UPSERTED]
    assert await off_loop(names, under_test) == {"s1": "v9"}
    assert await off_loop(markers, under_test) == {}


async def test_markers_are_ordered_per_partition_and_can_be_purged(
    backend: Backend, backend_under_test: BackendUnderTest
) -> None:
    under_test = backend_under_test
    results = await backend.ingest(
        [
            sensor("s1", 3, tombstone=True),  # never stored: a marker all the same
            sensor("s2", 4, name="kept"),
            sensor("s3", 5, name="a"),
            sensor("s3", 6, tombstone=True),
            sensor("s4", 7, tombstone=True),
        ]
    )
    assert outcomes(results) == [
        Outcome.DELETED,
        Outcome.UPSERTED,
        Outcome.UPSERTED,
        Outcome.DELETED,
        Outcome.DELETED,
    ]
    await backend.ingest([sensor("s1", 1, name="late"), sensor("s3", 2, name="late")])
    assert await off_loop(names, under_test) == {"s2": "kept"}
    # Another partition is not ordered against this one: its upsert replaces the marker.
    await backend.ingest([sensor("s4", 0, partition=1, name="p1")])
    assert await off_loop(names, under_test) == {"s2": "kept", "s4": "p1"}
    assert await off_loop(markers, under_test) == {
        "s1": ("sensors", 0, 3),
        "s3": ("sensors", 0, 6),
    }
    # Every group has committed partition 0 past offset 5: the markers below it may go.
    await off_loop(purge, under_test, "sensors", 0, 5)
    assert await off_loop(markers, under_test) == {"s3": ("sensors", 0, 6)}
    assert await off_loop(names, under_test) == {"s2": "kept", "s4": "p1"}


# -- idempotent re-apply -------------------------------------------------------------------


async def test_reapplying_a_batch_reaches_the_same_state(
    backend: Backend, backend_under_test: BackendUnderTest
) -> None:
    """The pipeline re-applies a batch after a RetryableError (part of it may have been
    written): the second application changes nothing and reports duplicates."""
    under_test = backend_under_test
    batch = [
        measurement(1, 0),
        sensor("s1", 1, name="a"),
        measurement(2, 2),
        sensor("s2", 3, name="b"),
        sensor("s1", 4, tombstone=True),
        measurement(1, 5),
    ]
    first = await backend.ingest(batch)
    state = await off_loop(stored_state, under_test)
    again = await backend.ingest(batch)
    assert outcomes(first) == [
        Outcome.INSERTED,
        Outcome.UPSERTED,
        Outcome.INSERTED,
        Outcome.UPSERTED,
        Outcome.DELETED,
        Outcome.DUPLICATE,
    ]
    assert outcomes(again) == [
        Outcome.DUPLICATE,
        Outcome.UPSERTED,
        Outcome.DUPLICATE,
        Outcome.UPSERTED,
        Outcome.DELETED,
        Outcome.DUPLICATE,
    ]
    assert await off_loop(stored_state, under_test) == state
    assert await off_loop(names, under_test) == {"s2": "b"}
    # A first attempt that wrote only part of the batch ends the same after the retry.
    retried = [measurement(3, 6), sensor("s3", 7, name="c"), sensor("s2", 8, tombstone=True)]
    await backend.ingest(retried[:2])
    assert outcomes(await backend.ingest(retried)) == [
        Outcome.DUPLICATE,
        Outcome.UPSERTED,
        Outcome.DELETED,
    ]
    assert await off_loop(names, under_test) == {"s3": "c"}
    assert sorted(await off_loop(under_test.ids, "Measurement")) == [
        str(uuid.UUID(int=n)) for n in (1, 2, 3)
    ]
