"""Replay: dead letters go through the route of their original topic once the cause is fixed.

A dead letter is turned back into its original record (original topic, partition, offset
from Connect's headers; the original headers without the context headers), so derived
``_id``s and "latest offset wins" are what a first clean run would have given. Its offset in
the dead-letter topic is what the replay's own consumer group commits.

A replay reads the dead-letter topic up to the end offsets it had when the replay started:
a record that fails again goes back to the dead-letter topic (with ``errors.tolerance:
all``) after that end, and is left for the next replay instead of looping.
"""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as CkTopicPartition

from connector.config import KafkaConfig
from connector.dlq import CONNECT_PREFIX, HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from connector.errors import ConnectorError, RecordError, RecordErrorKind
from connector.records import SourceRecord, TopicPartition
from connector.sources import RebalanceListener, Source
from connector.sources.confluent import admin_settings

log = logging.getLogger(__name__)

OUR_PREFIX = "__data_ingest."
CALL_TIMEOUT_S = 30.0


def restore(dead_letter: SourceRecord) -> SourceRecord:
    """The original record of ``dead_letter``; a rule-violation ``RecordError`` when it has
    no context headers (not written by a dead-letter reporter with context headers)."""
    headers = dead_letter.headers or []
    found = dict(headers)
    try:
        topic = (found[HEADER_TOPIC] or b"").decode()
        partition = int(found[HEADER_PARTITION] or b"")
        offset = int(found[HEADER_OFFSET] or b"")
    except (KeyError, ValueError, UnicodeDecodeError):
        raise RecordError(
            RecordErrorKind.RULE_VIOLATION,
            dead_letter.coordinates,
            f"a dead letter without valid {HEADER_TOPIC}, {HEADER_PARTITION} and "
            f"{HEADER_OFFSET} headers cannot be replayed (were context headers disabled?)",
        ) from None
    original = [
        (name, value)
        for name, value in headers
        if not name.startswith(CONNECT_PREFIX) and not name.startswith(OUR_PREFIX)
    ]
    return SourceRecord(
        topic,
        partition,
        offset,
        dead_letter.key,
        dead_letter.value,
        dead_letter.timestamp_ms,
        dead_letter.epoch,
        original or None,
    )


def end_offsets(kafka: KafkaConfig, topic: str) -> dict[int, int]:
    """The high watermark of every partition of ``topic`` (blocking; run it on a thread)."""
    settings = admin_settings(kafka)
    settings["group.id"] = "data-ingest-dlq-ends"  # required by the client, never joined
    consumer = Consumer(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=CALL_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise ConnectorError(
                f"errors.dead_letter_queue.topic: topic {topic!r} does not exist; "
                "nothing to replay or inspect"
            )
        return {
            p: consumer.get_watermark_offsets(
                CkTopicPartition(topic, p), timeout=CALL_TIMEOUT_S, cached=False
            )[1]
            for p in sorted(found.partitions)
        }
    finally:
        consumer.close()


class ReplaySource(Source):
    """The dead-letter topic up to its end offsets at start, through another Source."""

    def __init__(self, inner: Source, kafka: KafkaConfig, topic: str) -> None:
        self._inner = inner
        self._kafka = kafka
        self._topic = topic
        self._ends: dict[int, int] = {}

    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        self._ends = await asyncio.to_thread(end_offsets, self._kafka, self._topic)
        log.info(
            "replaying %s up to offsets %s",
            self._topic,
            ", ".join(f"[{p}] {end}" for p, end in self._ends.items()),
        )
        await self._inner.start([self._topic], listener)

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        records = await self._inner.fetch(max_records, timeout_s)
        ends = self._ends
        return [r for r in records if r.offset < ends.get(r.partition, 0)]

    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        marks = await self._inner.watermarks(partitions)
        return {
            tp: (low, min(high, self._ends.get(tp.partition, 0)))
            for tp, (low, high) in marks.items()
        }

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self._inner.commit(offsets)

    async def pause(self, partitions: list[TopicPartition]) -> None:
        await self._inner.pause(partitions)

    async def resume(self, partitions: list[TopicPartition]) -> None:
        await self._inner.resume(partitions)

    async def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return await self._inner.position(partitions)

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        return await self._inner.committed(partitions)

    async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        return await self._inner.topic_configs(topics)

    async def delete_records(self, offsets: dict[TopicPartition, int]) -> None:
        """A replay never deletes from the dead-letter topic."""

    async def check(self, timeout_s: float) -> list[str]:
        return await self._inner.check(timeout_s)

    async def close(self, timeout_s: float) -> None:
        await self._inner.close(timeout_s)
