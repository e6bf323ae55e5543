"""Health score: recency, engagement and service components, weights, settings validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from churnguard.core.clock import DAY, HOUR, day_number
from churnguard.core.scoring import (
    Scoring,
    engagement_component,
    health,
    recency_component,
    service_component,
)
from churnguard.core.specs import ScoringSettings
from churnguard.core.state import OpenTicket


def scoring(**settings: object) -> Scoring:
    """Settings as a pack gives them to the core (validated, then RulePack.scoring)."""
    return Scoring.of(ScoringSettings(**settings))


CFG = scoring()


# --- recency -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("age_days", "expected"),
    [
        (0, 100.0),
        (3.5, 100.0),
        (7, 100.0),
        (48.5, 50.0),          # half-way between 7 and 90
        (7 + 83 * 0.75, 25.0),
        (90, 0.0),
        (120, 0.0),
    ],
)
def test_recency_is_full_up_to_7_days_then_linear_to_zero_at_90(
    state_factory, t0, age_days, expected
):
    state = state_factory(last_purchase_at=t0 - age_days * DAY)
    assert recency_component(state, t0, CFG) == pytest.approx(expected)


def test_recency_starts_falling_just_after_7_days(state_factory, t0):
    state = state_factory(last_purchase_at=t0 - 7.0001 * DAY)
    value = recency_component(state, t0, CFG)
    assert value < 100.0
    assert value == pytest.approx(100.0 * (90 - 7.0001) / 83)


def test_recency_is_zero_without_any_purchase(state_factory, t0):
    assert recency_component(state_factory(), t0, CFG) == 0.0


def test_recency_of_a_purchase_stamped_after_now_is_full(state_factory, t0):
    state = state_factory(last_purchase_at=t0 + HOUR)
    assert recency_component(state, t0, CFG) == 100.0


def test_recency_follows_custom_full_and_zero_days(state_factory, t0):
    cfg = scoring(recency_full_days=10, recency_zero_days=20)
    assert recency_component(state_factory(last_purchase_at=t0 - 10 * DAY), t0, cfg) == 100.0
    assert recency_component(state_factory(last_purchase_at=t0 - 15 * DAY), t0, cfg) == 50.0
    assert recency_component(state_factory(last_purchase_at=t0 - 20 * DAY), t0, cfg) == 0.0


# --- engagement ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("logins_today", "expected"),
    [(0, 0.0), (1, 10.0), (5, 50.0), (9, 90.0), (10, 100.0), (17, 100.0)],
)
def test_engagement_is_ten_points_per_login_capped_at_100(
    state_factory, t0, logins_today, expected
):
    today = day_number(t0)
    buckets = {today: logins_today} if logins_today else {}
    assert engagement_component(state_factory(login_days=buckets), t0, CFG) == expected


def test_engagement_counts_logins_spread_over_the_window(state_factory, t0):
    today = day_number(t0)
    state = state_factory(login_days={today: 1, today - 10: 2, today - 29: 1})
    assert engagement_component(state, t0, CFG) == 40.0


@pytest.mark.parametrize(
    ("days_back", "counted"),
    [(0, True), (1, True), (29, True), (30, False), (31, False), (45, False)],
)
def test_engagement_window_is_the_last_30_days(state_factory, t0, days_back, counted):
    today = day_number(t0)
    state = state_factory(login_days={today - days_back: 3})
    assert engagement_component(state, t0, CFG) == (30.0 if counted else 0.0)


def test_engagement_ignores_future_day_buckets(state_factory, t0):
    today = day_number(t0)
    state = state_factory(login_days={today + 1: 4})
    assert engagement_component(state, t0, CFG) == 0.0


def test_engagement_window_and_points_are_configurable(state_factory, t0):
    today = day_number(t0)
    state = state_factory(login_days={today: 1, today - 6: 1, today - 7: 1})
    cfg = scoring(engagement_window_days=7, engagement_points_per_login=25)
    assert engagement_component(state, t0, cfg) == 50.0


# --- service -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("rating", "expected"), [(1, 0.0), (2, 25.0), (3, 50.0), (4, 75.0), (5, 100.0)]
)
def test_service_maps_a_rating_from_1_to_0_through_5_to_100(
    state_factory, t0, rating, expected
):
    state = state_factory(ratings=[(t0 - DAY, rating)])
    assert service_component(state, t0, CFG) == expected


def test_service_is_80_without_ratings(state_factory, t0):
    assert service_component(state_factory(), t0, CFG) == 80.0


def test_service_is_the_mean_of_the_ratings(state_factory, t0):
    state = state_factory(ratings=[(t0 - 3 * DAY, 5), (t0 - 2 * DAY, 2), (t0 - DAY, 4)])
    assert service_component(state, t0, CFG) == pytest.approx((100 + 25 + 75) / 3)


def test_service_uses_only_the_last_five_ratings(state_factory, t0):
    ratings = [(t0 - 10 * DAY, 1)] + [(t0 - d * DAY, 5) for d in (5, 4, 3, 2, 1)]
    assert service_component(state_factory(ratings=ratings), t0, CFG) == 100.0


@pytest.mark.parametrize(
    ("open_hours", "expected"),
    [(1, 80.0), (71.9, 80.0), (72, 80.0), (72.01, 65.0), (500, 65.0)],
)
def test_service_loses_15_per_ticket_open_longer_than_72_hours(
    state_factory, t0, open_hours, expected
):
    state = state_factory(open_tickets={"t": OpenTicket(t0 - open_hours * HOUR, "normal")})
    assert service_component(state, t0, CFG) == pytest.approx(expected)


def test_service_penalty_counts_every_overdue_ticket_only(state_factory, t0):
    tickets = {
        "a": OpenTicket(t0 - 100 * HOUR, "low"),
        "b": OpenTicket(t0 - 80 * HOUR, "high"),
        "c": OpenTicket(t0 - 10 * HOUR, "urgent"),
    }
    ratings = [(t0 - DAY, 4)]
    assert service_component(state_factory(open_tickets=tickets, ratings=ratings), t0, CFG) == 45.0


@pytest.mark.parametrize(
    ("ratings", "overdue", "expected"),
    [([1], 1, 0.0), ([2], 2, 0.0), ([], 6, 0.0), ([], 5, 5.0)],
)
def test_service_is_floored_at_zero(state_factory, t0, ratings, overdue, expected):
    tickets = {f"t{i}": OpenTicket(t0 - 200 * HOUR, "normal") for i in range(overdue)}
    state = state_factory(ratings=[(t0 - DAY, r) for r in ratings], open_tickets=tickets)
    assert service_component(state, t0, CFG) == expected


# --- weighted score ------------------------------------------------------------------------

def test_default_weights_are_40_30_30(state_factory, t0):
    today = day_number(t0)
    # recency 100, engagement 50, service 80 -> 40 + 15 + 24
    state = state_factory(last_purchase_at=t0 - DAY, login_days={today: 5})
    result = health(state, t0, CFG)
    assert (result.recency, result.engagement, result.service) == (100.0, 50.0, 80.0)
    assert result.score == 79.0


def test_score_of_a_customer_with_only_a_half_aged_purchase(state_factory, t0):
    state = state_factory(last_purchase_at=t0 - 48.5 * DAY)
    assert health(state, t0, CFG).score == pytest.approx(0.4 * 50 + 0.3 * 80)


def test_score_with_nothing_but_the_default_service(state_factory, t0):
    assert health(state_factory(), t0, CFG).score == 24.0


def test_score_is_rounded_to_two_decimals(state_factory, t0):
    state = state_factory(last_purchase_at=t0 - 10 * DAY)  # recency 96.3855…
    result = health(state, t0, CFG)
    assert result.recency == 96.39
    assert result.score == round(0.4 * 100 * 80 / 83 + 24, 2)


def test_custom_weights_change_the_score(state_factory, t0):
    today = day_number(t0)
    state = state_factory(last_purchase_at=t0 - DAY, login_days={today: 5})
    cfg = scoring(recency_weight=0.5, engagement_weight=0.5, service_weight=0.0)
    assert health(state, t0, cfg).score == 75.0
    only_service = scoring(recency_weight=0, engagement_weight=0, service_weight=1)
    assert health(state, t0, only_service).score == 80.0


@pytest.mark.parametrize(
    "weights",
    [(0.4, 0.3, 0.4), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), (0.3, 0.3, 0.3)],
)
def test_weights_not_summing_to_one_are_rejected(weights):
    r, e, s = weights
    with pytest.raises(ValidationError, match=r"add up to 1\.0"):
        ScoringSettings(recency_weight=r, engagement_weight=e, service_weight=s)


def test_negative_weight_is_rejected():
    with pytest.raises(ValidationError):
        ScoringSettings(recency_weight=1.2, engagement_weight=-0.2, service_weight=0.0)


def test_recency_zero_days_must_exceed_full_days():
    with pytest.raises(ValidationError, match="recency_zero_days"):
        ScoringSettings(recency_full_days=30, recency_zero_days=30)


@pytest.mark.parametrize("hours", [1e308, 24 * 3660 + 1])
def test_an_overdue_limit_past_ten_years_is_rejected(hours):
    # 1e308 passed once, and the score's crossing time then overflowed (a crash in replay).
    with pytest.raises(ValidationError, match="overdue_ticket_hours"):
        ScoringSettings(overdue_ticket_hours=hours)
    assert ScoringSettings(overdue_ticket_hours=24 * 3660).overdue_ticket_hours == 24 * 3660
