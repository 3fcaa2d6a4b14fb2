"""The embedded SQLite backend, the default for a single machine and the quickstart.

One table per object type (named by its ``collection``): ``_id`` primary key (text for uuid
and ObjectId ids), the canonical JSON document, and the Kafka coordinates of the write
that stored it. Tables of standard types also have ``_deleted``: a tombstone replaces the
row by a marker (``_deleted = 1``, ``doc = 'null'``, the tombstone's coordinates), so a
replayed older upsert cannot bring the object back; the view ``<collection>_live`` shows
the live rows only, and is what readers query.

Several connector processes on one machine may share a file: WAL mode, every batch one
``BEGIN IMMEDIATE`` transaction (writers queue for the lock instead of failing on an
upgrade), a busy timeout, and a lock still held after it raises ``RetryableError``.
``synchronous=FULL`` by default, so a batch reported as ingested survives a crash of the
process or of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from connector.backends import (
    DELETED,
    DUPLICATE,
    INSERTED,
    LIVE_VIEW_SUFFIX,
    UPSERTED,
    Backend,
    ObjectResult,
    Outcome,
    conflict,
)
from connector.config import SqliteBackendConfig
from connector.documents import canonical_json, differing_fields, storage_id
from connector.errors import ConnectorError, FatalBackendError, RetryableError
from connector.records import MappedObject

T = TypeVar("T")

#: Errors a later attempt may not meet: another process holds the lock, disk full, I/O.
RETRYABLE_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}
)
#: The document column of a tombstone marker: JSON null, never a readable object.
MARKER_DOC = "null"
#: An upsert or tombstone replaces the stored row unless that row comes from a later offset
#: of the same partition, or is a marker of the same offset (latest offset wins).
_GUARD = (
    "WHERE NOT (_topic = excluded._topic AND _partition = excluded._partition AND "
    "(_offset > excluded._offset OR (_offset = excluded._offset AND _deleted)))"
)


def table_name(name: str) -> str:
    """A quoted table (or view) name."""
    return '"' + name.replace('"', '""') + '"'


def _translate(exc: sqlite3.Error, doing: str) -> ConnectorError:
    """RetryableError for a busy lock, a full disk or I/O errors; FatalBackendError else."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in RETRYABLE_CODES:
        return RetryableError(f"SQLite {doing} failed: {exc}")
    return FatalBackendError(f"SQLite {doing} failed: {exc}")


