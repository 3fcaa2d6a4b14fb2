"""Metrics fed by the pipeline, checked through the text exposition (prometheus-client's parser)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connector.backends import ObjectResult, Outcome
from connector.errors import RetryableError
from connector.metrics import LATENCY_BUCKETS, Metrics, _BulkHistogram
from connector.records import MappedObject, SourceRecord, TopicPartition
from connector.timeouts import within
from tests.fakes import FakeBackend, FakeSource
from tests.test_pipeline import P0, P1, P2, Pipeline, config, logs


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels (parsed, not read back)."""
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


async def test_counters_equal_the_run_summary() -> None:
    metrics = Metrics()
    observer = metrics.connector("c1")
    failures = iter([RetryableError("down"), None, None])
    backend = FakeBackend(fail=lambda _n: next(failures, None))
    source = FakeSource(logs(25))
    source.logs[P0][3] = source.logs[P0][2]  # the same _id and document again: a duplicate
    commits = 0
    commit = source.commit

    async def counting(offsets: dict[TopicPartition, int]) -> None:
        nonlocal commits
        commits += 1
        await commit(offsets)

    source.commit = counting  # type: ignore[method-assign]
    summary = await Pipeline(
        config(), source, backend, until_caught_up=True, observer=observer
    ).run()
    assert summary.error is None and summary.duplicates == 1
    got = samples(metrics)
    key = ("connector", "c1"), ("outcome", "{}"), ("topic", "m"), ("type", "Measurement")

    def records(outcome: str) -> float:
        labels = tuple((k, v.format(outcome)) for k, v in key)
        return got.get(("data_ingest_records_total", labels), 0.0)

    assert records("inserted") == summary.inserted == 74
    assert records("duplicate") == summary.duplicates
    c1 = (("connector", "c1"),)
    assert got[("data_ingest_batch_size_records_count", c1)] == len(backend.batch_sizes)
    assert got[("data_ingest_batch_size_records_sum", c1)] == 75
    assert got[("data_ingest_backend_write_seconds_count", c1)] == len(backend.batch_sizes)
    retries = (("connector", "c1"), ("operation", "backend write"))
    assert got[("data_ingest_retries_total", retries)] == 1
    assert commits > 0 and got[("data_ingest_commit_seconds_count", c1)] == commits
    assert got[("data_ingest_commit_failures_total", c1)] == 0


class RejectingBackend(FakeBackend):
    """Rejects the third object it is given; stores the rest."""

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        results = await super().ingest(objects)
        if self.calls == 1:
            results[2] = ObjectResult(Outcome.REJECTED, "too large")
        return results


async def test_the_rejected_object_that_stops_the_run_is_counted() -> None:
    metrics = Metrics()
    summary = await Pipeline(
        config(),
        FakeSource({P0: logs(10)[P0]}),
        RejectingBackend(),
        until_caught_up=True,
        observer=metrics.connector("c"),
    ).run()
    assert summary.error is not None and summary.rejected == 1
    labels = {"connector": "c", "topic": "m", "type": "Measurement"}
    assert value(metrics, "data_ingest_records_total", outcome="rejected", **labels) == 1
    assert value(metrics, "data_ingest_records_total", outcome="inserted", **labels) == 2
    assert summary.inserted == 2


def test_bulk_histogram_equals_one_observation_per_record() -> None:
    """The batch-at-a-time histogram gives exactly the buckets of prometheus-client's own."""
    rng = random.Random(7)
    now_ms = 1_800_000_000_000.0
    stamps = [
        int(now_ms - rng.choice([0, 1, 4, 9, 10, 11, 250, 2_500, 70_000, 10**6]))
        for _ in range(500)
    ]
    bulk = _BulkHistogram("lat_seconds", "doc")
    for chunk in (stamps[:123], stamps[123:], [None, None]):  # type: ignore[list-item]
        bulk.observe_timestamps("c", chunk, now_ms)
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "lat_seconds", "doc", ["connector"], buckets=LATENCY_BUCKETS, registry=reference_registry
    )
    for stamp in stamps:
        reference.labels("c").observe((now_ms - stamp) / 1000)
    bulk_registry = CollectorRegistry()
    bulk_registry.register(bulk)

    def buckets(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("le", "")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.name.endswith("_created")
        }

    ours, theirs = buckets(bulk_registry), buckets(reference_registry)
    sums = ours.pop(("lat_seconds_sum", "")), theirs.pop(("lat_seconds_sum", ""))
    assert ours == theirs
    assert sums[0] == pytest.approx(sums[1])
    assert ours[("lat_seconds_count", "")] == 500


