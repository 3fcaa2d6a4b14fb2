"""CPU time per record of each in-process stage of the hot path, without Kafka or a database.

    python bench/stages.py [--records N] [--in-flight B]

Feeds N of the benchmark's plain-JSON Measurements (bench.py's dataset: epoch-millisecond
timestamps) through the stages as the pipeline calls them, one fetch slice at a time, with
B batches of ``batching.max_records`` alive at once as while they are being written:
build the ``SourceRecord``s, track the fetched offsets, decode and map, batch, build the
PostgreSQL staging rows, ack. Prints microseconds of wall time per record for each stage.

It runs twice, each in a fresh interpreter: with CPython's default garbage-collector
settings and with ``connector.gc_tuning.tune_gc`` (what ``data-ingest run`` and
``worker`` apply), so the collector's share is visible side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from itertools import groupby
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As in bench.py: run as a script, the repository root must come before this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.bench import measurement_json  # noqa: E402
from connector.backends.postgres import _Statements  # noqa: E402
from connector.backends.postgres_tables import derive_table  # noqa: E402
from connector.batching import Batcher  # noqa: E402
from connector.config import parse_config  # noqa: E402
from connector.gc_tuning import tune_gc  # noqa: E402
from connector.mapping import Mapper  # noqa: E402
from connector.offsets import OffsetTracker  # noqa: E402
from connector.pipeline import FETCH_SLICE, _offset, _record, _run_key  # noqa: E402
from connector.records import MappedObject, SourceRecord, TopicPartition  # noqa: E402
from connector.schemas import load_object_types  # noqa: E402

PARTITIONS = 6
MAX_RECORDS = 5000
STAGES = ("build records", "track fetched", "decode+map", "batch", "staging rows", "ack")


def measure(n: int, in_flight: int, tuned: bool) -> dict[str, float]:
    """Seconds spent in each stage over ``n`` records."""
    types = load_object_types(ROOT / "avro")
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "unused:9092"},
            "schemas": {"dir": str(ROOT / "avro")},
            "routes": [{"topic": "m", "type": "Measurement", "format": "json"}],
            "backend": {"type": "postgres", "dsn": "postgresql://unused/db"},
            "batching": {"max_records": MAX_RECORDS},
        },
        "stages.yaml",
        env={},
    )
    mapper = Mapper(config, types)
    statements = _Statements(derive_table(types.get("Measurement"), "public"))
    tracker = OffsetTracker()
    epochs = {p: tracker.assign(TopicPartition("m", p)) for p in range(PARTITIONS)}
    batcher = Batcher(config.batching)
    values = [measurement_json(i, 1_700_000_000_000 + i).encode() for i in range(n)]
    if tuned:
        tune_gc()
    spent: dict[str, float] = defaultdict(float)
    writing: list[list[MappedObject]] = []
    clock = time.perf_counter

    def ack(objects: list[MappedObject]) -> None:
        for (topic, partition, epoch), run in groupby(map(_record, objects), _run_key):
            tracker.ack_many(TopicPartition(topic, partition), epoch, list(map(_offset, run)))

    for start in range(0, n, FETCH_SLICE):
        partition = start // FETCH_SLICE % PARTITIONS
        t0 = clock()
        piece = values[start : start + FETCH_SLICE]
        records = [
            SourceRecord("m", partition, start + i, None, v, None, epochs[partition])
            for i, v in enumerate(piece)
        ]
        t1 = clock()
        tracker.fetched_many(
            TopicPartition("m", partition), epochs[partition], list(map(_offset, records))
        )
        t2 = clock()
        objects, bad = mapper.map_many(records)
        assert bad is None, bad
        t3 = clock()
        closed = batcher.add_many(objects)
        t4 = clock()
        for (name, begin), end in zip(
            (("track fetched", t1), ("decode+map", t2), ("batch", t3)), (t2, t3, t4), strict=True
        ):
            spent[name] += end - begin
        spent["build records"] += t1 - t0
        for batch in closed:
            t5 = clock()
            statements.rows(batch.objects)
            t6 = clock()
            writing.append(batch.objects)
            if len(writing) > in_flight:
                ack(writing.pop(0))
            spent["staging rows"] += t6 - t5
            spent["ack"] += clock() - t6
    return dict(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spent = measure(args.records, args.in_flight, args.child == "tuned")
        print(json.dumps(spent))
        return 0
    runs = {}
    for setting in ("default", "tuned"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--records",
                str(args.records),
                "--in-flight",
                str(args.in_flight),
                "--child",
                setting,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        runs[setting] = json.loads(out)
    n = args.records
    print(
        f"µs per record over {n:,} Measurements "
        f"({args.in_flight} batches of {MAX_RECORDS} in flight)"
    )
    print(f"  {'stage':<15} {'gc default':>11} {'gc tuned':>10}")
    for stage in (*STAGES, "total"):
        cells = [
            (sum(spent.values()) if stage == "total" else spent.get(stage, 0.0)) * 1e6 / n
            for spent in runs.values()
        ]
        print(f"  {stage:<15} {cells[0]:>11.2f} {cells[1]:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
