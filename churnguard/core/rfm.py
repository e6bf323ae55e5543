"""RFM scores (1–5 each, from configurable thresholds) and the segment they map to."""

from __future__ import annotations

from collections.abc import Sequence

from churnguard.core.clock import DAY
from churnguard.core.state import SPEND_SCALE, CustomerState
from streams.settings import RfmSettings

PROSPECT = "prospect"


def _grade(value: float, thresholds: Sequence[float], *, at_most: bool) -> int:
    """5 when the first threshold is met, 4 for the second … 1 when none is."""
    for index, threshold in enumerate(thresholds):
        if (value <= threshold) if at_most else (value >= threshold):
            return 5 - index
    return 1


def rfm_scores(state: CustomerState, now: float, cfg: RfmSettings) -> tuple[int, int, int] | None:
    """None for a customer who never purchased (no recency to grade)."""
    if state.last_purchase_at is None:
        return None
    age_days = max(0.0, (now - state.last_purchase_at) / DAY)
    return (
        _grade(age_days, cfg.recency_days, at_most=True),
        _grade(state.order_count, cfg.frequency_orders, at_most=False),
        _grade(state.spend_e4 / SPEND_SCALE, cfg.monetary_spend, at_most=False),
    )


def segment_of(scores: tuple[int, int, int] | None, cfg: RfmSettings) -> str:
    """The first segment rule whose R, F and M ranges all contain the scores."""
    if scores is None:
        return PROSPECT
    r, f, m = scores
    for rule in cfg.segments:
        if (rule.r[0] <= r <= rule.r[1] and rule.f[0] <= f <= rule.f[1]
                and rule.m[0] <= m <= rule.m[1]):
            return rule.segment
    return cfg.fallback_segment
