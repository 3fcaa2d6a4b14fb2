"""Source implemented with confluent-kafka (librdkafka) through its asyncio wrapper.

``confluent_kafka.aio.AIOConsumer`` runs the blocking client calls on worker threads and
runs rebalance callbacks as coroutines on our event loop; a commit made from inside
``on_revoke`` is re-entrant and therefore lands before the partition is handed over.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as CkTopicPartition
from confluent_kafka.aio import AIOConsumer

from connector.config import KafkaConfig
from connector.errors import ConnectorError
from connector.records import SourceRecord, TopicPartition
from connector.sources import RebalanceListener, Source

log = logging.getLogger(__name__)


def consumer_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings: the user's pass-through properties, then the ones we own."""
    settings: dict[str, Any] = dict(config.properties)
    settings.update(
        {
            "bootstrap.servers": config.bootstrap_servers,
            "group.id": config.group_id,
            "auto.offset.reset": config.auto_offset_reset,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    return settings


def _tp(tp: CkTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


class ConfluentSource(Source):
    """A consumer-group member backed by librdkafka."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._consumer: AIOConsumer | None = None
        self._listener: RebalanceListener | None = None

    def _client(self) -> AIOConsumer:
        if self._consumer is None:
            raise ConnectorError("the Kafka source is not started")
        return self._consumer

    async def _open(self) -> AIOConsumer:
        if self._consumer is None:
            settings = consumer_settings(self._config)
            settings["error_cb"] = self._on_error
            self._consumer = AIOConsumer(settings, max_workers=2)
        return self._consumer

    async def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("Kafka client fatal error: %s", error)
        else:
            log.warning("Kafka client: %s", error)

    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        consumer = await self._open()
        self._listener = listener
        await consumer.subscribe(
            subscriptions,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    async def _on_assign(self, _consumer: AIOConsumer, partitions: list[CkTopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        log.info("assigned: %s", ", ".join(map(str, tps)) or "(none)")
        assert self._listener is not None
        self._listener.on_assigned(tps)

    async def _on_revoke(self, consumer: AIOConsumer, partitions: list[CkTopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        log.info("revoked: %s", ", ".join(map(str, tps)) or "(none)")
        assert self._listener is not None
        offsets = self._listener.on_revoked(tps)
        if not offsets:
            return
        try:
            await consumer.commit(offsets=self._ck_offsets(offsets), asynchronous=False)
            log.info("committed on revoke: %s", _describe_offsets(offsets))
        except KafkaException as exc:
            # The records stay uncommitted and will be redelivered to the next owner; the
            # idempotent _id writes make that a duplicate, never a second copy.
            log.warning("commit on revoke failed (%s); records will be redelivered", exc)

    async def _on_lost(self, _consumer: AIOConsumer, partitions: list[CkTopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        log.warning("partitions lost: %s", ", ".join(map(str, tps)))
        assert self._listener is not None
        self._listener.on_lost(tps)

    @staticmethod
    def _ck_offsets(offsets: dict[TopicPartition, int]) -> list[CkTopicPartition]:
        return [CkTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]

    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        messages = await self._client().consume(num_messages=max_records, timeout=timeout_s)
        records: list[SourceRecord] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise ConnectorError(f"Kafka consumer failed: {error}")
                log.warning("Kafka consumer: %s", error)
                continue
            ts_type, ts = msg.timestamp()
            records.append(
                SourceRecord(
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                    key=msg.key(),
                    value=msg.value(),
                    timestamp_ms=ts if ts_type != 0 else None,
                )
            )
        return records

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        result = await self._client().commit(offsets=self._ck_offsets(offsets), asynchronous=False)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise KafkaException(failed[0].error)

    async def pause(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            await self._client().pause([CkTopicPartition(t.topic, t.partition) for t in partitions])

    async def resume(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            await self._client().resume(
                [CkTopicPartition(t.topic, t.partition) for t in partitions]
            )

    async def assignment(self) -> list[TopicPartition]:
        return [_tp(p) for p in await self._client().assignment()]

    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        consumer = self._client()
        out: dict[TopicPartition, tuple[int, int]] = {}
        for tp in partitions:
            low, high = await consumer.get_watermark_offsets(
                CkTopicPartition(tp.topic, tp.partition), timeout=10.0, cached=False
            )
            out[tp] = (low, high)
        return out

    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        result = await self._client().committed(
            [CkTopicPartition(t.topic, t.partition) for t in partitions], timeout=10.0
        )
        return {_tp(p): (p.offset if p.offset >= 0 else None) for p in result}

    async def check(self, timeout_s: float) -> list[str]:
        consumer = await self._open()
        metadata = await consumer.list_topics(timeout=timeout_s)
        return sorted(metadata.topics)

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.close()


def _describe_offsets(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp}@{off}" for tp, off in sorted(offsets.items(), key=lambda i: str(i[0])))
