"""Pipeline behaviour on rebalances and on failures, against in-memory fakes.

Each test guards one defect of issue 7: revoked partitions keep writing, an epoch looked up
when a record is mapped instead of when it was fetched, a run that never ends on a
transactional topic, a fatal error that takes ~35 s to exit, and batches written after a
rejection.
"""

from __future__ import annotations

import asyncio
import time

from connector.backends import ObjectResult, Outcome
from connector.config import RouteConfig
from connector.errors import RetryableError
from connector.records import MappedObject, SourceRecord, TopicPartition
from connector.timeouts import within
from tests.fakes import FakeBackend, FakeSource, measurement
from tests.test_pipeline import P0, P1, Pipeline, config, logs


class GatedBackend(FakeBackend):
    """Holds every ``ingest`` call until ``gate`` is set, and records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.partitions_written: list[set[TopicPartition]] = []

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        self.entered.set()
        await self.gate.wait()
        self.partitions_written.append({o.record.topic_partition for o in objects})
        return await super().ingest(objects)


async def test_revoke_drops_queued_objects_and_commits_the_batch_in_the_backend() -> None:
    source = FakeSource(logs(30))
    backend = GatedBackend()
    cfg = config(batching={"max_records": 10, "max_in_flight_batches": 4, "max_wait_ms": 5})
    pipeline = Pipeline(cfg, source, backend, pause_after_s=60)
    task = asyncio.create_task(pipeline.run())
    await within(backend.entered.wait(), 5)
    await asyncio.sleep(0.1)  # let the fetch task queue more batches behind the first
    in_backend = backend.calls
    assert in_backend == 0  # the first batch is held inside ingest, not yet counted
    revoke = asyncio.create_task(pipeline.on_revoked([P0]))
    await asyncio.sleep(0.05)
    assert not revoke.done(), "the revoke must wait for the batch inside the backend"
    backend.gate.set()
    offsets = await within(revoke, 5)
    first = backend.partitions_written[0]
    # The batch that was inside the backend counts: its P0 records are committed on revoke.
    assert offsets == ({P0: 10} if P0 in first else {})
    await asyncio.sleep(0.2)
    pipeline.request_stop()
    await within(task, 5)
    # Nothing of P0 was written after the revoke returned.
    assert all(P0 not in written for written in backend.partitions_written[1:])
    assert {tp.partition for w in backend.partitions_written for tp in w} >= {1, 2}


async def test_records_of_an_earlier_assignment_are_dropped_even_if_reassigned() -> None:
    """A rebalance between fetch and map: the records keep the epoch they were fetched
    with, so they are dropped and the new assignment reads them again from its start."""

    class RebalancingSource(FakeSource):
        rebalanced = False

        async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
            records = await super().fetch(max_records, timeout_s)
            if records and not self.rebalanced:
                self.rebalanced = True
                assert self.listener is not None
                await self.listener.on_revoked([P0])
                self.listener.on_assigned([P0])
                self.positions[P0] = 0  # the new assignment starts at the committed offset
            return records

    source = RebalancingSource({P0: [measurement(0, i) for i in range(10)]})
    backend = FakeBackend()
    summary = await within(Pipeline(config(), source, backend, until_caught_up=True).run(), 10)
    assert summary.error is None
    assert (summary.records, summary.inserted, summary.duplicates) == (10, 10, 0)
    assert source.last_commit(P0) == 10


async def test_until_caught_up_ends_past_a_transaction_marker() -> None:
    """The high watermark sits one past the last record (a commit marker, never delivered):
    the run ends when the consumer's position reaches it."""

    class TransactionalSource(FakeSource):
        async def watermarks(
            self, partitions: list[TopicPartition]
        ) -> dict[TopicPartition, tuple[int, int]]:
            return {tp: (0, len(self.logs[tp]) + 1) for tp in partitions}

        async def position(
            self, partitions: list[TopicPartition]
        ) -> dict[TopicPartition, int | None]:
            done = {tp: self.positions[tp] == len(self.logs[tp]) for tp in partitions}
            return {tp: self.positions[tp] + (1 if done[tp] else 0) for tp in partitions}

    source = TransactionalSource({P0: [measurement(0, i) for i in range(5)]})
    summary = await within(
        Pipeline(config(), source, FakeBackend(), until_caught_up=True).run(), 10
    )
    assert summary.error is None and summary.records == 5


