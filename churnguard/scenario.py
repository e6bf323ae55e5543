"""The demo's built-in scenario: ~20 customers over 60 simulated days in the combined-topic
format, with a customer for every built-in rule. Deterministic for a given start day."""

from __future__ import annotations

import random
from typing import Any

from churnguard.core.clock import DAY, HOUR, rfc3339

DAYS = 60


class _Builder:
    def __init__(self, start: float) -> None:
        self.start = start
        self.events: list[dict[str, Any]] = []
        self.counter = 0

    def add(self, kind: str, customer: str, day: float, **fields: Any) -> dict[str, Any]:
        self.counter += 1
        event = {
            "type": kind,
            "event_id": f"demo-{self.counter:05d}",
            "customer_id": customer,
            "occurred_at": rfc3339(self.start + day * DAY),
            **fields,
        }
        self.events.append(event)
        return event

    def date_in(self, day: float) -> str:
        """The calendar date (YYYY-MM-DD, UTC) `day` days into the scenario."""
        return rfc3339(self.start + day * DAY)[:10]

    def profile(self, customer: str, day: float = 0, **fields: Any) -> None:
        self.add("profile", customer, day, email=f"{customer}@example.com", **fields)

    def purchase(self, customer: str, day: float, amount: float) -> None:
        self.add("purchase", customer, day, order_id=f"o-{self.counter + 1}",
                 amount=f"{amount:.2f}", currency="EUR")

    def logins(self, customer: str, days: list[float]) -> None:
        for day in days:
            self.add("login", customer, day, channel="app")

    def ticket(self, customer: str, day: float, ticket: str, status: str, **fields: Any) -> None:
        self.add("ticket", customer, day, ticket_id=ticket, status=status, **fields)


def demo_events(start: float) -> list[dict[str, Any]]:
    """Events between `start` and `start + 60 days`, sorted by occurred_at."""
    rng = random.Random(7)
    b = _Builder(start)

    # Two big spenders cross the VIP threshold; c02 later goes quiet and gets the VIP win-back.
    b.profile("c01", account_manager="am-alice")
    b.profile("c02", account_manager="am-bob")
    for day, amount in [(1, 3200), (9, 2900), (18, 4100)]:
        b.purchase("c01", day, amount)
    b.logins("c01", [2, 5, 10, 15, 20, 24, 28])
    for day, amount in [(2, 6000), (6, 4500)]:
        b.purchase("c02", day, amount)
    b.logins("c02", [3, 4, 5, 6, 7, 8, 9, 10])
    b.logins("c02", [55])  # back after seven weeks of silence: the score has fallen below 60

    # Support journeys: acknowledgement on open (SLA by priority), survey on close.
    for customer, priority, opened, closed, rating in [
        ("c03", "urgent", 12.0, 12.1, 5),
        ("c04", "high", 20.0, 21.0, 2),
        ("c05", "low", 30.0, 36.0, None),
        ("c06", "normal", 40.0, 41.5, 4),
    ]:
        b.profile(customer, signup_date="2024-03-01")
        b.purchase(customer, opened - 3, 80 + rng.randint(0, 200))
        b.ticket(customer, opened, f"t-{customer}", "opened", priority=priority)
        extra = {} if rating is None else {"satisfaction": rating}
        b.ticket(customer, closed, f"t-{customer}", "closed", **extra)

    # Healthy customers who stop: their next event finds the score below 60 (win-back).
    for customer in ("c07", "c08", "c09"):
        b.profile(customer, account_manager="am-carol" if customer == "c07" else None)
        b.purchase(customer, 3, 120 + rng.randint(0, 100))
        b.logins(customer, [3 + i * 1.5 for i in range(9)])
        b.logins(customer, [52 + rng.random()])

    # Time-driven plays: a birthday and a signup anniversary inside the 60 days (coupons at
    # 09:00 UTC), and an urgent ticket nobody closes (SLA breach after 4 h).
    birthday = b.date_in(40)
    b.profile("c21", birthday=f"1985-{birthday[5:]}")
    b.purchase("c21", 2, 60)
    b.profile("c22", signup_date=f"{int(b.date_in(25)[:4]) - 2}-{b.date_in(25)[5:]}")
    b.logins("c22", [1, 12, 24, 36, 48])
    b.profile("c23", account_manager="am-dave")
    b.purchase("c23", 45, 90)
    b.ticket("c23", 50, "t-c23", "opened", priority="urgent")

    # Regular customers with varied activity (segments, score records; few or no actions).
    for number in range(10, 21):
        customer = f"c{number:02d}"
        b.profile(customer, birthday=f"19{70 + number}-0{1 + number % 9}-1{number % 9}")
        for _ in range(rng.randint(1, 6)):
            b.purchase(customer, rng.uniform(0, DAYS - 1), rng.uniform(15, 400))
        b.logins(customer, sorted(rng.uniform(0, DAYS - 1) for _ in range(rng.randint(0, 8))))

    events = sorted(b.events, key=lambda e: (e["occurred_at"], e["event_id"]))
    # A redelivered event (same event_id) is counted once.
    events.append(dict(events[5]))
    return events


def bad_records() -> list[tuple[bytes, bytes]]:
    """(key, value) records the worker must dead-letter while it keeps going."""
    return [
        (b"c10", b'{"type": "purchase", "event_id": "bad-1", "customer_id": "c10"'),
        (b"c11", b'{"type": "purchase", "event_id": "bad-2", "customer_id": "c11", '
                 b'"occurred_at": "2026-01-01T00:00:00Z", "order_id": "x", "amount": -5, '
                 b'"currency": "EUR"}'),
        (b"c12", b'{"type": "refund", "event_id": "bad-3", "customer_id": "c12"}'),
    ]


DEMO_SPAN_S = DAYS * DAY + HOUR
