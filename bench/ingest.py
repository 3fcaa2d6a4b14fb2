"""End-to-end ingest throughput of each backend next to the consume+decode ceiling.

    python bench/ingest.py [--records N] [--partitions P] [--skip mongodb,...]
                           [--poison-ratio R]

One run, all on this machine: starts the project's Kafka broker, Schema Registry,
PostgreSQL and MongoDB-wire (FerretDB) servers, produces N Measurement records in the
Confluent Avro wire format over P partitions, then runs the connector once per target,
each time as a fresh process and a fresh consumer group reading all N records:

  (a) ceiling   the connector's own pipeline (consume, decode, map, batch, ack, commit)
                with a backend that acknowledges without writing
  (b) sqlite    data-ingest run --until-caught-up into an SQLite file
  (c) postgres  ... into PostgreSQL
  (d) mongodb   ... into the MongoDB-wire server

Each target runs once per Kafka engine (``--engines``, default both); a target's ratio is to
the ceiling of the same engine.

With ``--poison-ratio R`` (e.g. 0.01) a second topic holds the same records with a share R
replaced by poison (random bytes, a wrong magic byte, truncated Avro), and each target also
runs on it with ``errors.tolerance: all`` (a dead-letter topic of its own); the table then
adds that run's steady rate as a ratio to the clean run of the same target and engine.

For each: records/s over the whole run and steady records/s (after the first record
arrived, i.e. without process start and joining the group), from the connector's own
summary; CPU seconds per million records and peak RSS of the connector process (wait4);
and the steady rate's ratio to (a).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.backends import INSERTED, Backend, ObjectResult  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.pipeline import Pipeline  # noqa: E402
from connector.records import MappedObject  # noqa: E402
from connector.schemas import load_object_types  # noqa: E402
from connector.sources import create_source  # noqa: E402

DATA_INGEST = str(Path(sys.executable).parent / "data-ingest")
BATCHING = {
    "max_records": 5000,
    "max_wait_ms": 200,
    "max_in_flight_batches": 2,
    "max_concurrent_writes": 2,
}


class AckingBackend(Backend):
    """Acknowledges every object without writing it: the ceiling of the pipeline itself."""

    async def open(self) -> None:
        """Nothing to open."""

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        return [INSERTED] * len(objects)

    async def check(self) -> str:
        return "acking backend"

    async def close(self) -> None:
        """Nothing to close."""


def run_ceiling(config_path: str) -> int:
    """Child process of (a): the real pipeline with the acking backend."""
    config = load_config(config_path)
    types = load_object_types(config.schemas.dir)
    pipeline = Pipeline(
        config, types, create_source(config.kafka), AckingBackend(), until_caught_up=True
    )
    summary = asyncio.run(pipeline.run())
    print("\n".join(summary.lines()), flush=True)
    return 0 if summary.error is None else 1


def poisoned(value: bytes, rng: random.Random) -> bytes:
    """A poison record in place of ``value``: random bytes, a wrong magic byte, truncated."""
    choice = rng.randrange(3)
    if choice == 0:
        return b"\xff" + rng.randbytes(24)
    if choice == 1:
        return b"\x07" + value[1:]
    return value[: len(value) - 9]


def produce(
    bootstrap: str,
    topic: str,
    registry_url: str,
    count: int,
    partitions: int,
    poison_ratio: float = 0.0,
) -> int:
    """Produce ``count`` Measurements, a share ``poison_ratio`` of them poison (seeded);
    returns how many are poison."""
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    types = load_object_types(ROOT / "avro")
    target = types.get("Measurement")
    client = SchemaRegistryClient({"url": registry_url})
    schema_id = client.register_schema(f"{topic}-value", Schema(json.dumps(target.schema), "AVRO"))
    header = b"\x00" + schema_id.to_bytes(4, "big")
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000, "acks": "all"}
    )
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    parsed = target.parsed
    rng = random.Random(20261203)
    poison = 0
    for i in range(count):
        body = io.BytesIO()
        fastavro.schemaless_writer(
            body,
            parsed,
            {
                "_id": uuid.UUID(int=i + 1),
                "sensor": f"sensor-{i % 500}",
                "value": 20.0 + (i % 1000) / 100,
                "timestamp": start + dt.timedelta(milliseconds=i),
            },
        )
        value = header + body.getvalue()
        if poison_ratio and rng.random() < poison_ratio:
            value = poisoned(value, rng)
            poison += 1
        while True:
            try:
                producer.produce(topic, value, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return poison


def measure(command: list[str], workdir: Path, name: str) -> dict[str, Any]:
    """Run one connector process; its summary, and its own CPU time and peak RSS (wait4)."""
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{name} failed with status {code}: {err_path.read_text()[-2000:]}")
    summary = {}
    for line in out_path.read_text().splitlines():
        key, _, value = line.partition(":")
        summary[key.strip()] = value.strip()
    return {"summary": summary, "usage": usage}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--skip", default="", help="comma-separated targets to leave out")
    parser.add_argument(
        "--engines", default="confluent,aiokafka", help="comma-separated Kafka engines to run"
    )
    parser.add_argument(
        "--poison-ratio",
        type=float,
        default=0.0,
        help="also run every target on a topic with this share of poison records (e.g. 0.01)",
    )
    parser.add_argument("--ceiling-child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling_child:
        return run_ceiling(args.ceiling_child)

    from integration.kafka_broker import DEFAULT_JVM_OPTS, KafkaBroker, create_topic
    from integration.mongo_server import MongoWireServer
    from integration.postgres_server import PostgresServer
    from integration.schema_registry import SchemaRegistryServer

    skip = {s for s in args.skip.split(",") if s}
    jvm = [o for o in DEFAULT_JVM_OPTS if o != "-XX:TieredStopAtLevel=1"]  # full JIT for throughput
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    with (
        KafkaBroker(jvm_opts=jvm) as broker,
        SchemaRegistryServer() as registry,
        PostgresServer() as postgres,
        MongoWireServer() as mongo,
    ):
        topic, poisoned_topic = "bench-measurements", "bench-poisoned"
        topics = {"": topic}
        if args.poison_ratio:
            topics["+poison"] = poisoned_topic
        for suffix, name in topics.items():
            create_topic(broker.bootstrap_servers, name, args.partitions)
            began = time.monotonic()
            poison = produce(
                broker.bootstrap_servers,
                name,
                registry.url,
                args.records,
                args.partitions,
                args.poison_ratio if suffix else 0.0,
            )
            print(
                f"produced {args.records:,} Avro Measurements ({poison:,} poison) over "
                f"{args.partitions} partitions in {time.monotonic() - began:.1f} s",
                flush=True,
            )
        targets: dict[str, dict[str, Any]] = {
            "ceiling": {"type": "sqlite", "path": str(workdir / "unused.db")},
            "sqlite": {"type": "sqlite", "path": str(workdir / "bench.db")},
            "postgres": {"type": "postgres", "dsn": postgres.dsn, "schema": "bench"},
            "mongodb": {
                "type": "mongodb",
                "uri": mongo.uri,
                "database": "bench",
                "decimals": "string",
            },
        }
        results: dict[str, dict[str, Any]] = {}
        runs = [
            (engine, name, backend, suffix)
            for engine in args.engines.split(",")
            for name, backend in targets.items()
            for suffix in topics
            if name not in skip
        ]
        for engine, target, backend, suffix in runs:
            name = f"{target}{suffix}/{engine}"
            path = workdir / f"{target}{suffix}-{engine}.yaml"
            errors: dict[str, Any] = {}
            if suffix and target != "ceiling":
                # A namespace of its own: into the clean run's, every object is a duplicate.
                backend = {
                    **backend,
                    **{
                        "sqlite": {"path": str(workdir / "bench-poison.db")},
                        "postgres": {"schema": "bench_poison"},
                        "mongodb": {"database": "bench_poison"},
                    }[target],
                }
            if suffix:
                errors = {
                    "tolerance": "all",
                    "dead_letter_queue": {"topic": f"dlq-{target}-{engine}"},
                }
            path.write_text(
                yaml.safe_dump(
                    {
                        "kafka": {
                            "bootstrap_servers": broker.bootstrap_servers,
                            "engine": engine,
                            "group_id": f"bench-{target}-{engine}-{uuid.uuid4().hex[:6]}",
                        },
                        "schemas": {"dir": str(ROOT / "avro")},
                        "schema_registry": {"url": registry.url},
                        "routes": [
                            {"topic": topics[suffix], "type": "Measurement", "format": "avro"}
                        ],
                        "backend": backend,
                        "batching": BATCHING,
                        "errors": errors,
                    }
                )
            )
            if target == "ceiling":
                command = [sys.executable, __file__, "--ceiling-child", str(path)]
            else:
                command = [
                    DATA_INGEST,
                    "--log-level",
                    "WARNING",
                    "run",
                    "-c",
                    str(path),
                    "--until-caught-up",
                ]
            print(f"running {name} ...", flush=True)
            results[name] = measure(command, workdir, name.replace("/", "-"))
    print()
    print(
        f"{args.records:,} Measurement records (Avro, {args.partitions} partitions), batches of "
        f"{BATCHING['max_records']}, one connector process on {os.cpu_count()} cores"
    )
    header = (
        f"{'target':<20} {'records/s':>10} {'steady/s':>10} {'CPU s / 1M':>11} "
        f"{'peak RSS MB':>12} {'ratio':>6} {'vs clean':>9}"
    )
    print(header)
    print("-" * len(header))
    ceilings: dict[str, float] = {}
    clean: dict[str, float] = {}
    for name, result in results.items():
        summary, usage = result["summary"], result["usage"]
        records = int(summary["records"])
        rate = float(summary["rate"].split()[0])
        elapsed = float(summary["elapsed"].split()[0])
        startup = float(summary["startup"].split()[0])
        steady = records / (elapsed - startup)
        cpu = (usage.ru_utime + usage.ru_stime) / max(records, 1) * 1_000_000
        rss = usage.ru_maxrss / 1024
        engine = name.split("/")[1]
        base = ceilings.setdefault(engine, steady)  # each engine's own ceiling comes first
        target = name.split("/")[0]
        versus = ""
        if target.endswith("+poison"):
            versus = f"{steady / clean[target.removesuffix('+poison') + '/' + engine]:>9.2f}"
        else:
            clean[name] = steady
        print(
            f"{name:<20} {rate:>10,.0f} {steady:>10,.0f} {cpu:>11.1f} {rss:>12.0f} "
            f"{steady / base:>6.2f} {versus}"
        )
        if records != args.records:
            print(f"  warning: {name} processed {records:,} records, expected {args.records:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
