"""The Source stage: where records come from.

``Source`` is the contract the pipeline depends on. Each Kafka client library gets one
implementation (``confluent.py`` on librdkafka, ``aiokafka.py`` on aiokafka); the pipeline
never imports a client library, so an engine fits without touching it.

Rules every engine keeps, because the delivery promise rests on them:

* Manual commits only, cooperative rebalancing where the client has it, and
  ``read_committed`` isolation (records of aborted transactions are never delivered).
* Each record is stamped with its partition's assignment epoch (``listener.epoch``) *when
  the client hands it over*, before any other await: a record fetched under one assignment
  can never be acked against a later one.
* On revoke, ``listener.on_revoked`` is awaited (it fences the revoked partitions and waits,
  bounded, for their in-flight batch) and the offsets it returns are committed before the
  partitions are handed over.
* No client call can block the event loop or another call forever: every blocking call
  has a bound, and ``close`` returns within its ``timeout_s`` whatever the group is doing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

from connector.records import SourceRecord, TopicPartition

if TYPE_CHECKING:
    from connector.config import KafkaConfig


class RebalanceListener(Protocol):
    """What the pipeline wants to hear about partition ownership."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Partitions newly owned by this consumer (each gets a new epoch)."""

    async def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions about to be given up: stop writing them, wait (bounded) for their
        in-flight batch, and return the acked offsets to commit before the hand-over."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Partitions already owned by someone else; nothing may be committed for them."""

    def epoch(self, tp: TopicPartition) -> int | None:
        """The current assignment epoch of ``tp``; None when it is not assigned."""


class Source(ABC):
    """A consumer-group member with manual commits and cooperative rebalancing."""

    @abstractmethod
    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        """Join the group and subscribe; '^'-prefixed entries are regular expressions."""

    @abstractmethod
    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Up to ``max_records`` records, in order within each partition, each stamped with
        its partition's epoch; records of partitions no longer assigned are left out.
        Empty when none arrived in time."""

    @abstractmethod
    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit synchronously ("next offset to read" per partition); raises on failure."""

    @abstractmethod
    async def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching from ``partitions`` while staying in the group."""

    @abstractmethod
    async def resume(self, partitions: list[TopicPartition]) -> None:
        """Fetch again from paused ``partitions``."""

    @abstractmethod
    async def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The consumer's own position (next offset it will fetch) per partition; None when
        it has none yet. Past transaction markers, unlike "last fetched offset + 1"."""

    @abstractmethod
    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(low, high) offsets per partition, asked of the broker."""

    async def known_high_watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The high watermark per partition as the client last learned it from a fetch,
        without a broker round trip; partitions it knows none for are left out. This
        default asks the broker."""
        return {tp: high for tp, (_low, high) in (await self.watermarks(partitions)).items()}

    @abstractmethod
    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition, None when there is none."""

    @abstractmethod
    async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        """Each topic's configuration as the broker reports it (e.g. ``cleanup.policy``)."""

    @abstractmethod
    async def delete_records(self, offsets: dict[TopicPartition, int]) -> None:
        """Kafka DeleteRecords: remove every record below ``offsets`` (release after sync)."""

    @abstractmethod
    async def check(self, timeout_s: float) -> list[str]:
        """Connectivity check for ``validate``: the names of the topics the broker lists."""

    @abstractmethod
    async def close(self, timeout_s: float) -> None:
        """Leave the group (revoking partitions, which commits) and release the client,
        within ``timeout_s`` whatever the group is doing; past it the client is abandoned."""


def create_source(config: KafkaConfig) -> Source:
    """The Source of the engine named by ``kafka.engine``."""
    if config.engine == "aiokafka":
        from connector.sources.aiokafka import AiokafkaSource

        return AiokafkaSource(config)
    from connector.sources.confluent import ConfluentSource

    return ConfluentSource(config)
