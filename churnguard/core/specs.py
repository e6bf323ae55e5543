"""The rule pack's typed sections that the core's logic reads: guards, KPI settings, RFM,
scoring and timer triggers, validated by pydantic when a pack is built.

They live apart from the logic that uses them because that logic is compiled (mypyc, see
setup.py) and pydantic models cannot be: their validators are inspected at class creation.
This module, like pack.py, always runs as Python."""

from __future__ import annotations

from datetime import time as clock_time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ActionType = Literal["notification", "task", "coupon", "profile_update"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- guards (core/guards.py) ---------------------------------------------------------------


class RuleGuards(_Spec):
    """A rule's own guards (all optional)."""

    # No second firing for the same customer within this many hours.
    cooldown_hours: float | None = Field(None, gt=0, le=24 * 3660)
    max_per_customer: int | None = Field(None, ge=1, le=1_000_000)
    # This share of customers (a stable hash of rule and customer) never gets the actions:
    # their firings are recorded as suppressed (`holdout`), to measure the rule's uplift.
    holdout_percent: float = Field(0, ge=0, le=100)
    # Service messages (ticket acknowledgement, survey): not counted by frequency caps,
    # not held for quiet hours, not withheld from the global control group.
    transactional: bool = False


class FrequencyCap(_Spec):
    """At most `max` actions of `type` (and `channel`, for notifications) per customer per
    `days`, across all non-transactional rules."""

    type: ActionType
    channel: Literal["any", "email", "sms", "push"] = "any"
    max: int = Field(ge=0, le=10_000)
    days: float = Field(gt=0, le=366)

    @model_validator(mode="after")
    def _channel_of_notifications(self) -> FrequencyCap:
        if self.channel != "any" and self.type != "notification":
            raise ValueError(f"only notifications have a channel; a {self.type} cap counts "
                             "every one (leave channel out)")
        return self


class QuietHours(_Spec):
    """Notifications due between `start` and `end` (local time of the customer's profile
    time zone, else the pack's) are deferred to `end`."""

    start: clock_time
    end: clock_time
    types: tuple[ActionType, ...] = ("notification",)

    @field_validator("end")
    @classmethod
    def _not_empty(cls, end: clock_time, info: Any) -> clock_time:
        if info.data.get("start") == end:
            raise ValueError("quiet hours need an end other than their start")
        return end


class PackGuards(_Spec):
    frequency_caps: tuple[FrequencyCap, ...] = ()
    quiet_hours: QuietHours | None = None
    # This share of all customers (a stable hash of the customer) gets no non-transactional
    # action from any rule: the baseline the whole program is measured against.
    global_control_percent: float = Field(0, ge=0, le=100)


# -- KPI settings (core/outcomes.py) -------------------------------------------------------


class ActionCosts(_Spec):
    """What one action costs, in the currency of the purchases (ROI's cost side)."""

    email: float = Field(0.0, ge=0, le=1_000_000)
    sms: float = Field(0.0, ge=0, le=1_000_000)
    push: float = Field(0.0, ge=0, le=1_000_000)
    task: float = Field(0.0, ge=0, le=1_000_000)


class KpiSettings(_Spec):
    """The pack's `kpis:` section."""

    # A win-back episode recovers within this many days of its start, or expires.
    recovery_window_days: float = Field(30, gt=0, le=366)
    # Recovery by score for a win-back rule without a `health_score below` threshold.
    recovery_score: float = Field(60, ge=0, le=100)
    # A first purchase repeats when another follows within this many days.
    repeat_purchase_days: float = Field(90, gt=0, le=3660)
    gross_margin: float = Field(0.3, ge=0, le=1)
    costs: ActionCosts = ActionCosts()


# -- RFM (core/rfm.py) ---------------------------------------------------------------------


class SegmentRule(BaseModel):
    """A segment applies when R, F and M each lie in their inclusive [low, high] range."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segment: str
    r: tuple[int, int] = (1, 5)
    f: tuple[int, int] = (1, 5)
    m: tuple[int, int] = (1, 5)


DEFAULT_SEGMENTS = (
    SegmentRule(segment="champion", r=(4, 5), f=(4, 5), m=(4, 5)),
    SegmentRule(segment="needs_reactivation", r=(1, 2), f=(4, 5), m=(4, 5)),
    SegmentRule(segment="loyal", r=(3, 5), f=(3, 5)),
    SegmentRule(segment="new", r=(4, 5), f=(1, 1)),
    SegmentRule(segment="promising", r=(3, 5)),
    SegmentRule(segment="at_risk", r=(1, 2), f=(2, 5)),
    SegmentRule(segment="hibernating", r=(1, 2)),
)


class RfmSettings(BaseModel):
    """Score 5 for the first threshold met, 4 for the second, … 1 when none is met."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Days since the last purchase, at most.
    recency_days: tuple[float, float, float, float] = (14, 30, 60, 120)
    # Lifetime orders, at least.
    frequency_orders: tuple[int, int, int, int] = (20, 10, 5, 2)
    # Lifetime spend, at least.
    monetary_spend: tuple[float, float, float, float] = (10_000, 5_000, 1_000, 200)
    # First match wins; customers without a purchase are `prospect`.
    segments: tuple[SegmentRule, ...] = DEFAULT_SEGMENTS
    fallback_segment: str = "hibernating"


# -- the health score (core/scoring.py) ----------------------------------------------------


class ScoringSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    recency_weight: float = Field(0.4, ge=0)
    engagement_weight: float = Field(0.3, ge=0)
    service_weight: float = Field(0.3, ge=0)
    recency_full_days: float = Field(7.0, ge=0)
    recency_zero_days: float = Field(90.0, gt=0)
    # Login buckets are kept this many days: at most a year keeps the state small.
    engagement_window_days: int = Field(30, ge=1, le=366)
    engagement_points_per_login: float = Field(10.0, ge=0)
    satisfaction_sample: int = Field(5, ge=1)
    service_without_ratings: float = Field(80.0, ge=0, le=100)
    # At most ten years: the score's crossing time adds it to a ticket's opening (floored).
    overdue_ticket_hours: float = Field(72.0, gt=0, le=24 * 3660)
    overdue_ticket_penalty: float = Field(15.0, ge=0)

    @model_validator(mode="after")
    def _weights(self) -> ScoringSettings:
        total = self.recency_weight + self.engagement_weight + self.service_weight
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"scoring weights must add up to 1.0, got {total:g} "
                "(recency_weight + engagement_weight + service_weight)"
            )
        if self.recency_zero_days <= self.recency_full_days:
            raise ValueError("recency_zero_days must be greater than recency_full_days")
        return self


