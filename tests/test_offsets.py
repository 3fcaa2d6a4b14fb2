"""The offset tracker: the committable position is always the first un-acked offset."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ConnectorError
from connector.offsets import OffsetTracker
from connector.records import TopicPartition

TP = TopicPartition("t", 0)


@st.composite
def fetched_and_ack_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Increasing offsets with gaps (compaction, markers) and an arbitrary ack order."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60))
    start = draw(st.integers(min_value=0, max_value=10**12))
    offsets = []
    current = start
    for gap in gaps:
        offsets.append(current)
        current += gap
    acked = draw(st.permutations(offsets))
    count = draw(st.integers(min_value=0, max_value=len(offsets)))
    return offsets, list(acked[:count])


@given(fetched_and_ack_order())
def test_committable_is_first_unacked(case: tuple[list[int], list[int]]) -> None:
    offsets, acks = case
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    for offset in offsets:
        assert tracker.fetched(TP, epoch, offset)
    done: set[int] = set()
    for offset in acks:
        assert tracker.ack(TP, epoch, offset)
        done.add(offset)
        unacked = [o for o in offsets if o not in done]
        expected = unacked[0] if unacked else offsets[-1] + 1
        position = tracker.committable().get(TP)
        if unacked and unacked[0] == offsets[0]:
            assert position is None  # nothing acked at the head yet: nothing to commit
        else:
            assert position == expected
    assert tracker.in_flight() == len(offsets) - len(done)


@given(fetched_and_ack_order(), st.data())
def test_commits_never_move_backwards_and_never_repeat(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    offsets, acks = case
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    for offset in offsets:
        tracker.fetched(TP, epoch, offset)
    last = -1
    for offset in acks:
        tracker.ack(TP, epoch, offset)
        if data.draw(st.booleans()):
            pending = tracker.committable()
            if TP in pending:
                assert pending[TP] > last
                last = pending[TP]
                tracker.mark_committed(pending)
            assert TP not in tracker.committable()


def test_stale_epoch_acks_are_ignored_after_reassignment() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    tracker.fetched(TP, old, 0)
    tracker.fetched(TP, old, 1)
    assert tracker.revoke(TP) is None  # nothing acked yet
    new = tracker.assign(TP)
    assert new != old
    tracker.fetched(TP, new, 0)
    assert not tracker.ack(TP, old, 0)  # ack of a record fetched before the revoke
    assert tracker.committable() == {}
    assert tracker.ack(TP, new, 0)
    assert tracker.committable() == {TP: 1}


def test_revoke_returns_uncommitted_progress_only() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    for offset in range(5):
        tracker.fetched(TP, epoch, offset)
    for offset in range(3):
        tracker.ack(TP, epoch, offset)
    tracker.mark_committed({TP: 3})
    assert tracker.revoke(TP) is None
    epoch = tracker.assign(TP)
    tracker.fetched(TP, epoch, 7)
    tracker.ack(TP, epoch, 7)
    assert tracker.revoke(TP) == 8
    assert tracker.epoch(TP) is None


def test_unassigned_partition_is_not_tracked() -> None:
    tracker = OffsetTracker()
    assert not tracker.fetched(TP, 1, 0)
    assert not tracker.ack(TP, 1, 0)
    assert tracker.epoch(TP) is None


def test_offsets_must_increase() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.fetched(TP, epoch, 5)
    with pytest.raises(ConnectorError, match=r"offset 5 of t\[0\] was fetched after offset 5"):
        tracker.fetched(TP, epoch, 5)


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    ea, eb = tracker.assign(a), tracker.assign(b)
    tracker.fetched(a, ea, 0)
    tracker.fetched(b, eb, 0)
    tracker.fetched(b, eb, 1)
    tracker.ack(b, eb, 1)
    assert tracker.committable() == {}
    tracker.ack(b, eb, 0)
    assert tracker.committable() == {b: 2}
    assert tracker.position(a) == 1
