"""The weighted health score (0–100): recency, engagement and service, evaluated at `now`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from churnguard.core.clock import DAY, HOUR, day_number
from churnguard.core.specs import ScoringSettings
from churnguard.core.state import CustomerState, count_in_window

# Score bands (the backtest report, the worker's census of customers): a customer never
# scored is "unscored".
GOOD_AT_LEAST = 80.0
AVERAGE_AT_LEAST = 60.0
BANDS = ("good", "average", "poor", "unscored")


def band_of(score: float | None) -> str:
    if score is None:
        return "unscored"
    if score >= GOOD_AT_LEAST:
        return "good"
    return "average" if score >= AVERAGE_AT_LEAST else "poor"


class Health(NamedTuple):
    # A tuple: built for every rescore, cheaper than a frozen dataclass.
    score: float
    recency: float
    engagement: float
    service: float


@dataclass(frozen=True, slots=True)
class Scoring:
    """The pack's scoring settings (ScoringSettings, validated) as the core reads them: a
    compiled class, read at a fixed place (a pydantic model's field, read from compiled code,
    is a lookup through its type and its dictionary: ~18 per event). RulePack.scoring."""

    recency_weight: float
    engagement_weight: float
    service_weight: float
    recency_full_days: float
    recency_zero_days: float
    engagement_window_days: int
    engagement_points_per_login: float
    satisfaction_sample: int
    service_without_ratings: float
    overdue_ticket_hours: float
    overdue_ticket_penalty: float

    @staticmethod
    def of(settings: ScoringSettings) -> Scoring:
        return Scoring(**settings.model_dump())


def recency_component(state: CustomerState, now: float, cfg: Scoring) -> float:
    """100 up to `recency_full_days` since the last purchase, linear to 0 at `recency_zero_days`."""
    if state.last_purchase_at is None:
        return 0.0
    age_days = max(0.0, (now - state.last_purchase_at) / DAY)
    if age_days <= cfg.recency_full_days:
        return 100.0
    if age_days >= cfg.recency_zero_days:
        return 0.0
    span = cfg.recency_zero_days - cfg.recency_full_days
    return 100.0 * (cfg.recency_zero_days - age_days) / span


def engagement_component(state: CustomerState, now: float, cfg: Scoring) -> float:
    logins = count_in_window(state.login_days, day_number(now), cfg.engagement_window_days)
    return min(100.0, cfg.engagement_points_per_login * logins)


def service_component(state: CustomerState, now: float, cfg: Scoring) -> float:
    base = _service_base(state, cfg)
    if not state.open_tickets:
        return base
    overdue_after = cfg.overdue_ticket_hours * HOUR
    overdue = sum(1 for t in state.open_tickets.values() if now - t.opened_at > overdue_after)
    return max(0.0, base - cfg.overdue_ticket_penalty * overdue)


def health(state: CustomerState, now: float, cfg: Scoring) -> Health:
    recency = recency_component(state, now, cfg)
    engagement = engagement_component(state, now, cfg)
    service = service_component(state, now, cfg)
    score = (
        cfg.recency_weight * recency
        + cfg.engagement_weight * engagement
        + cfg.service_weight * service
    )
    # Rounded so that outputs are stable across platforms and equal scores compare equal.
    return Health(round(score, 2), round(recency, 2), round(engagement, 2), round(service, 2))


def crossing_time(
    state: CustomerState, threshold: float, now: float, cfg: Scoring
) -> float | None:
    """The first whole second after `now` at which the score, with no new event, is below
    `threshold` — or None if it never gets there. Without events the score only falls:
    recency ages linearly, logins leave the engagement window, open tickets become overdue.
    Engagement and service are step functions, so between their steps only recency moves
    and the crossing is solved in closed form: O(steps), one score evaluation to confirm."""
    window_start = day_number(now) - cfg.engagement_window_days + 1
    logins = 0
    steps: list[tuple[float, int, int]] = []  # (time, logins leaving, tickets becoming overdue)
    for day, count in state.login_days.items():
        if day >= window_start:
            logins += count
            steps.append(((day + cfg.engagement_window_days) * DAY, count, 0))
    base = _service_base(state, cfg)
    limit = cfg.overdue_ticket_hours * HOUR
    overdue = 0
    for ticket in state.open_tickets.values():
        # Overdue strictly after the limit: from the first whole second past it.
        step = math.floor(ticket.opened_at + limit) + 1.0
        if step <= now:
            overdue += 1
        else:
            steps.append((step, 0, 1))
    steps.sort()
    # Scores are rounded to 2 decimals: "below the threshold" means the raw score is below
    # the lowest 2-decimal value not under the threshold, minus half a step.
    target = math.ceil(threshold * 100 - 1e-9) / 100 - 0.005
    start = now
    # Hot: called after every event of an armed customer, so the loop is plain arithmetic.
    wr, we, ws = cfg.recency_weight, cfg.engagement_weight, cfg.service_weight
    full, zero = cfg.recency_full_days, cfg.recency_zero_days
    last = state.last_purchase_at
    for moment, leaving, becoming_overdue in [*steps, (math.inf, 0, 0)]:
        rest = (we * min(100.0, cfg.engagement_points_per_login * logins)
                + ws * max(0.0, base - cfg.overdue_ticket_penalty * overdue))
        below = target - rest
        if last is None:
            recency = 0.0
        else:
            age = (start - last) / DAY
            recency = 100.0 if age <= full else 0.0 if age >= zero else (
                100.0 * (zero - age) / (zero - full))
        if wr * recency < below:
            return _confirm(state, threshold, start, cfg)
        if last is not None and wr > 0 and below > 0:
            # Recency falls linearly between its full and zero ages: solve for the moment.
            age_days = max(zero - (below / wr) * (zero - full) / 100.0, full)
            crossing = last + age_days * DAY
            if start <= crossing < moment:
                return _confirm(state, threshold, crossing, cfg)
        logins -= leaving
        overdue += becoming_overdue
        start = moment
    return None


def _service_base(state: CustomerState, cfg: Scoring) -> float:
    recent = state.ratings[-cfg.satisfaction_sample :]
    if not recent:
        return cfg.service_without_ratings
    return sum((rating - 1) * 25.0 for _, rating in recent) / len(recent)


def _confirm(state: CustomerState, threshold: float, moment: float, cfg: Scoring) -> float:
    """The closed form is exact up to float rounding: step to the whole second that the
    rounded score really is below the threshold."""
    candidate = float(math.ceil(moment))
    for _ in range(3):
        if health(state, candidate, cfg).score < threshold:
            return candidate
        candidate += 1
    return candidate
