"""The walking skeleton end to end: real broker, real SQLite file, the real CLI process."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from integration.kafka_broker import create_topic
from integration.support import (
    BackgroundProducer,
    committed_offsets,
    kill,
    measurement,
    measurement_id,
    produce,
    rows_per_partition,
    run_connector,
    sqlite_rows,
    start_connector,
    summary_of,
    unique,
    write_config,
)

PARTITIONS = 3
ENGINES = pytest.mark.parametrize("engine", ["confluent", "aiokafka"])


def setup(
    tmp_path: Path, bootstrap: str, engine: str = "confluent", **sections: object
) -> tuple[str, str, Path, Path]:
    topic, group = unique("measurements"), unique("group")
    create_topic(bootstrap, topic, PARTITIONS)
    db = tmp_path / "ingest.db"
    config = write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", "format": "json"}],
        {"type": "sqlite", "path": str(db)},
        engine=engine,
        **sections,
    )
    return topic, group, db, config


@ENGINES
def test_20000_records_over_3_partitions(tmp_path: Path, kafka_bootstrap: str, engine: str) -> None:
    topic, group, db, config = setup(tmp_path, kafka_bootstrap, engine)
    total = 20_000
    produced = produce(
        kafka_bootstrap,
        topic,
        (
            (i % PARTITIONS, measurement(topic, i % PARTITIONS, i // PARTITIONS))
            for i in range(total)
        ),
    )
    assert produced == total

    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["records"] == "20000"
    assert summary["ingested"] == "20000"
    assert summary["duplicates"] == "0"
    assert summary["conflicts"] == "0"
    assert summary["rate"].endswith("records/s")

    rows = sqlite_rows(db, "Measurement")
    assert len(rows) == total
    assert {r[0] for r in rows} == {
        measurement_id(topic, i % PARTITIONS, i // PARTITIONS) for i in range(total)
    }
    per_partition = rows_per_partition(rows)
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == per_partition
    assert sum(per_partition.values()) == total

    again = run_connector(config)  # nothing new: caught up at once, nothing re-ingested
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(again.stdout)["records"] == "0"


@ENGINES
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, kafka_bootstrap: str, engine: str
) -> None:
    """SIGKILL during start-up (joining the group), mid-ingest, and during the shutdown's
    commit on revoke (SIGTERM, then SIGKILL a moment later)."""
    topic, group, db, config = setup(
        tmp_path, kafka_bootstrap, engine, batching={"max_records": 200, "max_wait_ms": 50}
    )
    rng = random.Random(20261124)
    producer = BackgroundProducer(kafka_bootstrap, topic, PARTITIONS, rate_per_s=3000).start()
    log = tmp_path / "connector.log"
    kills = 0
    try:
        for moment in ["start-up", "mid-ingest", "revoke", "mid-ingest", "start-up", "revoke"]:
            process = start_connector(config, log=log)
            if moment == "start-up":
                time.sleep(rng.uniform(0.2, 1.5))
            else:
                before = len(sqlite_rows(db, "Measurement"))
                deadline = time.monotonic() + 60
                # Let it make some progress first, so that the kill lands mid-stream.
                while len(sqlite_rows(db, "Measurement")) <= before and time.monotonic() < deadline:
                    assert process.poll() is None, log.read_text()[-3000:]
                    time.sleep(0.1)
                time.sleep(rng.uniform(0.0, 2.5))
            if moment == "revoke":
                kill(process, signal.SIGTERM)
                time.sleep(rng.uniform(0.0, 0.3))
            kill(process, signal.SIGKILL)
            process.wait(10)
            kills += 1
            # Nothing may be committed ahead of what the backend stored.
            committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
            rows = sqlite_rows(db, "Measurement")
            for partition, offset in committed.items():
                stored_below = {r[2] for r in rows if r[1] == partition and r[2] < offset}
                assert stored_below == set(range(offset)), (
                    f"partition {partition}: committed {offset} but only "
                    f"{len(stored_below)} of those records are stored"
                )
    finally:
        sent = producer.stop()
    assert kills == 6

    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sqlite_rows(db, "Measurement")
    expected = {measurement_id(topic, p, n) for p, count in sent.items() for n in range(count)}
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected, (
        f"missing {len(expected - set(ids))}, extra {len(set(ids) - expected)}"
    )
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == sent


@ENGINES
def test_malformed_record_stops_the_run_and_is_not_committed(
    tmp_path: Path, kafka_bootstrap: str, engine: str
) -> None:
    topic, group, db, config = setup(tmp_path, kafka_bootstrap, engine)
    good = [(0, measurement(topic, 0, i)) for i in range(10)]
    later = [(0, measurement(topic, 0, i)) for i in range(11, 21)]
    others = [(1, measurement(topic, 1, i)) for i in range(5)]
    produce(kafka_bootstrap, topic, [*good, (0, b'{"_id": "broken", "value": 1.'), *later, *others])

    result = run_connector(config)
    assert result.returncode == 1
    assert (
        f"error: decode error at topic '{topic}' partition 0 offset 10: value is not valid JSON: "
        "Expecting ',' delimiter at line 1 column 29"
    ) in result.stderr
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert committed[0] == 10
    rows = sqlite_rows(db, "Measurement")
    assert sorted(r[2] for r in rows if r[1] == 0) == list(range(10))
    assert committed[1] <= rows_per_partition(rows).get(1, 0)

    rerun = run_connector(config)  # the bad record is read again and stops the run again
    assert rerun.returncode == 1
    assert "partition 0 offset 10" in rerun.stderr
    assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)[0] == 10


@ENGINES
def test_sigterm_exits_0_and_commits_exactly_what_is_stored(
    tmp_path: Path, kafka_bootstrap: str, engine: str
) -> None:
    topic, group, db, config = setup(tmp_path, kafka_bootstrap, engine)
    producer = BackgroundProducer(kafka_bootstrap, topic, PARTITIONS, rate_per_s=2000).start()
    try:
        process = start_connector(config)
        deadline = time.monotonic() + 60
        while len(sqlite_rows(db, "Measurement")) < 2000 and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.1)
        started = time.monotonic()
        kill(process, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=35)
        took = time.monotonic() - started
    finally:
        producer.stop()
    assert process.returncode == 0, stderr[-3000:]
    assert took < 30
    assert "SIGTERM: stopping" in stderr
    rows = sqlite_rows(db, "Measurement")
    committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
    assert committed == {p: rows_per_partition(rows).get(p, 0) for p in range(PARTITIONS)}
    assert int(summary_of(stdout)["ingested"]) == len(rows)
