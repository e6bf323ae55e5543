"""The worker's and replay's collector settings (churnguard/gc_policy.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from churnguard import gc_policy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_long_lived_objects_are_frozen_and_collections_are_rarer() -> None:
    gc.unfreeze()
    gc_policy.tune_for_throughput()
    assert gc.get_freeze_count() > 0  # the modules, the app: out of every collection's walk
    assert gc.get_threshold() == (gc_policy.YOUNG_THRESHOLD, *gc_policy.OLDER_THRESHOLDS)


@pytest.mark.usefixtures("restored_gc")
def test_cyclic_garbage_is_still_collected_by_itself() -> None:
    gc_policy.tune_for_throughput()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    kept: list[list[int]] = [[] for _ in range(2 * gc_policy.YOUNG_THRESHOLD)]  # allocations
    assert gone() is None
    assert len(kept) == 2 * gc_policy.YOUNG_THRESHOLD
