"""Pipeline logic against in-memory fakes: commits follow acks, errors stop cleanly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from connector.config import PipelineConfig, parse_config
from connector.errors import FatalBackendError, RetryableError
from connector.pipeline import Pipeline as _Pipeline
from connector.records import SourceRecord, TopicPartition
from connector.timeouts import within
from tests.fakes import AVRO_DIR, TYPES, FakeBackend, FakeSource, measurement

P0, P1, P2 = (TopicPartition("m", p) for p in range(3))


def Pipeline(config: PipelineConfig, *args: Any, **kwargs: Any) -> _Pipeline:
    return _Pipeline(config, TYPES, *args, **kwargs)


def config(**overrides: Any) -> PipelineConfig:
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "unused:9092", "poll_timeout_ms": 10},
        "schemas": {"dir": str(AVRO_DIR)},
        "routes": [{"topic": "m", "type": "Measurement"}],
        "backend": {"type": "sqlite", "path": "unused.db"},
        "batching": {"max_records": 10, "max_wait_ms": 5},
        "commit": {"interval_ms": 10},
        "retry": {"initial_backoff_ms": 1, "max_backoff_ms": 5},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_config(data, "test.yaml", env={})


def logs(per_partition: int) -> dict[TopicPartition, list[bytes | None]]:
    return {tp: [measurement(tp.partition, i) for i in range(per_partition)] for tp in (P0, P1, P2)}


async def test_until_caught_up_ingests_everything_and_commits_the_end() -> None:
    source, backend = FakeSource(logs(25)), FakeBackend()
    summary = await Pipeline(config(), source, backend, until_caught_up=True).run()
    assert summary.error is None
    assert (summary.records, summary.inserted, summary.duplicates) == (75, 75, 0)
    assert len(backend.stored) == 75
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 25, P1: 25, P2: 25}
    assert max(backend.batch_sizes) <= 10
    assert backend.closed and source.closed


async def test_missing_id_gets_deterministic_coordinates_id() -> None:
    data = {
        P0: [
            json.dumps(
                {k: v for k, v in json.loads(measurement(0, i)).items() if k != "_id"}
            ).encode()
            for i in range(2)
        ]
    }
    first, second = FakeBackend(), FakeBackend()
    await Pipeline(config(), FakeSource(data), first, until_caught_up=True).run()
    await Pipeline(config(), FakeSource(data), second, until_caught_up=True).run()
    assert first.stored.keys() == second.stored.keys()
    assert len(first.stored) == 2


async def test_malformed_record_stops_and_nothing_past_it_is_committed() -> None:
    data = logs(20)
    data[P1][7] = b'{"_id": "bad", '
    source, backend = FakeSource(data), FakeBackend()
    summary = await Pipeline(config(), source, backend, until_caught_up=True).run()
    assert summary.error == (
        "decode error at topic 'm' partition 1 offset 7: value is not valid JSON: "
        "Expecting property name enclosed in double quotes at line 1 column 16"
    )
    assert source.last_commit(P1) == 7  # everything before the bad record, nothing after
    assert backend.has(measurement(1, 6)) and not backend.has(measurement(1, 8))
    for tp in (P0, P2):
        committed = source.last_commit(tp) or 0
        assert all(backend.has(measurement(tp.partition, i)) for i in range(committed))


async def test_nan_is_a_decode_error() -> None:
    source = FakeSource({P0: [b'{"_id": "a", "value": NaN}']})
    summary = await Pipeline(config(), source, FakeBackend(), until_caught_up=True).run()
    assert summary.error == (
        "decode error at topic 'm' partition 0 offset 0: value is not valid JSON: "
        "NaN is not a JSON value at line 1 column 1"
    )


async def test_tombstone_on_asymmetric_route_is_a_record_error() -> None:
    source = FakeSource({P0: [measurement(0, 0), None]})
    backend = FakeBackend()
    summary = await Pipeline(config(), source, backend, until_caught_up=True).run()
    assert summary.error == (
        "rule-violation error at topic 'm' partition 0 offset 1: tombstone (null value) on a "
        "route of asymmetric type Measurement: asymmetric objects are insert-only and cannot "
        "be deleted (R8)"
    )
    assert source.last_commit(P0) == 1


async def test_transient_backend_failures_are_retried_and_nothing_is_committed_meanwhile() -> None:
    commits_during_outage: list[dict[TopicPartition, int]] = []
    source = FakeSource(logs(30))

    def fail(call: int) -> Exception | None:
        if call <= 5:
            commits_during_outage.extend(source.commits)
            return RetryableError("connection refused")
        return None

    backend = FakeBackend(fail)
    summary = await Pipeline(config(), source, backend, until_caught_up=True).run()
    assert summary.error is None
    assert commits_during_outage == []
    assert len(backend.stored) == 90
    assert backend.calls > 5


async def test_backpressure_pauses_partitions_while_the_backend_is_slow() -> None:
    source = FakeSource(logs(200))

    class Slow(FakeBackend):
        async def ingest(self, objects):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.01)
            return await super().ingest(objects)

    backend = Slow()
    cfg = config(batching={"max_records": 10, "max_in_flight_batches": 1, "max_wait_ms": 1000})
    summary = await Pipeline(cfg, source, backend, until_caught_up=True, pause_after_s=0.001).run()
    assert summary.records == 600
    assert source.pause_calls > 0
    assert source.paused == set()


async def test_fatal_backend_error_stops_the_run() -> None:
    source = FakeSource(logs(5))
    backend = FakeBackend(lambda call: FatalBackendError("permission denied for table"))
    summary = await Pipeline(config(), source, backend, until_caught_up=True).run()
    assert summary.error == "permission denied for table"
    assert source.commits == []


async def test_stop_during_outage_abandons_after_the_shutdown_timeout() -> None:
    source = FakeSource(logs(5))
    backend = FakeBackend(lambda call: RetryableError("database is restarting"))
    pipeline = Pipeline(config(shutdown={"timeout_ms": 200}), source, backend)
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.2)
    pipeline.request_stop()
    summary = await within(task, 5)
    assert source.commits == []
    assert summary.records == 0


async def test_stop_finishes_the_batch_and_commits() -> None:
    source = FakeSource(logs(5))
    backend = FakeBackend()
    cfg = config(batching={"max_records": 1000, "max_wait_ms": 60_000})
    pipeline = Pipeline(cfg, source, backend)
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.2)
    assert backend.calls == 0  # the batch waits for more records
    pipeline.request_stop()
    summary = await within(task, 5)
    assert summary.records == 15
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 5, P1: 5, P2: 5}


class StuckSource(FakeSource):
    """Its fetches after the first ``fetches_left`` never return, as a client stuck in a
    rebalance."""

    fetches_left = 1

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        if self.fetches_left == 0:
            await asyncio.Event().wait()
        self.fetches_left -= 1
        return await super().fetch(max_records, timeout_s)


async def test_a_stop_ends_the_run_even_while_a_fetch_hangs() -> None:
    """SIGTERM must end the run within the shutdown bound whatever the client does; what
    was fetched before is written and committed, the hanging fetch is left behind."""
    source, backend = StuckSource(logs(3)), FakeBackend()
    pipeline = Pipeline(config(), source, backend)
    task = asyncio.create_task(pipeline.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if source.fetches_left == 0:
            break
    await asyncio.sleep(0.2)  # the second fetch hangs now
    pipeline.request_stop()
    summary = await within(task, 5)
    assert summary.error is None and summary.records == len(backend.stored) == 9
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 3, P1: 3, P2: 3}


class CancelSwallowingSource(FakeSource):
    """Each commit waits until it is cancelled, then ignores the cancellation and commits,
    as a call inside ``asyncio.wait_for`` does on Python 3.11 when the cancellation comes
    just as the call finished."""

    def __init__(self, records: dict[TopicPartition, list[bytes | None]]) -> None:
        super().__init__(records)
        self.swallowed = 0

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.swallowed += 1
        await super().commit(offsets)


async def test_a_commit_loop_that_ignores_its_cancellation_does_not_hold_up_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The CI hang of fleet members after SIGTERM: the commit loop went on after its
    cancellation and the shutdown awaited it forever. It is now left behind, named in the
    log, and the final commit still happens within the shutdown timeout."""
    source, backend = CancelSwallowingSource(logs(3)), FakeBackend()
    pipeline = Pipeline(config(shutdown={"timeout_ms": 3000}), source, backend)
    task = asyncio.create_task(pipeline.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if len(backend.stored) == 9:
            break
    pipeline.request_stop()
    summary = await within(task, 10)
    assert summary.error is None and summary.records == len(backend.stored) == 9
    assert source.swallowed == 1  # by the commit loop, which committed before the final commit
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 3, P1: 3, P2: 3}
    assert "the commit loop did not end within 1.0 s of its cancellation" in caplog.text
