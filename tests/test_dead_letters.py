"""errors.tolerance and the dead-letter stage against in-memory fakes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector.backends import ObjectResult, Outcome
from connector.circuit_breaker import CircuitBreaker
from connector.config import DeadLetterQueueConfig, KafkaConfig, PipelineConfig
from connector.dlq import DeadLetter, DeadLetterProducer, context_headers
from connector.dlq_replay import restore
from connector.errors import ConfigError, Coordinates, RecordError, RecordErrorKind
from connector.mapping import coordinates_id
from connector.pipeline import Pipeline
from connector.records import MappedObject, SourceRecord, TopicPartition
from tests.fakes import TYPES, FakeBackend, FakeSource, measurement
from tests.test_pipeline import P0, P1, P2, config, logs

DLQ = {"dead_letter_queue": {"topic": "m-dlq"}}


class FakeDeadLetters(DeadLetterProducer):
    """Keeps dead letters in a list; ``refuse`` sends fail (unacknowledged) at first."""

    def __init__(self, refuse: int = 0, source: FakeSource | None = None) -> None:
        super().__init__(
            KafkaConfig(bootstrap_servers="unused:9092"),
            DeadLetterQueueConfig(topic="m-dlq"),
            "test-group",
            0,
        )
        self.sent: list[DeadLetter] = []
        self.refuse = refuse
        self.commits_while_refusing: list[dict[TopicPartition, int]] = []
        self.source = source

    async def ensure_topic(self) -> None:
        """The fake topic always exists."""

    async def send(self, letters: list[DeadLetter]) -> list[str | None]:
        if self.refuse:
            self.refuse -= 1
            if self.source is not None:
                self.commits_while_refusing.extend(self.source.commits)
            return ["NOT_ENOUGH_REPLICAS" for _ in letters]
        self.sent.extend(letters)
        return [None for _ in letters]

    async def close(self, timeout_s: float) -> None:
        """Nothing to flush."""


def tolerant(**overrides: Any) -> PipelineConfig:
    errors = {"tolerance": "all", **DLQ, **overrides.pop("errors", {})}
    return config(errors=errors, **overrides)


async def run(
    cfg: PipelineConfig, data: dict[TopicPartition, list[bytes | None]], **kwargs: Any
) -> tuple[Any, FakeSource, FakeBackend, FakeDeadLetters]:
    source, backend = FakeSource(data), kwargs.pop("backend", FakeBackend())
    letters = kwargs.pop("letters", None) or FakeDeadLetters(source=source)
    pipeline = Pipeline(cfg, TYPES, source, backend, until_caught_up=True, dead_letters=letters)
    return await pipeline.run(), source, backend, letters


async def test_bad_records_are_dead_lettered_and_the_rest_is_ingested() -> None:
    data = logs(20)
    data[P1][7] = b'{"_id": "bad", '
    data[P1][8] = None  # a tombstone on an asymmetric route
    data[P2][0] = b'{"_id": "x", "sensor": 5, "value": 1.0, "timestamp": 1}'
    summary, source, backend, letters = await run(tolerant(), data)
    assert summary.error is None
    assert (summary.records, summary.inserted, summary.dead_lettered) == (60, 57, 3)
    assert [(lt.record.coordinates, lt.error.kind) for lt in letters.sent] == [
        (Coordinates("m", 1, 7), RecordErrorKind.DECODE),
        (Coordinates("m", 1, 8), RecordErrorKind.RULE_VIOLATION),
        (Coordinates("m", 2, 0), RecordErrorKind.SCHEMA_MISMATCH),
    ]
    assert [lt.class_name for lt in letters.sent] == [
        "connector.formats.json_format.JsonDecoder",
        "connector.mapping.Mapper",
        "connector.formats.json_format.JsonDecoder",
    ]
    assert {lt.object_type for lt in letters.sent} == {"Measurement"}
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 20, P1: 20, P2: 20}
    assert len(backend.stored) == 57


async def test_tolerance_none_still_stops_at_the_first_bad_record() -> None:
    data = logs(20)
    data[P1][7] = b"{"
    summary, source, _, letters = await run(config(errors=DLQ), data)
    assert summary.error is not None and summary.error.startswith(
        "decode error at topic 'm' partition 1 offset 7"
    )
    assert letters.sent == []
    assert source.last_commit(P1) == 7


async def test_nothing_is_committed_past_a_dead_letter_until_the_broker_acked_it() -> None:
    data = logs(20)
    data[P0][3] = b"not json"
    source = FakeSource(data)
    letters = FakeDeadLetters(refuse=3, source=source)
    cfg = tolerant(retry={"initial_backoff_ms": 20, "max_backoff_ms": 20})
    pipeline = Pipeline(
        cfg, TYPES, source, FakeBackend(), until_caught_up=True, dead_letters=letters
    )
    summary = await pipeline.run()
    assert summary.error is None
    assert letters.refuse == 0 and len(letters.sent) == 1
    assert all(c.get(P0, 0) <= 3 for c in letters.commits_while_refusing)
    assert any(c.get(P0) == 3 for c in letters.commits_while_refusing)
    assert source.last_commit(P0) == 20


class Rejecting(FakeBackend):
    """Rejects every object whose value is 3.5 and reports a conflict for value 4.5."""

    async def ingest(self, objects: list[MappedObject]) -> list[ObjectResult]:
        results = await super().ingest(objects)
        for i, obj in enumerate(objects):
            if obj.document["value"] == 3.5:
                results[i] = ObjectResult(Outcome.REJECTED, "NUL character in text")
            elif obj.document["value"] == 4.5:
                results[i] = ObjectResult(Outcome.CONFLICT, "different document under _id")
        return results


async def test_backend_rejections_and_conflicts_go_to_the_dead_letter_topic() -> None:
    cfg = tolerant(errors={"conflict": "dlq"})
    summary, source, _, letters = await run(cfg, logs(10), backend=Rejecting())
    assert summary.error is None
    assert (summary.records, summary.dead_lettered, summary.rejected, summary.conflicts) == (
        30,
        6,
        3,
        3,
    )
    kinds = sorted((lt.record.partition, lt.record.offset, lt.error.kind) for lt in letters.sent)
    assert kinds == sorted(
        (p, offset, kind)
        for p in range(3)
        for offset, kind in ((7, RecordErrorKind.BACKEND_REJECTION), (9, RecordErrorKind.CONFLICT))
    )
    assert {lt.class_name for lt in letters.sent} == {f"{Rejecting.__module__}.Rejecting"}
    assert {tp: source.last_commit(tp) for tp in (P0, P1, P2)} == {P0: 10, P1: 10, P2: 10}


async def test_conflict_dlq_with_tolerance_none_still_stops_at_a_rejection() -> None:
    cfg = config(errors={"conflict": "dlq", **DLQ})
    summary, source, _, letters = await run(cfg, {P0: logs(10)[P0]}, backend=Rejecting())
    assert summary.error is not None and summary.error.startswith(
        "backend-rejection error at topic 'm' partition 0 offset 7: the backend rejected"
    )
    assert letters.sent == []
    assert source.last_commit(P0) == 7


async def test_circuit_breaker_stops_a_run_where_every_record_fails() -> None:
    data: dict[TopicPartition, list[bytes | None]] = {P0: [b"x"] * 5000}
    cfg = tolerant(errors={"failure_window": 100, "max_failure_ratio": 0.5})
    summary, source, _, letters = await run(cfg, data)
    assert summary.error is not None
    assert summary.error.startswith(
        "circuit breaker: 100 of the last 100 records failed (ratio 1.00, "
        "errors.max_failure_ratio 0.50 over errors.failure_window 100); the last one: "
        "decode error at topic 'm' partition 0 offset 99: value is not valid JSON"
    )
    assert len(letters.sent) < 100
    assert (source.last_commit(P0) or 0) < 100


def test_circuit_breaker_window_slides() -> None:
    breaker = CircuitBreaker(0.5, 10)
    breaker.count(6, 6)
    assert not breaker.tripped()  # the window is not full yet
    breaker.count(4)
    assert breaker.ratio == 0.6 and breaker.tripped()
    breaker.count(10)
    assert breaker.ratio == 0.0 and not breaker.tripped()


def test_context_headers_use_connect_names_and_encodings() -> None:
    record = SourceRecord("orders", 4, 1234, b"k", b"v", 17, 1, [("h", b"1")])
    error = RecordError(
        RecordErrorKind.SCHEMA_MISMATCH, record.coordinates, "field x: expected int"
    )
    letter = DeadLetter(record, error, "Order", "connector.formats.json_format.JsonDecoder")
    assert context_headers(letter, "orders-sink", 3) == [
        ("__connect.errors.topic", b"orders"),
        ("__connect.errors.partition", b"4"),
        ("__connect.errors.offset", b"1234"),
        ("__connect.errors.connector.name", b"orders-sink"),
        ("__connect.errors.task.id", b"3"),
        ("__connect.errors.stage", b"VALUE_CONVERTER"),
        ("__connect.errors.class.name", b"connector.formats.json_format.JsonDecoder"),
        ("__connect.errors.exception.class.name", b"connector.errors.RecordError"),
        (
            "__connect.errors.exception.message",
            b"schema-mismatch error at topic 'orders' partition 4 offset 1234: field x: "
            b"expected int",
        ),
        ("__data_ingest.error.kind", b"schema-mismatch"),
        ("__data_ingest.object.type", b"Order"),
    ]
    key_error = RecordError(RecordErrorKind.DECODE, record.coordinates, "bad key", in_key=True)
    headers = dict(context_headers(DeadLetter(record, key_error, None, "m.Mapper"), "c", 0))
    assert headers["__connect.errors.stage"] == b"KEY_CONVERTER"
    assert "__data_ingest.object.type" not in headers


def test_tolerance_all_needs_a_dead_letter_topic() -> None:
    with pytest.raises(ConfigError) as info:
        config(errors={"tolerance": "all"})
    assert str(info.value) == (
        "test.yaml: errors: tolerance: all needs a dead_letter_queue section with its topic "
        "(failing records go there, never nowhere)"
    )


async def test_measurement_fixture_is_valid() -> None:
    summary, _, _, letters = await run(tolerant(), {P0: [measurement(0, 1)]})
    assert summary.dead_lettered == 0 and letters.sent == []


def dead_letter_headers(topic: str, partition: int, offset: int) -> list[tuple[str, bytes | None]]:
    return [
        ("trace", b"t"),
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.stage", b"VALUE_CONVERTER"),
        ("__data_ingest.error.kind", b"decode"),
    ]


def test_restore_gives_the_original_coordinates_and_headers() -> None:
    letter = SourceRecord("m-dlq", 0, 5, b"k", b"v", 17, 3, dead_letter_headers("m", 2, 40))
    assert restore(letter) == SourceRecord("m", 2, 40, b"k", b"v", 17, 3, [("trace", b"t")])
    with pytest.raises(RecordError) as info:
        restore(SourceRecord("m-dlq", 0, 6, None, b"v", None, 3, [("trace", b"t")]))
    assert str(info.value).startswith(
        "rule-violation error at topic 'm-dlq' partition 0 offset 6: a dead letter without "
        "valid __connect.errors.topic"
    )


class DeadLetterTopic(FakeSource):
    """Serves the records of a dead-letter topic with their headers."""

    def __init__(self, records: list[tuple[bytes | None, list[tuple[str, bytes | None]]]]) -> None:
        super().__init__({DLQ_TP: [value for value, _ in records]})
        self.headers = [headers for _, headers in records]

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        records = await super().fetch(max_records, timeout_s)
        for record in records:
            record.headers = self.headers[record.offset]
        return records


DLQ_TP = TopicPartition("m-dlq", 0)


async def test_replay_maps_dead_letters_with_their_original_coordinates() -> None:
    without_id = {k: v for k, v in json.loads(measurement(0, 1)).items() if k != "_id"}
    records = [
        (json.dumps(without_id).encode(), dead_letter_headers("m", 1, 7)),
        (b"still broken", dead_letter_headers("m", 2, 3)),
        (measurement(0, 2), []),  # not a dead letter of ours: no coordinates
        (json.dumps(without_id).encode(), dead_letter_headers("m", 1, 7)),  # a duplicate
    ]
    source, backend, letters = DeadLetterTopic(records), FakeBackend(), FakeDeadLetters()
    pipeline = Pipeline(
        tolerant(), TYPES, source, backend, until_caught_up=True, dead_letters=letters, replay=True
    )
    summary = await pipeline.run()
    assert summary.error is None
    derived = str(coordinates_id(Coordinates("m", 1, 7)))
    assert list(backend.stored) == [("Measurement", derived)]
    assert (summary.inserted, summary.duplicates, summary.dead_lettered) == (1, 1, 2)
    assert [lt.record.coordinates for lt in letters.sent] == [
        Coordinates("m", 2, 3),
        Coordinates("m-dlq", 0, 2),
    ]
    assert letters.sent[0].record.headers == [("trace", b"t")]
    assert [lt.tracked.offset for lt in letters.sent] == [1, 2]
    assert source.last_commit(DLQ_TP) == 4


async def test_dead_letters_are_counted_in_the_metrics_once_acknowledged() -> None:
    from connector.metrics import Metrics
    from tests.test_metrics import samples

    metrics = Metrics()
    data = logs(10)
    data[P1][3] = b'{"_id": "bad", '
    data[P1][4] = None
    data[P2][5] = b"not json either"
    source = FakeSource(data)
    letters = FakeDeadLetters(refuse=1, source=source)  # the first send is not acknowledged
    pipeline = Pipeline(
        tolerant(),
        TYPES,
        source,
        FakeBackend(),
        until_caught_up=True,
        dead_letters=letters,
        observer=metrics.connector("c"),
    )
    summary = await pipeline.run()
    assert summary.error is None and summary.dead_lettered == 3
    counted = {
        dict(labels)["kind"]: n
        for (name, labels), n in samples(metrics).items()
        if name == "data_ingest_dead_letters_total"
    }
    assert counted == {"decode": 2, "rule-violation": 1}
    assert (
        "data_ingest_dead_letters_total",
        (("connector", "c"), ("kind", "decode"), ("topic", "m"), ("type", "Measurement")),
    ) in samples(metrics)
