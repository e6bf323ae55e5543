"""Time-driven triggers: when each one is next due for a customer, as plain arithmetic over
the state. A fired occurrence is remembered in `state.marks` so it never fires twice."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as clock_time
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.specs import (
    AfterTrigger,
    AnniversaryTrigger,
    InactivityTrigger,
    TicketOverdueTrigger,
    TimerTrigger,
)
from churnguard.core.state import CustomerState


@dataclass(frozen=True, slots=True)
class Occurrence:
    due: float
    # Stable across replays: part of the action ids, and the mark that stops a second firing.
    key: str
    context: dict[str, Any] = field(default_factory=dict)

    # Written out, as Outcome's (core/processor.py): compiled, several per event.
    def __init__(self, due: float, key: str, context: dict[str, Any] | None = None) -> None:
        init = object.__setattr__
        init(self, "due", due)
        init(self, "key", key)
        init(self, "context", {} if context is None else context)


def pending(
    rule_id: str,
    trigger: TimerTrigger,
    state: CustomerState,
    *,
    sla_hours: Mapping[str, float],
    tz: ZoneInfo,
    until: float = math.inf,
) -> list[Occurrence]:
    """The occurrences of this timer that have not fired yet; of the per-ticket ones only
    those due by `until` (their contexts are built, so an event pays for what is due)."""
    marks = state.marks
    # Exact types, not isinstance (see earliest_due).
    if type(trigger) is AfterTrigger:
        if state.first_purchase_at is None or rule_id in marks:
            return []
        return [Occurrence(state.first_purchase_at + trigger.days * DAY, rule_id)]
    if type(trigger) is AnniversaryTrigger:
        text = getattr(state, trigger.date)
        if text is None:
            return []
        if rule_id not in marks:
            # A rule that came with a published pack after the date was set: its first
            # occurrence is the next one from the customer's clock, as for a new date.
            marks[rule_id] = str(_last_passed_year(
                date.fromisoformat(text), trigger, state.clock, tz))
        year = int(marks[rule_id]) + 1
        due = _anniversary_of(text, year, trigger.at, tz)
        return [Occurrence(due, f"{rule_id}:{year}", {"anniversary.year": year})]
    if type(trigger) is InactivityTrigger:
        if state.last_active_at is None:
            return []
        key = f"{rule_id}:{rfc3339(state.last_active_at)}"
        if marks.get(rule_id) == key:
            return []
        return [Occurrence(state.last_active_at + trigger.days * DAY, key,
                           {"inactivity.days": trigger.days})]
    assert type(trigger) is TicketOverdueTrigger
    return [
        Occurrence(
            ticket.opened_at + sla_hours[ticket.priority] * HOUR,
            ticket_mark(rule_id, ticket_id),
            {
                "ticket.ticket_id": ticket_id,
                "ticket.priority": ticket.priority,
                "ticket.opened_at": rfc3339(ticket.opened_at),
                "ticket.sla_hours": sla_hours[ticket.priority],
            },
        )
        for ticket_id, ticket in state.open_tickets.items()
        if ticket.opened_at + sla_hours[ticket.priority] * HOUR <= until
        and ticket_mark(rule_id, ticket_id) not in marks
    ]


def moved_by(trigger: TimerTrigger) -> frozenset[str]:
    """The event signals (processor.apply_event) that change this timer's inputs: only
    these can make it due at an event, everything due before having fired already."""
    # Exact types, not a match on classes (see earliest_due).
    if type(trigger) is AfterTrigger:
        return frozenset({"purchase"})  # a first, or an earlier (late) first purchase
    if type(trigger) is AnniversaryTrigger:
        return frozenset({"profile"})
    if type(trigger) is InactivityTrigger:
        return frozenset({"login", "purchase"})
    assert type(trigger) is TicketOverdueTrigger
    return frozenset({"ticket_opened"})  # a late one can be overdue already


def earliest_due(
    rule_id: str,
    trigger: TimerTrigger,
    state: CustomerState,
    *,
    sla_hours: Mapping[str, float],
    tz: ZoneInfo,
) -> float | None:
    """The due time of this timer's next unfired occurrence, without building occurrences:
    called after every event (state.next_due), so plain arithmetic."""
    # Dispatched on exact types (the trigger models have no subclasses): isinstance of a
    # model that is not one reads its __class__ through pydantic's attribute lookup.
    if type(trigger) is InactivityTrigger:
        if state.last_active_at is None:
            return None
        due = state.last_active_at + trigger.days * DAY
        # As pending, but the mark's key (a rendered time) is built only for a customer
        # that has a mark (one fired before).
        marked = state.marks.get(rule_id)
        if marked is None or marked != f"{rule_id}:{rfc3339(state.last_active_at)}":
            return due
        return None
    if type(trigger) is AfterTrigger:
        if state.first_purchase_at is None or rule_id in state.marks:
            return None
        return state.first_purchase_at + trigger.days * DAY
    if type(trigger) is AnniversaryTrigger:
        text = getattr(state, trigger.date)
        if text is None:
            return None
        year = state.marks.get(rule_id)
        if year is not None:  # else pending marks the year it starts from
            return _anniversary_of(text, int(year) + 1, trigger.at, tz)
    elif type(trigger) is TicketOverdueTrigger:
        if not state.open_tickets:
            return None
        marks = state.marks
        return min(
            (
                ticket.opened_at + sla_hours[ticket.priority] * HOUR
                for ticket_id, ticket in state.open_tickets.items()
                if ticket_mark(rule_id, ticket_id) not in marks
            ),
            default=None,
        )
    return min((o.due for o in pending(rule_id, trigger, state, sla_hours=sla_hours, tz=tz)),
               default=None)


def mark(rule_id: str, trigger: TimerTrigger, state: CustomerState, occurrence: Occurrence) -> None:
    """Remember a fired (or expired) occurrence so it never fires again."""
    # Exact types, not isinstance (see earliest_due).
    if type(trigger) is AnniversaryTrigger:
        state.marks[rule_id] = occurrence.key.rsplit(":", 1)[1]
    elif type(trigger) is InactivityTrigger:
        state.marks[rule_id] = occurrence.key
    elif type(trigger) is AfterTrigger:
        state.marks[rule_id] = "done"
    else:
        assert type(trigger) is TicketOverdueTrigger
        state.marks[occurrence.key] = "done"


def ticket_mark(rule_id: str, ticket_id: str) -> str:
    return f"{rule_id}:{ticket_id}"


def anniversary(day: date, year: int, at: clock_time, tz: ZoneInfo) -> float:
    """`day`'s anniversary in `year` at local time `at`; Feb 29 falls on Feb 28 otherwise."""
    try:
        local = datetime.combine(day.replace(year=year), at, tzinfo=tz)
    except ValueError:  # Feb 29 in a common year
        local = datetime.combine(date(year, 2, 28), at, tzinfo=tz)
    return local.timestamp()


