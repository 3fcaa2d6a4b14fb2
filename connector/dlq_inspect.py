"""``data-ingest dlq inspect``: what is in the dead-letter topic, counted from its headers."""

from __future__ import annotations

import time
from collections import Counter

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as CkTopicPartition

from connector.config import KafkaConfig
from connector.dlq import HEADER_KIND, HEADER_MESSAGE, HEADER_OBJECT_TYPE, HEADER_TOPIC
from connector.dlq_replay import end_offsets
from connector.errors import ConnectorError
from connector.sources.confluent import admin_settings

READ_TIMEOUT_S = 120.0


def _text(value: bytes | str | None) -> str:
    if value is None:
        return "-"
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def inspect(kafka: KafkaConfig, topic: str, first: int) -> list[str]:
    """Counts by error kind, original topic and object type, then the first ``first``
    errors, as lines to print. Reads the topic from its start to its current end."""
    ends = end_offsets(kafka, topic)
    settings = admin_settings(kafka)
    settings.update({"group.id": "data-ingest-dlq-inspect", "enable.auto.commit": False})
    consumer = Consumer(settings)
    kinds: Counter[str] = Counter()
    topics: Counter[str] = Counter()
    types: Counter[str] = Counter()
    examples: list[str] = []
    total = 0
    try:
        consumer.assign([CkTopicPartition(topic, p, 0) for p in ends])
        left = {p for p, end in ends.items() if end > 0}
        position = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while left:
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"reading the dead-letter topic {topic!r} took over {READ_TIMEOUT_S:.0f} s"
                )
            for msg in consumer.consume(1000, 1.0):
                partition, offset = msg.partition(), msg.offset()
                if msg.error() is not None or partition is None or offset is None:
                    continue
                position[partition] = offset + 1
                if position[partition] >= ends[partition]:
                    left.discard(partition)
                if offset >= ends[partition]:
                    continue
                total += 1
                headers = dict(msg.headers() or [])
                kinds[_text(headers.get(HEADER_KIND))] += 1
                topics[_text(headers.get(HEADER_TOPIC))] += 1
                types[_text(headers.get(HEADER_OBJECT_TYPE))] += 1
                if len(examples) < first:
                    examples.append(
                        f"  [{partition}] offset {offset}: {_text(headers.get(HEADER_MESSAGE))}"
                    )
    finally:
        consumer.close()
    lines = [f"dead-letter topic {topic!r}: {total} records"]
    for title, counts in (
        ("error kind", kinds),
        ("original topic", topics),
        ("object type", types),
    ):
        lines.append(f"by {title}:")
        lines.extend(f"  {name}: {count}" for name, count in counts.most_common())
    if examples:
        lines.append(f"first {len(examples)} errors:")
        lines.extend(examples)
    return lines
