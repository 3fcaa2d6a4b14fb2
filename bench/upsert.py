"""FerretDB's upsert and ``_id`` lookup against its insert, by collection size, over both
of its backends.

Why the MongoDB peers never finish in `make bench`: their idempotent write is a
``ReplaceOne`` upsert on ``_id``; ours is ``insert_many``. This measures both on a fresh
FerretDB over SQLite and one over PostgreSQL (the harness's own servers), into an empty
collection and into one that already holds ``--existing`` documents, and 20 ``find_one``
by ``_id`` there (the latency probe's question: a scan, not an index lookup, on FerretDB).

    python bench/upsert.py [--existing 20000] [--upserts 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymongo import MongoClient, ReplaceOne  # noqa: E402
from pymongo.collection import Collection  # noqa: E402

from integration.mongo_server import MongoWireServer  # noqa: E402
from integration.postgres_server import PostgresServer  # noqa: E402

BATCH = 1000
UPSERT_BATCH = 250


def document(i: int) -> dict[str, Any]:
    return {"_id": f"id-{i:09d}", "device": f"d{i % 100}", "value": i * 0.5, "ts": i}


def insert(collection: Collection[dict[str, Any]], first: int, count: int) -> float:
    """Records/s of ``insert_many`` (unordered, as ours writes) of ``count`` documents."""
    began = time.monotonic()
    for start in range(first, first + count, BATCH):
        docs = [document(i) for i in range(start, min(start + BATCH, first + count))]
        collection.insert_many(docs, ordered=False)
    return count / (time.monotonic() - began)


def upsert(collection: Collection[dict[str, Any]], first: int, count: int) -> float:
    """Records/s of unordered ``ReplaceOne`` upserts on ``_id`` (the peers' write)."""
    began = time.monotonic()
    for start in range(first, first + count, UPSERT_BATCH):
        ops = [
            ReplaceOne({"_id": d["_id"]}, d, upsert=True)
            for d in map(document, range(start, min(start + UPSERT_BATCH, first + count)))
        ]
        collection.bulk_write(ops, ordered=False)
    return count / (time.monotonic() - began)


def lookups(collection: Collection[dict[str, Any]], last: int, count: int = 20) -> float:
    """Seconds for ``count`` ``find_one`` by ``_id`` (what the latency probe asks)."""
    began = time.monotonic()
    for i in range(last - count, last):
        collection.find_one({"_id": document(i)["_id"]}, {"_id": 1})
    return time.monotonic() - began


def measure(backend: str, uri: str, existing: int, upserts: int) -> None:
    with MongoClient(uri) as client:
        db = client["bench_upsert"]
        for size in (0, existing):
            db.drop_collection("c")
            filled = insert(db["c"], 0, size) if size else None
            rate = upsert(db["c"], size, upserts)
            into = f"insert {filled:,.0f}/s, " if filled else ""
            found = f", 20 find_one by _id {lookups(db['c'], size):.2f} s" if size else ""
            print(
                f"FerretDB over {backend:<10} {size:>7,} documents: {into}upsert {rate:,.0f}/s"
                f"{found}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--existing", type=int, default=20_000)
    parser.add_argument("--upserts", type=int, default=1_000)
    args = parser.parse_args()
    with MongoWireServer() as sqlite_backed:
        measure("SQLite", sqlite_backed.uri, args.existing, args.upserts)
    with PostgresServer() as postgres, MongoWireServer(postgresql_url=postgres.dsn) as pg_backed:
        measure("PostgreSQL", pg_backed.uri, args.existing, args.upserts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