@lru_cache(maxsize=65_536)
def _anniversary_of(text: str, year: int, at: clock_time, tz: ZoneInfo) -> float:
    # Due after every event of a customer with the date: the dates are few, the calls many.
    return anniversary(date.fromisoformat(text), year, at, tz)


def begin_anniversaries(
    rule_id: str, trigger: AnniversaryTrigger, state: CustomerState, tz: ZoneInfo
) -> None:
    """A date was set or changed: only its occurrences after the customer's clock may fire
    (no coupons for the years before we knew it; a signup's own day is no anniversary)."""
    text = getattr(state, trigger.date)
    if text is None:
        state.marks.pop(rule_id, None)
        return
    year = _last_passed_year(date.fromisoformat(text), trigger, state.clock, tz)
    # Once a year even when the date is corrected after this year's coupon went out.
    already = int(state.marks.get(rule_id, "0"))
    state.marks[rule_id] = str(max(year, already))


def _last_passed_year(day: date, trigger: AnniversaryTrigger, clock: float, tz: ZoneInfo) -> int:
    """The year of the last anniversary before `clock` (the date's own year at the least)."""
    year = datetime.fromtimestamp(clock, tz).year
    while year > day.year and anniversary(day, year, trigger.at, tz) >= clock:
        year -= 1
    return max(year, day.year)
