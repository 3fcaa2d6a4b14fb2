"""``batching.max_concurrent_writes``: several batches inside the backend at once, against
in-memory fakes. Commits still follow acks, a revoke waits for every batch in the backend,
and a backend that writes one batch at a time is never given two."""

from __future__ import annotations

import asyncio

from connector.backends import ObjectResult
from connector.records import MappedObject, TopicPartition
from connector.timeouts import within
from tests.fakes import FakeBackend, FakeSource
from tests.test_pipeline import P0, P1, P2, Pipeline, config, logs


class Overlapping(FakeBackend):
    """Serves ``capacity`` ingest calls at once, each held until ``gate`` is set; records
    how many were inside at most and the coordinates of each batch it wrote."""

    def __init__(self, capacity: int, *, gated: bool = False) -> None:
        super().__init__()
        self.capacity = capacity
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.inside = 0
        self.most = 0
        self.full = asyncio.Event()  # set once `capacity` calls were inside at once
        self.written: list[list[tuple[TopicPartition, int]]] = []

    def concurrent_writes(self) -> int:
        return self.capacity

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        self.inside += 1
        self.most = max(self.most, self.inside)
        if self.inside == self.capacity:
            self.full.set()
        try:
            await self.gate.wait()
            await asyncio.sleep(0.005)  # a round trip: the other writer gets its turn
            self.written.append([(o.record.topic_partition, o.record.offset) for o in objects])
            return await super().ingest(objects)
        finally:
            self.inside -= 1


def writers(n: int) -> dict[str, int]:
    return {
        "max_records": 10,
        "max_wait_ms": 5,
        "max_in_flight_batches": 4,
        "max_concurrent_writes": n,
    }


async def test_two_writers_keep_two_batches_in_the_backend_and_commit_everything() -> None:
    source, backend = FakeSource(logs(200)), Overlapping(2)
    summary = await Pipeline(
        config(batching=writers(2)), source, backend, until_caught_up=True
    ).run()
    assert summary.error is None
    assert (summary.records, summary.inserted, summary.duplicates) == (600, 600, 0)
    assert backend.most == 2
    assert len(backend.stored) == 600
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 200, P1: 200, P2: 200}


async def test_a_backend_that_writes_one_batch_at_a_time_is_never_given_two() -> None:
    source, backend = FakeSource(logs(50)), Overlapping(1)
    summary = await Pipeline(
        config(batching=writers(4)), source, backend, until_caught_up=True
    ).run()
    assert summary.records == 150
    assert backend.most == 1


async def test_one_writer_is_the_default() -> None:
    source, backend = FakeSource(logs(50)), Overlapping(4)
    summary = await Pipeline(config(), source, backend, until_caught_up=True).run()
    assert summary.records == 150
    assert backend.most == 1


async def test_revoke_waits_for_every_batch_in_the_backend_and_commits_them() -> None:
    # The fake serves P0 first, ten records per fetch: the two batches held inside the
    # backend are P0 0-9 and P0 10-19, and P0's later records wait in the queue.
    records = logs(40)
    source = FakeSource({P0: records[P0], P1: records[P1]})
    backend = Overlapping(2, gated=True)
    pipeline = Pipeline(config(batching=writers(2)), source, backend, pause_after_s=60)
    task = asyncio.create_task(pipeline.run())
    await within(backend.full.wait(), 5)
    revoke = asyncio.create_task(pipeline.on_revoked([P0]))
    await asyncio.sleep(0.05)
    assert not revoke.done(), "the revoke must wait for both batches inside the backend"
    backend.gate.set()
    offsets = await within(revoke, 5)
    assert backend.written[:2] == [[(P0, n) for n in range(10)], [(P0, n) for n in range(10, 20)]]
    assert offsets == {P0: 20}  # both batches count, not only the first to finish
    await asyncio.sleep(0.2)
    pipeline.request_stop()
    await within(task, 5)
    later = {tp for batch in backend.written[2:] for tp, _ in batch}
    assert later == {P1}, "a revoked partition was written after the revoke"
