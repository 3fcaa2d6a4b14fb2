"""The offset tracker: the committable position is always the first un-acked offset."""

from __future__ import annotations

from itertools import pairwise

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


@st.composite
def chunks(draw: st.DrawFn, items: list[int]) -> list[list[int]]:
    """``items`` cut into consecutive non-empty pieces."""
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(len(items) - 1, 1)))))
    bounds = [0, *(c for c in cuts if c < len(items)), len(items)]
    return [items[a:b] for a, b in pairwise(bounds) if a < b]


@given(fetched_and_ack_order(), st.data())
def test_slices_of_fetches_and_acks_track_like_single_ones(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    offsets, acks = case
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    for piece in data.draw(chunks(offsets)):
        assert tracker.fetched_many(TP, epoch, piece) == (len(piece), None)
    assert tracker.position(TP) == offsets[-1] + 1
    done: set[int] = set()
    committed = None
    for piece in data.draw(chunks(acks)) if acks else []:
        assert tracker.ack_many(TP, epoch, piece)
        done.update(piece)
        unacked = [o for o in offsets if o not in done]
        expected = unacked[0] if unacked else offsets[-1] + 1
        if expected in (offsets[0], committed):
            expected = None  # nothing acked at the head yet, or already committed
        assert tracker.committable().get(TP) == expected
        assert tracker.in_flight() == len(unacked)
        if expected is not None and data.draw(st.booleans()):
            tracker.mark_committed({TP: expected})
            committed = expected
    assert not tracker.ack_many(TP, epoch + 1, offsets)  # a stale epoch changes nothing
    assert tracker.fetched_many(TP, epoch + 1, [offsets[-1] + 1]) == (0, None)
    assert tracker.in_flight() == len(offsets) - len(done)


@given(
    st.lists(st.integers(min_value=0, max_value=30), max_size=20),
    st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=20),
)
def test_fetched_many_stops_where_the_partition_goes_backwards(
    first: list[int], second: list[int]
) -> None:
    single, sliced = OffsetTracker(), OffsetTracker()
    e1, e2 = single.assign(TP), sliced.assign(TP)
    expected_error: str | None = None
    expected = 0
    for i, offset in enumerate(first + second):
        try:
            single.fetched(TP, e1, offset)
        except ConnectorError as exc:
            expected_error = str(exc)
            break
        if i >= len(first):
            expected += 1
    count, error = sliced.fetched_many(TP, e2, first)
    if error is not None:  # the first slice already went backwards: stop there, as a run does
        assert str(error) == expected_error
        assert count < len(first)
        return
    count, error = sliced.fetched_many(TP, e2, second)
    assert count == expected
    assert (None if error is None else str(error)) == expected_error
    assert sliced.position(TP) == single.position(TP)
    assert sliced.in_flight() == single.in_flight()
