"""Prometheus metrics: the registry, the metric names, and a pipeline observer feeding them.

Every metric is labelled by ``connector`` (the connector's name). The pipeline reports per
batch (``ConnectorMetrics`` is its observer); per-object work is done by C-level iteration
(``Counter``, ``sorted``, ``bisect``), never by a Python call per record.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from operator import attrgetter

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from connector.backends import Outcome
from connector.dlq import DeadLetter
from connector.observer import PipelineObserver
from connector.records import MappedObject, TopicPartition

PREFIX = "data_ingest"
STATES = ["RUNNING", "PAUSED", "STOPPED", "FAILED", "UNASSIGNED", "RESTARTING"]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)

_topic = attrgetter("record.topic")
_type = attrgetter("object_type.name")
_timestamp = attrgetter("record.timestamp_ms")
_value = attrgetter("value")


def record_tally(
    objects: Sequence[MappedObject], outcomes: Sequence[Outcome]
) -> Tally[tuple[str, str, str]]:
    """Records per (topic, type, outcome), counted in C."""
    return Tally(
        zip(map(_topic, objects), map(_type, objects), map(_value, outcomes), strict=False)
    )


def dead_letter_tally(letters: Sequence[DeadLetter]) -> Tally[tuple[str, str, str]]:
    """Dead letters per (original topic, type or "", error kind)."""
    return Tally(
        (letter.record.topic, letter.object_type or "", letter.error.kind.value)
        for letter in letters
    )


def latency_buckets(
    stamps_ms: Iterable[int | None], now_ms: float
) -> tuple[list[int], float] | None:
    """The end-to-end latency histogram's cumulative bucket counts (the last one +Inf) and
    sum in seconds for records stamped ``stamps_ms``, at ``now_ms``; None when no record has a
    timestamp. One ``bisect`` per bucket over the sorted stamps, no call per record."""
    ordered = sorted(filter(None, stamps_ms))
    if not ordered:
        return None
    n = len(ordered)
    # latency <= bound  <=>  stamp >= now - bound
    counts = [n - bisect_left(ordered, now_ms - bound * 1000) for bound in LATENCY_BUCKETS]
    counts.append(n)
    return counts, (now_ms * n - sum(ordered)) / 1000


def package_version() -> str:
    try:
        return version("data-ingest-connector")
    except PackageNotFoundError:
        return "unknown"


class _BulkHistogram(Collector):
    """A histogram per connector filled a whole batch at a time.

    prometheus-client's Histogram takes one observation per call; end-to-end latency has
    one per record, so the bucket counts of a batch are computed from its sorted record
    timestamps with one ``bisect`` per bucket instead.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._doc = name, documentation
        self._bounds = list(LATENCY_BUCKETS)
        self._data: dict[str, tuple[list[int], list[float]]] = {}  # counts per bucket, [sum]

    def observe_timestamps(
        self, connector: str, stamps_ms: Iterable[int | None], now_ms: float
    ) -> None:
        """Add one observation ``now - stamp`` per timestamp (records without one are left out)."""
        added = latency_buckets(stamps_ms, now_ms)
        if added is not None:
            self.add(connector, *added)

    def add(self, connector: str, counts: Sequence[int], seconds: float) -> None:
        """Add cumulative bucket ``counts`` (the last one +Inf) and their sum ``seconds``."""
        mine, total = self._data.setdefault(connector, ([0] * (len(self._bounds) + 1), [0.0]))
        for i, n in enumerate(counts):
            mine[i] += n
        total[0] += seconds

    def remove(self, connector: str) -> None:
        self._data.pop(connector, None)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=["connector"])
        for connector, (counts, total) in sorted(self._data.items()):
            buckets = [
                (repr(float(b)), float(c)) for b, c in zip(self._bounds, counts, strict=False)
            ]
            buckets.append(("+Inf", float(counts[-1])))
            family.add_metric([connector], buckets, total[0])
        yield family

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=["connector"])


