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


def obj(object_id: object, offset: int, **fields: object) -> MappedObject:
    document = {"_id": object_id, **fields}
    return MappedObject(
        "Measurement", object_id, document, SourceRecord("m", 0, offset, None, b"{}")
    )


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
        "Measurement", "a", {"y": 2, "x": 1, "_id": "a"}, SourceRecord("m", 0, 1, None, b"")
    )
    assert (await backend.ingest([doc]))[0].outcome is Outcome.DUPLICATE


async def test_same_id_twice_in_one_batch(backend: SqliteBackend, tmp_path: Path) -> None:
    results = await backend.ingest([obj("a", 0, v=1), obj("a", 1, v=1), obj("a", 2, v=2)])
    assert [r.outcome for r in results] == [Outcome.INSERTED, Outcome.DUPLICATE, Outcome.CONFLICT]
    assert len(rows(tmp_path)) == 1


async def test_unstorable_document_is_rejected_not_crashing(backend: SqliteBackend) -> None:
    results = await backend.ingest([obj("a", 0, v=float("nan")), obj("b", 1, v=1)])
    assert results[0].outcome is Outcome.REJECTED
    assert (
        results[0].reason
        == "document cannot be stored: Out of range float values are not JSON compliant"
    )
    assert results[1].outcome is Outcome.INSERTED


async def test_wal_mode_and_full_sync(backend: SqliteBackend, tmp_path: Path) -> None:
    await backend.ingest([obj("a", 0)])
    with sqlite3.connect(tmp_path / "ingest.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    b = SqliteBackend(SqliteBackendConfig(type="sqlite", path=str(tmp_path / "no" / "x.db")))
    with pytest.raises(FatalBackendError, match=r"backend.path: directory .* does not exist"):
        await b.open()
    await b.close()
