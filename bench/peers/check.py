"""Self-check of the peers: ``python -m bench.peers.check [--records N] [--peer NAME ...]``.

Starts a broker, PostgreSQL and FerretDB with the project's harness, produces N JSON
Measurements (and the same records in Kafka Connect's schema+payload envelope), then runs
each peer once over them into a fresh table / collection and prints what it stored.
``--kill-after S`` also SIGKILLs each peer S seconds after its start and restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.peers import Peer, RunContext
from bench.peers._common import dir_size_mb, peers_dir
from bench.peers.registry import all_peers, install_all
from integration.artifacts import cache_dir
from integration.kafka_broker import KafkaBroker, create_topic
from integration.mongo_server import MongoWireServer
from integration.postgres_server import PostgresServer
from integration.support import measurement, produce, unique

PARTITIONS = 3

ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "name": "Measurement",
    "optional": False,
    "fields": [
        {"field": "_id", "type": "string", "optional": False},
        {"field": "sensor", "type": "string", "optional": False},
        {"field": "value", "type": "double", "optional": False},
        {"field": "timestamp", "type": "int64", "optional": False},
    ],
}


def envelope(value: bytes) -> bytes:
    return json.dumps({"schema": ENVELOPE_SCHEMA, "payload": json.loads(value)}).encode()


def stored(peer: Peer, ctx: RunContext) -> tuple[int, int]:
    """(rows, distinct _id) in the peer's target."""
    if ctx.target == "postgres":
        import asyncpg

        async def count() -> tuple[int, int]:
            conn = await asyncpg.connect(ctx.postgres_dsn)
            try:
                row = await conn.fetchrow(
                    f'SELECT count(*), count(DISTINCT "_id") FROM "{ctx.postgres_table}"'
                )
                return int(row[0]), int(row[1])
            except asyncpg.UndefinedTableError:
                return 0, 0
            finally:
                await conn.close()

        return asyncio.run(count())
    from pymongo import MongoClient

    with MongoClient(ctx.mongo_uri) as client:
        coll = client[ctx.mongo_database][ctx.mongo_collection]
        n = coll.count_documents({})
        distinct = len(coll.distinct("_id"))
        return n, distinct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--peer", action="append", help="only these peers (repeatable)")
    parser.add_argument("--kill-after", type=float, default=None)
    args = parser.parse_args(argv)

    cache = cache_dir()
    took = install_all(cache)
    for name, seconds in took.items():
        print(f"  {name}: install {seconds} s")
    for d in sorted(peers_dir(cache).iterdir()):
        if d.is_dir() and not d.name.startswith("."):
            print(f"  {d.name}: {dir_size_mb(d)} MB")

    peers = [p for p in all_peers() if not args.peer or p.name in args.peer]
    results: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="peers-check-")  # kept: the peers' configs and logs
    print(f"workdir {tmp}")
    with (
        KafkaBroker() as broker,
        PostgresServer() as pg,
        MongoWireServer() as mongo,
    ):
        bootstrap = broker.bootstrap_servers
        topic, env_topic = unique("peers-json"), unique("peers-envelope")
        create_topic(bootstrap, topic, PARTITIONS)
        create_topic(bootstrap, env_topic, PARTITIONS)
        values = [
            (i % PARTITIONS, measurement(topic, i % PARTITIONS, i)) for i in range(args.records)
        ]
        produce(bootstrap, topic, values)
        produce(bootstrap, env_topic, [(p, envelope(v)) for p, v in values])
        print(f"produced {args.records} records to {topic} and {env_topic}", flush=True)
        for peer in peers:
            slug = peer.name.replace("-", "_")
            ctx = RunContext(
                bootstrap=bootstrap,
                topic=topic,
                envelope_topic=env_topic,
                records=args.records,
                partitions=PARTITIONS,
                group=unique(f"check-{peer.name}"),
                target=peer.target,
                postgres_dsn=pg.dsn,
                postgres_table=f"check_{slug}",
                mongo_uri=mongo.uri,
                mongo_database="bench",
                mongo_collection=f"check_{slug}",
                batch_size=args.batch_size,
                workdir=Path(tmp) / peer.name,
                cache=cache,
            )
            print(f"==> {peer.name} ({peer.version})", flush=True)
            start = time.monotonic()
            result = peer.run(ctx, kill_after_s=args.kill_after)
            rows, distinct = stored(peer, ctx)
            print(
                f"    stored {rows} rows ({distinct} distinct _id) of {args.records}; "
                f"wall {result.wall_s} s, first record {result.first_record_s} s, "
                f"cpu {result.cpu_s} s, peak RSS {result.peak_rss_mb} MB, "
                f"killed {result.killed}, errors {len(result.errors)} "
                f"(call took {time.monotonic() - start:.1f} s)",
                flush=True,
            )
            for err in result.errors[:5]:
                print(f"      ! {err}")
            if rows != args.records:
                log = ctx.workdir / f"{peer.name}.log"
                print(f"    log tail ({log}):")
                print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))
            results.append(
                {"peer": peer.name, "rows": rows, "distinct": distinct, **asdict(result)}
            )
    print(json.dumps(results, indent=2))
    ok = all(r["rows"] == args.records == r["distinct"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
