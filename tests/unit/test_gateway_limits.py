"""The per-token rate limit and the idempotency window, on a hand-driven clock."""

from __future__ import annotations

from connectors.gateway.idempotency import RecentEvents
from connectors.gateway.rate_limit import EventRateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_per_name_charged_per_event() -> None:
    clock = Clock()
    limit = EventRateLimit(events_per_s=100, burst=1000, clock=clock)
    assert limit.take("shop", 1000) == 0  # a full burst at first
    assert limit.take("shop", 1) == 1
    assert limit.take("crm", 1000) == 0  # another token, another bucket
    clock.now += 2.5
    assert limit.take("shop", 300) == 1  # 250 back: 50 short at 100/s -> within 1 s
    assert limit.take("shop", 250) == 0  # a refusal charged nothing
    clock.now += 60
    assert limit.take("shop", 1001) == 1  # never more than the burst is held
    assert limit.take("shop", 1000) == 0


def test_retry_after_is_whole_seconds_until_enough_is_back() -> None:
    clock = Clock()
    limit = EventRateLimit(events_per_s=0.5, burst=10, clock=clock)
    assert limit.take("shop", 10) == 0
    assert limit.take("shop", 3) == 6
    clock.now += 6
    assert limit.take("shop", 3) == 0


def test_accepted_events_are_remembered_within_the_window() -> None:
    clock = Clock()
    recent = RecentEvents(window_s=60, max_ids=100, clock=clock)
    recent.remember([("c1", "e1"), ("c2", "e1")])
    assert ("c1", "e1") in recent
    assert ("c2", "e1") in recent
    assert ("c1", "e2") not in recent
    clock.now += 30
    recent.remember([("c1", "e2")])
    clock.now += 30  # e1's are 60 s old now: forgotten; e2 is 30 s old
    assert ("c1", "e1") not in recent
    assert ("c1", "e2") in recent
    assert len(recent) == 1


def test_the_window_holds_at_most_max_ids_the_oldest_forgotten_first() -> None:
    recent = RecentEvents(window_s=60, max_ids=3, clock=Clock())
    recent.remember([("c", f"e{i}") for i in range(5)])
    assert len(recent) == 3
    assert [("c", f"e{i}") in recent for i in range(5)] == [False, False, True, True, True]
    recent.remember([("c", "e2")])  # accepted again: the newest now
    recent.remember([("c", "e5")])
    assert [("c", f"e{i}") in recent for i in (2, 3, 4, 5)] == [True, False, True, True]


def test_a_window_of_nothing_remembers_nothing() -> None:
    for recent in (RecentEvents(0, 100, Clock()), RecentEvents(60, 0, Clock())):
        recent.remember([("c", "e")])
        assert ("c", "e") not in recent
