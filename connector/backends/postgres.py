"""The PostgreSQL backend (asyncpg): one table per object type, one transaction per batch.

A batch is written per object type: its rows are COPYed into a temporary staging table,
then

* asymmetric types: ``INSERT ... SELECT ... ON CONFLICT (_id) DO NOTHING RETURNING _id``;
  the staged rows that were not inserted are compared with the stored ones column by
  column, which tells a duplicate (identical) from a conflict (never overwritten);
* standard types: the last operation per ``_id`` of the batch is applied with
  ``INSERT ... ON CONFLICT (_id) DO UPDATE ... WHERE`` the stored row is not from a later
  offset of the same partition: an upsert, or a tombstone marker (``_deleted``, every field
  NULL). The conflict clause locks the row and re-checks the condition against its latest
  version, so concurrent writers of one ``_id`` (a stale group member) cannot undo a
  tombstone.

Everything commits together, so a batch reported as ingested is durable, and a retried
batch reaches the same state. Connection failures, server restarts, serialization failures
and a full disk raise ``RetryableError``, at ``open()`` too; a value PostgreSQL refuses
(e.g. a NUL character in text) makes that object ``rejected`` after the batch is retried
one object at a time, so one bad object never holds back the others.
"""

from __future__ import annotations

import asyncio
import operator
import ssl
from collections import defaultdict
from typing import Any

import asyncpg

from connector.backends import (
    DELETED,
    DUPLICATE,
    INSERTED,
    UPSERTED,
    Backend,
    ObjectResult,
    Outcome,
    conflict,
    is_older,
)
from connector.backends.postgres_tables import (
    ADD_DELETED,
    COORDINATES,
    DELETED_COLUMN,
    ExistingColumn,
    Table,
    derive_table,
    plan_changes,
    quote,
)
from connector.config import PostgresBackendConfig, TlsConfig
from connector.errors import ConnectorError, FatalBackendError, RetryableError
from connector.records import MappedObject
from connector.schemas import ObjectTypes
from connector.timeouts import within

# SQLSTATE classes that a retry can cure: connection exceptions, insufficient resources
# (disk full, too many connections), operator intervention (shutdown, restart),
# transaction rollback (serialization failure, deadlock), system errors.
RETRYABLE_CLASSES = {"08", "53", "57", "40", "58"}
# Classes that belong to one row's data: the object is rejected, the others go on.
DATA_CLASSES = {"22", "23"}