class SqliteBackend(Backend):
    """Writes batches into one SQLite file through a single worker thread."""

    def __init__(self, config: SqliteBackendConfig) -> None:
        self._config = config
        self._conn: sqlite3.Connection | None = None
        # sqlite3 is blocking; one thread owns the connection so calls never interleave.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._ready: set[str] = set()  # tables created (and migrated) by this connection

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _path(self) -> Path:
        return Path(self._config.path)

    def _check_directory(self) -> None:
        parent = self._path.parent
        if not parent.is_dir():
            raise FatalBackendError(
                f"backend.path: directory {str(parent)!r} does not exist; create it first"
            )

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._conn is not None:
            return
        self._check_directory()
        try:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._config.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise FatalBackendError(
                f"backend.path: cannot open SQLite file {str(self._path)!r}: {exc}"
            ) from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._config.synchronous}")
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, f"opening {str(self._path)!r}") from exc
        self._conn = conn
        self._ready.clear()

    async def check(self) -> str:
        return await self._run(self._check)

    def _check(self) -> str:
        """Describe the file without creating or changing anything (not even WAL files)."""
        self._check_directory()
        path = self._path
        settings = f"synchronous {self._config.synchronous}"
        if not path.exists():
            if not os.access(path.parent, os.W_OK):
                raise FatalBackendError(
                    f"backend.path: directory {str(path.parent)!r} is not writable, so the "
                    "SQLite file cannot be created there; fix its permissions or choose another"
                )
            return (
                f"SQLite {sqlite3.sqlite_version} file {path} does not exist yet "
                f"(will be created; journal WAL, {settings})"
            )
        # A running writer keeps the -wal and -shm files; a read-only connection uses them.
        # Without them (nobody has the file open) "immutable" reads without creating them.
        live = all(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
        uri = path.resolve().as_uri() + ("?mode=ro" if live else "?immutable=1")
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self._config.busy_timeout_ms / 1000)
            try:
                tables = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                    )
                ]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading {str(path)!r}") from exc
        with path.open("rb") as file:
            header = file.read(20)
        journal = "WAL" if header[18:20] == b"\x02\x02" else "rollback (switched to WAL on start)"
        return (
            f"SQLite {sqlite3.sqlite_version} file {path} (journal {journal}, {settings}): "
            f"tables present: {', '.join(tables) or 'none'}"
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        return await self._run(self._ingest, objects)

    def _ensure_table(self, conn: sqlite3.Connection, name: str, standard: bool) -> str:
        """The quoted table of ``name``, created (or migrated) on first use, inside the batch's
        transaction so that processes sharing the file never race on it."""
        table = table_name(name)
        if name in self._ready:
            return table
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "_id PRIMARY KEY NOT NULL, doc TEXT NOT NULL, "
            "_topic TEXT NOT NULL, _partition INTEGER NOT NULL, _offset INTEGER NOT NULL"
            + (", _deleted INTEGER NOT NULL DEFAULT 0)" if standard else ")")
        )
        if standard:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if "_deleted" not in columns:  # a table from before tombstone markers
                conn.execute(f"ALTER TABLE {table} ADD COLUMN _deleted INTEGER NOT NULL DEFAULT 0")
            conn.execute(
                f"CREATE VIEW IF NOT EXISTS {table_name(name + LIVE_VIEW_SUFFIX)} AS "
                f"SELECT _id, doc, _topic, _partition, _offset FROM {table} WHERE NOT _deleted"
            )
        self._ready.add(name)
        return table

    def _ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        conn = self._conn
        if conn is None:
            raise FatalBackendError("the SQLite backend is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the lock
            try:
                results = self._insert_all_new(conn, objects) or [
                    self._write_one(conn, obj) for obj in objects
                ]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._ready.clear()  # tables created in this transaction are gone again
                raise
        except sqlite3.Error as exc:
            raise _translate(exc, "write") from exc
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
            table = self._ensure_table(conn, name, standard=False)
            inserted += conn.executemany(
                f"INSERT INTO {table} (_id, doc, _topic, _partition, _offset) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(_id) DO NOTHING",
                values,
            ).rowcount
        if inserted != len(objects):
            conn.execute("ROLLBACK TO all_new")
            conn.execute("RELEASE all_new")
            self._ready.clear()  # a table created under the savepoint is gone again
            return None
        conn.execute("RELEASE all_new")
        return [INSERTED] * len(objects)

    def _write_one(self, conn: sqlite3.Connection, obj: MappedObject) -> ObjectResult:
        standard = not obj.object_type.asymmetric
        table = self._ensure_table(conn, obj.object_type.collection, standard)
        record = obj.record
        key = storage_id(obj.object_id)
        if obj.tombstone:
            if not standard:
                return ObjectResult(
                    Outcome.REJECTED,
                    f"a tombstone cannot delete the asymmetric type {obj.object_type.name}; "
                    "its objects are insert-only (R8)",
                )
            self._put(
                conn, table, (key, MARKER_DOC, record.topic, record.partition, record.offset, 1)
            )
            return DELETED
        try:
            doc = canonical_json(obj.document)
        except (TypeError, ValueError) as exc:
            return ObjectResult(Outcome.REJECTED, f"document cannot be stored: {exc}")
        if standard:
            self._put(conn, table, (key, doc, record.topic, record.partition, record.offset, 0))
            return UPSERTED
        cursor = conn.execute(
            f"INSERT INTO {table} (_id, doc, _topic, _partition, _offset) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(_id) DO NOTHING",
            (key, doc, record.topic, record.partition, record.offset),
        )
        if cursor.rowcount == 1:
            return INSERTED
        stored = conn.execute(f"SELECT doc FROM {table} WHERE _id = ?", (key,)).fetchone()
        if stored is not None and stored[0] == doc:
            return DUPLICATE
        fields = differing_fields(json.loads(stored[0]) if stored else {}, json.loads(doc))
        return conflict(obj.object_type.name, key, fields)

    @staticmethod
    def _put(conn: sqlite3.Connection, table: str, row: tuple[object, ...]) -> None:
        """Upsert a standard row or a tombstone marker; the latest offset of a partition wins."""
        conn.execute(
            f"INSERT INTO {table} (_id, doc, _topic, _partition, _offset, _deleted) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(_id) DO UPDATE SET doc = excluded.doc, "
            "_topic = excluded._topic, _partition = excluded._partition, "
            f"_offset = excluded._offset, _deleted = excluded._deleted {_GUARD}",
            row,
        )
