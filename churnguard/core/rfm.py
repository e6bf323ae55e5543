"""RFM scores (1–5 each, from configurable thresholds) and the segment they map to."""

from __future__ import annotations

from collections.abc import Sequence

from churnguard.core.clock import DAY
from churnguard.core.specs import RfmSettings, SegmentRule
from churnguard.core.state import SPEND_SCALE, CustomerState

PROSPECT = "prospect"
# Segment tables by the id of their segment list (which the entry keeps alive, so the id
# is not reused): one per pack's RFM settings, a handful per process.
_TABLES: dict[int, tuple[tuple[SegmentRule, ...], str, dict[tuple[int, int, int], str]]] = {}


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
    return _segment_table(cfg)[scores]


def _segment_table(cfg: RfmSettings) -> dict[tuple[int, int, int], str]:
    """Every (R, F, M) to its segment: 125 entries, looked up on every rescore; built once
    per segment list (kept by identity: a model_copy with new segments gets its own table)."""
    found = _TABLES.get(id(cfg.segments))
    if found is None or found[0] is not cfg.segments or found[1] != cfg.fallback_segment:
        grades = range(1, 6)
        found = _TABLES[id(cfg.segments)] = (cfg.segments, cfg.fallback_segment, {
            (r, f, m): _first_segment(r, f, m, cfg)
            for r in grades for f in grades for m in grades})
    return found[2]


def _first_segment(r: int, f: int, m: int, cfg: RfmSettings) -> str:
    for rule in cfg.segments:
        if (rule.r[0] <= r <= rule.r[1] and rule.f[0] <= f <= rule.f[1]
                and rule.m[0] <= m <= rule.m[1]):
            return rule.segment
    return cfg.fallback_segment
