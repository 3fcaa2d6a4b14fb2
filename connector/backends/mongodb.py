"""The MongoDB backend: MongoDB, Atlas, or a wire-compatible server such as FerretDB.

One collection per object type (its ``collection`` name) in ``backend.database``, documents
shaped as Atlas Device Sync stored them (``bson_documents``). Every write carries the
configured write concern (default ``w: majority, j: true``), so a batch is durable when
``ingest`` returns.

* Asymmetric types are only inserted (R8): ``insert_many(ordered=False)``. A duplicate key
  error makes the backend read the stored document under that ``_id`` and compare:
  identical is a duplicate, different is a conflict that is never overwritten (R9). Other
  write errors reject that one document; the rest of the batch is written regardless.
  Time-series collections keep no unique ``_id``: see ``mongodb_timeseries``.
* Standard types are replaced by ``_id`` (upsert); a tombstone replaces the object by a
  marker ``{_id, _deleted: true, _kafka}``. Both carry the Kafka coordinates of their write
  in ``_kafka: {topic, partition, offset}``, and the filter of every replace lets no older
  offset of the same partition overwrite a newer document or marker. One replace per
  ``_id`` is atomic, so concurrent writers of an ``_id`` cannot bring a deleted object
  back. Readers skip the markers with ``{"_deleted": {"$ne": true}}``.

Driver errors are translated in ``mongodb_errors``, FerretDB's differences handled in
``ferretdb``, and the settings checked against the object types in ``mongodb_settings``.
"""

from __future__ import annotations

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
    InvalidName,
    OperationFailure,
    PyMongoError,
)

from connector.backends import (
    DELETED,
    DUPLICATE,
    INSERTED,
    UPSERTED,
    Backend,
    ObjectResult,
    conflict,
    is_older,
)
from connector.backends.bson_documents import (
    CODEC_OPTIONS,
    DELETED_FIELD,
    KAFKA_FIELD,
    BsonConverter,
    UnstorableValue,
    differing_fields,
    encode,
    same_value,
)
from connector.backends.ferretdb import errors_op_by_op, ferretdb_name, ferretdb_problems
from connector.backends.mongodb_errors import (
    DUPLICATE_KEY,
    rejected,
    server_message,
    translate,
    write_concern_failure,
)
from connector.backends.mongodb_settings import settings_problems
from connector.backends.mongodb_timeseries import (
    MIN_VERSION,
    chunks,
    delete_op,
    rank,
    repeated,
    surplus,
    untagged,
    write_tag,
)
from connector.config import MongoBackendConfig, TimeSeriesConfig
from connector.documents import storage_id
from connector.errors import ConnectorError, FatalBackendError
from connector.records import MappedObject, SourceRecord
from connector.schemas import ObjectTypes

#: Codes of a server that does not know time-series collections.
NO_TIMESERIES = frozenset({72, 115, 238, 40415})
MAX_OPS_PER_COMMAND = 1000

Document = dict[str, Any]
Client = AsyncMongoClient[Document]
Database = AsyncDatabase[Document]


@dataclass(slots=True)
class _Prepared:
    """One object converted for MongoDB: its position in the batch, ``_id`` and BSON."""

    index: int
    obj: MappedObject
    key: Any  # the _id as stored (str, int, UUID or ObjectId)
    document: Document  # the converted document, without _kafka (for comparisons)
    raw: RawBSONDocument  # what is written: the document with _kafka, or a marker


def _coordinates(record: SourceRecord) -> Document:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _guard(key: Any, record: SourceRecord) -> Document:
    """Matches ``_id`` unless it holds a later offset of the same topic and partition, or a
    marker of the same offset."""
    return {
        "_id": key,
        "$or": [
            {f"{KAFKA_FIELD}.topic": {"$ne": record.topic}},
            {f"{KAFKA_FIELD}.partition": {"$ne": record.partition}},
            {f"{KAFKA_FIELD}.offset": {"$lt": record.offset}},
            {f"{KAFKA_FIELD}.offset": record.offset, DELETED_FIELD: {"$ne": True}},
        ],
    }