class Metrics:
    """The process's metrics registry; one ``ConnectorMetrics`` per hosted connector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.records = Counter(
            f"{PREFIX}_records",
            "Records handled, by connector, topic, object type and backend outcome",
            ["connector", "topic", "type", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Records sent to the dead-letter topic and acknowledged by the broker, by "
            "connector, original topic, object type (empty when unknown) and error kind",
            ["connector", "topic", "type", "kind"],
            registry=r,
        )
        self.lag = Gauge(
            f"{PREFIX}_consumer_lag",
            "Records not yet committed per partition: high watermark minus committed offset",
            ["connector", "topic", "partition"],
            registry=r,
        )
        self.end_to_end = _BulkHistogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "Record timestamp to backend acknowledgement",
        )
        r.register(self.end_to_end)
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size_records",
            "Objects per backend write",
            ["connector"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.write_latency = Histogram(
            f"{PREFIX}_backend_write_seconds",
            "Duration of one successful backend write (one batch)",
            ["connector"],
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}_retries",
            "Transient failures retried with backoff, by operation",
            ["connector", "operation"],
            registry=r,
        )
        self.commit_latency = Histogram(
            f"{PREFIX}_commit_seconds",
            "Duration of successful offset commits",
            ["connector"],
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.commit_failures = Counter(
            f"{PREFIX}_commit_failures",
            "Offset commits that failed (retried at the next interval)",
            ["connector"],
            registry=r,
        )
        self.paused = Gauge(
            f"{PREFIX}_paused_partitions",
            "Assigned partitions paused (backpressure or a paused connector)",
            ["connector"],
            registry=r,
        )
        self.connector_state = Enum(
            f"{PREFIX}_connector_state",
            "The connector's state, as GET /connectors/{name}/status reports it",
            ["connector"],
            states=STATES,
            registry=r,
        )
        self.task_state = Enum(
            f"{PREFIX}_task_state",
            "The state of this worker's task of the connector",
            ["connector", "task"],
            states=STATES,
            registry=r,
        )
        Info(f"{PREFIX}_build", "Version of the connector", registry=r).info(
            {"version": package_version(), "python": platform.python_version()}
        )

    def connector(self, name: str) -> ConnectorMetrics:
        return ConnectorMetrics(self, name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ConnectorMetrics(PipelineObserver):
    """The metrics of one connector on this worker; the pipeline's observer."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._m = metrics
        self.name = name
        self._records: dict[tuple[str, str, str], Counter] = {}
        self._lag_labels: set[tuple[str, str]] = set()
        self._batch = metrics.batch_size.labels(name)
        self._write = metrics.write_latency.labels(name)
        self._commit = metrics.commit_latency.labels(name)
        self._commit_failures = metrics.commit_failures.labels(name)
        metrics.connector_state.labels(name).state("UNASSIGNED")

    # --- PipelineObserver ---------------------------------------------------------------

    def acknowledged(self, objects: Sequence[MappedObject], outcomes: Sequence[Outcome]) -> None:
        self.count_records(record_tally(objects, outcomes).items())
        self.observe_timestamps(map(_timestamp, objects), time.time() * 1000)

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        self.count_dead_letters(dead_letter_tally(letters).items())

    # --- the same, from a tally (also what a task in a child process reports) ------------

    def count_records(self, tally: Iterable[tuple[tuple[str, str, str], int]]) -> None:
        """Add ``n`` records per (topic, type, outcome)."""
        for key, n in tally:
            child = self._records.get(key)
            if child is None:
                child = self._records[key] = self._m.records.labels(self.name, *key)
            child.inc(n)

    def observe_timestamps(self, stamps_ms: Iterable[int | None], now_ms: float) -> None:
        self._m.end_to_end.observe_timestamps(self.name, stamps_ms, now_ms)

    def add_latencies(self, counts: Sequence[int], seconds: float) -> None:
        """Cumulative bucket counts and sum from ``latency_buckets`` (a child task's)."""
        self._m.end_to_end.add(self.name, counts, seconds)

    def count_dead_letters(self, tally: Iterable[tuple[tuple[str, str, str], int]]) -> None:
        """Add ``n`` dead letters per (topic, type, error kind)."""
        for labels, n in tally:
            self._m.dead_letters.labels(self.name, *labels).inc(n)

    def batch_written(self, size: int, seconds: float) -> None:
        self._batch.observe(size)
        self._write.observe(seconds)

    def retried(self, operation: str) -> None:
        self._m.retries.labels(self.name, operation).inc()

    def committed(self, seconds: float, ok: bool) -> None:
        if ok:
            self._commit.observe(seconds)
        else:
            self._commit_failures.inc()

    # --- set by the worker --------------------------------------------------------------

    def set_lag(self, lag: dict[TopicPartition, int]) -> None:
        """Replace the lag of every partition (partitions no longer assigned disappear)."""
        labels = {(tp.topic, str(tp.partition)) for tp in lag}
        for gone in self._lag_labels - labels:
            self._m.lag.remove(self.name, *gone)
        for tp, value in lag.items():
            self._m.lag.labels(self.name, tp.topic, str(tp.partition)).set(value)
        self._lag_labels = labels

    def watch_paused(self, count: Callable[[], int]) -> None:
        self._m.paused.labels(self.name).set_function(count)

    def set_state(self, connector: str, tasks: dict[int, str]) -> None:
        self._m.connector_state.labels(self.name).state(connector)
        for task, state in tasks.items():
            self._m.task_state.labels(self.name, str(task)).state(state)

    def remove(self) -> None:
        """Drop every series of this connector (it was deleted)."""
        m = self._m
        for metric in (
            m.records,
            m.dead_letters,
            m.lag,
            m.batch_size,
            m.write_latency,
            m.retries,
            m.commit_latency,
            m.commit_failures,
            m.paused,
            m.connector_state,
            m.task_state,
        ):
            metric.remove_by_labels({"connector": self.name})
        m.end_to_end.remove(self.name)
        self._records.clear()
        self._lag_labels.clear()
