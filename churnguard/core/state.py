"""Per-customer state: everything the score, the segment and the rules need, kept small
(buckets are pruned to their windows, id lists are bounded) because it is read and written
once per batch per customer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# Windows the buckets must answer: purchases in the last 90 days, logins in the last 30.
PURCHASE_WINDOW_DAYS = 90
LOGIN_WINDOW_DAYS = 30
CLOSED_TICKETS_KEPT = 32
# Open tickets tracked per customer (SLA timers, the service score): a new one beyond this
# evicts the oldest open one, so state size and per-event cost stay bounded.
MAX_OPEN_TICKETS = 100
# Spend is summed in ten-thousandths so thresholds are crossed exactly (no float drift).
SPEND_SCALE = 10_000


@dataclass(slots=True)
class OpenTicket:
    opened_at: float
    priority: str


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    # Event-time clock of this customer: the latest occurred_at (or timer time) applied.
    clock: float = 0.0
    first_purchase_at: float | None = None
    last_purchase_at: float | None = None
    # Latest login or purchase: the inactivity clock.
    last_active_at: float | None = None
    order_count: int = 0
    spend_e4: int = 0
    purchase_days: dict[int, int] = field(default_factory=dict)
    login_days: dict[int, int] = field(default_factory=dict)
    open_tickets: dict[str, OpenTicket] = field(default_factory=dict)
    closed_tickets: list[str] = field(default_factory=list)
    # (occurred_at, 1..5) in event-time order, the newest last.
    ratings: list[tuple[float, int]] = field(default_factory=list)
    birthday: str | None = None
    signup_date: str | None = None
    tier: str = "standard"
    account_manager: str | None = None
    tags: list[str] = field(default_factory=list)
    has_email: bool = False
    has_phone: bool = False
    # IANA zone from the profile: quiet hours follow it (else the pack's zone).
    timezone: str | None = None
    score: float | None = None
    components: tuple[float, float, float] | None = None
    segment: str | None = None
    rfm: tuple[int, int, int] | None = None
    fired: list[str] = field(default_factory=list)
    # Timer occurrences already fired (see core/triggers.py): rule or rule:ticket -> mark.
    marks: dict[str, str] = field(default_factory=dict)
    # The earliest time a timer (or the score's decay) is due: the due index's sort key.
    next_due: float | None = None
    armed: list[str] = field(default_factory=list)
    # Guards (core/guards.py), kept only for rules and caps that need them: rule id ->
    # (firings, last firing time); (time, action type, channel) of capped actions sent in the
    # longest cap window; (release time, action record) of actions deferred by quiet hours.
    rule_fires: dict[str, tuple[int, float]] = field(default_factory=dict)
    sent: list[tuple[float, str, str]] = field(default_factory=list)
    deferred: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    # Source topic -> last applied offset: a redelivered record changes nothing.
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def lifetime_spend(self) -> float:
        return self.spend_e4 / SPEND_SCALE

    def to_bytes(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CustomerState:
        data: dict[str, Any] = orjson.loads(raw)
        data["purchase_days"] = {int(k): v for k, v in data["purchase_days"].items()}
        data["login_days"] = {int(k): v for k, v in data["login_days"].items()}
        data["open_tickets"] = {k: OpenTicket(**v) for k, v in data["open_tickets"].items()}
        data["ratings"] = [tuple(r) for r in data["ratings"]]
        if data["components"] is not None:
            data["components"] = tuple(data["components"])
        if data["rfm"] is not None:
            data["rfm"] = tuple(data["rfm"])
        # Absent from states written before the guards existed: the defaults apply.
        if "rule_fires" in data:
            data["rule_fires"] = {k: tuple(v) for k, v in data["rule_fires"].items()}
            data["sent"] = [tuple(entry) for entry in data["sent"]]
            data["deferred"] = [tuple(entry) for entry in data["deferred"]]
        return cls(**data)


def count_in_window(buckets: dict[int, int], today: int, window_days: int) -> int:
    first = today - window_days + 1
    return sum(n for day, n in buckets.items() if first <= day <= today)


def prune(buckets: dict[int, int], today: int, window_days: int) -> None:
    """Drop buckets that fell out of the window (they can never count again)."""
    first = today - window_days + 1
    for day in [d for d in buckets if d < first]:
        del buckets[day]


def remember(items: list[str], item: str, keep: int) -> None:
    items.append(item)
    if len(items) > keep:
        del items[: len(items) - keep]
