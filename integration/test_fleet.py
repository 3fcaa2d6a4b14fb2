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
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CkTopicPartition
from confluent_kafka.admin import AdminClient

from connector.errors import Coordinates
from connector.mapping import coordinates_uuid
from integration.backends import BackendUnderTest
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
SHUTDOWN_S = 10.0
EXIT_MARGIN_S = 8.0  # process start-up and interpreter teardown on a loaded 2-core machine


def measurement_without_id(topic: str, partition: int, n: int) -> bytes:
    """A Measurement with no ``_id``: the connector derives it from the coordinates (R10)."""
    document = json.loads(measurement(topic, partition, n))
    del document["_id"]
    return json.dumps(document).encode()


def derived_id(topic: str, partition: int, offset: int) -> str:
    return str(coordinates_uuid(Coordinates(topic, partition, offset)))


class Fleet:
    """Connector processes of one group, each logging to a file of its own."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.config = config
        self.tmp_path = tmp_path
        self.members: dict[int, subprocess.Popen[str]] = {}
        self.logs: list[Path] = []
        self.exit_times: list[float] = []

    def start(self) -> int:
        key = len(self.logs)
        log = self.tmp_path / f"member-{key}.log"
        self.logs.append(log)
        self.members[key] = start_connector(self.config, log=log)
        return key

    def sigterm(self, key: int) -> None:
        """SIGTERM one member; it must exit 0 within the shutdown timeout."""
        process = self.members.pop(key)
        started = time.monotonic()
        kill(process, signal.SIGTERM)
        try:
            code = process.wait(SHUTDOWN_S + EXIT_MARGIN_S)
        except subprocess.TimeoutExpired:
            kill(process, signal.SIGKILL)
            process.wait(10)
            pytest.fail(
                f"member {key} did not exit within {SHUTDOWN_S + EXIT_MARGIN_S:.0f} s of "
                f"SIGTERM (shutdown.timeout_ms is {SHUTDOWN_S * 1000:.0f}):\n"
                + self.logs[key].read_text()[-3000:]
            )
        self.exit_times.append(time.monotonic() - started)
        assert code == 0, f"member {key} exited {code}:\n" + self.logs[key].read_text()[-3000:]

    def sigkill(self, key: int, after_sigterm_s: float | None = None) -> None:
        """SIGKILL one member; with ``after_sigterm_s``, that long after a SIGTERM, so that
        the kill lands while it commits on revoke and leaves the group."""
        process = self.members.pop(key)
        if after_sigterm_s is not None:
            kill(process, signal.SIGTERM)
            time.sleep(after_sigterm_s)
        kill(process, signal.SIGKILL)
        process.wait(10)

    def check_alive(self) -> None:
        for key, process in self.members.items():
            assert process.poll() is None, (
                f"member {key} exited {process.returncode}:\n" + self.logs[key].read_text()[-3000:]
            )

    def stop_all(self) -> None:
        for key in list(self.members):
            self.sigterm(key)

    def log_text(self) -> str:
        return "".join(log.read_text() for log in self.logs if log.exists())


def assert_not_ahead(
    committed: dict[int, int], stored: set[str], id_at: Callable[[int, int], str]
) -> None:
    """Every record below a committed offset is stored: nothing committed ahead."""
    for partition, offset in committed.items():
        missing = [n for n in range(offset) if id_at(partition, n) not in stored]
        assert not missing, (
            f"partition {partition}: committed {offset}, but {len(missing)} records below it "
            f"are not stored (first: offset {missing[0]})"
        )


def wait_until_group_empty(bootstrap: str, group: str, timeout: float = 60.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        description = admin.describe_consumer_groups([group])[group].result(timeout=30)
        if not description.members:
            return
        assert time.monotonic() < deadline, (
            f"group {group} still has {len(description.members)} members after {timeout:.0f} s"
        )
        time.sleep(0.5)


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
    producer = BackgroundProducer(bootstrap, topic, partitions, rate_per_s=3000, value=value)
    fleet = Fleet(config, tmp_path)
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


@pytest.mark.parametrize("backend_under_test", ["sqlite", "postgres", "mongodb"], indirect=True)
def test_rebalance_chaos_every_backend(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest
) -> None:
    fleet_chaos(tmp_path, kafka_bootstrap, backend_under_test, "confluent", with_ids=True, seed=7)


@ENGINES
@pytest.mark.parametrize("backend_under_test", ["postgres"], indirect=True)
def test_rebalance_chaos_with_derived_ids(
    tmp_path: Path, kafka_bootstrap: str, backend_under_test: BackendUnderTest, engine: str
) -> None:
    fleet_chaos(tmp_path, kafka_bootstrap, backend_under_test, engine, with_ids=False, seed=11)


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
