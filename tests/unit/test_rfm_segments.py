"""RFM grades from the thresholds and the segments they map to."""

from __future__ import annotations

import pytest

from churnguard.core.clock import DAY
from churnguard.core.rfm import PROSPECT, Rfm, rfm_scores, segment_of
from churnguard.core.specs import RfmSettings, SegmentRule
from churnguard.core.state import SPEND_SCALE


def rfm(**settings: object) -> Rfm:
    """Settings as a pack gives them to the core (validated, then RulePack.rfm)."""
    return Rfm.of(RfmSettings(**settings))


CFG = rfm()


@pytest.fixture
def customer(state_factory, t0):
    """customer(age_days, orders, spend) -> a state whose last purchase is age_days before T0."""

    def make(age_days: float, orders: int, spend: float):
        return state_factory(
            first_purchase_at=t0 - (age_days + 1) * DAY,
            last_purchase_at=t0 - age_days * DAY,
            order_count=orders,
            spend_e4=round(spend * SPEND_SCALE),
        )

    return make


@pytest.mark.parametrize(
    ("age_days", "r"),
    [(0, 5), (14, 5), (14.01, 4), (30, 4), (30.5, 3), (60, 3), (61, 2), (120, 2),
     (120.01, 1), (400, 1)],
)
def test_recency_grade_boundaries(customer, t0, age_days, r):
    assert rfm_scores(customer(age_days, 1, 10), t0, CFG)[0] == r


@pytest.mark.parametrize(
    ("orders", "f"),
    [(1, 1), (2, 2), (4, 2), (5, 3), (9, 3), (10, 4), (19, 4), (20, 5), (250, 5)],
)
def test_frequency_grade_boundaries(customer, t0, orders, f):
    assert rfm_scores(customer(1, orders, 10), t0, CFG)[1] == f


@pytest.mark.parametrize(
    ("spend", "m"),
    [(0.01, 1), (199.9999, 1), (200, 2), (999.99, 2), (1000, 3), (4999.99, 3), (5000, 4),
     (9999.9999, 4), (10_000, 5), (1_000_000, 5)],
)
def test_monetary_grade_boundaries(customer, t0, spend, m):
    assert rfm_scores(customer(1, 1, spend), t0, CFG)[2] == m


@pytest.mark.parametrize(
    ("age_days", "orders", "spend", "scores", "segment"),
    [
        (5, 25, 20_000, (5, 5, 5), "champion"),
        (20, 10, 5_000, (4, 4, 4), "champion"),
        (100, 25, 12_000, (2, 5, 5), "needs_reactivation"),
        (200, 10, 5_000, (1, 4, 4), "needs_reactivation"),
        (20, 6, 300, (4, 3, 2), "loyal"),
        (45, 12, 100, (3, 4, 1), "loyal"),
        (3, 1, 50, (5, 1, 1), "new"),
        (20, 1, 20_000, (4, 1, 5), "new"),
        (40, 1, 50, (3, 1, 1), "promising"),
        (3, 2, 500, (5, 2, 2), "promising"),
        (100, 3, 300, (2, 2, 2), "at_risk"),
        (200, 25, 50, (1, 5, 1), "at_risk"),     # high F but low M: not needs_reactivation
        (100, 12, 1_500, (2, 4, 3), "at_risk"),
        (200, 1, 50, (1, 1, 1), "hibernating"),
        (100, 1, 20_000, (2, 1, 5), "hibernating"),
    ],
)
def test_default_segments(customer, t0, age_days, orders, spend, scores, segment):
    got = rfm_scores(customer(age_days, orders, spend), t0, CFG)
    assert got == scores
    assert segment_of(got, CFG) == segment


def test_customer_without_purchase_is_a_prospect(state_factory, t0):
    assert rfm_scores(state_factory(), t0, CFG) is None
    assert segment_of(None, CFG) == PROSPECT == "prospect"


def test_recency_grade_is_measured_at_the_given_now(customer, t0):
    state = customer(0, 1, 10)
    assert rfm_scores(state, t0, CFG)[0] == 5
    assert rfm_scores(state, t0 + 61 * DAY, CFG)[0] == 2


def test_custom_thresholds(customer, t0):
    cfg = rfm(
        recency_days=(1, 2, 3, 4),
        frequency_orders=(4, 3, 2, 1),
        monetary_spend=(40, 30, 20, 10),
    )
    assert rfm_scores(customer(1, 4, 40), t0, cfg) == (5, 5, 5)
    assert rfm_scores(customer(2.5, 2, 25), t0, cfg) == (3, 3, 3)
    assert rfm_scores(customer(10, 1, 5), t0, cfg) == (1, 2, 1)
    # With the defaults the same customer grades very differently.
    assert rfm_scores(customer(2.5, 2, 25), t0, CFG) == (5, 2, 1)


def test_custom_segments_first_match_wins_and_fallback(t0):
    cfg = rfm(
        segments=(
            SegmentRule(segment="whale", m=(5, 5)),
            SegmentRule(segment="fresh", r=(5, 5)),
        ),
        fallback_segment="other",
    )
    assert segment_of((5, 1, 5), cfg) == "whale"
    assert segment_of((5, 1, 4), cfg) == "fresh"
    assert segment_of((4, 5, 4), cfg) == "other"
    assert segment_of(None, cfg) == PROSPECT


def test_every_grade_triple_gets_a_default_segment():
    segments = {
        segment_of((r, f, m), CFG)
        for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)
    }
    assert segments == {
        "champion", "needs_reactivation", "loyal", "new", "promising", "at_risk", "hibernating",
    }
