"""Burrow-style partition status over a window of commit attempts."""

from __future__ import annotations

import pytest

from streams.partition_status import PartitionWindow


def _window(*commits: tuple[float, int | None, int], **kwargs) -> PartitionWindow:
    window = PartitionWindow(**kwargs)
    for at, offset, lag in commits:
        window.commit(at, offset, lag)
    return window


@pytest.mark.parametrize(("commits", "now", "lag", "expected"), [
    # Caught up now, or at some point of the window: OK.
    ([(0, 10, 5), (3, 20, 0), (6, 30, 4)], 7, 4, "OK"),
    ([(0, 10, 5), (3, 20, 5)], 4, 0, "OK"),
    # Moving, lag growing at every step: WARN.
    ([(0, 10, 5), (3, 20, 9), (6, 30, 15)], 7, 15, "WARN"),
    # Moving with a steady lag: OK.
    ([(0, 10, 5), (3, 20, 6), (6, 30, 6)], 7, 6, "OK"),
    # Attempts continue, offset stuck with lag, for longer than stop_after: STALL.
    ([(0, 10, 5), (10, 10, 8), (20, 10, 12), (31, 10, 15)], 32, 15, "STALL"),
    # Stuck but not for long yet: OK.
    ([(0, 10, 5), (3, 10, 8)], 4, 8, "OK"),
    # No attempt for longer than the window and stop_after, with lag: STOP.
    ([(0, 10, 5), (3, 20, 5)], 40, 9, "STOP"),
    # The offset went backwards within the window: REWIND (even when caught up).
    ([(0, 30, 5), (3, 10, 20), (6, 15, 0)], 7, 0, "REWIND"),
])
def test_status_rules(commits, now, lag, expected):
    assert _window(*commits, stop_after_s=30).status(now, lag) == expected


def test_no_commit_at_all_with_lag_is_stop_after_the_grace():
    window = PartitionWindow(stop_after_s=30)
    assert window.status(100, 5) == "STOP"
    window.commit(95, None, 5)  # an attempt before the group ever committed this partition
    assert window.status(100, 5) == "OK"


def test_the_window_forgets_a_rewind_once_it_slides_past():
    window = _window((0, 30, 5), (1, 10, 5), size=3)
    assert window.status(2, 5) == "REWIND"
    for at in (2, 3, 4):
        window.commit(at, 10 + at, 5)
    assert window.status(5, 5) == "OK"
