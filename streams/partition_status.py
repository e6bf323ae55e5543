"""Burrow-style evaluation of each owned input partition over a sliding window of committed
offsets: is the consumer keeping up, falling behind, stuck or stopped?

- OK: caught up at some point in the window (a lag of zero), or progressing normally.
- WARN: offsets move but the lag grew at every step of the window.
- STALL: commits continue but the committed offset does not move while there is lag.
- STOP: no commit for longer than the window spans (and at least `stop_after_s`) while
  there is lag.
- REWIND: the committed offset went backwards (a reset, or a restore of old offsets).

Burrow's rules, adapted: the worker's commit attempts are observed (a commit that finds
nothing new still counts as an attempt), so STALL and STOP can be told apart."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

Status = Literal["OK", "WARN", "STALL", "STOP", "REWIND"]
STATUSES: tuple[Status, ...] = ("OK", "WARN", "STALL", "STOP", "REWIND")


@dataclass(frozen=True, slots=True)
class Entry:
    at: float
    offset: int
    lag: int


@dataclass(slots=True)
class PartitionWindow:
    size: int = 10
    stop_after_s: float = 30.0
    entries: deque[Entry] = field(default_factory=deque)
    last_attempt: float | None = None

    def commit(self, at: float, offset: int | None, lag: int) -> None:
        """A commit attempt; `offset` the committed offset after it (None: none yet)."""
        self.last_attempt = at
        if offset is None:
            return
        self.entries.append(Entry(at, offset, lag))
        while len(self.entries) > self.size:
            self.entries.popleft()

    def status(self, now: float, lag: int) -> Status:
        entries = list(self.entries)
        steps = list(pairwise(entries))
        if any(b.offset < a.offset for a, b in steps):
            return "REWIND"
        if lag <= 0 or any(entry.lag == 0 for entry in entries):
            return "OK"
        span = entries[-1].at - entries[0].at if len(entries) >= 2 else 0.0
        if self.last_attempt is None or now - self.last_attempt > max(span, self.stop_after_s):
            return "STOP"
        if (len(entries) >= 2 and entries[0].offset == entries[-1].offset
                and now - entries[0].at >= self.stop_after_s):
            return "STALL"
        if len(steps) >= 2 and all(b.lag > a.lag and b.offset > a.offset for a, b in steps):
            return "WARN"
        return "OK"


class PartitionStatuses:
    """One window per (topic, partition); fed by the worker's commits and samples."""

    def __init__(self, *, size: int = 10, stop_after_s: float = 30.0) -> None:
        self.size = size
        self.stop_after_s = stop_after_s
        self._windows: dict[tuple[str, int], PartitionWindow] = {}

    def window(self, topic: str, partition: int) -> PartitionWindow:
        key = (topic, partition)
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = PartitionWindow(self.size, self.stop_after_s)
        return found

    def forget(self, keep: set[tuple[str, int]]) -> None:
        for key in [k for k in self._windows if k not in keep]:
            del self._windows[key]
