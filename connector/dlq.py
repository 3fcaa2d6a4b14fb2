"""The dead-letter stage: a failing record goes to the dead-letter topic, byte for byte.

The dead-letter record has the original key, value, headers and timestamp, followed by
Kafka Connect's context headers (the names and encodings of Connect's
``DeadLetterQueueReporter``: UTF-8 text, numbers in decimal) and two of ours, so that the
tools people already use on Connect's dead-letter topics read ours unchanged.

The producer is confluent-kafka's (librdkafka) for both Kafka engines: it is a dependency
of the package anyway (the Schema Registry client), its idempotent producer with
``acks=all`` retries inside the client without reordering or duplicating, and one produce
path means the rule "a dead-lettered offset is acked only after the broker acknowledged its
dead-letter record" is implemented and tested once rather than once per engine.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # not re-exported for type checkers

from connector.config import DeadLetterQueueConfig, KafkaConfig
from connector.errors import ConnectorError, RecordError, RecordErrorKind, RetryableError
from connector.records import SourceRecord
from connector.sources.confluent import admin_settings
from connector.sources.security import describe_endpoint
from connector.timeouts import within

log = logging.getLogger(__name__)

CONNECT_PREFIX = "__connect.errors."
HEADER_TOPIC = CONNECT_PREFIX + "topic"
HEADER_PARTITION = CONNECT_PREFIX + "partition"
HEADER_OFFSET = CONNECT_PREFIX + "offset"
HEADER_CONNECTOR = CONNECT_PREFIX + "connector.name"
HEADER_TASK = CONNECT_PREFIX + "task.id"
HEADER_STAGE = CONNECT_PREFIX + "stage"
HEADER_CLASS = CONNECT_PREFIX + "class.name"
HEADER_EXCEPTION = CONNECT_PREFIX + "exception.class.name"
HEADER_MESSAGE = CONNECT_PREFIX + "exception.message"
HEADER_KIND = "__data_ingest.error.kind"
HEADER_OBJECT_TYPE = "__data_ingest.object.type"

# Our stages on Kafka Connect's ``Stage`` names (documented in the README).
STAGES = {
    RecordErrorKind.DECODE: "VALUE_CONVERTER",
    RecordErrorKind.SCHEMA_MISMATCH: "VALUE_CONVERTER",
    RecordErrorKind.RULE_VIOLATION: "TRANSFORMATION",
    RecordErrorKind.BACKEND_REJECTION: "TASK_PUT",
    RecordErrorKind.CONFLICT: "TASK_PUT",
}

CALL_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 1_000_000_000  # librdkafka's upper bound


def connect_stage(error: RecordError) -> str:
    """Kafka Connect's name of the stage where ``error`` happened."""
    return "KEY_CONVERTER" if error.in_key else STAGES[error.kind]


@dataclass(slots=True)
class DeadLetter:
    """A record that failed, why, and where: what its dead-letter record is made of."""

    record: SourceRecord
    error: RecordError
    object_type: str | None  # None when the type could not be told (e.g. no writer schema)
    class_name: str  # the qualified name of the class that failed on it
    fetched: SourceRecord | None = None  # the replayed dead letter ``record`` came from

    @property
    def tracked(self) -> SourceRecord:
        """The record whose offset is acked once this letter is acknowledged."""
        return self.fetched or self.record


def context_headers(
    letter: DeadLetter, connector_name: str, task_id: int
) -> list[tuple[str, bytes]]:
    """Connect's context headers of ``letter``, then ours, as Connect encodes them."""
    record, error = letter.record, letter.error
    exception = type(error)
    headers = [
        (HEADER_TOPIC, record.topic.encode()),
        (HEADER_PARTITION, str(record.partition).encode()),
        (HEADER_OFFSET, str(record.offset).encode()),
        (HEADER_CONNECTOR, connector_name.encode()),
        (HEADER_TASK, str(task_id).encode()),
        (HEADER_STAGE, connect_stage(error).encode()),
        (HEADER_CLASS, letter.class_name.encode()),
        (HEADER_EXCEPTION, f"{exception.__module__}.{exception.__qualname__}".encode()),
        (HEADER_MESSAGE, str(error).encode()),
        (HEADER_KIND, str(error.kind).encode()),
    ]
    if letter.object_type is not None:
        headers.append((HEADER_OBJECT_TYPE, letter.object_type.encode()))
    return headers


