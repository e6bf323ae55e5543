"""The two clocks behind one interface. The worker reads the wall clock (its ticks fire what
is due); replay reads event time, which advances with the events (and to `--until`). Tests
inject a ManualClock into a worker to make time pass without waiting."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    def now(self) -> float:
        return time.time()


class EventClock:
    """Event time: never goes back."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, moment: float) -> None:
        self._now = max(self._now, moment)


class ManualClock(EventClock):
    """A clock a test moves by hand (same behaviour as event time)."""
