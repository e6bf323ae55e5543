"""RFM scores (1–5 each, from configurable thresholds) and the segment they map to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from churnguard.core.clock import DAY
from churnguard.core.specs import RfmSettings
from churnguard.core.state import SPEND_SCALE, CustomerState

PROSPECT = "prospect"


@dataclass(frozen=True, slots=True)
class Rfm:
    """The pack's RFM settings (RfmSettings, validated) as the core reads them, a compiled
    class (as core/scoring.Scoring), with every (R, F, M) to its segment: 125 entries,
    looked up on every rescore. RulePack.rfm."""

    # Days since the last purchase at most, lifetime orders and spend at least: grades 5..2.
    recency_days: tuple[float, ...]
    frequency_orders: tuple[int, ...]
    monetary_spend: tuple[float, ...]
    segments: dict[tuple[int, int, int], str]

    @staticmethod
    def of(settings: RfmSettings) -> Rfm:
        grades = range(1, 6)
        return Rfm(
            tuple(map(float, settings.recency_days)), settings.frequency_orders,
            tuple(map(float, settings.monetary_spend)),
            {(r, f, m): _first_segment(r, f, m, settings)
             for r in grades for f in grades for m in grades})


def _grade(value: float, thresholds: Sequence[float], *, at_most: bool) -> int:
    """5 when the first threshold is met, 4 for the second … 1 when none is."""
    for index, threshold in enumerate(thresholds):
        if (value <= threshold) if at_most else (value >= threshold):
            return 5 - index
    return 1


def rfm_scores(state: CustomerState, now: float, cfg: Rfm) -> tuple[int, int, int] | None:
    """None for a customer who never purchased (no recency to grade)."""
    if state.last_purchase_at is None:
        return None
    age_days = max(0.0, (now - state.last_purchase_at) / DAY)
    return (
        _grade(age_days, cfg.recency_days, at_most=True),
        _grade(state.order_count, cfg.frequency_orders, at_most=False),
        _grade(state.spend_e4 / SPEND_SCALE, cfg.monetary_spend, at_most=False),
    )


def segment_of(scores: tuple[int, int, int] | None, cfg: Rfm) -> str:
    """The first segment rule whose R, F and M ranges all contain the scores."""
    if scores is None:
        return PROSPECT
    return cfg.segments[scores]


def _first_segment(r: int, f: int, m: int, cfg: RfmSettings) -> str:
    for rule in cfg.segments:
        if (rule.r[0] <= r <= rule.r[1] and rule.f[0] <= f <= rule.f[1]
                and rule.m[0] <= m <= rule.m[1]):
            return rule.segment
    return cfg.fallback_segment
