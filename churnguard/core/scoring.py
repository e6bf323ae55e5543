"""The weighted health score (0–100): recency, engagement and service, evaluated at `now`."""

from __future__ import annotations

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
