"""The gateway's idempotency guard: recently accepted (customer_id, event_id) pairs, in this
process's memory, bounded in time and in count. An event id is unique per customer (the
contract), so the pair is the key. A repeat within the window is answered as a duplicate and
not produced again; beyond it (or on another gateway process) it is produced again, and the
worker applies it once all the same (its own per-customer de-duplication)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

EventKey = tuple[str, str]  # (customer_id, event_id)


class RecentEvents:
    def __init__(self, window_s: float, max_ids: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.max_ids = max_ids
        self._clock = clock
        # Insertion order is acceptance order: the oldest are first, expired from the front.
        self._accepted: OrderedDict[EventKey, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._accepted)

    def __contains__(self, key: EventKey) -> bool:
        self._expire(self._clock())
        return key in self._accepted

    def remember(self, keys: Iterable[EventKey]) -> None:
        if self.max_ids == 0 or self.window_s == 0:
            return
        now = self._clock()
        for key in keys:
            self._accepted[key] = now
            self._accepted.move_to_end(key)
        self._expire(now)

    def _expire(self, now: float) -> None:
        accepted = self._accepted
        while len(accepted) > self.max_ids:
            accepted.popitem(last=False)
        horizon = now - self.window_s
        while accepted and next(iter(accepted.values())) <= horizon:
            accepted.popitem(last=False)
