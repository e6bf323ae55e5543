"""The two clocks behind one interface. The worker reads the wall clock (its ticks fire what
is due); replay reads event time, which advances with the events (and to `--until`). Tests
inject a ManualClock into a worker to make time pass without waiting.

`wall` says whether the clock's seconds pass as real ones: only then can the worker's tick
loop sleep until a due time (agents/fire_timers.py); a clock driven by hand, by events or by
the demo's file (60 days in seconds) gets a tick every interval instead."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    @property
    def wall(self) -> bool: ...

    def now(self) -> float: ...


class WallClock:
    wall = True

    def now(self) -> float:
        return time.time()


class EventClock:
    """Event time: never goes back."""

    wall = False

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, moment: float) -> None:
        self._now = max(self._now, moment)


class ManualClock(EventClock):
    """A clock a test moves by hand (same behaviour as event time)."""


class FileClock:
    """Reads the current time (epoch seconds, as text) from a file, so another process — the
    demo, which compresses 60 days into seconds, or a test — can drive a worker's clock.
    Never used in production (settings.clock_file is unset there)."""

    wall = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = -1
        self._now = 0.0

    def now(self) -> float:
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp != self._stamp:
                self._now = float(self.path.read_text().strip() or self._now)
                self._stamp = stamp
        except (OSError, ValueError):
            pass  # mid-write or not there yet: keep the last time read
        return self._now

    @staticmethod
    def set(path: Path, moment: float) -> None:
        """Atomically publish a new time (write then rename: readers never see half)."""
        partial = path.with_suffix(".tmp")
        partial.write_text(repr(moment))
        partial.replace(path)


def clock_for(clock_file: Path | None) -> Clock:
    return WallClock() if clock_file is None else FileClock(clock_file)
