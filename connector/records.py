"""The values that travel between the stages of the data flow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.errors import Coordinates

if TYPE_CHECKING:
    from connector.schemas import ObjectType


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """A partition of a topic, usable as a dict key (confluent's TopicPartition is mutable)."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(slots=True)
class SourceRecord:
    """One Kafka record as the Source hands it over, independent of the client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    epoch: int = 0  # assignment epoch of the partition when the record was fetched
    headers: list[tuple[str, bytes | None]] | None = None  # as produced, in order

    @property
    def coordinates(self) -> Coordinates:
        return Coordinates(self.topic, self.partition, self.offset)

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def size(self) -> int:
        return len(self.key or b"") + len(self.value or b"")


@dataclass(slots=True)
class MappedObject:
    """An object ready for the backend: its type, ``_id``, document, and Kafka origin.

    ``tombstone`` marks the deletion of a standard object (its document holds only ``_id``).
    ``fetched`` is the record as the Source handed it over when that is not ``record``: a
    replayed dead letter, whose offset is tracked and committed in the dead-letter topic
    while ``record`` carries its original coordinates.
    """

    object_type: ObjectType
    object_id: Any
    document: dict[str, Any]
    record: SourceRecord
    size: int = 0
    tombstone: bool = False
    fetched: SourceRecord | None = None

    @property
    def tracked(self) -> SourceRecord:
        """The record whose offset acknowledges this object."""
        return self.fetched or self.record
