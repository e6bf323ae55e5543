"""The tick loop's wait (agents.fire_timers.seconds_to_next_tick): until the earliest pending
due, at least the floor and at most the interval after the last tick; and the due-index
helpers it reads dues with."""

from __future__ import annotations

import pytest

from agents.fire_timers import DUE_RESOLUTION_S, seconds_to_next_tick
from churnguard import due_index

NOW = 1_700_000_000.0
INTERVAL = 0.25
FLOOR = 0.02


def close(seconds: float) -> object:
    return pytest.approx(seconds, abs=1e-6)  # epoch seconds carry ~0.2 µs


def wait(earliest: float | None, since_tick: float = 0.0, *, interval: float = INTERVAL,
         floor: float = FLOOR) -> float:
    return seconds_to_next_tick(earliest, NOW, since_tick, interval=interval, floor=floor)


def test_a_due_within_the_interval_is_waited_for_exactly() -> None:
    assert wait(NOW + 0.1) == close(0.1 + DUE_RESOLUTION_S)
    # Asked again later (woken by a batch): the same moment, less what has passed.
    assert seconds_to_next_tick(NOW + 0.1, NOW + 0.04, 0.04, interval=INTERVAL,
                                floor=FLOOR) == close(0.06 + DUE_RESOLUTION_S)


def test_the_interval_bounds_the_wait() -> None:
    assert wait(NOW + 3600) == INTERVAL
    assert wait(None) == INTERVAL  # nothing pending known (or not the wall clock)
    assert wait(None, 0.1) == close(INTERVAL - 0.1)  # since the last tick ended
    assert wait(None, 1.0) < 0  # overdue: tick now


def test_a_due_already_past_is_retried_after_the_floor_not_at_once() -> None:
    """A due the watermark held back (the events applied are a little behind the clock)."""
    assert wait(NOW - 0.5) == FLOOR
    assert wait(NOW) == FLOOR
    assert wait(NOW - 0.5, 0.005) == close(FLOOR - 0.005)
    assert wait(NOW - 0.5, FLOOR) == 0


def test_a_floor_above_the_interval_gives_way_to_it() -> None:
    assert wait(NOW - 1, interval=0.01, floor=0.02) == 0.01
    assert wait(NOW + 1, interval=0.01, floor=0.02) == 0.01


def test_due_of_reads_an_entrys_millisecond() -> None:
    key = due_index.due_key(NOW + 1.2345, b"c1")
    assert due_index.due_of(key) == close(NOW + 1.234)
    assert due_index.customer_of(key) == b"c1"
    assert due_index.due_of(due_index.due_key(-5, b"c1")) == 0.0


def test_index_changes_counts_and_finds_the_first_added_entry() -> None:
    early, late, gone = (due_index.due_key(NOW + s, c)
                         for s, c in [(5, b"b"), (9, b"a"), (1, b"c")])
    writes: dict[bytes, bytes | None] = {b"a": b"{}", late: due_index.ENTRY, gone: None,
                                         early: due_index.ENTRY, b"b": b"{}"}
    assert due_index.index_changes(writes) == (1, early)
    assert due_index.entries_delta(writes) == 1
    assert due_index.index_changes({gone: None, b"c": b"{}"}) == (-1, None)
    assert due_index.index_changes({}) == (0, None)
