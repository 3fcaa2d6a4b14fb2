"""The pipeline process collects cyclic garbage less often and never walks start-up objects."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from connector.gc_tuning import GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_the_young_generation_waits_longer() -> None:
    _gen0, gen1, gen2 = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == (GEN0_THRESHOLD, gen1, gen2)


@pytest.mark.usefixtures("restored_gc")
def test_cyclic_garbage_is_still_collected_without_an_explicit_collect() -> None:
    tune_gc()

    class Node:
        other: object

    first, second = Node(), Node()
    first.other, second.other = second, first
    alive = weakref.ref(first)
    del first, second
    assert alive() is not None  # a cycle: reference counting alone cannot free it
    keep = [[] for _ in range(2 * GEN0_THRESHOLD)]  # allocations trigger a young collection
    assert alive() is None
    assert len(keep) == 2 * GEN0_THRESHOLD
