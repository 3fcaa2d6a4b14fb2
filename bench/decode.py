"""Decode+map throughput of each format next to plain fastavro on the same records.

    python bench/decode.py [--records N]

Encodes N Measurement records once (Confluent-framed Avro, raw Avro, JSON), then times in
one run: the ceiling, ``fastavro.schemaless_reader`` over the raw bodies, and this
project's decode+map (``Mapper.map_many`` over fetch-sized slices, as the pipeline calls it:
framing, writer-schema lookup, resolution, ``_id``, ``MappedObject``) for each format.
Prints records/s and the ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import fastavro
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._async.mock_schema_registry_client import (
    AsyncMockSchemaRegistryClient,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.config import parse_config  # noqa: E402
from connector.mapping import Mapper  # noqa: E402
from connector.pipeline import FETCH_SLICE  # noqa: E402
from connector.records import SourceRecord  # noqa: E402
from connector.schemas import load_object_types  # noqa: E402


def measurements(n: int) -> list[dict[str, object]]:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return [
        {
            "_id": uuid.UUID(int=i * 7919 + 1),
            "sensor": f"sensor-{i % 500}",
            "value": 20.0 + (i % 1000) / 100,
            "timestamp": start + dt.timedelta(milliseconds=i * 10),
        }
        for i in range(n)
    ]


def timed(label: str, count: int, fn: Callable[[], None]) -> float:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rate = count / wall
    print(f"  {label:<34} {rate:>12,.0f} records/s   {cpu:6.2f} s CPU", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.records
    types = load_object_types(ROOT / "avro")
    target = types.get("Measurement")
    parsed = target.parsed

    print(f"encoding {n:,} Measurement records ...", flush=True)
    objects = measurements(n)
    bodies = []
    for obj in objects:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, obj)
        bodies.append(out.getvalue())
    registry = AsyncMockSchemaRegistryClient({"url": "mock://bench"})
    schema_id = asyncio.run(
        registry.register_schema("m-value", Schema(json.dumps(target.schema), "AVRO"))
    )
    header = b"\x00" + schema_id.to_bytes(4, "big")
    payloads = {
        "avro": [header + b for b in bodies],
        "avro-raw": bodies,
        "json": [
            json.dumps(
                {**o, "_id": str(o["_id"]), "timestamp": o["timestamp"].isoformat()}  # type: ignore[union-attr]
            ).encode()
            for o in objects
        ],
    }
    del objects
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "unused:9092"},
            "schemas": {"dir": str(ROOT / "avro")},
            "schema_registry": {"url": "http://unused:8081"},
            "routes": [{"topic": fmt, "type": "Measurement", "format": fmt} for fmt in payloads],
            "backend": {"type": "sqlite", "path": "unused.db"},
        },
        "bench.yaml",
        env={},
    )
    mapper = Mapper(config, types, registry)

    def ceiling() -> None:
        reader = fastavro.schemaless_reader
        for body in bodies:
            reader(io.BytesIO(body), parsed)

    print(f"decode+map of {n:,} records, one process, one core:")
    base = timed("fastavro.schemaless_reader (ceiling)", n, ceiling)
    rates = {}
    for fmt, values in payloads.items():
        records = [SourceRecord(fmt, 0, i, None, v) for i, v in enumerate(values)]
        asyncio.run(mapper.prepare(records[:1]))
        slices = [records[i : i + FETCH_SLICE] for i in range(0, n, FETCH_SLICE)]

        def run(slices: list[list[SourceRecord]] = slices) -> None:
            for piece in slices:
                _, error = mapper.map_many(piece)
                assert error is None, error

        rates[fmt] = timed(f"{fmt} decode+map", n, run)
        del records, slices
    print("ratio to the ceiling:")
    for fmt, rate in rates.items():
        print(f"  {fmt:<9} {rate / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
