"""The commit point of a partition (connectors/delivery/progress.py): it never passes an
offset still being delivered."""

from __future__ import annotations

import random

from connectors.delivery.progress import PartitionProgress


def _reading(*offsets: int) -> PartitionProgress:
    progress = PartitionProgress()
    for offset in offsets:
        progress.read(offset)
    return progress


def test_nothing_to_commit_before_anything_finished() -> None:
    progress = _reading(10, 11)
    assert progress.commit_point is None
    assert progress.uncommitted == 2
    assert PartitionProgress().commit_point is None
    assert PartitionProgress().uncommitted == 0


def test_in_order_finishes_advance_one_by_one() -> None:
    progress = _reading(5, 6, 7)
    progress.finish(5)
    assert progress.commit_point == 6
    assert progress.uncommitted == 2
    progress.finish(6)
    assert progress.commit_point == 7
    progress.finish(7)
    assert progress.commit_point == 8
    assert progress.uncommitted == 0


def test_a_later_finish_waits_behind_an_unfinished_offset() -> None:
    progress = _reading(0, 1, 2, 3)
    progress.finish(2)
    progress.finish(1)
    assert progress.commit_point is None
    assert progress.uncommitted == 4
    progress.finish(0)
    assert progress.commit_point == 3  # 0, 1, 2 contiguous; 3 still in flight
    assert progress.uncommitted == 1
    progress.finish(3)
    assert progress.commit_point == 4
    assert progress.uncommitted == 0


def test_gaps_in_offsets_are_fine() -> None:
    # Compacted topics and transaction markers leave holes: only offsets read count.
    progress = _reading(3, 8, 20)
    progress.finish(8)
    assert progress.commit_point is None
    progress.finish(3)
    assert progress.commit_point == 9
    progress.finish(20)
    assert progress.commit_point == 21


def test_commit_point_stays_when_more_is_read() -> None:
    progress = _reading(0)
    progress.finish(0)
    progress.read(1)
    progress.read(2)
    assert progress.commit_point == 1
    progress.finish(2)
    assert progress.commit_point == 1
    assert progress.uncommitted == 2


def test_any_finishing_order_commits_only_a_finished_prefix() -> None:
    rng = random.Random(11)
    for _ in range(50):
        offsets = list(range(100, 140))
        progress = _reading(*offsets)
        order = offsets[:]
        rng.shuffle(order)
        finished: set[int] = set()
        for offset in order:
            progress.finish(offset)
            finished.add(offset)
            point = progress.commit_point
            if point is not None:
                assert all(o in finished for o in range(100, point))
            # The commit point is as far as it may be: the first unfinished offset.
            first_open = next((o for o in offsets if o not in finished), 140)
            assert point == (first_open if first_open > 100 else None)
            assert progress.uncommitted == 140 - first_open
        assert progress.commit_point == 140
