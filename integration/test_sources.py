"""The Source contract against a real broker, for every engine.

Each test runs once per ``kafka.engine`` through ``create_source``, with a small listener
that hands out assignment epochs, so that what the pipeline relies on (epochs stamped at
fetch, commit on revoke, lost partitions never committed, position past transaction
markers, bounded close) is checked the same way for librdkafka and aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Producer

from connector.config import KafkaConfig, SecurityConfig
from connector.errors import ConnectorError
from connector.records import SourceRecord, TopicPartition
from connector.sources import Source, create_source
from connector.timeouts import within
from integration.kafka_broker import create_topic
from integration.support import produce, unique

if TYPE_CHECKING:
    from integration.kafka_broker import SaslSslKafka

ENGINES = ["confluent", "aiokafka"]
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


class EpochListener:
    """Gives each assignment of a partition a new epoch, and remembers what happened."""

    def __init__(self, commit_on_revoke: dict[TopicPartition, int] | None = None) -> None:
        self.epochs: dict[TopicPartition, int] = {}
        self.withheld: set[TopicPartition] = set()
        self.commit_on_revoke = commit_on_revoke or {}
        self.revoked: list[TopicPartition] = []
        self.lost: list[TopicPartition] = []
        self._next = 1

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.epochs[tp] = self._next
            self._next += 1

    async def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        for tp in partitions:
            self.epochs.pop(tp, None)
        self.revoked += partitions
        return {tp: off for tp, off in self.commit_on_revoke.items() if tp in partitions}

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.epochs.pop(tp, None)
        self.lost += partitions

    def epoch(self, tp: TopicPartition) -> int | None:
        return None if tp in self.withheld else self.epochs.get(tp)


def config(bootstrap: str, engine: str, group: str, **properties: Any) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        engine=engine,
        group_id=group,
        properties={**FAST_GROUP, **properties},
    )


async def fetch_until(
    sources: list[Source],
    done: Callable[[list[SourceRecord]], bool],
    timeout: float = 30.0,
    what: str = "the expected records",
) -> list[SourceRecord]:
    """Fetch from every source (members of one group must all poll) until ``done``."""
    records: list[SourceRecord] = []
    deadline = time.monotonic() + timeout
    while not done(records):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s; got {len(records)}"
        for batch in await asyncio.gather(*(s.fetch(500, 0.2) for s in sources)):
            records += batch
    return records


def by_partition(records: list[SourceRecord]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for record in records:
        out.setdefault(record.partition, []).append(record.offset)
    return out


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_fetch_stamps_epochs_commit_position_watermarks_close(
    kafka_bootstrap: str, engine: str
) -> None:
    topic = unique("src")
    create_topic(kafka_bootstrap, topic, 2)
    produce(
        kafka_bootstrap,
        topic,
        [(i % 2, b"v%d" % i) for i in range(20)],
        key=lambda i: str(i).encode(),
    )
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    listener = EpochListener()
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([topic], listener)

    records = await fetch_until([source], lambda r: len(r) >= 20)

    assert by_partition(records) == {0: list(range(10)), 1: list(range(10))}
    assert {(r.partition, r.epoch) for r in records} == {
        (0, listener.epochs[tps[0]]),
        (1, listener.epochs[tps[1]]),
    }
    assert listener.epochs[tps[0]] != listener.epochs[tps[1]]
    for r in records:  # the i-th record produced went to partition i % 2 at offset i // 2
        i = 2 * r.offset + r.partition
        assert (r.key, r.value) == (b"%d" % i, b"v%d" % i)
    assert all(r.timestamp_ms is not None and r.timestamp_ms > 1_600_000_000_000 for r in records)

    assert await source.watermarks(tps) == {tps[0]: (0, 10), tps[1]: (0, 10)}
    assert await source.position(tps) == {tps[0]: 10, tps[1]: 10}
    assert await source.committed(tps) == {tps[0]: None, tps[1]: None}
    await source.commit({tps[0]: 10, tps[1]: 4})
    assert await source.committed(tps) == {tps[0]: 10, tps[1]: 4}

    started = time.monotonic()
    await source.close(10.0)
    assert time.monotonic() - started < 10.5


async def test_pause_resume(kafka_bootstrap: str, engine: str) -> None:
    topic = unique("src-pause")
    create_topic(kafka_bootstrap, topic, 2)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    listener = EpochListener()
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([topic], listener)
    try:
        await fetch_until([source], lambda _: len(listener.epochs) == 2, what="assignment")
        await source.pause([tps[0]])
        produce(kafka_bootstrap, topic, [(i % 2, b"v%d" % i) for i in range(10)])

        records = await fetch_until([source], lambda r: len(r) >= 5)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            records += await source.fetch(500, 0.2)
        assert by_partition(records) == {1: list(range(5))}

        await source.resume([tps[0]])
        records = await fetch_until([source], lambda r: len(r) >= 5)
        assert by_partition(records) == {0: list(range(5))}
    finally:
        await source.close(10.0)


async def test_topic_names_and_regular_expressions_together(
    kafka_bootstrap: str, engine: str
) -> None:
    prefix = unique("src-re")
    topics = [f"{prefix}-a", f"{prefix}-b", f"{prefix}.exact", f"{prefix}Xexact"]
    for topic in topics:
        create_topic(kafka_bootstrap, topic, 1)
        produce(kafka_bootstrap, topic, [(0, topic.encode())])
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([f"^{prefix}-.*", f"{prefix}.exact"], EpochListener())
    try:
        records = await fetch_until([source], lambda r: len(r) >= 3)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            records += await source.fetch(500, 0.2)
        assert sorted(r.topic for r in records) == topics[:3]
    finally:
        await source.close(10.0)


async def test_records_without_an_epoch_are_left_out(kafka_bootstrap: str, engine: str) -> None:
    topic = unique("src-epoch")
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [(i % 2, b"v%d" % i) for i in range(10)])
    listener = EpochListener()
    listener.withheld.add(TopicPartition(topic, 0))
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([topic], listener)
    try:
        records = await fetch_until([source], lambda r: len(r) >= 5)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            records += await source.fetch(500, 0.2)
        assert by_partition(records) == {1: list(range(5))}
    finally:
        await source.close(10.0)


async def test_aiokafka_fetches_again_what_it_dropped_for_want_of_an_epoch(
    kafka_bootstrap: str,
) -> None:
    """A partition still assigned but not yet known to the listener loses no record."""
    topic = unique("src-refetch")
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, [(0, b"v%d" % i) for i in range(5)])
    tp = TopicPartition(topic, 0)
    listener = EpochListener()
    listener.withheld.add(tp)
    source = create_source(config(kafka_bootstrap, "aiokafka", unique("g")))
    await source.start([topic], listener)
    try:
        await fetch_until([source], lambda _: tp in listener.epochs, what="assignment")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert await source.fetch(500, 0.2) == []
        listener.withheld.clear()
        records = await fetch_until([source], lambda r: len(r) >= 5)
        assert by_partition(records) == {0: list(range(5))}
    finally:
        await source.close(10.0)


async def test_delete_records_and_topic_configs(kafka_bootstrap: str, engine: str) -> None:
    topic = unique("src-admin")
    create_topic(
        kafka_bootstrap,
        topic,
        2,
        config={"cleanup.policy": "delete", "retention.ms": "123456789"},
    )
    produce(kafka_bootstrap, topic, [(i % 2, b"v%d" % i) for i in range(20)])
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([topic], EpochListener())
    try:
        configs = await source.topic_configs([topic])
        assert configs[topic]["cleanup.policy"] == "delete"
        assert configs[topic]["retention.ms"] == "123456789"

        await source.delete_records({tps[0]: 4})
        assert await source.watermarks(tps) == {tps[0]: (4, 10), tps[1]: (0, 10)}
        assert topic in await source.check(10.0)
    finally:
        await source.close(10.0)


async def test_transactions_only_committed_records_and_position_past_the_markers(
    kafka_bootstrap: str, engine: str
) -> None:
    topic = unique("src-tx")
    create_topic(kafka_bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique("tx")})
    producer.init_transactions(30)
    for values, commit in (([b"a0", b"a1", b"a2"], True), ([b"x0", b"x1"], False)):
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value=value, partition=0)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"c0", partition=0)
    producer.commit_transaction(30)
    # offsets: a0 a1 a2 <commit> x0 x1 <abort> c0 <commit> -> high watermark 9
    tp = TopicPartition(topic, 0)
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([topic], EpochListener())
    try:
        records = await fetch_until([source], lambda r: len(r) >= 4)
        assert [(r.offset, r.value) for r in records] == [
            (0, b"a0"),
            (1, b"a1"),
            (2, b"a2"),
            (7, b"c0"),
        ]
        assert await source.watermarks([tp]) == {tp: (0, 9)}
        deadline = time.monotonic() + 10.0
        while (await source.position([tp]))[tp] != 9:
            assert time.monotonic() < deadline, await source.position([tp])
            assert await source.fetch(500, 0.2) == []
    finally:
        await source.close(10.0)


async def test_rebalance_commits_what_on_revoked_returns_and_renews_epochs(
    kafka_bootstrap: str, engine: str
) -> None:
    topic = unique("src-rebalance")
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [(i % 2, b"v%d" % i) for i in range(20)])
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    group = unique("g")
    first_listener = EpochListener(commit_on_revoke={tps[0]: 3, tps[1]: 7})
    first = create_source(config(kafka_bootstrap, engine, group))
    await first.start([topic], first_listener)
    second_listener = EpochListener()
    second = create_source(config(kafka_bootstrap, engine, group))
    try:
        await fetch_until([first], lambda r: len(r) >= 20)
        await second.start([topic], second_listener)

        def balanced(_: list[SourceRecord]) -> bool:
            return len(first_listener.epochs) == 1 and len(second_listener.epochs) == 1

        records = await fetch_until([first, second], balanced, what="a rebalance")
        moved = next(iter(second_listener.epochs))
        assert moved in first_listener.revoked
        expected = {tps[0]: 3, tps[1]: 7}
        committed = await first.committed(tps)
        for tp in first_listener.revoked:
            assert committed[tp] == expected[tp]
        # The second member starts from what the first committed on revoke.
        records += await fetch_until(
            [first, second], lambda r: any(x.topic_partition == moved for x in records + r)
        )
        moved_records = [r for r in records if r.topic_partition == moved]
        assert moved_records[0].offset == expected[moved]
        assert {r.epoch for r in moved_records} == {second_listener.epochs[moved]}
    finally:
        await asyncio.gather(first.close(10.0), second.close(10.0))


async def test_a_member_that_stops_polling_loses_its_partitions_without_commit(
    kafka_bootstrap: str, engine: str
) -> None:
    topic = unique("src-lost")
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, [(0, b"v%d" % i) for i in range(5)])
    tp = TopicPartition(topic, 0)
    listener = EpochListener(commit_on_revoke={tp: 2})
    source = create_source(
        config(kafka_bootstrap, engine, unique("g"), **{"max.poll.interval.ms": 6000})
    )
    await source.start([topic], listener)
    try:
        await fetch_until([source], lambda r: len(r) >= 5)
        first_epoch = listener.epochs[tp]
        await asyncio.sleep(9.0)  # past max.poll.interval.ms: the member leaves the group
        records = await fetch_until(
            [source],
            lambda _: tp in listener.lost and listener.epochs.get(tp, first_epoch) != first_epoch,
            what="loss and reassignment",
        )
        assert tp not in listener.revoked
        assert await source.committed([tp]) == {tp: None}
        assert all(r.epoch != first_epoch for r in records)
    finally:
        await source.close(10.0)


async def test_close_returns_within_its_timeout_while_revoke_hangs(
    kafka_bootstrap: str, engine: str
) -> None:
    topic = unique("src-close")
    create_topic(kafka_bootstrap, topic, 1)

    class Hanging(EpochListener):
        async def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
            await asyncio.sleep(60)
            return {}

    listener = Hanging()
    source = create_source(config(kafka_bootstrap, engine, unique("g")))
    await source.start([topic], listener)
    await fetch_until([source], lambda _: bool(listener.epochs), what="assignment")
    started = time.monotonic()
    await source.close(2.0)
    assert time.monotonic() - started < 3.0


def sasl_config(endpoint: SaslSslKafka, engine: str, password: str) -> KafkaConfig:
    security = SecurityConfig.model_validate(
        {
            "protocol": "SASL_SSL",
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": endpoint.username,
                "password": password,
            },
            "tls": {"ca_file": str(endpoint.ca_file)},
        }
    )
    return KafkaConfig(
        bootstrap_servers=endpoint.bootstrap_servers,
        engine=engine,
        group_id=unique("g"),
        security=security,
        properties=FAST_GROUP,
    )


async def test_sasl_ssl_from_the_security_section(
    kafka_sasl_broker: SaslSslKafka, engine: str
) -> None:
    plain = kafka_sasl_broker.broker.bootstrap_servers
    topic = unique("src-sasl")
    create_topic(plain, topic, 1)
    produce(plain, topic, [(0, b"v%d" % i) for i in range(3)])
    source = create_source(sasl_config(kafka_sasl_broker, engine, kafka_sasl_broker.password))
    await source.start([topic], EpochListener())
    try:
        records = await fetch_until([source], lambda r: len(r) >= 3)
        assert [r.value for r in records] == [b"v0", b"v1", b"v2"]
    finally:
        await source.close(10.0)


async def test_a_refused_password_names_mechanism_and_servers_not_the_password(
    kafka_sasl_broker: SaslSslKafka, engine: str
) -> None:
    wrong = "not-" + kafka_sasl_broker.password
    source = create_source(sasl_config(kafka_sasl_broker, engine, wrong))
    with pytest.raises(ConnectorError) as caught:
        await source.start([unique("src-sasl")], EpochListener())
        await fetch_until([source], lambda _: False, timeout=30.0, what="authentication error")
    await source.close(5.0)
    message = str(caught.value)
    assert "SCRAM-SHA-512" in message
    assert kafka_sasl_broker.bootstrap_servers in message
    assert "authentication" in message.lower()
    assert wrong not in message and kafka_sasl_broker.password not in message


async def test_commits_while_a_revoke_commits_cannot_deadlock(
    kafka_bootstrap: str, engine: str
) -> None:
    """Issue 7, defect 1: the periodic commit runs while the revoke callback commits. With
    confluent_kafka.aio.AIOConsumer(max_workers=2) the two waited for each other forever;
    every client call must still return, and the revoke's commit must land."""
    topic = unique("src-deadlock")
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [(i % 2, b"v%d" % i) for i in range(20)])
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    group = unique("g")

    class SlowRevoke(EpochListener):
        async def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
            await asyncio.sleep(1.0)  # a batch still in the backend
            return await super().on_revoked(partitions)

    first_listener = SlowRevoke(commit_on_revoke={tps[0]: 5, tps[1]: 6})
    first = create_source(config(kafka_bootstrap, engine, group))
    await first.start([topic], first_listener)
    second = create_source(config(kafka_bootstrap, engine, group))
    stop = asyncio.Event()
    commits = 0

    async def periodic_commit() -> None:
        nonlocal commits
        while not stop.is_set():
            # Like the pipeline: only what the listener still owns (a commit that races a
            # revoke and fails is retried by the next one there).
            owned = {tp: 1 for tp in tps if tp in first_listener.epochs}
            with contextlib.suppress(Exception):
                await within(first.commit(owned), 30)
                commits += 1
            await asyncio.sleep(0.01)

    try:
        await fetch_until([first], lambda r: len(r) >= 20)
        committer = asyncio.create_task(periodic_commit())
        second_listener = EpochListener()
        await second.start([topic], second_listener)
        await fetch_until(
            [first, second],
            lambda _: bool(first_listener.revoked) and len(second_listener.epochs) == 1,
            timeout=60,
            what="a revoke while commits run",
        )
        stop.set()
        await within(committer, 30)
        assert commits > 0
        # The partition the second member took: its offset is the revoke's commit. (The
        # other one may be assigned to the first member again, which then commits it.)
        (taken,) = second_listener.epochs
        assert taken in first_listener.revoked
        assert (await second.committed([taken]))[taken] == {tps[0]: 5, tps[1]: 6}[taken]
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.gather(first.close(10.0), second.close(10.0))
        assert time.monotonic() - started < 12
