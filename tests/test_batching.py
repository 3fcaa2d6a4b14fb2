"""The batcher: a batch closes at the object that brings it to max_records or max_bytes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from connector.batching import Batcher
from connector.config import BatchingConfig
from connector.records import MappedObject, SourceRecord


def objects(sizes: list[int]) -> list[MappedObject]:
    none: Any = None
    return [
        MappedObject(none, i, {}, SourceRecord("t", 0, i, None, b""), size)
        for i, size in enumerate(sizes)
    ]


@given(
    st.lists(st.integers(min_value=0, max_value=900), max_size=80),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1024, max_value=4000),
    st.lists(st.integers(min_value=1, max_value=30), max_size=10),
)
def test_add_many_closes_each_batch_at_the_object_that_fills_it(
    sizes: list[int], max_records: int, max_bytes: int, cuts: list[int]
) -> None:
    batcher = Batcher(BatchingConfig(max_records=max_records, max_bytes=max_bytes))
    items = objects(sizes)
    closed = []
    start = 0
    for cut in [*cuts, len(items)]:  # slices of any length, the last one takes the rest
        closed += batcher.add_many(items[start : start + cut])
        start = min(start + cut, len(items))
    rest = batcher.take()
    batches = [*closed, *([rest] if rest is not None else [])]
    assert [o for b in batches for o in b.objects] == items
    for batch in batches:
        assert batch.size == sum(o.size for o in batch.objects)
        before = batch.objects[:-1]  # without its last object the batch was not full yet
        assert len(before) < max_records and sum(o.size for o in before) < max_bytes
    for batch in closed:
        assert len(batch) == max_records or batch.size >= max_bytes
    assert rest is None or (len(rest) < max_records and rest.size < max_bytes)
    assert len(batcher) == 0
