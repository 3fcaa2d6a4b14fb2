"""The fleet: several connector processes in one consumer group, with members coming and
going, transactional topics, and records released from the topic once they are synced.

Every test runs the real CLI against the real broker and the real databases. "Exactly one
copy" is checked by things a primary key does not already enforce: the committed offsets
after every change (never ahead of the backend), the coordinates that wrote each object
(the first record, not a later replay), the conflict count, and committed == produced.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CkTopicPartition

from integration.backends import BackendUnderTest
from integration.fleet import (
    SHUTDOWN_S,
    Fleet,
    assert_not_ahead,
    derived_id,
    measurement_without_id,
    wait_until_group_empty,
)
from integration.kafka_broker import create_topic
from integration.support import (
    BackgroundProducer,
    committed_offsets,
    kill,
    measurement,
    measurement_id,
    produce,
    run_connector,
    start_connector,
    summary_of,
    unique,
    write_config,
)

ENGINES = pytest.mark.parametrize("engine", ["confluent", "aiokafka"])


def fleet_config(
    tmp_path: Path,
    bootstrap: str,
    backend: BackendUnderTest,
    topic: str,
    engine: str,
    **sections: Any,
) -> tuple[str, Path]:
    group = unique("fleet")
    config = write_config(
        tmp_path / "pipeline.yaml",
        bootstrap,
        group,
        [{"topic": topic, "type": "Measurement", **sections.pop("route", {})}],
        backend.section(),
        engine=engine,
        batching={"max_records": 200, "max_wait_ms": 50},
        commit={"interval_ms": 50},
        shutdown={"timeout_ms": int(SHUTDOWN_S * 1000)},
        errors={"conflict": "stop"},
        **sections,
    )
    return group, config


def fleet_chaos(
    tmp_path: Path,
    bootstrap: str,
    backend: BackendUnderTest,
    engine: str,
    *,
    with_ids: bool,
    seed: int,
    changes: int = 20,
    records: int = 50_000,
    hosted: bool = False,
) -> None:
    """3 members on a 12-partition topic under continuous production; ``changes``
    membership changes (start, SIGTERM, SIGKILL, some right after another); then every
    object exactly once, with the coordinates of its first record."""
    partitions = 12
    topic = unique("fleet")
    create_topic(bootstrap, topic, partitions)
    group, config = fleet_config(tmp_path, bootstrap, backend, topic, engine)
    value = measurement if with_ids else measurement_without_id

    def id_at(partition: int, n: int) -> str:
        return measurement_id(topic, partition, n) if with_ids else derived_id(topic, partition, n)

    rng = random.Random(seed)
    # Bounded: on a slow backend (FerretDB) each change's check reads every stored id, so an
    # unbounded producer makes the changes, and the ingest left after them, ever longer.
    producer = BackgroundProducer(
        bootstrap, topic, partitions, rate_per_s=2000, value=value, limit=3 * records
    )
    fleet = Fleet(config, tmp_path, hosted=hosted)
    producer.start()
    try:
        for _ in range(3):
            fleet.start()
        for change in range(changes):
            # Some changes land while the previous rebalance is still running.
            time.sleep(rng.uniform(0.05, 0.3) if change % 4 == 3 else rng.uniform(0.5, 2.0))
            fleet.check_alive()
            live = sorted(fleet.members)
            action = rng.choice(["start", "sigterm", "sigkill", "sigkill in revoke"])
            if len(live) <= 1:
                action = "start"
            elif len(live) >= 4 and action == "start":
                action = rng.choice(["sigterm", "sigkill"])
            if action == "start":
                fleet.start()
            elif action == "sigterm":
                fleet.sigterm(rng.choice(live))
            elif action == "sigkill":
                fleet.sigkill(rng.choice(live))
            else:
                fleet.sigkill(rng.choice(live), after_sigterm_s=rng.uniform(0.0, 0.3))
            assert_not_ahead(
                committed_offsets(bootstrap, group, topic, partitions),
                set(backend.ids("Measurement")),
                id_at,
            )
        while producer.total < records:
            time.sleep(0.2)
    finally:
        sent = producer.stop()
        for key in list(fleet.members):
            fleet.sigkill(key) if rng.random() < 0.5 else fleet.sigterm(key)
    replayed = 0
    if with_ids:
        # A producer retry: the same objects again at new offsets. They must be duplicates,
        # and the stored objects must keep the coordinates of the first records.
        replay = [(p, measurement(topic, p, n)) for p in range(partitions) for n in range(20)]
        replayed = produce(bootstrap, topic, replay)
    # SIGKILLed members stay in the group until their session times out; the final run
    # must own every partition, so it starts once the group is empty.
    wait_until_group_empty(bootstrap, group)
    result = run_connector(tmp_path / "pipeline.yaml", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["conflicts"] == "0"
    assert "conflict error" not in fleet.log_text()

    stored = backend.ids("Measurement")
    expected = {id_at(p, n): (p, n) for p, count in sent.items() for n in range(count)}
    twice = [i for i, c in Counter(stored).items() if c > 1]
    assert not twice, f"{len(twice)} objects stored twice, e.g. {twice[:3]}"
    assert set(stored) == set(expected), (
        f"missing {len(set(expected) - set(stored))}, unexpected {len(set(stored) - set(expected))}"
    )
    coordinates = backend.coordinates("Measurement")
    if coordinates is not None:
        wrong = {i: c for i, c in coordinates.items() if c != (topic, *expected[i])}
        assert not wrong, (
            f"{len(wrong)} objects carry other coordinates, e.g. {list(wrong.items())[:3]}"
        )
    final = committed_offsets(bootstrap, group, topic, partitions)
    assert final == {p: sent[p] + (20 if with_ids else 0) for p in range(partitions)}
    assert sum(sent.values()) + replayed >= records
    print(
        f"fleet chaos ({backend.name}, {engine}, ids {'given' if with_ids else 'derived'}): "
        f"{sum(sent.values())} records, {len(fleet.logs)} members started, SIGTERM exits "
        f"max {max(fleet.exit_times, default=0):.1f} s"
    )


# FerretDB re-reads every stored id on each membership change: about 6 minutes, so
# it runs in `make slow` (part of `make soak`), not in `make test`.
@pytest.mark.parametrize(
    "backend_under_test",
    ["sqlite", "postgres", pytest.param("mongodb", marks=pytest.mark.slow)],
    indirect=True,
)
def test_rebalance_chaos_every_backend(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    fleet_chaos(tmp_path, kafka_bootstrap, backend_under_test, "confluent", with_ids=True, seed=7)


# aiokafka's fleet chaos runs in `make test` with given ids (test_rebalance_chaos_aiokafka);
# with derived ids in `make slow`.
@pytest.mark.parametrize("engine", ["confluent", pytest.param("aiokafka", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_rebalance_chaos_with_derived_ids(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest, engine: str
) -> None:
    fleet_chaos(tmp_path, kafka_bootstrap, backend_under_test, engine, with_ids=False, seed=11)


@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_rebalance_chaos_hosted_by_workers(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    """The same fleet rules when each member is a `data-ingest worker` hosting the file."""
    fleet_chaos(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        "confluent",
        with_ids=True,
        seed=5,
        changes=12,
        records=20_000,
        hosted=True,
    )


@pytest.mark.parametrize("backend_under_test", ["sqlite"], indirect=True)
def test_rebalance_chaos_aiokafka(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    fleet_chaos(tmp_path, kafka_bootstrap, backend_under_test, "aiokafka", with_ids=True, seed=3)


# --- transactional topics ---------------------------------------------------------------


@ENGINES
@pytest.mark.parametrize("backend_under_test", ["sqlite"], indirect=True)
def test_transactional_topic_ends_and_aborted_records_are_never_stored(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest, engine: str
) -> None:
    topic = unique("tx")
    create_topic(kafka_bootstrap, topic, 2)
    _, config = fleet_config(tmp_path, kafka_bootstrap, backend_under_test, topic, engine)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": unique("tx"), "acks": "all"}
    )
    producer.init_transactions(30)
    committed_ids: set[str] = set()
    aborted_ids: set[str] = set()
    for round_, commit in enumerate([True, False, True]):
        producer.begin_transaction()
        for i in range(100):
            object_id = str(uuid.uuid4())
            doc = json.loads(measurement(topic, i % 2, round_ * 100 + i))
            doc["_id"] = object_id
            producer.produce(topic, json.dumps(doc).encode(), partition=i % 2)
            (committed_ids if commit else aborted_ids).add(object_id)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)
    result = run_connector(config, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = set(backend_under_test.ids("Measurement"))
    assert stored == committed_ids
    assert not stored & aborted_ids
    assert summary_of(result.stdout)["records"] == "200"


# --- release after sync -------------------------------------------------------------------


def watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("wm")})
    try:
        return {
            p: consumer.get_watermark_offsets(CkTopicPartition(topic, p), timeout=10, cached=False)
            for p in range(partitions)
        }
    finally:
        consumer.close()


@ENGINES
@pytest.mark.parametrize("backend_under_test", ["sqlite"], indirect=True)
def test_release_deletes_synced_records_from_the_topic(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest, engine: str
) -> None:
    topic = unique("release")
    create_topic(kafka_bootstrap, topic, 3)
    values = [(i % 3, measurement(topic, i % 3, i // 3)) for i in range(3000)]
    produce(kafka_bootstrap, topic, values)
    group, config = fleet_config(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        topic,
        engine,
        route={"release": "delete"},
        release={"interval_ms": 200},
    )
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    committed = committed_offsets(kafka_bootstrap, group, topic, 3)
    assert committed == {0: 1000, 1: 1000, 2: 1000}
    marks = watermarks(kafka_bootstrap, topic, 3)
    assert {p: low for p, (low, _) in marks.items()} == committed
    assert len(backend_under_test.ids("Measurement")) == 3000


@pytest.mark.parametrize("backend_under_test", ["sqlite"], indirect=True)
def test_release_is_refused_on_a_compacted_topic(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    topic = unique("compacted")
    create_topic(kafka_bootstrap, topic, 1, config={"cleanup.policy": "compact"})
    produce(kafka_bootstrap, topic, [(0, measurement(topic, 0, 0))], key=lambda i: b"k")
    _, config = fleet_config(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        topic,
        "confluent",
        route={"release": "delete"},
    )
    result = run_connector(config, timeout=60)
    assert result.returncode == 1
    assert (
        f"error: routes: release: delete on topic '{topic}', whose cleanup.policy is 'compact': "
        "deleting records would remove the latest value of keys that compaction keeps; "
        "use release: keep for this route"
    ) in result.stderr
    assert backend_under_test.ids("Measurement") == []


@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_release_under_sigkill_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    partitions = 3
    topic = unique("release")
    create_topic(kafka_bootstrap, topic, partitions)
    group, config = fleet_config(
        tmp_path,
        kafka_bootstrap,
        backend_under_test,
        topic,
        "confluent",
        route={"release": "delete"},
        release={"interval_ms": 100},
    )
    rng = random.Random(5)
    producer = BackgroundProducer(kafka_bootstrap, topic, partitions, rate_per_s=2000).start()
    log = tmp_path / "connector.log"
    try:
        for _ in range(5):
            process = start_connector(config, log=log)
            time.sleep(rng.uniform(1.5, 4.0))
            kill(process, signal.SIGKILL)
            process.wait(10)
            stored = set(backend_under_test.ids("Measurement"))
            low = {p: lo for p, (lo, _) in watermarks(kafka_bootstrap, topic, partitions).items()}
            assert_not_ahead(low, stored, lambda p, n: measurement_id(topic, p, n))
    finally:
        sent = producer.stop()
    result = run_connector(config)
    assert result.returncode == 0, result.stderr[-3000:]
    stored_ids = backend_under_test.ids("Measurement")
    expected = {measurement_id(topic, p, n) for p, count in sent.items() for n in range(count)}
    assert len(stored_ids) == len(expected) and set(stored_ids) == expected
    low = {p: lo for p, (lo, _) in watermarks(kafka_bootstrap, topic, partitions).items()}
    assert low == committed_offsets(kafka_bootstrap, group, topic, partitions) == sent


@pytest.mark.parametrize("backend_under_test", ["sqlite"], indirect=True)
def test_sigterm_while_starting_stops_cleanly(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    """A SIGTERM that arrives while the process is still importing and loading its config
    (a rollout right after a scale-up) is handled like any other: exit 0, no traceback."""
    topic = unique("early")
    create_topic(kafka_bootstrap, topic, 1)
    _, config = fleet_config(tmp_path, kafka_bootstrap, backend_under_test, topic, "confluent")
    # From 0.15 s on: before that the interpreter itself is still starting (no Python code
    # runs yet that could catch a signal).
    for delay in (0.15, 0.3, 0.6, 1.0):
        log = tmp_path / f"early-{delay}.log"
        process = start_connector(config, log=log)
        time.sleep(delay)
        kill(process, signal.SIGTERM)
        assert process.wait(SHUTDOWN_S + 10) == 0, f"after {delay} s:\n{log.read_text()[-2000:]}"
        assert "Traceback" not in log.read_text()