def tls_setting(tls: TlsConfig | None) -> Any:
    """asyncpg's ``ssl`` argument for a TLS section (None: libpq's default, prefer)."""
    if tls is None:
        return None
    if tls.mode == "disable":
        return False
    if tls.ca_file is None and tls.cert_file is None:
        return tls.mode
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.mode in ("prefer", "require", "verify-ca"):
        context.check_hostname = False
    if tls.mode in ("prefer", "require"):
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _sqlstate_class(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")[:2]


# asyncpg's InternalClientError ("cannot switch to state 15; another operation (2) is in
# progress", asyncpg issue 784) is what a connection says when the server ended the session
# in the middle of an operation (seen here while PostgreSQL shut down: its cause was
# "the database system is shutting down"). The connection is unusable, the server may be
# back: a lost connection, retried on a fresh one (`_write` never reuses it). (A server's
# own connection errors are PostgresErrors of SQLSTATE class 08, see RETRYABLE_CLASSES.)
LOST_CONNECTION = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return _sqlstate_class(exc) in RETRYABLE_CLASSES
    return isinstance(exc, LOST_CONNECTION)


def _data_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and _sqlstate_class(exc) in DATA_CLASSES


def _connect_error(exc: Exception, doing: str) -> ConnectorError:
    """The error of a failed connect or start-up: unreachable is retryable, the rest fatal."""
    cause = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLError):  # an OSError, but a retry cannot fix a certificate
        return FatalBackendError(
            f"backend.tls: TLS with PostgreSQL failed while {doing}: {cause}; check "
            "backend.tls (mode, ca_file) against the server's certificate"
        )
    if _retryable(exc):  # refused, reset, timed out, closed under us, shutting down
        return RetryableError(f"PostgreSQL unavailable while {doing}: {cause}")
    if _sqlstate_class(exc) == "28":
        return FatalBackendError(
            f"backend.dsn: PostgreSQL refused the login: {exc}; check the user and password "
            "in the DSN and the server's pg_hba.conf"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return FatalBackendError(f"backend.dsn: {exc}; create the database or fix the DSN")
    return FatalBackendError(f"backend: PostgreSQL refused {doing}: {cause}")


class _Statements:
    """The SQL of one table, built once."""

    def __init__(self, table: Table) -> None:
        self.table = table
        names = [c.name for c in table.columns] + [name for name, _ in COORDINATES]
        if table.standard:
            names.append(DELETED_COLUMN)
        self.columns = names
        cols = ", ".join(quote(n) for n in names)
        target = table.qualified
        self.stage = quote(f"stage_{table.name}"[:63])
        self.create_stage = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} "
            f"(LIKE {target} INCLUDING DEFAULTS, _seq integer NOT NULL) ON COMMIT DELETE ROWS"
        )
        self.insert = (
            f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {self.stage} ORDER BY _seq "
            "ON CONFLICT (_id) DO NOTHING"
        )
        data = [c.name for c in table.columns if c.name != "_id"]
        differs = ", ".join(
            f"CASE WHEN s.{quote(n)} IS DISTINCT FROM t.{quote(n)} THEN {_literal(n)} END"
            for n in data
        )
        # Only when some rows were not inserted: which staged row wrote each stored row
        # (written by this transaction: xmin) and which columns differ from it.
        self.compare = (
            "SELECT s._seq, t.xmin = pg_current_xact_id()::xid AS mine, "
            f"array_remove(ARRAY[{differs or 'NULL'}]::text[], NULL) AS differs "
            f"FROM {self.stage} s JOIN {target} t USING (_id) ORDER BY s._seq"
        )
        updates = ", ".join(f"{quote(n)} = EXCLUDED.{quote(n)}" for n in names if n != "_id")
        # Upserts and tombstone markers alike; the latest offset of a partition wins.
        self.upsert = (
            f"INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {self.stage} "
            f"ON CONFLICT (_id) DO UPDATE SET {updates} WHERE NOT (t._topic = EXCLUDED._topic "
            "AND t._partition = EXCLUDED._partition AND (t._offset > EXCLUDED._offset "
            f"OR (t._offset = EXCLUDED._offset AND t.{DELETED_COLUMN})))"
        )
        self._names = [c.name for c in table.columns]
        self._pick = operator.itemgetter(*self._names)
        self._converted = [(i, c.convert) for i, c in enumerate(table.columns) if c.convert]

    async def stage_rows(
        self, conn: asyncpg.Connection, objects: list[MappedObject]
    ) -> list[tuple[Any, ...]]:
        """COPY ``objects`` into the staging table (``_seq`` = position); returns the rows."""
        rows = self.rows(objects)
        await conn.copy_records_to_table(
            self.stage.strip('"'), records=rows, columns=[*self.columns, "_seq"]
        )
        return rows

    def rows(self, objects: list[MappedObject]) -> list[tuple[Any, ...]]:
        """The staging rows of ``objects``, column by column: the fields are picked with C
        getters over the whole batch, a Python call per row only where a column converts."""
        documents = list(map(_document, objects))
        names = self._names
        try:
            picked = list(map(self._pick, documents))
            if len(names) == 1:  # itemgetter of one name gives the value itself
                picked = [(value,) for value in picked]
        except KeyError:  # a field absent from a document is NULL
            picked = [tuple(map(document.get, names)) for document in documents]
        if self._converted:
            picked = list(map(self._convert, picked))
        places = map(_coordinates, map(_origin, objects))
        if self.table.standard:
            flags = map(_tombstone, objects)
            rows = zip(picked, places, flags, strict=False)
            return [(*values, *place, flag, seq) for seq, (values, place, flag) in enumerate(rows)]
        return [
            (*values, *place, seq)
            for seq, (values, place) in enumerate(zip(picked, places, strict=False))
        ]

    def _convert(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        converted = list(values)
        for i, convert in self._converted:
            converted[i] = convert(converted[i])
        return tuple(converted)


_document = operator.attrgetter("document")
_origin = operator.attrgetter("record")
_tombstone = operator.attrgetter("tombstone")
_coordinates = operator.attrgetter("topic", "partition", "offset")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _describe(table: Table, changes: list[str]) -> str:
    """What ``open()`` will do to an existing table, for ``check()``."""
    notes = []
    added = [s for s in changes if "ADD COLUMN" in s and ADD_DELETED not in s]
    if added:
        notes.append(f"{len(added)} column(s) to add")
    if any(ADD_DELETED in s for s in changes):
        notes.append(f"to migrate for tombstone markers ({DELETED_COLUMN}, view {table.view})")
    elif not added and table.view_statement() in changes:
        notes.append(f"view {table.view} to create")
    return ", ".join(notes) or "OK"


class PostgresBackend(Backend):
    """Writes batches into PostgreSQL through a connection pool."""

    def __init__(self, config: PostgresBackendConfig, types: ObjectTypes) -> None:
        self._config = config
        self._types = types
        self._pool: asyncpg.Pool | None = None
        self._statements: dict[str, _Statements] = {}

    # --- start-up ----------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Pool:
        config = self._config
        try:
            pool = await asyncpg.create_pool(
                config.dsn,
                min_size=config.pool.min_size,
                max_size=config.pool.max_size,
                ssl=tls_setting(config.tls),
                command_timeout=config.command_timeout_ms / 1000,
                timeout=config.connect_timeout_ms / 1000,
            )
        except Exception as exc:
            raise _connect_error(exc, "connecting") from exc
        assert pool is not None
        return pool

    def _tables(self) -> list[Table]:
        tables = []
        for object_type in self._types:
            try:
                tables.append(derive_table(object_type, self._config.db_schema))
            except ValueError as exc:
                raise FatalBackendError(f"backend: {exc}") from exc
        return tables

    async def _plan(self, conn: asyncpg.Connection) -> tuple[list[str], list[str], list[str]]:
        """(statements to run, problems, a summary line per table) for all object types."""
        schema = self._config.db_schema
        rows = await conn.fetch(
            "SELECT c.relname AS table, a.attname AS column, "
            "format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped",
            schema,
        )
        views = {
            row["relname"]
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind = 'v'",
                schema,
            )
        }
        existing: dict[str, dict[str, ExistingColumn]] = defaultdict(dict)
        for row in rows:
            existing[row["table"]][row["column"]] = ExistingColumn(row["type"], row["nullable"])
        statements: list[str] = []
        problems: list[str] = []
        summary: list[str] = []
        if not rows and not self._config.create_tables:
            has_schema = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema
            )
            if not has_schema:
                problems.append(f"backend.schema: schema {schema} does not exist")
        for table in self._tables():
            current = existing.get(table.name)
            if current is None:
                if not self._config.create_tables:
                    problems.append(
                        f"table {schema}.{table.name} ({table.object_type.name}) does not exist "
                        "and backend.create_tables is false; create it or set create_tables: true"
                    )
                statements += table.create_statements()
                summary.append(f"{table.name}: to create")
                continue
            changes, found = plan_changes(table, current, table.view in views)
            statements += changes
            problems += found
            summary.append(f"{table.name}: {_describe(table, changes)}")
        return statements, problems, summary

    async def open(self) -> None:
        """Connect, then create or evolve the tables under a per-schema lock."""
        if self._pool is not None:
            return
        statements = {t.object_type.name: _Statements(t) for t in self._tables()}
        pool = await self._connect()
        try:
            async with pool.acquire() as conn, conn.transaction():
                # One start-up at a time per schema: replicas starting together must not
                # race on CREATE/ALTER.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    f"data-ingest:{self._config.db_schema}",
                )
                if self._config.create_tables:
                    await conn.execute(
                        f"CREATE SCHEMA IF NOT EXISTS {quote(self._config.db_schema)}"
                    )
                planned, problems, _ = await self._plan(conn)
                if problems:
                    raise FatalBackendError("\n".join(problems))
                for statement in planned:
                    await conn.execute(statement)
        except BaseException as exc:
            pool.terminate()  # open() may be called again: nothing may stay behind
            if isinstance(exc, Exception) and not isinstance(exc, ConnectorError):
                raise _connect_error(exc, "preparing the tables") from exc
            raise
        self._pool, self._statements = pool, statements

    async def check(self) -> str:
        """Describe the server and what ``open()`` would change, changing nothing."""
        self._tables()
        pool = await self._connect()
        try:
            async with pool.acquire() as conn:
                version = await conn.fetchval("SHOW server_version")
                database = await conn.fetchval("SELECT current_database()")
                _, problems, summary = await self._plan(conn)
        except Exception as exc:
            raise _connect_error(exc, "checking the tables") from exc
        finally:
            pool.terminate()
        if problems:
            raise FatalBackendError("\n".join(problems))
        return (
            f"PostgreSQL {version}, database {database}, schema {self._config.db_schema}: "
            + "; ".join(summary)
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await within(pool.close(), 10)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                pool.terminate()

    # --- ingest ------------------------------------------------------------------------

    def concurrent_writes(self) -> int:
        """One batch per pooled connection, each in its own transaction."""
        return self._config.pool.max_size

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        if self._pool is None:
            raise FatalBackendError("the PostgreSQL backend is not open")
        return await self._write_isolating(objects)

    async def _write_isolating(self, objects: list[MappedObject]) -> list[ObjectResult]:
        """Write ``objects`` in one transaction; when PostgreSQL refuses a value, write each
        half on its own, down to the refused objects (a few bad objects cost a few
        transactions each, not one per object of the batch)."""
        try:
            return await self._write(objects)
        except Exception as exc:
            if _retryable(exc):
                raise RetryableError(
                    f"PostgreSQL write failed: {type(exc).__name__}: {exc}"
                ) from exc
            if not _data_error(exc):
                raise FatalBackendError(
                    f"PostgreSQL write failed: {type(exc).__name__}: {exc}"
                ) from exc
            if len(objects) == 1:
                return [ObjectResult(Outcome.REJECTED, f"PostgreSQL refused it: {exc}")]
        half = len(objects) // 2
        return await self._write_isolating(objects[:half]) + await self._write_isolating(
            objects[half:]
        )

    async def _write(self, objects: list[MappedObject]) -> list[ObjectResult]:
        assert self._pool is not None
        results: dict[int, ObjectResult] = {}
        groups: dict[str, list[int]] = defaultdict(list)
        for i, obj in enumerate(objects):
            groups[obj.object_type.name].append(i)
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    for name, indexes in groups.items():
                        statements = self._statements[name]
                        await conn.execute(statements.create_stage)
                        if statements.table.object_type.asymmetric:
                            await self._insert(conn, statements, objects, indexes, results)
                        else:
                            await self._apply_standard(conn, statements, objects, indexes, results)
            except asyncpg.InternalClientError:
                conn.terminate()  # its protocol state is broken: the pool opens a new one
                raise
        return [results[i] for i in range(len(objects))]

    async def _insert(
        self,
        conn: asyncpg.Connection,
        statements: _Statements,
        objects: list[MappedObject],
        indexes: list[int],
        results: dict[int, ObjectResult],
    ) -> None:
        name = statements.table.object_type.name
        writable = []
        for i in indexes:
            if objects[i].tombstone:
                results[i] = ObjectResult(
                    Outcome.REJECTED,
                    f"a tombstone cannot delete the asymmetric type {name}; its objects are "
                    "insert-only (R8)",
                )
            else:
                writable.append(i)
        if not writable:
            return
        rows = await statements.stage_rows(conn, [objects[i] for i in writable])
        status = await conn.execute(statements.insert)
        if int(status.split()[-1]) == len(rows):
            for i in writable:
                results[i] = INSERTED
            return
        claimed: set[str] = set()
        for row in await conn.fetch(statements.compare):
            seq = row["_seq"]
            key = str(rows[seq][0])
            if row["mine"] and key not in claimed:
                claimed.add(key)
                results[writable[seq]] = INSERTED
            elif row["differs"]:
                results[writable[seq]] = conflict(name, key, list(row["differs"]))
            else:
                results[writable[seq]] = DUPLICATE

    async def _apply_standard(
        self,
        conn: asyncpg.Connection,
        statements: _Statements,
        objects: list[MappedObject],
        indexes: list[int],
        results: dict[int, ObjectResult],
    ) -> None:
        """Upsert or mark deleted the last write per ``_id`` (one statement for all)."""
        winners: dict[str, int] = {}
        for i in indexes:
            key = str(objects[i].object_id)
            current = winners.get(key)
            # A later write of the batch replaces an earlier one, unless it replays an older
            # offset of the same partition.
            if current is None or not is_older(objects[i], objects[current]):
                winners[key] = i
            results[i] = DELETED if objects[i].tombstone else UPSERTED
        await statements.stage_rows(conn, [objects[i] for i in winners.values()])
        await conn.execute(statements.upsert)
