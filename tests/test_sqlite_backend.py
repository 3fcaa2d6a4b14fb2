"""The embedded SQLite backend: insert-only, idempotent, conflicts never overwrite (R8, R9)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from connector.backends import Outcome
from connector.backends.sqlite import SqliteBackend
from connector.config import SqliteBackendConfig
from connector.errors import FatalBackendError
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


@pytest.fixture
async def backend(tmp_path: Path):  # type: ignore[no-untyped-def]
    b = SqliteBackend(SqliteBackendConfig(type="sqlite", path=str(tmp_path / "ingest.db")))
    await b.open()
    yield b
    await b.close()


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
    def stored() -> dict[str, dict[str, object]]:
        with sqlite3.connect(tmp_path / "ingest.db") as conn:
            return {i: json.loads(d) for i, d in conn.execute('SELECT _id, doc FROM "Sensor"')}

    results = await backend.ingest(
        [sensor("s1", 0, name="a"), sensor("s2", 1, name="b"), sensor("s1", 2, name="c")]
    )
    assert [r.outcome for r in results] == [Outcome.UPSERTED] * 3
    assert stored() == {"s1": {"_id": "s1", "name": "c"}, "s2": {"_id": "s2", "name": "b"}}
    await backend.ingest([sensor("s1", 1, name="stale replay")])  # older offset: ignored
    assert stored()["s1"]["name"] == "c"
    await backend.ingest([sensor("s1", 0, tombstone=True)])  # older tombstone: ignored
    assert "s1" in stored()
    results = await backend.ingest(
        [sensor("s1", 5, tombstone=True), sensor("zz", 6, tombstone=True)]
    )
    assert [r.outcome for r in results] == [Outcome.DELETED, Outcome.DELETED]
    assert stored() == {"s2": {"_id": "s2", "name": "b"}}


async def test_wal_mode_and_full_sync(backend: SqliteBackend, tmp_path: Path) -> None:
    await backend.ingest([obj("a", 0)])
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    b = SqliteBackend(SqliteBackendConfig(type="sqlite", path=str(tmp_path / "no" / "x.db")))
    with pytest.raises(FatalBackendError, match=r"backend.path: directory .* does not exist"):
        await b.open()
    await b.close()
