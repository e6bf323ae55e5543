"""Guards: what keeps a customer from being spammed and what measures a play's uplift.

A rule firing whose conditions hold passes, in order: the global control group and the
rule's holdout (stable hashes of the customer id), its cooldown and its maximum per
customer; then each of its actions passes the pack's frequency caps and quiet hours. What
a guard stops is not lost: it becomes a `Suppressed` record (for uplift and audits), and an
action in quiet hours is deferred — kept in the state and sent, with the same id, when the
window ends."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from churnguard.core.clock import DAY, HOUR
from churnguard.core.specs import PackGuards, RuleGuards
from churnguard.core.state import CustomerState

Reason = Literal[
    "global_control", "holdout", "cooldown", "max_per_customer", "frequency_cap",
    "quiet_hours_deferred",
]
# Deferred actions a customer may have waiting for the end of quiet hours (state stays small).
MAX_DEFERRED = 20
# The global control group's hash namespace: a hyphen, which no rule id can contain.
CONTROL_GROUP = "global-control"


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A firing (or one action of it) a guard stopped; `to_record` is the topic's value."""

    action_id: str
    type: str
    customer_id: str
    rule_id: str
    rule_version: int
    pack_version: int
    reason: Reason
    created_at: str
    # Quiet hours: when the deferred action is sent.
    deferred_to: str | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "action_id": self.action_id,
            "type": self.type,
            "customer_id": self.customer_id,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "pack_version": self.pack_version,
            "reason": self.reason,
            "created_at": self.created_at,
        }
        if self.deferred_to is not None:
            record["deferred_to"] = self.deferred_to
        return record


def in_share(percent: float, *parts: str) -> bool:
    """Stable membership of a `percent` share: the same parts are always in or always out,
    on every worker, after every restart."""
    if percent <= 0:
        return False
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


def rule_verdict(
    guards: RuleGuards, pack: PackGuards, rule_id: str, state: CustomerState, now: float
) -> Reason | None:
    """Whether a firing of the rule is stopped, and why; counts it (held out or not: the
    control customers live the same timeline of cooldowns as the treated ones)."""
    if not guards.transactional and in_share(pack.global_control_percent, CONTROL_GROUP,
                                             state.customer_id):
        reason: Reason | None = "global_control"
    elif in_share(guards.holdout_percent, rule_id, state.customer_id):
        reason = "holdout"
    else:
        reason = None
    if guards.cooldown_hours is None and guards.max_per_customer is None:
        return reason
    count, last = state.rule_fires.get(rule_id, (0, None))
    if guards.cooldown_hours is not None and last is not None and (
            now - last < guards.cooldown_hours * HOUR):
        return "cooldown"
    if guards.max_per_customer is not None and count >= guards.max_per_customer:
        return "max_per_customer"
    state.rule_fires[rule_id] = (count + 1, now)
    return reason


def capped(pack: PackGuards, action_type: str, channel: str | None, state: CustomerState,
           now: float, *, sends_at: float | None = None) -> bool:
    """A cap this action would exceed when it is sent (`sends_at`: the end of its quiet
    hours, else `now`); otherwise it is counted against the caps at that time. A deferred
    send counts from when it goes out, so it also counts against what fires before then."""
    moment = now if sends_at is None else sends_at
    caps = [cap for cap in pack.frequency_caps if cap.type == action_type
            and cap.channel in ("any", channel)]
    if not caps:
        return False
    for cap in caps:
        # Every window of `days` holding this send: sends less than `days` before or after.
        window = cap.days * DAY
        since, until = moment - window, moment + window
        sent = sum(1 for at, kind, used in state.sent
                   if since < at < until and kind == action_type
                   and cap.channel in ("any", used))
        if sent >= cap.max:
            return True
    state.sent.append((moment, action_type, channel or ""))
    # Each send is kept only as long as the caps of its own type can count it.
    windows: dict[str, float] = {
        kind: max(c.days for c in pack.frequency_caps if c.type == kind) * DAY
        for kind in {c.type for c in pack.frequency_caps}}
    state.sent[:] = [entry for entry in state.sent
                     if entry[0] > now - windows.get(entry[1], 0.0)]
    return False


def quiet_until(pack: PackGuards, action_type: str, state: CustomerState, now: float,
                zone: ZoneInfo) -> float | None:
    """The end of the quiet window `now` falls in (for this action type), else None."""
    quiet = pack.quiet_hours
    if quiet is None or action_type not in quiet.types:
        return None
    if state.timezone is not None:
        # A zone this worker's tz database does not know (an older state): the pack's zone.
        with contextlib.suppress(KeyError, ValueError, OSError):
            zone = ZoneInfo(state.timezone)
    start, end = quiet.start, quiet.end

    def inside(at: float) -> bool:
        moment = datetime.fromtimestamp(at, zone).time()
        return (start <= moment < end) if start < end else (moment >= start or moment < end)

    if not inside(now):
        return None
    local = datetime.fromtimestamp(now, zone)
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    first = datetime.combine(day, end, tzinfo=zone).timestamp()
    second = datetime.combine(day, end, tzinfo=zone).replace(fold=1).timestamp()
    if first == second:
        return max(first, now)
    # A DST change around `end` (a wall time that happens twice, or never): the first whole
    # minute at which the wall clock is out of the window (at most the hour around it).
    latest = max(first, second)
    at = now - now % 60 + 60
    while at < latest:
        if not inside(at):
            return at
        at += 60
    return latest
