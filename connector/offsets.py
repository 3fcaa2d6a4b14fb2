"""Offset tracking: which offset of each partition may be committed.

A record's offset becomes committable only when it and every earlier record of the same
partition that this consumer fetched have been acked by the backend. The committable
position is Kafka's "next offset to read": the first un-acked offset, or one past the last
fetched offset when everything is acked. Offsets the consumer never saw (compacted away,
transaction markers) are skipped naturally because only fetched offsets are tracked.

Written by hand because no Kafka client library exposes this "contiguous ack" bookkeeping.
Thread-safe: rebalance callbacks may run on the client's thread.
"""

from __future__ import annotations

import operator
import threading
from dataclasses import dataclass, field
from itertools import islice

from connector.errors import ConnectorError
from connector.records import TopicPartition


@dataclass(slots=True)
class _PartitionState:
    epoch: int
    pending: list[int] = field(default_factory=list)  # fetched, in fetch order, from head on
    head: int = 0  # pending[:head] are acked (dropped from time to time)
    acked: set[int] = field(default_factory=set)  # acked but not yet at the head
    committable: int | None = None  # next offset to read, everything before is acked
    committed: int | None = None  # last offset handed to a successful commit
    last_fetched: int | None = None


class OffsetTracker:
    """Per-partition contiguous-ack tracking with assignment epochs.

    Each assignment of a partition gets a new epoch; acks carrying an older epoch (records
    fetched before a revoke) are ignored, so they can never move a later assignment's
    position.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TopicPartition, _PartitionState] = {}
        self._next_epoch = 1

    def assign(self, tp: TopicPartition) -> int:
        """Start tracking ``tp`` afresh; returns the epoch that its records must carry."""
        with self._lock:
            epoch = self._next_epoch
            self._next_epoch += 1
            self._parts[tp] = _PartitionState(epoch=epoch)
            return epoch

    def epoch(self, tp: TopicPartition) -> int | None:
        """The current epoch of ``tp``, or None when it is not assigned."""
        with self._lock:
            state = self._parts.get(tp)
            return state.epoch if state else None

    def revoke(self, tp: TopicPartition) -> int | None:
        """Stop tracking ``tp``; returns its committable offset not yet committed, if any."""
        with self._lock:
            state = self._parts.pop(tp, None)
            if state is None or state.committable is None:
                return None
            if state.committed is not None and state.committed >= state.committable:
                return None
            return state.committable

    def fetched(self, tp: TopicPartition, epoch: int, offset: int) -> bool:
        """Record that ``offset`` was handed to the pipeline; False if the epoch is stale."""
        count, error = self.fetched_many(tp, epoch, [offset])
        if error is not None:
            raise error
        return count == 1

    def fetched_many(
        self, tp: TopicPartition, epoch: int, offsets: list[int]
    ) -> tuple[int, ConnectorError | None]:
        """Record that ``offsets`` (of ``tp``, in fetch order) were handed to the pipeline.

        Returns how many leading offsets were recorded: 0 if the epoch is stale; fewer than
        all, with the error, where the partition went backwards.
        """
        with self._lock:
            state = self._parts.get(tp)
            if state is None or state.epoch != epoch or not offsets:
                return 0, None
            last = state.last_fetched
            count = len(offsets)
            if (last is not None and offsets[0] <= last) or not all(
                map(operator.lt, offsets, islice(offsets, 1, None))
            ):
                count = 0
                for offset in offsets:
                    if last is not None and offset <= last:
                        break
                    last = offset
                    count += 1
            if count:
                state.pending.extend(islice(offsets, count))
                state.last_fetched = offsets[count - 1]
            if count == len(offsets):
                return count, None
            return count, ConnectorError(
                f"offset {offsets[count]} of {tp} was fetched after offset {state.last_fetched}: "
                "the partition went backwards (log truncated after a leader change?); "
                "stopping without committing past the last acknowledged record"
            )

    def ack(self, tp: TopicPartition, epoch: int, offset: int) -> bool:
        """Mark ``offset`` as durably handled; False if the epoch is stale (ignored)."""
        return self.ack_many(tp, epoch, [offset])

    def ack_many(self, tp: TopicPartition, epoch: int, offsets: list[int]) -> bool:
        """Mark ``offsets`` of ``tp`` as durably handled; False if the epoch is stale."""
        with self._lock:
            state = self._parts.get(tp)
            if state is None or state.epoch != epoch:
                return False
            pending, head, acked = state.pending, state.head, state.acked
            end = head + len(offsets)
            if not acked and pending[head:end] == offsets:
                head = end  # the common case: acked in fetch order, from the head on
            else:
                acked.update(offsets)
                while head < len(pending) and pending[head] in acked:
                    acked.discard(pending[head])
                    head += 1
            if head != state.head:
                # The first un-acked fetched offset, or one past the last fetched one.
                state.committable = pending[head] if head < len(pending) else pending[-1] + 1
                if head * 2 >= len(pending):
                    del pending[:head]
                    head = 0
                state.head = head
            return True

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets that may be committed now and have not been committed yet."""
        with self._lock:
            return {
                tp: s.committable
                for tp, s in self._parts.items()
                if s.committable is not None
                and (s.committed is None or s.committable > s.committed)
            }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Remember what a successful commit stored, so it is not committed again."""
        with self._lock:
            for tp, offset in offsets.items():
                state = self._parts.get(tp)
                if state is not None and (state.committed is None or offset > state.committed):
                    state.committed = offset

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """What this member's own commits stored, per partition it has committed."""
        with self._lock:
            return {tp: s.committed for tp, s in self._parts.items() if s.committed is not None}

    def in_flight(self) -> int:
        """How many fetched records are not yet acked, over all partitions."""
        with self._lock:
            return sum(len(s.pending) - s.head - len(s.acked) for s in self._parts.values())

    def position(self, tp: TopicPartition) -> int | None:
        """One past the last fetched offset of ``tp``, or None if nothing was fetched."""
        with self._lock:
            state = self._parts.get(tp)
            if state is None or state.last_fetched is None:
                return None
            return state.last_fetched + 1