def _supersedes(stored: Document | None, record: SourceRecord) -> bool:
    """True when ``stored`` wins over a write at ``record`` (what ``_guard`` lets stand)."""
    kafka = (stored or {}).get(KAFKA_FIELD)
    if not (
        isinstance(kafka, dict)
        and kafka.get("topic") == record.topic
        and kafka.get("partition") == record.partition
        and isinstance(kafka.get("offset"), int)
    ):
        return False
    offset: int = kafka["offset"]
    deleted = (stored or {}).get(DELETED_FIELD) is True
    return offset > record.offset or (offset == record.offset and deleted)


def _version(build_info: Document) -> tuple[int, ...]:
    numbers = build_info.get("versionArray")
    if isinstance(numbers, list) and numbers:
        return tuple(int(n) for n in numbers[:2])
    try:
        return tuple(int(n) for n in str(build_info.get("version", "0.0")).split(".")[:2])
    except ValueError:
        return (0, 0)


class MongoBackend(Backend):
    """Writes batches into MongoDB with pymongo's asyncio client."""

    def __init__(self, config: MongoBackendConfig, types: ObjectTypes) -> None:
        self._config = config
        self._types = types
        self._client: Client | None = None
        self._db: Database | None = None
        self._server = "MongoDB"
        self._max_size = 16 * 1024 * 1024
        self._converter = BsonConverter(config.decimals)
        self._timeseries: set[str] = set()  # collections without a unique _id
        self._collections: dict[str, AsyncCollection[Document]] = {}

    # -- open / check / close ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, identify the server, check the settings against it, create time series."""
        if self._db is not None:
            return
        client, db, info = await self._connect()
        try:
            self._identify(info)
            existing = await self._existing(db)
            to_create = self._timeseries_to_create(existing)
            self._timeseries = {name for name, kind in existing.items() if kind == "timeseries"}
            for name, options in to_create.items():
                await self._create_timeseries(db, name, options)
                self._timeseries.add(name)
        except BaseException as exc:
            await client.close()  # open() may be called again: nothing may stay behind
            if isinstance(exc, PyMongoError):
                raise self._translate(exc, "preparing the collections") from exc
            raise
        self._client, self._db = client, db

    async def _connect(self) -> tuple[Client, Database, Document]:
        """A client, its database and the server's ``buildInfo`` (so it is reachable).

        Server selection times out after ``server_selection_timeout_ms``: an unreachable
        server is a ``RetryableError`` within that time, never a hang.
        """
        problems = settings_problems(self._config, self._types)
        if problems:
            raise FatalBackendError("\n".join(problems))
        try:
            client: Client = AsyncMongoClient(
                self._config.uri,
                uuidRepresentation="standard",
                tz_aware=True,
                serverSelectionTimeoutMS=self._config.server_selection_timeout_ms,
                connectTimeoutMS=self._config.server_selection_timeout_ms,
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
            info: Document = await client.admin.command("buildInfo")
        except BaseException as exc:
            await client.close()
            if isinstance(exc, InvalidName):
                raise FatalBackendError(f"backend.database: {exc}") from None
            if isinstance(exc, PyMongoError):
                raise self._translate(exc, "connecting") from exc
            raise
        return client, db, info

    def _identify(self, info: Document) -> None:
        """Take the server's name and limits from ``buildInfo``; refuse what it cannot do."""
        self._max_size = int(info.get("maxBsonObjectSize") or self._max_size)
        ferretdb = ferretdb_name(info)
        self._server = f"MongoDB {info.get('version', '?')}"
        problems: list[str] = []
        if ferretdb is not None:
            self._server += f" ({ferretdb})"
            self._converter = BsonConverter(self._config.decimals, ferretdb=ferretdb)
            problems = ferretdb_problems(self._config, ferretdb, self._server)
        elif self._config.timeseries and _version(info) < MIN_VERSION:
            problems = [
                f"backend.timeseries: {self._server} cannot delete a surplus copy from a "
                "time-series collection, which keeps it to one copy per _id; use MongoDB "
                "7.0 or later, or remove backend.timeseries"
            ]
        if problems:
            raise FatalBackendError("\n".join(problems))

    def _timeseries_to_create(self, existing: dict[str, str]) -> dict[str, TimeSeriesConfig]:
        """The configured time-series collections that do not exist yet, by name."""
        out: dict[str, TimeSeriesConfig] = {}
        for type_name, options in self._config.timeseries.items():
            object_type = self._types.get(type_name)
            assert object_type is not None  # checked by settings_problems
            name = object_type.collection
            kind = existing.get(name)
            if kind is None:
                out[name] = options
            elif kind != "timeseries":
                raise FatalBackendError(
                    f"backend.timeseries.{type_name}: the collection {name!r} already exists "
                    "and is not a time-series collection; rename or drop it, or remove this entry"
                )
        return out

    async def _create_timeseries(self, db: Database, name: str, options: TimeSeriesConfig) -> None:
        spec: Document = {"timeField": options.time_field, "granularity": options.granularity}
        if options.meta_field:
            spec["metaField"] = options.meta_field
        try:
            await db.create_collection(name, timeseries=spec)
        except CollectionInvalid:
            pass  # created meanwhile, e.g. by another replica
        except OperationFailure as exc:
            if exc.code in NO_TIMESERIES:
                raise FatalBackendError(
                    f"backend.timeseries: the server ({self._server}) does not support "
                    f"time-series collections ({(exc.details or {}).get('errmsg', exc)}); "
                    "remove backend.timeseries or use MongoDB 7.0 or later"
                ) from None
            raise

    @staticmethod
    async def _existing(db: Database) -> dict[str, str]:
        """Every collection of the database by name, with its type (collection, timeseries)."""
        cursor = await db.list_collections()
        return {info["name"]: str(info.get("type", "collection")) async for info in cursor}

    async def check(self) -> str:
        """Connect, ping and describe the database; creates nothing."""
        client, db, info = await self._connect()
        try:
            self._identify(info)
            await client.admin.command("ping")
            existing = await self._existing(db)
            to_create = self._timeseries_to_create(existing)
            hosts = ",".join(f"{h}:{p}" for h, p in sorted(client.nodes)) or "?"
        except PyMongoError as exc:
            raise self._translate(exc, "checking the server") from exc
        finally:
            await client.close()
        wanted = sorted({t.collection for t in self._types})
        present = [
            c + (" (time series)" if existing[c] == "timeseries" else "")
            for c in wanted
            if c in existing
        ]
        missing = [
            c + (" (time series, created at start)" if c in to_create else "")
            for c in wanted
            if c not in existing
        ]
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

    def _database(self) -> Database:
        if self._db is None:
            raise FatalBackendError("the MongoDB backend is not open")
        return self._db

    def _collection(self, name: str) -> AsyncCollection[Document]:
        coll = self._collections.get(name)
        if coll is None:
            coll = self._collections[name] = self._database()[name]
        return coll

    def _translate(self, exc: PyMongoError, doing: str) -> ConnectorError:
        return translate(exc, doing, self._server, self._config)

    # -- ingest --------------------------------------------------------------------------------

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        """Write a batch; one result per object, durable per the write concern."""
        self._database()
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

    def _prepare(self, index: int, obj: MappedObject, kafka: Document | None) -> _Prepared:
        """Convert and encode one object, with ``kafka`` as its ``_kafka`` field if given;
        raises ``UnstorableValue``."""
        document = self._converter.document(obj.document)
        key = self._converter.value(obj.object_id, "_id")
        document["_id"] = key
        stored = document if kafka is None else {**document, KAFKA_FIELD: kafka}
        return _Prepared(index, obj, key, document, encode(stored, self._max_size))

    def _compare(self, item: _Prepared, stored: Document) -> ObjectResult:
        """DUPLICATE when the stored document is identical, else CONFLICT (never written)."""
        stored = untagged(stored)
        if same_value(stored, item.document):
            return DUPLICATE
        fields = differing_fields(stored, item.document)
        return conflict(item.obj.object_type.name, storage_id(item.obj.object_id), fields)

    async def _find(self, collection: str, keys: list[Any]) -> dict[Any, Document]:
        """The stored documents with these ``_id``s, by ``_id`` (the lowest ranked copy)."""
        coll = self._collection(collection)
        found: dict[Any, Document] = {}
        for chunk in chunks(keys):
            async for doc in coll.find({"_id": {"$in": chunk}}):
                other = found.get(doc["_id"])
                if other is None or rank(doc) < rank(other):
                    found[doc["_id"]] = doc
        return found

    async def _insert(
        self, collection: str, items: list[tuple[int, MappedObject]]
    ) -> dict[int, ObjectResult]:
        """Insert asymmetric objects; duplicates and conflicts by comparison (R8, R9)."""
        out: dict[int, ObjectResult] = {}
        timeseries = collection in self._timeseries
        firsts: dict[Any, _Prepared] = {}  # the first object of each _id in the batch
        later: list[_Prepared] = []  # the same _id again in this batch
        for index, obj in items:
            if obj.tombstone:
                out[index] = rejected(
                    f"a tombstone cannot delete the asymmetric type {obj.object_type.name}; "
                    "its objects are insert-only (R8)"
                )
                continue
            try:
                prepared = self._prepare(index, obj, write_tag(obj.record) if timeseries else None)
            except UnstorableValue as exc:
                out[index] = rejected(f"document cannot be stored: {exc}")
                continue
            if prepared.key in firsts:
                later.append(prepared)
            else:
                firsts[prepared.key] = prepared
        stored: dict[Any, Document] = {}  # what is stored under each _id afterwards
        failed: dict[Any, str] = {}
        pending = list(firsts.values())
        if timeseries and pending:
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
                failed[item.key] = server_message(error)
                out[item.index] = rejected(failed[item.key])
        if timeseries:
            inserted = [p for i, p in enumerate(pending) if i not in errors]
            for key, kept in (await self._remove_surplus(collection, inserted)).items():
                stored[key] = kept
                item = firsts[key]
                if (kept.get(KAFKA_FIELD) or {}).get("write") != item.raw[KAFKA_FIELD]["write"]:
                    out[item.index] = self._compare(item, kept)
        for item in later:
            if item.key in stored:
                out[item.index] = self._compare(item, stored[item.key])
            else:
                out[item.index] = rejected(
                    f"not written: an earlier {item.obj.object_type.name} with the same _id in "
                    f"this batch was rejected: {failed[item.key]}"
                )
        return out

    async def _remove_surplus(
        self, collection: str, inserted: list[_Prepared]
    ) -> dict[Any, Document]:
        """Delete the surplus copies of what this batch inserted into a time-series
        collection (``mongodb_timeseries``); the kept copy of each repeated ``_id``."""
        if not inserted:
            return {}
        copies = await repeated(self._collection(collection), [p.key for p in inserted])
        kept: dict[Any, Document] = {}
        deletes = []
        for key, found in copies.items():
            kept[key], extra = surplus(found)
            deletes += [delete_op(copy) for copy in extra]
        errors = await self._write_ops(collection, "delete", deletes, [0] * len(deletes))
        if errors:
            raise FatalBackendError(
                f"{self._server} refused to delete a surplus copy from the time-series "
                f"collection {collection!r}: {server_message(next(iter(errors.values())))}"
            )
        return kept

    async def _insert_many(self, collection: str, items: list[_Prepared]) -> dict[int, Document]:
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
            raise write_concern_failure(concern_errors[0], "writing", self._server, self._config)
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
        """Replace standard objects, or mark them deleted; the latest offset of a partition
        wins."""
        out: dict[int, ObjectResult] = {}
        members: dict[Any, list[_Prepared]] = {}
        winners: dict[Any, _Prepared] = {}
        for index, obj in items:
            try:
                if obj.tombstone:
                    key = self._converter.value(obj.object_id, "_id")
                    marker = {
                        "_id": key,
                        DELETED_FIELD: True,
                        KAFKA_FIELD: _coordinates(obj.record),
                    }
                    prepared = _Prepared(index, obj, key, {}, encode(marker, self._max_size))
                else:
                    prepared = self._prepare(index, obj, _coordinates(obj.record))
            except UnstorableValue as exc:
                what = "_id" if obj.tombstone else "document"
                out[index] = rejected(f"{what} cannot be stored: {exc}")
                continue
            members.setdefault(prepared.key, []).append(prepared)
            current = winners.get(prepared.key)
            # Only the last write per _id matters, unless it replays an older offset.
            if current is None or not is_older(obj, current.obj):
                winners[prepared.key] = prepared
        replaces = list(winners.values())
        failed: dict[Any, str] = {}
        errors = await self._write_ops(
            collection,
            "update",
            [{"q": _guard(w.key, w.obj.record), "u": w.raw, "upsert": True} for w in replaces],
            [len(w.raw.raw) for w in replaces],
        )
        # A duplicate key on upsert: the filter did not match an existing _id. That is a
        # later offset of the same partition (done) or another unique index (rejected).
        dup_keys = [replaces[i].key for i, e in errors.items() if e.get("code") == DUPLICATE_KEY]
        existing = await self._find(collection, dup_keys) if dup_keys else {}
        for position, error in errors.items():
            item = replaces[position]
            if error.get("code") == DUPLICATE_KEY and _supersedes(
                existing.get(item.key), item.obj.record
            ):
                continue
            failed[item.key] = server_message(error)
        for key, group in members.items():
            winner = winners[key]
            for item in group:
                if key not in failed:
                    out[item.index] = DELETED if item.obj.tombstone else UPSERTED
                elif item is winner:
                    out[item.index] = rejected(failed[key])
                else:
                    out[item.index] = rejected(
                        f"not written: the {winner.obj.object_type.name} with the same _id at "
                        f"offset {winner.obj.record.offset} of this batch, which supersedes it, "
                        f"was rejected: {failed[key]}"
                    )
        return out

    async def _write_ops(
        self, collection: str, command: str, ops: list[Document], sizes: list[int]
    ) -> dict[int, Document]:
        """Run ``update``/``delete`` ops in commands of bounded size; the write errors by
        position in ``ops`` (``errors_op_by_op``: FerretDB's reports are not trusted)."""

        async def send(chunk: list[Document]) -> list[Document]:
            return await self._command(collection, command, chunk)

        errors: dict[int, Document] = {}
        start = 0
        while start < len(ops):
            end, size = start, 0
            while end < len(ops) and end - start < MAX_OPS_PER_COMMAND:
                if end > start and size + sizes[end] > self._max_size // 2:
                    break
                size += sizes[end]
                end += 1
            chunk = ops[start:end]
            reported = await send(chunk)
            if reported:
                found = await errors_op_by_op(send, chunk, reported)
                errors.update({start + position: e for position, e in found.items()})
            start = end
        return errors

    async def _command(self, collection: str, command: str, ops: list[Document]) -> list[Document]:
        """One ordered ``update``/``delete`` command with the write concern; its write errors."""
        db = self._database()
        reply: Document = await db.command(
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
            raise write_concern_failure(
                reply["writeConcernError"], "writing", self._server, self._config
            )
        write_errors: list[Document] = reply.get("writeErrors") or []
        if not write_errors and command == "update" and reply.get("n") != len(ops):
            raise FatalBackendError(
                f"the server acknowledged {reply.get('n')} of {len(ops)} upserts into "
                f"{collection!r} without an error; it does not behave like MongoDB"
            )
        return write_errors
