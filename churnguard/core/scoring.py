"""The weighted health score (0–100): recency, engagement and service, evaluated at `now`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from churnguard.core.clock import DAY, HOUR, day_number
from churnguard.core.state import CustomerState, count_in_window
from streams.settings import ScoringSettings


@dataclass(frozen=True, slots=True)
class Health:
    score: float
    recency: float
    engagement: float
    service: float


def recency_component(state: CustomerState, now: float, cfg: ScoringSettings) -> float:
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


def engagement_component(state: CustomerState, now: float, cfg: ScoringSettings) -> float:
    logins = count_in_window(state.login_days, day_number(now), cfg.engagement_window_days)
    return min(100.0, cfg.engagement_points_per_login * logins)


def service_component(state: CustomerState, now: float, cfg: ScoringSettings) -> float:
    recent = state.ratings[-cfg.satisfaction_sample :]
    if recent:
        base = sum((rating - 1) * 25.0 for _, rating in recent) / len(recent)
    else:
        base = cfg.service_without_ratings
    overdue_after = cfg.overdue_ticket_hours * HOUR
    overdue = sum(1 for t in state.open_tickets.values() if now - t.opened_at > overdue_after)
    return max(0.0, base - cfg.overdue_ticket_penalty * overdue)


def health(state: CustomerState, now: float, cfg: ScoringSettings) -> Health:
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
    state: CustomerState, threshold: float, now: float, cfg: ScoringSettings
) -> float | None:
    """The first whole second after `now` at which the score, with no new event, is below
    `threshold` — or None if it never gets there. Without events the score only falls:
    recency ages linearly, logins leave the engagement window and open tickets become overdue,
    so the components are constant between those breakpoints except recency's linear part."""
    steps: list[float] = []
    if state.last_purchase_at is not None:
        steps += [state.last_purchase_at + cfg.recency_full_days * DAY,
                  state.last_purchase_at + cfg.recency_zero_days * DAY]
    window = cfg.engagement_window_days
    steps += [(day + window) * DAY for day in state.login_days]
    overdue_after = cfg.overdue_ticket_hours * HOUR
    # Overdue strictly after the limit: from the first whole second past it.
    steps += [math.floor(t.opened_at + overdue_after) + 1.0 for t in state.open_tickets.values()]
    start = now
    for end in [*sorted(s for s in steps if s > now), None]:
        found = _cross_in(state, threshold, start, end, cfg)
        if found is not None:
            return found
        if end is None:
            return None
        start = end
    return None


def _cross_in(
    state: CustomerState, threshold: float, start: float, end: float | None, cfg: ScoringSettings
) -> float | None:
    """Solve within [start, end), where engagement and service are constant."""
    if health(state, start, cfg).score < threshold:
        return float(math.ceil(start))
    rest = cfg.engagement_weight * engagement_component(state, start, cfg) + (
        cfg.service_weight * service_component(state, start, cfg)
    )
    if state.last_purchase_at is None or cfg.recency_weight == 0:
        return None  # recency is constant (0): nothing falls inside the segment
    # Scores are rounded to 2 decimals: aim 0.005 below the threshold, then check.
    needed_recency = (threshold - 0.005 - rest) / cfg.recency_weight
    span = cfg.recency_zero_days - cfg.recency_full_days
    age_days = cfg.recency_zero_days - needed_recency * span / 100.0
    moment = state.last_purchase_at + age_days * DAY
    if moment < start:
        return None  # recency would already have to be lower than it is: not in this segment
    candidate = float(math.ceil(moment))
    if end is not None and candidate >= end:
        return None
    for _ in range(3):  # float rounding: step a second or two if still not below
        if health(state, candidate, cfg).score < threshold:
            return candidate
        candidate += 1
    return None
