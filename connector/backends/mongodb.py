"""The MongoDB backend: MongoDB, Atlas, or a wire-compatible server such as FerretDB.

One collection per object type (its ``collection`` name) in ``backend.database``, documents
shaped as Atlas Device Sync stored them (``bson_documents``). Every write carries the
configured write concern (default ``w: majority, j: true``), so a batch is durable when
``ingest`` returns.

* Asymmetric types are only inserted (R8): ``insert_many(ordered=False)``. A duplicate key
  error makes the backend read the stored document under that ``_id`` and compare:
  identical is a duplicate, different is a conflict that is never overwritten (R9). Other
  write errors reject that one document; the rest of the batch is written regardless.
  Time-series collections do not enforce a unique ``_id``, so there the stored ``_id``s of
  the batch are looked up first and only new ones are inserted.
* Standard types are replaced (upsert) or deleted by ``_id``; they carry the Kafka
  coordinates of their write in ``_kafka: {topic, partition, offset}``, and the filter of
  every write lets an older offset of the same partition never overwrite a newer one.
* Transient failures raise ``RetryableError`` (nothing of the batch counts as acked);
  permissions and configuration problems raise ``FatalBackendError``.

FerretDB 1.x drops the connection when a document holds NaN or a Decimal128 (the driver
sees a network error, so a retry would loop forever) and has no time-series collections.
It is recognised at ``open()`` by ``buildInfo.ferretdbVersion``: such documents are rejected
before they are sent, and ``decimals: decimal128`` and time-series settings are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bson import SON
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    ConfigurationError,
    ConnectionFailure,
    InvalidName,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

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
from connector.backends.bson_documents import (
    CODEC_OPTIONS,
    BsonConverter,
    UnstorableValue,
    differing_fields,
    encode,
    same_value,
)
from connector.config import MongoBackendConfig
from connector.documents import storage_id
from connector.errors import ConnectorError, FatalBackendError, RetryableError
from connector.records import MappedObject
from connector.schemas import ObjectType, ObjectTypes

#: Where standard objects keep the Kafka coordinates of the write that stored them.
KAFKA_FIELD = "_kafka"
DUPLICATE_KEY = 11000
#: Server error codes after which the same write may succeed later: network and election
#: errors, shutdowns, time limits, write concern timeouts.
RETRYABLE_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
#: Write concern errors that no retry can fix: the deployment cannot satisfy the concern.
UNSATISFIABLE_WRITE_CONCERN = frozenset({79, 100})
UNAUTHORIZED = frozenset({13, 8000})  # Unauthorized; Atlas's AtlasError (e.g. no privilege)
AUTHENTICATION_FAILED = 18
#: Codes of a server that does not know time-series collections (FerretDB: NotImplemented).
NO_TIMESERIES = frozenset({72, 115, 238, 40415})
TIMESTAMP_TYPES = ("timestamp-millis", "timestamp-micros", "timestamp-nanos")
MAX_OPS_PER_COMMAND = 1000
FIND_CHUNK = 5000


@dataclass(slots=True)
class _Prepared:
    """One object converted for MongoDB: its position in the batch, ``_id`` and BSON."""

    index: int
    obj: MappedObject
    key: Any  # the _id as stored (str, int, UUID or ObjectId)
    document: dict[str, Any]  # the converted document, without _kafka (for comparisons)
    raw: RawBSONDocument | None  # what is written (None for tombstones)


def _rejected(reason: str) -> ObjectResult:
    return ObjectResult(Outcome.REJECTED, reason)


def _server_message(error: dict[str, Any]) -> str:
    return f"{error.get('errmsg', 'write error')} (code {error.get('code')})"


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _kafka_guard(key: Any, obj: MappedObject) -> dict[str, Any]:
    """Matches ``_id`` unless it holds a newer offset of the same topic and partition."""
    record = obj.record
    return {
        "_id": key,
        "$or": [
            {f"{KAFKA_FIELD}.topic": {"$ne": record.topic}},
            {f"{KAFKA_FIELD}.partition": {"$ne": record.partition}},
            {f"{KAFKA_FIELD}.offset": {"$lte": record.offset}},
        ],
    }


def _is_older(obj: MappedObject, than: MappedObject) -> bool:
    """True when ``obj`` is an earlier offset of the same partition as ``than``."""
    a, b = obj.record, than.record
    return a.topic == b.topic and a.partition == b.partition and a.offset < b.offset


def _describe_type(node: Any) -> str:
    if isinstance(node, dict):
        return str(node.get("logicalType") or node.get("type"))
    if isinstance(node, list):
        return "a union (" + ", ".join(_describe_type(n) for n in node) + ")"
    return str(node)


class MongoBackend(Backend):
    """Writes batches into MongoDB with pymongo's asyncio client."""

    def __init__(self, config: MongoBackendConfig, types: ObjectTypes) -> None:
        self._config = config
        self._types = types
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._server = "MongoDB"
        self._ferretdb: str | None = None
        self._max_size = 16 * 1024 * 1024
        self._converter = BsonConverter(config.decimals)
        self._timeseries: set[str] = set()  # collections without a unique _id
        self._collections: dict[str, AsyncCollection[dict[str, Any]]] = {}

    # -- open / check / close ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, identify the server, check the settings against it, create time series."""
        if self._db is not None:
            return
        problems = self._settings_problems()
        if problems:
            raise FatalBackendError("\n".join(problems))
        try:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                self._config.uri,
                uuidRepresentation="standard",
                tz_aware=True,
                serverSelectionTimeoutMS=self._config.server_selection_timeout_ms,
                appname="data-ingest-connector",
            )
        except (ConfigurationError, ValueError, TypeError) as exc:
            raise FatalBackendError(f"backend.uri: {exc}") from None
        wc = self._config.write_concern
        try:
            db = client.get_database(
                self._config.database,
                codec_options=CODEC_OPTIONS,
                write_concern=WriteConcern(
                    w=wc.w, j=wc.j, wtimeout=wc.wtimeout_ms if wc.wtimeout_ms > 0 else None
                ),
            )
        except InvalidName as exc:
            await client.close()
            raise FatalBackendError(f"backend.database: {exc}") from None
        try:
            await self._inspect(client, db)
        except BaseException as exc:
            await client.close()
            if isinstance(exc, PyMongoError):
                raise self._translate(exc, "connecting") from exc
            raise
        self._client, self._db = client, db

    async def _inspect(
        self, client: AsyncMongoClient[dict[str, Any]], db: AsyncDatabase[dict[str, Any]]
    ) -> None:
        """Read ``buildInfo``; refuse what the server cannot do; prepare time series."""
        info = await client.admin.command("buildInfo")
        version = str(info.get("version", "?"))
        self._max_size = int(info.get("maxBsonObjectSize") or self._max_size)
        if "ferretdbVersion" in info or "ferretdb" in info:
            self._ferretdb = f"FerretDB {info.get('ferretdbVersion', '?')}"
            self._server = f"MongoDB {version} ({self._ferretdb})"
            if self._config.decimals == "decimal128":
                raise FatalBackendError(
                    f"backend.decimals: {self._ferretdb} cannot store Decimal128 values (it "
                    "drops the connection on them); set decimals: string to store decimals as text"
                )
            self._converter = BsonConverter(self._config.decimals, ferretdb=self._ferretdb)
        else:
            self._server = f"MongoDB {version}"
        existing = await self._existing(db)
        self._timeseries = {name for name, kind in existing.items() if kind == "timeseries"}
        for type_name, options in self._config.timeseries.items():
            object_type = self._types.get(type_name)
            assert object_type is not None  # checked by _settings_problems
            name = object_type.collection
            where = f"backend.timeseries.{type_name}"
            if name in existing:
                if existing[name] != "timeseries":
                    raise FatalBackendError(
                        f"{where}: the collection {name!r} already exists and is not a "
                        "time-series collection; rename or drop it, or remove this entry"
                    )
                continue
            spec: dict[str, Any] = {
                "timeField": options.time_field,
                "granularity": options.granularity,
            }
            if options.meta_field:
                spec["metaField"] = options.meta_field
            try:
                await db.create_collection(name, timeseries=spec)
            except CollectionInvalid:
                pass  # created meanwhile, e.g. by another replica
            except OperationFailure as exc:
                if exc.code in NO_TIMESERIES:
                    raise FatalBackendError(
                        f"{where}: the server ({self._server}) does not support time-series "
                        f"collections ({(exc.details or {}).get('errmsg', exc)}); "
                        "remove backend.timeseries or use MongoDB 5.0 or later"
                    ) from None
                raise
            self._timeseries.add(name)

    def _settings_problems(self) -> list[str]:
        """Settings that break the contract or contradict the object types, one per line."""
        problems: list[str] = []
        for object_type in self._types:
            fields = {f["name"] for f in object_type.schema["fields"]}
            if not object_type.asymmetric and KAFKA_FIELD in fields:
                problems.append(
                    f"{object_type.file}: {object_type.name}.{KAFKA_FIELD}: the MongoDB backend "
                    f"keeps the Kafka coordinates of standard objects in {KAFKA_FIELD}; "
                    "rename the field"
                )
        for type_name, options in self._config.timeseries.items():
            where = f"backend.timeseries.{type_name}"
            object_type = self._types.get(type_name)
            if object_type is None:
                problems.append(
                    f"{where}: no object type {type_name!r} is declared; declared types: "
                    + ", ".join(self._types.names())
                )
                continue
            if not object_type.asymmetric:
                problems.append(
                    f"{where}: {object_type.name} is a standard type; only asymmetric "
                    "(insert-only) types can be stored in a time-series collection"
                )
            problems += self._timeseries_field_problems(
                where, object_type, options.time_field, options.meta_field
            )
        return problems

    @staticmethod
    def _timeseries_field_problems(
        where: str, object_type: ObjectType, time_field: str, meta_field: str | None
    ) -> list[str]:
        fields = {f["name"]: f["type"] for f in object_type.schema["fields"]}
        timestamps = [
            name
            for name, node in fields.items()
            if isinstance(node, dict) and node.get("logicalType") in TIMESTAMP_TYPES
        ]
        listed = ", ".join(timestamps) or "none"
        problems: list[str] = []
        if time_field not in fields:
            problems.append(
                f"{where}: time_field {time_field!r} is not a top-level field of "
                f"{object_type.name}; its timestamp fields: {listed}"
            )
        elif time_field not in timestamps:
            problems.append(
                f"{where}: time_field {time_field!r} is {_describe_type(fields[time_field])}, "
                f"not a timestamp (a non-null long with logicalType timestamp-millis or "
                f"timestamp-micros); timestamp fields of {object_type.name}: {listed}"
            )
        if meta_field is not None:
            if meta_field not in fields:
                problems.append(
                    f"{where}: meta_field {meta_field!r} is not a top-level field of "
                    f"{object_type.name}; its fields: {', '.join(fields)}"
                )
            elif meta_field in ("_id", time_field):
                problems.append(
                    f"{where}: meta_field {meta_field!r} cannot be _id or the time_field; "
                    "choose the field that identifies the series, e.g. a link to its sensor"
                )
        return problems

    @staticmethod
    async def _existing(db: AsyncDatabase[dict[str, Any]]) -> dict[str, str]:
        """Every collection of the database by name, with its type (collection, timeseries)."""
        cursor = await db.list_collections()
        return {info["name"]: str(info.get("type", "collection")) async for info in cursor}

    async def check(self) -> str:
        """Ping; one line with the server, its version, the database and its collections."""
        await self.open()
        client, db = self._open()
        try:
            await client.admin.command("ping")
            existing = await self._existing(db)
        except PyMongoError as exc:
            raise self._translate(exc, "checking the server") from exc
        wanted = sorted({t.collection for t in self._types})
        present = [
            c + (" (time series)" if c in self._timeseries else "") for c in wanted if c in existing
        ]
        missing = [c for c in wanted if c not in existing]
        hosts = ",".join(f"{h}:{p}" for h, p in sorted(client.nodes)) or "?"
        wc = self._config.write_concern
        return (
            f"{self._server} at {hosts}, database {self._config.database!r} "
            f"(write concern w={wc.w} j={str(wc.j).lower()} wtimeout={wc.wtimeout_ms} ms): "
            f"collections present: {', '.join(present) or 'none'}; "
            f"created on first write: {', '.join(missing) or 'none'}"
        )

    async def close(self) -> None:
        """Close the client and its connection pool."""
        if self._client is not None:
            await self._client.close()
        self._client = self._db = None
        self._collections.clear()

    def _open(self) -> tuple[AsyncMongoClient[dict[str, Any]], AsyncDatabase[dict[str, Any]]]:
        if self._client is None or self._db is None:
            raise FatalBackendError("the MongoDB backend is not open")
        return self._client, self._db

    def _collection(self, name: str) -> AsyncCollection[dict[str, Any]]:
        coll = self._collections.get(name)
        if coll is None:
            coll = self._collections[name] = self._open()[1][name]
        return coll

    # -- ingest --------------------------------------------------------------------------------

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        """Write a batch; one result per object, durable per the write concern."""
        self._open()
        groups: dict[tuple[str, bool], list[tuple[int, MappedObject]]] = {}
        for index, obj in enumerate(objects):
            key = (obj.object_type.collection, obj.object_type.asymmetric)
            groups.setdefault(key, []).append((index, obj))
        results: dict[int, ObjectResult] = {}
        try:
            for (collection, asymmetric), items in groups.items():
                if asymmetric:
                    results.update(await self._insert(collection, items))
                else:
                    results.update(await self._upsert(collection, items))
        except PyMongoError as exc:
            raise self._translate(exc, "writing the batch") from exc
        return [results[i] for i in range(len(objects))]

    def _prepare(
        self, index: int, obj: MappedObject, coordinates: bool
    ) -> _Prepared | ObjectResult:
        """Convert and encode one object; a REJECTED result when it cannot be stored."""
        try:
            document = self._converter.document(obj.document)
            key = self._converter.value(obj.object_id, "_id")
            document["_id"] = key
            stored = document
            if coordinates:
                record = obj.record
                stored = {
                    **document,
                    KAFKA_FIELD: {
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                }
            raw = encode(stored, self._max_size)
        except UnstorableValue as exc:
            return _rejected(f"document cannot be stored: {exc}")
        return _Prepared(index, obj, key, document, raw)

    def _compare(self, item: _Prepared, stored: dict[str, Any]) -> ObjectResult:
        """DUPLICATE when the stored document is identical, else CONFLICT (never written)."""
        if same_value(stored, item.document):
            return DUPLICATE
        fields = differing_fields(stored, item.document)
        return conflict(item.obj.object_type.name, storage_id(item.obj.object_id), fields)

    async def _find(self, collection: str, keys: list[Any]) -> dict[Any, dict[str, Any]]:
        """The stored documents with these ``_id``s, by ``_id``."""
        coll = self._collection(collection)
        found: dict[Any, dict[str, Any]] = {}
        for chunk in _chunks(keys, FIND_CHUNK):
            async for doc in coll.find({"_id": {"$in": chunk}}):
                found[doc["_id"]] = doc
        return found

    async def _insert(
        self, collection: str, items: list[tuple[int, MappedObject]]
    ) -> dict[int, ObjectResult]:
        """Insert asymmetric objects; duplicates and conflicts by comparison (R8, R9)."""
        out: dict[int, ObjectResult] = {}
        firsts: dict[Any, _Prepared] = {}  # the first object of each _id in the batch
        later: list[_Prepared] = []  # the same _id again in this batch
        for index, obj in items:
            if obj.tombstone:
                out[index] = _rejected(
                    f"a tombstone cannot delete the asymmetric type {obj.object_type.name}; "
                    "its objects are insert-only (R8)"
                )
                continue
            prepared = self._prepare(index, obj, coordinates=False)
            if isinstance(prepared, ObjectResult):
                out[index] = prepared
            elif prepared.key in firsts:
                later.append(prepared)
            else:
                firsts[prepared.key] = prepared
        stored: dict[Any, dict[str, Any]] = {}  # what is stored under each _id afterwards
        failed: dict[Any, str] = {}
        pending = list(firsts.values())
        if collection in self._timeseries and pending:
            # No unique _id index here: look the _ids up first and insert only new ones.
            existing = await self._find(collection, [p.key for p in pending])
            for item in pending:
                if item.key in existing:
                    stored[item.key] = existing[item.key]
                    out[item.index] = self._compare(item, existing[item.key])
            pending = [p for p in pending if p.key not in existing]
        errors = await self._insert_many(collection, pending)
        dup_keys = [pending[i].key for i, e in errors.items() if e.get("code") == DUPLICATE_KEY]
        existing = await self._find(collection, dup_keys) if dup_keys else {}
        for position, item in enumerate(pending):
            error = errors.get(position)
            if error is None:
                stored[item.key] = item.document
                out[item.index] = INSERTED
            elif error.get("code") == DUPLICATE_KEY and item.key in existing:
                stored[item.key] = existing[item.key]
                out[item.index] = self._compare(item, existing[item.key])
            else:  # includes a duplicate key in another unique index
                failed[item.key] = _server_message(error)
                out[item.index] = _rejected(failed[item.key])
        for item in later:
            if item.key in stored:
                out[item.index] = self._compare(item, stored[item.key])
            else:
                out[item.index] = _rejected(
                    f"not written: an earlier {item.obj.object_type.name} with the same _id in "
                    f"this batch was rejected: {failed[item.key]}"
                )
        return out

    async def _insert_many(
        self, collection: str, items: list[_Prepared]
    ) -> dict[int, dict[str, Any]]:
        """Unordered insert; the write errors by position in ``items``."""
        if not items:
            return {}
        try:
            await self._collection(collection).insert_many([p.raw for p in items], ordered=False)
            return {}
        except BulkWriteError as exc:
            details = exc.details
        concern_errors = details.get("writeConcernErrors") or []
        if concern_errors:
            raise self._write_concern_failure(concern_errors[0])
        errors = {int(e["index"]): e for e in details.get("writeErrors") or []}
        inserted = int(details.get("nInserted", 0))
        if inserted + len(errors) != len(items):
            raise FatalBackendError(
                f"the server acknowledged {inserted} inserts and {len(errors)} write errors for "
                f"{len(items)} documents into {collection!r}; it does not behave like MongoDB"
            )
        return errors

    async def _upsert(
        self, collection: str, items: list[tuple[int, MappedObject]]
    ) -> dict[int, ObjectResult]:
        """Replace or delete standard objects; the latest offset of a partition wins."""
        out: dict[int, ObjectResult] = {}
        members: dict[Any, list[_Prepared]] = {}
        winners: dict[Any, _Prepared] = {}
        for index, obj in items:
            if obj.tombstone:
                try:
                    key = self._converter.value(obj.object_id, "_id")
                except UnstorableValue as exc:
                    out[index] = _rejected(f"_id cannot be stored: {exc}")
                    continue
                prepared: _Prepared | ObjectResult = _Prepared(index, obj, key, {}, None)
            else:
                prepared = self._prepare(index, obj, coordinates=True)
            if isinstance(prepared, ObjectResult):
                out[index] = prepared
                continue
            members.setdefault(prepared.key, []).append(prepared)
            current = winners.get(prepared.key)
            # Only the last write per _id matters, unless it replays an older offset.
            if current is None or not _is_older(obj, current.obj):
                winners[prepared.key] = prepared
        replaces = [w for w in winners.values() if w.raw is not None]
        deletes = [w for w in winners.values() if w.raw is None]
        failed: dict[Any, str] = {}
        errors = await self._write_ops(
            collection,
            "update",
            [{"q": _kafka_guard(w.key, w.obj), "u": w.raw, "upsert": True} for w in replaces],
            [len(w.raw.raw) if w.raw is not None else 0 for w in replaces],
        )
        # A duplicate key on upsert: the filter did not match an existing _id. That is a
        # newer offset of the same partition (done) or another unique index (rejected).
        dup_keys = [replaces[i].key for i, e in errors.items() if e.get("code") == DUPLICATE_KEY]
        existing = await self._find(collection, dup_keys) if dup_keys else {}
        for position, error in errors.items():
            item = replaces[position]
            if error.get("code") == DUPLICATE_KEY and self._newer(existing.get(item.key), item):
                continue
            failed[item.key] = _server_message(error)
        errors = await self._write_ops(
            collection,
            "delete",
            [{"q": _kafka_guard(w.key, w.obj), "limit": 1} for w in deletes],
            [0] * len(deletes),
        )
        for position, error in errors.items():
            failed[deletes[position].key] = _server_message(error)
        for key, group in members.items():
            winner = winners[key]
            for item in group:
                if key not in failed:
                    out[item.index] = DELETED if item.obj.tombstone else UPSERTED
                elif item is winner:
                    out[item.index] = _rejected(failed[key])
                else:
                    out[item.index] = _rejected(
                        f"not written: the {winner.obj.object_type.name} with the same _id at "
                        f"offset {winner.obj.record.offset} of this batch, which supersedes it, "
                        f"was rejected: {failed[key]}"
                    )
        return out

    @staticmethod
    def _newer(stored: dict[str, Any] | None, item: _Prepared) -> bool:
        """True when ``stored`` holds a newer offset of the same partition than ``item``."""
        kafka = (stored or {}).get(KAFKA_FIELD)
        record = item.obj.record
        return (
            isinstance(kafka, dict)
            and kafka.get("topic") == record.topic
            and kafka.get("partition") == record.partition
            and isinstance(kafka.get("offset"), int)
            and kafka["offset"] > record.offset
        )

    async def _write_ops(
        self, collection: str, command: str, ops: list[dict[str, Any]], sizes: list[int]
    ) -> dict[int, dict[str, Any]]:
        """Run ``update``/``delete`` ops; the write errors by position in ``ops``.

        A chunk with a write error is written again one op at a time, and only those
        answers count: FerretDB 1.24 stops at the first failing op of a command (ordered or
        not), reports it under index 0 wherever it was, and says nothing of the skipped
        rest. Every op here is idempotent (a replace of the same offset writes the same
        document; a delete deletes once), and errors are rare (replays of older offsets).
        """
        errors: dict[int, dict[str, Any]] = {}
        start = 0
        while start < len(ops):
            end, size = start, 0
            while end < len(ops) and end - start < MAX_OPS_PER_COMMAND:
                if end > start and size + sizes[end] > self._max_size // 2:
                    break
                size += sizes[end]
                end += 1
            chunk = ops[start:end]
            write_errors = await self._command(collection, command, chunk)
            if write_errors and len(chunk) == 1:
                errors[start] = write_errors[0]
            elif write_errors:
                for position, op in enumerate(chunk, start):
                    single = await self._command(collection, command, [op])
                    if single:
                        errors[position] = single[0]
            start = end
        return errors

    async def _command(
        self, collection: str, command: str, ops: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One ordered ``update``/``delete`` command with the write concern; its write errors."""
        db = self._open()[1]
        reply = await db.command(
            SON(
                [
                    (command, collection),
                    ("updates" if command == "update" else "deletes", ops),
                    ("ordered", True),
                    ("writeConcern", db.write_concern.document),
                ]
            ),
            codec_options=CODEC_OPTIONS,
        )
        if reply.get("writeConcernError"):
            raise self._write_concern_failure(reply["writeConcernError"])
        write_errors: list[dict[str, Any]] = reply.get("writeErrors") or []
        if not write_errors and command == "update" and reply.get("n") != len(ops):
            raise FatalBackendError(
                f"the server acknowledged {reply.get('n')} of {len(ops)} upserts into "
                f"{collection!r} without an error; it does not behave like MongoDB"
            )
        return write_errors

    # -- errors --------------------------------------------------------------------------------

    def _write_concern_failure(self, error: dict[str, Any]) -> ConnectorError:
        return self._translate(
            WriteConcernError(str(error.get("errmsg")), error.get("code"), error), "writing"
        )

    def _translate(self, exc: PyMongoError, doing: str) -> ConnectorError:
        """The connector's error for a driver error: retryable, or fatal with a clear cause."""
        message = str(exc).split(", Timeout:")[0]  # server selection errors go on for lines
        if isinstance(exc, OperationFailure):  # the server's own words, not the whole reply
            message = (exc.details or {}).get("errmsg") or message.split(", full error:")[0]
        code = getattr(exc, "code", None)
        wc = self._config.write_concern
        if isinstance(exc, WriteConcernError):
            if code in UNSATISFIABLE_WRITE_CONCERN:
                return FatalBackendError(
                    f"backend.write_concern: this deployment cannot satisfy w={wc.w} "
                    f"j={str(wc.j).lower()}: {message}; lower w or fix the replica set"
                )
            return RetryableError(
                f"{self._server}: write concern w={wc.w} not satisfied while {doing} ({message}); "
                "the batch is not acknowledged"
            )
        if isinstance(exc, ConnectionFailure):
            return RetryableError(f"{self._server} unavailable while {doing}: {message}")
        if exc.has_error_label("RetryableWriteError") or code in RETRYABLE_CODES:
            return RetryableError(f"{self._server}: transient error while {doing}: {message}")
        if code == AUTHENTICATION_FAILED:
            return FatalBackendError(
                f"backend.uri: authentication failed: {message}; check the user name, "
                "password and authSource in the URI"
            )
        if code in UNAUTHORIZED:
            return FatalBackendError(
                f"not authorised on database {self._config.database!r} while {doing}: "
                f"{message}; grant the connector's user the readWrite role on it"
            )
        if isinstance(exc, ConfigurationError):
            return FatalBackendError(f"backend.uri: {message}")
        return FatalBackendError(f"{self._server} refused {doing}: {message}")
