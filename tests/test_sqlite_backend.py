"""The embedded SQLite backend: insert-only, idempotent, conflicts never overwrite (R8, R9),
tombstone markers, a read-only check, several processes on one file."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connector.backends import Outcome
from connector.backends.sqlite import SqliteBackend
from connector.config import SqliteBackendConfig
from connector.errors import FatalBackendError, RetryableError
from connector.records import MappedObject, SourceRecord
from tests.fakes import TYPES

MEASUREMENT = TYPES.get("Measurement")
SENSOR = TYPES.get("Sensor")


def obj(object_id: object, offset: int, **fields: object) -> MappedObject:
    document = {"_id": object_id, **fields}
    return MappedObject(MEASUREMENT, object_id, document, SourceRecord("m", 0, offset, None, b"{}"))


def sensor(
    object_id: str, offset: int, partition: int = 0, tombstone: bool = False, **fields: object
) -> MappedObject:
    record = SourceRecord("s", partition, offset, object_id.encode(), None if tombstone else b"{}")
    return MappedObject(SENSOR, object_id, {"_id": object_id, **fields}, record, 0, tombstone)


def config(path: Path, **options: Any) -> SqliteBackendConfig:
    return SqliteBackendConfig(type="sqlite", path=str(path), **options)


@pytest.fixture
async def backend(tmp_path: Path):  # type: ignore[no-untyped-def]
    b = SqliteBackend(config(tmp_path / "ingest.db"))
    await b.open()
    yield b
    await b.close()


def query(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        return conn.execute(sql).fetchall()


def live_sensors(tmp_path: Path) -> dict[str, dict[str, object]]:
    """What a reader sees: the view without tombstone markers."""
    return {i: json.loads(d) for i, d in query(tmp_path, 'SELECT _id, doc FROM "Sensor_live"')}


def rows(tmp_path: Path) -> list[tuple[object, dict[str, object], int]]:
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        return [
            (i, json.loads(doc), off)
            for i, doc, off in conn.execute(
                'SELECT _id, doc, _offset FROM "Measurement" ORDER BY _offset'
            )
        ]


async def test_insert_duplicate_conflict(backend: SqliteBackend, tmp_path: Path) -> None:
    first = await backend.ingest([obj("a", 0, v=1.5), obj(7, 1, v=2)])
    assert [r.outcome for r in first] == [Outcome.INSERTED, Outcome.INSERTED]
    again = await backend.ingest([obj("a", 2, v=1.5), obj("a", 3, v=9.0)])
    assert again[0].outcome is Outcome.DUPLICATE
    assert again[1].outcome is Outcome.CONFLICT
    assert again[1].reason == (
        "a different Measurement is already stored under _id 'a' (fields differing: v); "
        "first write wins, this one was not written"
    )
    assert rows(tmp_path) == [("a", {"_id": "a", "v": 1.5}, 0), (7, {"_id": 7, "v": 2}, 1)]


async def test_key_order_does_not_make_a_conflict(backend: SqliteBackend) -> None:
    await backend.ingest([obj("a", 0, x=1, y=2)])
    doc = MappedObject(
        MEASUREMENT, "a", {"y": 2, "x": 1, "_id": "a"}, SourceRecord("m", 0, 1, None, b"")
    )
    assert (await backend.ingest([doc]))[0].outcome is Outcome.DUPLICATE


async def test_same_id_twice_in_one_batch(backend: SqliteBackend, tmp_path: Path) -> None:
    results = await backend.ingest([obj("a", 0, v=1), obj("a", 1, v=1), obj("a", 2, v=2)])
    assert [r.outcome for r in results] == [Outcome.INSERTED, Outcome.DUPLICATE, Outcome.CONFLICT]
    assert len(rows(tmp_path)) == 1


async def test_unstorable_document_is_rejected_not_crashing(backend: SqliteBackend) -> None:
    results = await backend.ingest([obj("a", 0, v=object()), obj("b", 1, v=1)])
    assert results[0].outcome is Outcome.REJECTED
    assert results[0].reason == "document cannot be stored: cannot store a value of type object"
    assert results[1].outcome is Outcome.INSERTED


async def test_logical_types_and_special_floats_are_stored_as_canonical_json(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    import datetime as dt
    import decimal
    import uuid

    from bson import ObjectId

    key = uuid.UUID(int=5)
    document = {
        "at": dt.datetime(2024, 2, 29, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "day": dt.date(2024, 2, 29),
        "amount": decimal.Decimal("12.50"),
        "raw": b"\x00\xff",
        "ref": ObjectId("65a1b2c3d4e5f60718293a4b"),
        "nan": float("nan"),
        "inf": [float("-inf")],
    }
    assert (await backend.ingest([obj(key, 0, **document)]))[0].outcome is Outcome.INSERTED
    assert rows(tmp_path) == [
        (
            str(key),
            {
                "_id": str(key),
                "at": "2024-02-29T22:30:00Z",
                "day": "2024-02-29",
                "amount": "12.50",
                "raw": "AP8=",
                "ref": "65a1b2c3d4e5f60718293a4b",
                "nan": {"$numberDouble": "NaN"},
                "inf": [{"$numberDouble": "-Infinity"}],
            },
            0,
        )
    ]
    again = await backend.ingest([obj(key, 1, **document)])
    assert again[0].outcome is Outcome.DUPLICATE


async def test_standard_objects_upsert_latest_offset_wins_and_tombstones_delete(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    results = await backend.ingest(
        [sensor("s1", 0, name="a"), sensor("s2", 1, name="b"), sensor("s1", 2, name="c")]
    )
    assert [r.outcome for r in results] == [Outcome.UPSERTED] * 3
    assert live_sensors(tmp_path) == {
        "s1": {"_id": "s1", "name": "c"},
        "s2": {"_id": "s2", "name": "b"},
    }
    await backend.ingest([sensor("s1", 1, name="stale replay")])  # older offset: ignored
    assert live_sensors(tmp_path)["s1"]["name"] == "c"
    await backend.ingest([sensor("s1", 0, tombstone=True)])  # older tombstone: ignored
    assert "s1" in live_sensors(tmp_path)
    results = await backend.ingest(
        [sensor("s1", 5, tombstone=True), sensor("zz", 6, tombstone=True)]
    )
    assert [r.outcome for r in results] == [Outcome.DELETED, Outcome.DELETED]
    assert live_sensors(tmp_path) == {"s2": {"_id": "s2", "name": "b"}}


async def test_a_tombstone_marker_keeps_a_stale_upsert_from_resurrecting_the_object(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    """upsert@5, tombstone@7, then a replay of upsert@5 (a new group, an offset reset, a
    stale in-flight batch): still gone. The same offset as the tombstone: still gone.
    A later upsert (@9) brings it back."""
    await backend.ingest([sensor("s1", 5, name="v5")])
    assert [r.outcome for r in await backend.ingest([sensor("s1", 7, tombstone=True)])] == [
        Outcome.DELETED
    ]
    assert live_sensors(tmp_path) == {}
    assert query(
        tmp_path, 'SELECT _id, doc, _topic, _partition, _offset, _deleted FROM "Sensor"'
    ) == [("s1", "null", "s", 0, 7, 1)]
    replay = await backend.ingest([sensor("s1", 5, name="v5"), sensor("s1", 7, name="same")])
    assert [r.outcome for r in replay] == [Outcome.UPSERTED, Outcome.UPSERTED]
    assert live_sensors(tmp_path) == {}
    await backend.ingest([sensor("s1", 9, name="v9")])
    assert live_sensors(tmp_path) == {"s1": {"_id": "s1", "name": "v9"}}
    assert query(tmp_path, 'SELECT _offset, _deleted FROM "Sensor"') == [(9, 0)]


async def test_a_tombstone_first_leaves_a_marker_for_an_object_never_stored(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    await backend.ingest([sensor("s1", 7, tombstone=True)])
    await backend.ingest([sensor("s1", 5, name="late, stale")])
    assert live_sensors(tmp_path) == {}
    await backend.ingest([sensor("s1", 0, partition=1, name="another partition")])
    assert live_sensors(tmp_path) == {"s1": {"_id": "s1", "name": "another partition"}}


async def test_a_table_from_before_markers_is_migrated(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        conn.execute(
            'CREATE TABLE "Sensor" (_id PRIMARY KEY NOT NULL, doc TEXT NOT NULL, '
            "_topic TEXT NOT NULL, _partition INTEGER NOT NULL, _offset INTEGER NOT NULL)"
        )
        conn.execute("""INSERT INTO "Sensor" VALUES ('s1', '{"_id":"s1"}', 's', 0, 3)""")
    b = SqliteBackend(config(tmp_path / "ingest.db"))
    await b.open()
    try:
        await b.ingest([sensor("s2", 4, name="x"), sensor("s1", 5, tombstone=True)])
    finally:
        await b.close()
    assert live_sensors(tmp_path) == {"s2": {"_id": "s2", "name": "x"}}
    assert query(tmp_path, 'SELECT _id, _deleted FROM "Sensor" ORDER BY _id') == [
        ("s1", 1),
        ("s2", 0),
    ]


async def test_a_tombstone_on_an_asymmetric_type_is_rejected(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    await backend.ingest([obj("a", 0, v=1)])
    tombstone = obj("a", 1)
    tombstone.tombstone = True
    [result] = await backend.ingest([tombstone])
    assert result.outcome is Outcome.REJECTED
    assert result.reason == (
        "a tombstone cannot delete the asymmetric type Measurement; its objects are "
        "insert-only (R8)"
    )
    assert rows(tmp_path) == [("a", {"_id": "a", "v": 1}, 0)]


async def test_reapplying_a_batch_reaches_the_same_state(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    """After a RetryableError the pipeline applies the same batch again (idempotence)."""
    batch = [
        obj("a", 0, v=1),
        sensor("s1", 1, name="x"),
        obj("b", 2, v=2),
        sensor("s2", 3, name="y"),
        sensor("s1", 4, tombstone=True),
    ]
    first = await backend.ingest(batch)
    snapshot = (
        query(tmp_path, 'SELECT * FROM "Measurement" ORDER BY _id'),
        query(tmp_path, 'SELECT * FROM "Sensor" ORDER BY _id'),
    )
    again = await backend.ingest(batch)
    assert [r.outcome for r in first] == [
        Outcome.INSERTED,
        Outcome.UPSERTED,
        Outcome.INSERTED,
        Outcome.UPSERTED,
        Outcome.DELETED,
    ]
    assert [r.outcome for r in again] == [
        Outcome.DUPLICATE,
        Outcome.UPSERTED,
        Outcome.DUPLICATE,
        Outcome.UPSERTED,
        Outcome.DELETED,
    ]
    assert (
        query(tmp_path, 'SELECT * FROM "Measurement" ORDER BY _id'),
        query(tmp_path, 'SELECT * FROM "Sensor" ORDER BY _id'),
    ) == snapshot
    assert live_sensors(tmp_path) == {"s2": {"_id": "s2", "name": "y"}}


async def test_wal_mode_and_full_sync(backend: SqliteBackend, tmp_path: Path) -> None:
    await backend.ingest([obj("a", 0)])
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    b = SqliteBackend(config(tmp_path / "no" / "x.db"))
    with pytest.raises(FatalBackendError, match=r"backend.path: directory .* does not exist"):
        await b.open()
    with pytest.raises(FatalBackendError, match=r"backend.path: directory .* does not exist"):
        await b.check()
    await b.close()


# -- validate: check() writes nothing ----------------------------------------------------------


async def test_check_does_not_create_the_file(tmp_path: Path) -> None:
    b = SqliteBackend(config(tmp_path / "ingest.db"))
    try:
        description = await b.check()
    finally:
        await b.close()
    assert description == (
        f"SQLite {sqlite3.sqlite_version} file {tmp_path / 'ingest.db'} does not exist yet "
        "(will be created; journal WAL, synchronous FULL)"
    )
    assert os.listdir(tmp_path) == []


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


async def test_check_reads_an_existing_file_without_changing_it(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "ingest.db") as conn:  # rollback journal, not WAL yet
        conn.execute('CREATE TABLE "Measurement" (_id PRIMARY KEY, doc TEXT)')
    before = listing(tmp_path)
    b = SqliteBackend(config(tmp_path / "ingest.db"))
    try:
        description = await b.check()
    finally:
        await b.close()
    assert description == (
        f"SQLite {sqlite3.sqlite_version} file {tmp_path / 'ingest.db'} (journal rollback "
        "(switched to WAL on start), synchronous FULL): tables present: Measurement"
    )
    assert listing(tmp_path) == before
    assert query(tmp_path, "PRAGMA journal_mode") == [("delete",)]


async def test_check_beside_a_running_writer_changes_nothing(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    await backend.ingest([obj("a", 0), sensor("s1", 1, name="x")])
    before = listing(tmp_path)
    checker = SqliteBackend(config(tmp_path / "ingest.db"))
    try:
        description = await checker.check()
    finally:
        await checker.close()
    assert description.endswith(
        "(journal WAL, synchronous FULL): tables present: Measurement, Sensor"
    )
    assert listing(tmp_path) == before


async def test_check_of_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "ingest.db").write_text("hello")
    b = SqliteBackend(config(tmp_path / "ingest.db"))
    with pytest.raises(FatalBackendError, match=r"file is not a database"):
        await b.check()
    await b.close()


# -- several processes on one file -------------------------------------------------------------


async def test_a_lock_held_past_the_busy_timeout_is_retryable(tmp_path: Path) -> None:
    b = SqliteBackend(config(tmp_path / "ingest.db", busy_timeout_ms=200))
    await b.open()
    other = sqlite3.connect(tmp_path / "ingest.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's batch holds the write lock
        started = time.monotonic()
        with pytest.raises(RetryableError, match=r"^SQLite write failed: database is locked$"):
            await b.ingest([obj("a", 0)])
        assert 0.15 < time.monotonic() - started < 3
        other.execute("ROLLBACK")
        assert [r.outcome for r in await b.ingest([obj("a", 0)])] == [Outcome.INSERTED]
    finally:
        other.close()
        await b.close()


WRITERS = 2
BATCHES = 40


def batch_of(number: int) -> list[MappedObject]:
    """Batch ``number`` of one partition, as every writer reads it (the same records)."""
    objects = [obj(f"m-{number}-{i}", number * 1000 + i, v=i) for i in range(150)]
    key = f"s{number % 4}"
    offset = number * 1000 + 999
    if number % 7 == 3:
        objects.append(sensor(key, offset, tombstone=True))
    else:
        objects.append(sensor(key, offset, name=f"v{number}"))
    return objects


def write_batches(path: str, start: Any, results: Any) -> None:
    """One connector process: its own backend and connection, every batch of the partition."""

    async def run() -> Counter[str]:
        backend = SqliteBackend(config(Path(path)))
        await backend.open()
        counts: Counter[str] = Counter()
        try:
            for number in range(BATCHES):
                for result in await backend.ingest(batch_of(number)):
                    counts[result.outcome.value] += 1
        finally:
            await backend.close()
        return counts

    start.wait(30)
    try:
        results.put(dict(asyncio.run(run())))
    except Exception as exc:  # reported to the test, which fails on it
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def test_processes_sharing_one_file_write_without_errors(tmp_path: Path) -> None:
    """Two connector processes of one group on one host, both writing the same partition's
    batches at once (a rebalance overlap): no error, one copy of each object, the standard
    objects as the last offset left them."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    path = str(tmp_path / "ingest.db")
    processes = [
        context.Process(target=write_batches, args=(path, start, results)) for _ in range(WRITERS)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    assert all("error" not in o for o in outcomes), outcomes
    total = sum((Counter(o) for o in outcomes), Counter())
    measurements = BATCHES * 150
    assert total["inserted"] == measurements
    assert total["duplicate"] == measurements
    assert total["conflict"] == total["rejected"] == 0
    assert query(tmp_path, 'SELECT count(*), count(DISTINCT _id) FROM "Measurement"') == [
        (measurements, measurements)
    ]
    expected: dict[str, dict[str, object]] = {}
    for number in range(BATCHES):
        key = f"s{number % 4}"
        if number % 7 == 3:
            expected.pop(key, None)
        else:
            expected[key] = {"_id": key, "name": f"v{number}"}
    assert live_sensors(tmp_path) == expected
