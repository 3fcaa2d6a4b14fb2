"""The embedded SQLite backend, the default for a single machine and the quickstart.

One table per object type (named by its ``collection``): ``_id`` primary key (text for uuid
and ObjectId ids), the canonical JSON document, and the Kafka coordinates of the write
that stored it. A batch is one ``BEGIN IMMEDIATE`` transaction in
WAL mode with ``synchronous=FULL`` by default, so a batch reported as ingested survives a
crash of the process or of the machine.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from connector.backends import (
    DELETED,
    DUPLICATE,
    INSERTED,
    UPSERTED,
    Backend,
    ObjectResult,
    Outcome,
    conflict,
)
from connector.config import SqliteBackendConfig
from connector.documents import canonical_json, differing_fields, storage_id
from connector.errors import FatalBackendError, RetryableError
from connector.records import MappedObject


def table_name(type_name: str) -> str:
    """The quoted table name of an object type."""
    return '"' + type_name.replace('"', '""') + '"'


class SqliteBackend(Backend):
    """Writes batches into one SQLite file through a single worker thread."""

    def __init__(self, config: SqliteBackendConfig) -> None:
        self._config = config
        self._conn: sqlite3.Connection | None = None
        # sqlite3 is blocking; one thread owns the connection so calls never interleave.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._tables: set[str] = set()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        path = Path(self._config.path)
        if path.parent and not path.parent.exists():
            raise FatalBackendError(
                f"backend.path: directory {str(path.parent)!r} does not exist; create it first"
            )
        try:
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._config.synchronous}")
        except sqlite3.DatabaseError as exc:
            raise FatalBackendError(
                f"backend.path: cannot open SQLite file {str(path)!r}: {exc}"
            ) from exc
        self._conn = conn
        self._tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }

    async def check(self) -> str:
        await self.open()
        return (
            f"SQLite {sqlite3.sqlite_version} file {self._config.path} "
            f"(journal WAL, synchronous {self._config.synchronous})"
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        return await self._run(self._ingest, objects)

    def _ensure_table(self, conn: sqlite3.Connection, name: str) -> str:
        table = table_name(name)
        if name not in self._tables:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "_id PRIMARY KEY NOT NULL, doc TEXT NOT NULL, "
                "_topic TEXT NOT NULL, _partition INTEGER NOT NULL, _offset INTEGER NOT NULL)"
            )
            self._tables.add(name)
        return table

    def _ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        conn = self._conn
        if conn is None:
            raise FatalBackendError("the SQLite backend is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = self._insert_all_new(conn, objects) or [
                    self._write_one(conn, obj) for obj in objects
                ]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._tables.clear()  # tables created in this transaction are gone again
                raise
        except sqlite3.OperationalError as exc:
            # Locked, busy, disk full, I/O error: the batch is rolled back and may be retried.
            raise RetryableError(f"SQLite write failed: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise FatalBackendError(f"SQLite write failed: {exc}") from exc
        return results

    def _insert_all_new(
        self, conn: sqlite3.Connection, objects: list[MappedObject]
    ) -> list[ObjectResult] | None:
        """The common case in one statement per table: asymmetric objects, all of them new.

        None (and nothing written) when the batch is anything else; the caller then writes
        object by object, which tells every outcome apart.
        """
        rows: dict[str, list[tuple[object, ...]]] = {}
        for obj in objects:
            if obj.tombstone or not obj.object_type.asymmetric:
                return None
            try:
                doc = canonical_json(obj.document)
            except (TypeError, ValueError):
                return None
            record = obj.record
            rows.setdefault(obj.object_type.collection, []).append(
                (storage_id(obj.object_id), doc, record.topic, record.partition, record.offset)
            )
        conn.execute("SAVEPOINT all_new")
        inserted = 0
        for name, values in rows.items():
            table = self._ensure_table(conn, name)
            inserted += conn.executemany(
                f"INSERT INTO {table} (_id, doc, _topic, _partition, _offset) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(_id) DO NOTHING",
                values,
            ).rowcount
        if inserted != len(objects):
            conn.execute("ROLLBACK TO all_new")
            conn.execute("RELEASE all_new")
            self._tables.clear()  # a table created under the savepoint is gone again
            return None
        conn.execute("RELEASE all_new")
        return [INSERTED] * len(objects)

    def _write_one(self, conn: sqlite3.Connection, obj: MappedObject) -> ObjectResult:
        table = self._ensure_table(conn, obj.object_type.collection)
        record = obj.record
        key = storage_id(obj.object_id)
        if obj.tombstone:
            # Latest offset wins: an older tombstone replayed after a newer upsert of the
            # same partition must not delete it.
            conn.execute(
                f"DELETE FROM {table} WHERE _id = ? AND NOT "
                "(_topic = ? AND _partition = ? AND _offset > ?)",
                (key, record.topic, record.partition, record.offset),
            )
            return DELETED
        try:
            doc = canonical_json(obj.document)
        except (TypeError, ValueError) as exc:
            return ObjectResult(Outcome.REJECTED, f"document cannot be stored: {exc}")
        values = (key, doc, record.topic, record.partition, record.offset)
        if not obj.object_type.asymmetric:
            conn.execute(
                f"INSERT INTO {table} (_id, doc, _topic, _partition, _offset) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(_id) DO UPDATE SET doc = excluded.doc, "
                "_topic = excluded._topic, _partition = excluded._partition, "
                "_offset = excluded._offset WHERE NOT (_topic = excluded._topic AND "
                "_partition = excluded._partition AND _offset > excluded._offset)",
                values,
            )
            return UPSERTED
        cursor = conn.execute(
            f"INSERT INTO {table} (_id, doc, _topic, _partition, _offset) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(_id) DO NOTHING",
            values,
        )
        if cursor.rowcount == 1:
            return INSERTED
        stored = conn.execute(f"SELECT doc FROM {table} WHERE _id = ?", (key,)).fetchone()
        if stored is not None and stored[0] == doc:
            return DUPLICATE
        fields = differing_fields(json.loads(stored[0]) if stored else {}, json.loads(doc))
        return conflict(obj.object_type.name, key, fields)