REJECTED = ObjectResult(Outcome.REJECTED, "value too long for the column")


def rejecting_backend(reject_partition: int) -> FakeBackend:
    """A backend that rejects every object of one partition."""

    class Rejecting(FakeBackend):
        async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
            await asyncio.sleep(0.05)  # the fetch task fills the queue meanwhile
            results = await super().ingest(objects)
            return [
                REJECTED if o.record.partition == reject_partition else r
                for o, r in zip(objects, results, strict=True)
            ]

    return Rejecting()


async def test_nothing_is_written_after_a_rejection() -> None:
    source = FakeSource({P0: [measurement(0, i) for i in range(100)]})
    backend = rejecting_backend(0)
    cfg = config(batching={"max_records": 10, "max_in_flight_batches": 4, "max_wait_ms": 5})
    summary = await within(Pipeline(cfg, source, backend, until_caught_up=True).run(), 10)
    assert summary.error is not None and "rejected" in summary.error
    assert backend.calls == 1, "batches queued behind the rejected record were written"
    assert source.last_commit(P0) is None


async def test_a_fatal_error_exits_at_once_while_waiting_for_room() -> None:
    """The fetch task waits for room (pause_after_s is long) when the ingest task fails."""
    source = FakeSource({P0: [measurement(0, i) for i in range(200)], P1: []})
    backend = rejecting_backend(0)
    cfg = config(
        batching={"max_records": 10, "max_in_flight_batches": 1, "max_wait_ms": 5},
        shutdown={"timeout_ms": 30_000},
    )
    started = time.monotonic()
    summary = await within(
        Pipeline(cfg, source, backend, until_caught_up=True, pause_after_s=60).run(), 20
    )
    assert summary.error is not None
    assert time.monotonic() - started < 5, "the run lingered after a fatal error"


async def test_release_deletes_only_what_was_committed() -> None:
    source = FakeSource(logs(30))
    routes = [{"topic": "m", "type": "Measurement", "release": "delete"}]
    cfg = config(release={"interval_ms": 100})
    cfg = cfg.model_copy(update={"routes": config_routes(routes)})
    summary = await Pipeline(cfg, source, FakeBackend(), until_caught_up=True).run()
    assert summary.error is None
    released: dict[TopicPartition, int] = {}
    for deleted in source.deleted:
        for tp, offset in deleted.items():
            assert offset <= (source.last_commit(tp) or 0)
            released[tp] = offset
    assert released == {tp: 30 for tp in source.logs}


async def test_release_is_refused_on_a_compacted_topic() -> None:
    class Compacted(FakeSource):
        async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
            return {t: {"cleanup.policy": "compact,delete"} for t in topics}

    source = Compacted(logs(3))
    backend = FakeBackend()
    routes = [{"topic": "m", "type": "Measurement", "release": "delete"}]
    cfg = config().model_copy(update={"routes": config_routes(routes)})
    summary = await Pipeline(cfg, source, backend, until_caught_up=True).run()
    assert summary.error == (
        "routes: release: delete on topic 'm', whose cleanup.policy is 'compact,delete': "
        "deleting records would remove the latest value of keys that compaction keeps; "
        "use release: keep for this route"
    )
    assert backend.calls == 0 and source.commits == [] and source.deleted == []


def config_routes(routes: list[dict[str, object]]) -> list[RouteConfig]:
    return [RouteConfig.model_validate(r) for r in routes]


async def test_an_unreachable_backend_at_start_up_is_retried() -> None:
    """Issue 7, defect 7: open() failing with a retryable error is retried with backoff."""

    class LateBackend(FakeBackend):
        attempts = 0

        async def open(self) -> None:
            self.attempts += 1
            if self.attempts < 3:
                raise RetryableError("connection refused")
            await super().open()

    source, backend = FakeSource(logs(5)), LateBackend()
    summary = await within(Pipeline(config(), source, backend, until_caught_up=True).run(), 10)
    assert summary.error is None and summary.records == 15
    assert backend.attempts == 3


async def test_stop_while_the_backend_is_unreachable_at_start_up() -> None:
    class DownBackend(FakeBackend):
        async def open(self) -> None:
            raise RetryableError("connection refused")

    source = FakeSource(logs(5))
    pipeline = Pipeline(config(), source, DownBackend())
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.1)
    pipeline.request_stop()
    summary = await within(task, 5)
    assert summary.error is None and summary.records == 0
    assert source.commits == []