# -- timer triggers (core/triggers.py) -----------------------------------------------------


class AfterTrigger(_Spec):
    """Once, `days` after the anchor (the first purchase)."""

    on: Literal["after"]
    anchor: Literal["first_purchase"]
    days: float = Field(gt=0)
    # An occurrence found later than this after its due time (a backfill of old events) is
    # recorded as expired instead of firing.
    grace_hours: float = Field(24, gt=0)


class AnniversaryTrigger(_Spec):
    """Once a year on a profile date at a local time of the business time zone. Feb 29 is
    celebrated on Feb 28 in other years; occurrences before the date was known never fire."""

    on: Literal["anniversary"]
    date: Literal["birthday", "signup_date"]
    at: clock_time = clock_time(9, 0)
    grace_hours: float = Field(24, gt=0)


class InactivityTrigger(_Spec):
    """`days` with neither login nor purchase; again after new activity and another silence."""

    on: Literal["inactivity"]
    days: float = Field(gt=0)
    grace_hours: float = Field(24, gt=0)


class TicketOverdueTrigger(_Spec):
    """A ticket still open past the SLA of its priority (the pack's ticket_sla_hours)."""

    on: Literal["ticket_overdue"]
    grace_hours: float = Field(24, gt=0)


TimerTrigger = AfterTrigger | AnniversaryTrigger | InactivityTrigger | TicketOverdueTrigger
