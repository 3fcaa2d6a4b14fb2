"""The backends under test: how a test configures each one and reads back what it stored.

Integration tests are written once against ``BackendUnderTest`` and run for every backend,
against the real servers (SQLite file, PostgreSQL cluster, MongoDB-wire server). Every
test gets its own namespace (file, schema or database), so tests never see each other's
data.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from connector.documents import canonical_json


def normalised(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as plain JSON values (the canonical form), for comparisons."""
    return json.loads(canonical_json(document))


class BackendUnderTest(ABC):
    """One backend, configured for one test."""

    name: str

    @abstractmethod
    def section(self) -> dict[str, Any]:
        """The ``backend`` section of the pipeline file."""

    @abstractmethod
    def ids(self, collection: str) -> list[str]:
        """Every stored ``_id`` of ``collection`` as text (repeated if stored twice), as a
        reader sees them: without tombstone markers."""

    @abstractmethod
    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        """Every stored document by ``_id`` text, in canonical JSON form (no markers)."""

    def outage(self) -> Any:
        """A context manager during which the database server is down."""
        raise NotImplementedError(f"{self.name} is embedded: it has no server to stop")

    def coordinates(self, collection: str) -> dict[str, tuple[str, int, int]] | None:
        """(topic, partition, offset) of the write that stored each ``_id``; None when the
        backend keeps no coordinates for this kind of object (MongoDB asymmetric objects
        keep the Atlas Device Sync shape)."""
        return None


class SqliteUnderTest(BackendUnderTest):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "ingest.db"

    def section(self) -> dict[str, Any]:
        return {"type": "sqlite", "path": str(self.path)}

    def _rows(self, collection: str) -> list[tuple[Any, str]]:
        if not self.path.exists():
            return []
        with sqlite3.connect(self.path, timeout=30) as conn:
            # Standard types: the reader view without tombstone markers.
            for name in (f"{collection}_live", collection):
                exists = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)
                ).fetchone()
                if exists:
                    return conn.execute(f'SELECT _id, doc FROM "{name}"').fetchall()
            return []

    def ids(self, collection: str) -> list[str]:
        return [str(i) for i, _ in self._rows(collection)]

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        return {str(i): json.loads(doc) for i, doc in self._rows(collection)}

    def coordinates(self, collection: str) -> dict[str, tuple[str, int, int]] | None:
        if not self.path.exists():
            return {}
        with sqlite3.connect(self.path, timeout=30) as conn:
            rows = conn.execute(f'SELECT _id, _topic, _partition, _offset FROM "{collection}"')
            return {str(i): (t, p, o) for i, t, p, o in rows.fetchall()}


class PostgresUnderTest(BackendUnderTest):
    name = "postgres"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.schema = f"t_{uuid.uuid4().hex[:10]}"

    def section(self) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.server.dsn, "schema": self.schema}

    def _fetch(self, query: str) -> list[Any]:
        import asyncpg

        async def run() -> list[Any]:
            conn = await asyncpg.connect(self.server.dsn)
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            try:
                return list(await conn.fetch(query))
            except asyncpg.UndefinedTableError:
                return []
            finally:
                await conn.close()

        return asyncio.run(run())

    def _readable(self, collection: str) -> str:
        """The reader view of a standard type (no tombstone markers), else the table."""
        view = f'"{self.schema}"."{collection}_live"'
        found = self._fetch(f"SELECT to_regclass('{view}') IS NOT NULL AS found")
        return view if found[0]["found"] else f'"{self.schema}"."{collection}"'

    def ids(self, collection: str) -> list[str]:
        rows = self._fetch(f"SELECT _id::text AS id FROM {self._readable(collection)}")
        return [r["id"] for r in rows]

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        rows = self._fetch(f"SELECT * FROM {self._readable(collection)}")
        out = {}
        for row in rows:
            doc = {k: v for k, v in dict(row).items() if not k.startswith("_") or k == "_id"}
            out[str(row["_id"])] = normalised(doc)
        return out

    def outage(self) -> Any:
        return self.server.outage()

    def coordinates(self, collection: str) -> dict[str, tuple[str, int, int]] | None:
        table = f'"{self.schema}"."{collection}"'
        rows = self._fetch(f"SELECT _id::text AS id, _topic, _partition, _offset FROM {table}")
        return {r["id"]: (r["_topic"], r["_partition"], r["_offset"]) for r in rows}


class MongoUnderTest(BackendUnderTest):
    """A database of its own on the session's MongoDB-wire server, read with sync pymongo.

    ``documents`` drops ``_kafka`` (the coordinates of standard objects) and turns Decimal128
    into text, so a stored document equals ``normalised(mapped_document)`` of its object
    except where BSON itself differs from the canonical JSON form:

    * a ``date`` is stored as a BSON date at midnight UTC and comes back as a timestamp
      (``"2024-02-29T00:00:00Z"``, not ``"2024-02-29"``);
    * timestamps are stored with millisecond precision: microseconds are truncated;
    * a ``time`` is stored as its ISO text, which equals the canonical form.
    """

    name = "mongodb"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.database = f"t_{uuid.uuid4().hex[:10]}"

    def section(self) -> dict[str, Any]:
        return {
            "type": "mongodb",
            "uri": self.server.uri,
            "database": self.database,
            "decimals": "string",
        }

    def _documents(
        self, collection: str, projection: dict[str, int] | None = None
    ) -> list[dict[str, Any]]:
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.server.uri,
            uuidRepresentation="standard",
            tz_aware=True,
            serverSelectionTimeoutMS=10_000,
        )
        try:
            # Readers skip the tombstone markers of standard objects.
            found = client[self.database][collection].find({"_deleted": {"$ne": True}}, projection)
            return list(found)
        finally:
            client.close()

    def ids(self, collection: str) -> list[str]:
        return [str(doc["_id"]) for doc in self._documents(collection, {"_id": 1})]

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        from bson import Decimal128

        def plain(value: Any) -> Any:
            if isinstance(value, Decimal128):
                return value.to_decimal()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        out = {}
        for doc in self._documents(collection):
            doc.pop("_kafka", None)
            out[str(doc["_id"])] = normalised(plain(doc))
        return out

    def outage(self) -> Any:
        return self.server.outage()