async def test_lag_paused_partitions_and_hold() -> None:
    metrics = Metrics()
    observer = metrics.connector("c")
    source, backend = FakeSource(logs(25)), FakeBackend()
    pipeline = Pipeline(config(), source, backend, until_caught_up=True, observer=observer)
    observer.watch_paused(lambda: pipeline.paused_partitions)
    pipeline.hold(True)
    task = asyncio.create_task(pipeline.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if source.paused == {P0, P1, P2}:
            break
    await asyncio.sleep(0.1)
    assert backend.stored == {} and source.paused == {P0, P1, P2}
    assert value(metrics, "data_ingest_paused_partitions", connector="c") == 3
    lag = await pipeline.lag()
    assert lag == {P0: 25, P1: 25, P2: 25}
    observer.set_lag(lag)
    assert value(metrics, "data_ingest_consumer_lag", connector="c", topic="m", partition="1") == 25
    pipeline.hold(False)
    summary = await within(task, 10)
    assert summary.records == 75 and len(backend.stored) == 75
    observer.set_lag({P1: 0})
    got = samples(metrics)
    lags = {
        dict(k[1])["partition"]: v for k, v in got.items() if k[0] == "data_ingest_consumer_lag"
    }
    assert lags == {"1": 0}


def test_state_build_info_and_removal() -> None:
    metrics = Metrics()
    observer = metrics.connector("gone")
    keep = metrics.connector("kept")
    observer.set_state("PAUSED", {0: "PAUSED"})
    keep.set_state("RUNNING", {0: "RUNNING"})
    observer.set_lag({TopicPartition("t", 0): 5})
    assert (
        value(
            metrics,
            "data_ingest_connector_state",
            connector="gone",
            data_ingest_connector_state="PAUSED",
        )
        == 1
    )
    assert (
        value(
            metrics,
            "data_ingest_connector_state",
            connector="gone",
            data_ingest_connector_state="RUNNING",
        )
        == 0
    )
    assert (
        value(
            metrics,
            "data_ingest_task_state",
            connector="gone",
            task="0",
            data_ingest_task_state="PAUSED",
        )
        == 1
    )
    build = [k for k in samples(metrics) if k[0] == "data_ingest_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"]
    observer.remove()
    names = {(name, dict(labels).get("connector")) for name, labels in samples(metrics)}
    assert not any(connector == "gone" for _, connector in names)
    assert ("data_ingest_connector_state", "kept") in names


def _metrics_linter() -> list[str]:
    """``promtool check metrics`` if promtool is on PATH (or ``PROMTOOL``), else the same
    linter built by ``make promlint`` (``PROMLINT``, set by ``make test``)."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if promtool is not None:
        return [promtool, "check", "metrics"]
    promlint = os.environ.get("PROMLINT")
    if promlint is None:
        pytest.skip("no metrics linter: run `make promlint` and set PROMLINT, or use make test")
    assert os.access(promlint, os.X_OK), f"PROMLINT={promlint} is not an executable"
    return [promlint]


def test_the_metrics_linter_rejects_a_badly_named_counter() -> None:
    """The linter the next test relies on does find problems."""
    result = subprocess.run(
        _metrics_linter(), input=b"# TYPE foo counter\nfoo 1\n", capture_output=True, check=False
    )
    assert result.returncode != 0
    output = result.stdout.decode() + result.stderr.decode()
    assert 'counter metrics should have "_total" suffix' in output


async def test_exposition_passes_promtool_check_metrics() -> None:
    """The exposition passes Prometheus' metric lint (names, suffixes, units, help)."""
    linter = _metrics_linter()
    metrics = Metrics()
    observer = metrics.connector("c")
    observer.set_state("RUNNING", {0: "RUNNING"})
    observer.set_lag({TopicPartition("t", 0): 5})
    observer.retried("backend write")
    observer.committed(0.002, False)
    failures = iter([RetryableError("down")])
    backend = FakeBackend(fail=lambda _n: next(failures, None))
    pipeline = Pipeline(
        config(), FakeSource(logs(5)), backend, until_caught_up=True, observer=observer
    )
    assert (await pipeline.run()).records == 15
    metrics.end_to_end.observe_timestamps("c", [1_000, 2_000], 5_000.0)
    exposition = metrics.exposition().decode()
    for family in ("records_total", "end_to_end_latency_seconds_bucket", "commit_seconds_count"):
        assert f"data_ingest_{family}{{" in exposition
    result = subprocess.run(
        linter,
        input=metrics.exposition(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


class CachingSource(FakeSource):
    """Knows each partition's end from its fetches, as a Kafka client does; counts the
    calls that would be broker round trips."""

    def __init__(self, records: dict[TopicPartition, list[bytes | None]]) -> None:
        super().__init__(records)
        self.asked: list[tuple[str, list[TopicPartition]]] = []
        self.fetched_end: dict[TopicPartition, int] = {}

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        out = await super().fetch(max_records, timeout_s)
        self.fetched_end.update(
            {tp: len(self.logs[tp]) for tp in self.logs if tp not in self.paused}
        )
        return out

    async def known_high_watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: self.fetched_end[tp] for tp in partitions if tp in self.fetched_end}

    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        self.asked.append(("watermarks", partitions))
        return await super().watermarks(partitions)

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        if partitions:
            self.asked.append(("committed", partitions))
        return await super().committed(partitions)


async def test_lag_asks_the_broker_only_for_what_the_client_does_not_know() -> None:
    """While records flow, lag comes from the fetched high watermarks and this member's own
    commits (no round trip holding up the consumer); paused partitions are asked for."""
    source, backend = CachingSource(logs(20)), FakeBackend()
    pipeline = Pipeline(config(), source, backend)
    task = asyncio.create_task(pipeline.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if all(source.last_commit(tp) == 20 for tp in (P0, P1, P2)):
            break
    source.asked.clear()
    assert await pipeline.lag() == {P0: 0, P1: 0, P2: 0}
    assert source.asked == []
    pipeline.hold(True)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if source.paused == {P0, P1, P2}:
            break
    source.logs[P1].extend(source.logs[P1][:5])  # 5 records produced while paused
    assert await pipeline.lag() == {P0: 0, P1: 5, P2: 0}
    assert source.asked == [("watermarks", [P0, P1, P2])]
    pipeline.request_stop()
    await within(task, 10)