def producer_settings(kafka: KafkaConfig, settings: DeadLetterQueueConfig) -> dict[str, Any]:
    """librdkafka producer settings: the consumer's connection and security, idempotent,
    ``acks=all``, and a bound on how long one produce may take before it is retried."""
    out = admin_settings(kafka)
    out.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "delivery.timeout.ms": settings.delivery_timeout_ms,
            "linger.ms": 5,
            # A consumed record may be as large as its topic allows; the dead-letter topic's
            # own max.message.bytes is what limits it, not the client.
            "message.max.bytes": MAX_MESSAGE_BYTES,
        }
    )
    return out


class DeadLetterProducer:
    """Produces dead letters and reports, per letter, whether the broker acknowledged it."""

    def __init__(
        self, kafka: KafkaConfig, settings: DeadLetterQueueConfig, connector_name: str, task_id: int
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self.topic = settings.topic
        self._connector_name = connector_name
        self._task_id = task_id
        self._producer: Producer | None = None

    def _client(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_settings(self._kafka, self._settings))
        return self._producer

    async def ensure_topic(self) -> None:
        """Create the dead-letter topic when it is missing and ``create`` allows it.

        Raises ``RetryableError`` while the broker is unreachable and ``ConnectorError``
        when the topic is missing and may not be created.
        """
        admin = AdminClient(admin_settings(self._kafka))
        try:
            metadata = await asyncio.to_thread(admin.list_topics, timeout=CALL_TIMEOUT_S)
        except KafkaException as exc:
            raise RetryableError(
                f"cannot list topics at {describe_endpoint(self._kafka)} to check the "
                f"dead-letter topic {self.topic!r}: {exc}"
            ) from exc
        if self.topic in metadata.topics:
            return
        if not self._settings.create:
            raise ConnectorError(
                f"errors.dead_letter_queue.topic: topic {self.topic!r} does not exist; create "
                "it, or set errors.dead_letter_queue.create: true"
            )
        new = NewTopic(
            self.topic,
            num_partitions=self._settings.partitions,
            replication_factor=self._settings.replication_factor,
        )
        future = admin.create_topics([new], request_timeout=CALL_TIMEOUT_S)[self.topic]
        try:
            await within(asyncio.wrap_future(future), CALL_TIMEOUT_S)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return  # another task created it meanwhile
            if error.retriable():
                raise RetryableError(
                    f"creating the dead-letter topic {self.topic!r}: {error.str()}"
                ) from exc
            raise ConnectorError(
                f"errors.dead_letter_queue: cannot create topic {self.topic!r}: "
                f"{error.str()}; create it by hand or fix partitions/replication_factor"
            ) from exc
        log.info("created the dead-letter topic %r", self.topic)

    async def send(self, letters: list[DeadLetter]) -> list[str | None]:
        """Produce ``letters``; per letter None once the broker acknowledged it, or why not.

        Returns only when every letter has a delivery report (librdkafka reports a failure
        at the latest after ``delivery_timeout_ms``).
        """
        producer = self._client()
        reports: list[str | None] = []
        pending = len(letters)

        def report(index: int) -> Any:
            def on_delivery(error: KafkaError | None, _message: Message) -> None:
                nonlocal pending
                reports[index] = None if error is None else error.str()
                pending -= 1
                if error is not None and error.fatal():
                    self._producer = None  # a fatal producer error: the next send starts over

            return on_delivery

        for index, letter in enumerate(letters):
            reports.append("not produced")
            record = letter.record
            headers: list[tuple[str, str | bytes | None]] = list(record.headers or ())
            if self._settings.context_headers:
                headers.extend(context_headers(letter, self._connector_name, self._task_id))
            extra: dict[str, Any] = {}
            if record.timestamp_ms is not None:
                extra["timestamp"] = record.timestamp_ms
            while True:
                try:
                    producer.produce(
                        self.topic,
                        value=record.value,
                        key=record.key,
                        headers=headers,
                        on_delivery=report(index),
                        **extra,
                    )
                    break
                except BufferError:  # the client's queue is full: let it drain
                    await asyncio.to_thread(producer.poll, 0.1)
                except KafkaException as exc:  # the client is in a failed state
                    reports[index] = str(exc)
                    pending -= 1
                    self._producer = None
                    break
        while pending:
            await asyncio.to_thread(producer.flush, 1.0)
        return reports

    async def close(self, timeout_s: float) -> None:
        """Deliver what is queued, within ``timeout_s``."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, timeout_s)
