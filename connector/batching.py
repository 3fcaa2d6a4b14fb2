"""The Batch stage: objects are grouped for one backend write.

A batch closes when it holds ``max_records`` objects, ``max_bytes`` of record payload, or
when its first object has waited ``max_wait_ms``: large batches for throughput, bounded
latency when traffic is thin.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import accumulate
from operator import attrgetter

from connector.config import BatchingConfig
from connector.records import MappedObject, TopicPartition


@dataclass(slots=True)
class Batch:
    """Objects bound for one ``Backend.ingest`` call."""

    objects: list[MappedObject] = field(default_factory=list)
    size: int = 0
    opened_at: float = 0.0

    def __len__(self) -> int:
        return len(self.objects)

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Remove the objects of ``partitions`` (revoked: they must not be written)."""
        kept = [o for o in self.objects if o.tracked.topic_partition not in partitions]
        if len(kept) != len(self.objects):
            self.objects = kept
            self.size = sum(o.size for o in kept)


_size = attrgetter("size")


class Batcher:
    """Accumulates objects and tells when the current batch must be handed over."""

    def __init__(self, config: BatchingConfig) -> None:
        self._max_records = config.max_records
        self._max_bytes = config.max_bytes
        self._max_wait_s = config.max_wait_ms / 1000
        self._now = time.monotonic
        self._current = Batch()

    def add_many(self, objects: list[MappedObject]) -> list[Batch]:
        """Add ``objects`` in order; returns the batches they filled.

        A batch closes at the object that brings it to ``max_records`` or ``max_bytes``.
        """
        closed: list[Batch] = []
        start = 0
        while start < len(objects):
            current = self._current
            if not current.objects:
                current.opened_at = self._now()
            room = self._max_records - len(current.objects)
            piece = objects[start : start + room]
            sizes = list(accumulate(map(_size, piece), initial=current.size))
            # The first object that brings the batch to max_bytes closes it.
            full = bisect_left(sizes, self._max_bytes, lo=1)
            if full < len(sizes):
                piece = piece[:full]
            current.objects.extend(piece)
            current.size = sizes[len(piece)]
            start += len(piece)
            if len(current.objects) >= self._max_records or current.size >= self._max_bytes:
                closed.append(self._take())
        return closed

    def due(self) -> bool:
        """True when the open batch has waited long enough to be handed over."""
        current = self._current
        return bool(current.objects) and self._now() - current.opened_at >= self._max_wait_s

    def time_left(self) -> float | None:
        """Seconds until the open batch is due, None when it is empty."""
        current = self._current
        if not current.objects:
            return None
        return max(0.0, self._max_wait_s - (self._now() - current.opened_at))

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Remove the objects of ``partitions`` from the open batch."""
        self._current.drop(partitions)

    def take(self) -> Batch | None:
        """Close and return the open batch, None when it is empty."""
        if not self._current.objects:
            return None
        return self._take()

    def _take(self) -> Batch:
        batch, self._current = self._current, Batch()
        return batch

    def __len__(self) -> int:
        return len(self._current.objects)
