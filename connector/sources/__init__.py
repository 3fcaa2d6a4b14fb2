"""The Source stage: where records come from.

``Source`` is the contract the pipeline depends on. Each Kafka client library gets one
implementation (confluent-kafka now, aiokafka later); the pipeline never imports a client
library, so a second engine fits without touching it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from connector.records import SourceRecord, TopicPartition


class RebalanceListener(Protocol):
    """What the pipeline wants to hear about partition ownership."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Partitions newly owned by this consumer."""

    def on_revoked(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions about to be given up; returns acked offsets to commit before that."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Partitions already owned by someone else; nothing may be committed for them."""


class Source(ABC):
    """A consumer-group member with manual commits and cooperative rebalancing."""

    @abstractmethod
    async def start(self, subscriptions: list[str], listener: RebalanceListener) -> None:
        """Join the group and subscribe; '^'-prefixed entries are regular expressions."""

    @abstractmethod
    async def fetch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Up to ``max_records`` records in partition order; empty when none arrived in time."""

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
    async def assignment(self) -> list[TopicPartition]:
        """Partitions currently owned."""

    @abstractmethod
    async def watermarks(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(low, high) offsets per partition, asked of the broker."""

    @abstractmethod
    async def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition, None when there is none."""

    @abstractmethod
    async def check(self, timeout_s: float) -> list[str]:
        """Connectivity check for ``validate``: the names of the topics the broker lists."""

    @abstractmethod
    async def close(self) -> None:
        """Leave the group (revoking partitions) and release the client."""
