"""Per-token rate limit: a token bucket per token name, charged one unit per event."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float


class EventRateLimit:
    def __init__(self, events_per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.events_per_s = events_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}  # one per configured token: bounded

    def take(self, name: str, events: int) -> int:
        """0 when `events` may pass now (and they are charged), else the whole seconds to
        wait before they would (the Retry-After); nothing is charged then."""
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(self.burst), now)
        bucket.level = min(float(self.burst), bucket.level + (now - bucket.at) * self.events_per_s)
        bucket.at = now
        if events <= bucket.level:
            bucket.level -= events
            return 0
        return max(1, math.ceil((events - bucket.level) / self.events_per_s))
