"""processor.apply_event: de-duplication, out-of-order history, tickets, profiles, state bytes."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from churnguard.core.clock import DAY, day_number, rfc3339
from churnguard.core.pack import PackInvalid
from churnguard.core.processor import apply_event
from churnguard.core.specs import ScoringSettings
from churnguard.core.state import CustomerState, OpenTicket
from streams.codecs import encode_action, encode_record
from tests.unit.packs import rules_only

# --- state evolution -----------------------------------------------------------------------

def test_first_event_creates_the_state(event_factory, engine, t0):
    outcome = apply_event(None, event_factory("purchase", amount="12.5", customer_id="c9"), engine)
    state = outcome.state
    assert state.customer_id == "c9"
    assert (state.order_count, state.spend_e4, state.lifetime_spend) == (1, 125_000, 12.5)
    assert state.first_purchase_at == state.last_purchase_at == state.clock == t0
    assert state.purchase_days == {day_number(t0): 1}
    assert not outcome.duplicate


def test_spend_is_summed_exactly(feed, event_factory):
    feed(*(event_factory("purchase", amount="0.1") for _ in range(3)))
    feed(event_factory("purchase", amount="1234.5678"))
    assert feed.state().spend_e4 == 3_000 + 12_345_678
    assert feed.state().lifetime_spend == pytest.approx(1234.8678)


def test_score_record_is_emitted_when_score_or_segment_changes(event_factory, engine, iso):
    first = apply_event(None, event_factory("purchase", amount="50"), engine)
    record = first.score_record
    assert record is not None
    assert record == {
        "customer_id": "c1",
        "at": iso(0),
        "score": 64.0,
        "components": {"recency": 100.0, "engagement": 0.0, "service": 80.0},
        "segment": "new",
        "rfm": {"r": 5, "f": 1, "m": 1},
        "caused_by": [record["caused_by"][0]],
    }
    # Same day, profile only: nothing about the score changes.
    again = apply_event(first.state, event_factory("profile", tags=["x"]), engine)
    assert again.score_record is None
    login = apply_event(again.state, event_factory("login"), engine)
    assert login.score_record is not None
    assert login.score_record["score"] == 67.0


def test_state_segment_and_rfm_follow_purchases(feed, event_factory):
    feed(event_factory("login"))
    assert (feed.state().segment, feed.state().rfm) == ("prospect", None)
    feed(event_factory("purchase", amount="50"))
    assert (feed.state().segment, feed.state().rfm) == ("new", (5, 1, 1))


# --- duplicates and redelivery -------------------------------------------------------------

def test_duplicate_event_id_is_counted_once(feed, event_factory, engine):
    purchase = event_factory("purchase", event_id="p-1", amount="300")
    feed(purchase)
    before = feed.state().to_bytes()
    outcome = apply_event(feed.state(), purchase, engine)
    assert outcome.duplicate
    assert outcome.actions == []
    assert outcome.score_record is None
    assert outcome.state.order_count == 1
    assert outcome.state.spend_e4 == 3_000_000
    assert outcome.state.to_bytes() == before


def test_duplicate_event_id_with_other_content_is_still_a_duplicate(feed, event_factory, engine):
    feed(event_factory("purchase", event_id="p-1", amount="300", day=0))
    outcome = apply_event(
        feed.state(), event_factory("purchase", event_id="p-1", amount="999", day=1), engine
    )
    assert outcome.duplicate
    assert outcome.state.order_count == 1
    assert outcome.state.spend_e4 == 3_000_000
    assert outcome.state.clock == feed.state().clock


def test_duplicate_ticket_open_acknowledges_once(feed, event_factory, engine):
    opened = event_factory("ticket", event_id="t-open", status="opened", priority="high")
    assert [a.rule_id for a in feed(opened)] == ["ticket_opened_ack"]
    assert feed(opened) == []
    assert feed.outcomes[-1].duplicate


def test_dedup_window_forgets_the_oldest_ids(event_factory, engine_factory):
    engine = engine_factory(dedup_window=2)
    state = None
    for n in range(3):
        state = apply_event(state, event_factory("login", event_id=f"l{n}"), engine).state
    assert state.seen == ["l1", "l2"]
    assert apply_event(state, event_factory("login", event_id="l2"), engine).duplicate
    assert not apply_event(state, event_factory("login", event_id="l0"), engine).duplicate


@pytest.mark.parametrize("offset", [3, 7])
def test_source_offset_at_or_below_the_stored_one_is_a_duplicate(
    event_factory, engine, offset
):
    first = apply_event(None, event_factory("purchase"), engine, source=("purchases", 7))
    assert first.state.offsets == {"purchases": 7}
    before = first.state.to_bytes()
    # A new event_id, but the record's offset was already applied: a redelivery.
    again = apply_event(
        first.state, event_factory("purchase"), engine, source=("purchases", offset)
    )
    assert again.duplicate
    assert again.actions == []
    assert again.state.order_count == 1
    assert again.state.to_bytes() == before


def test_source_offsets_are_tracked_per_topic(event_factory, engine):
    state = apply_event(None, event_factory("purchase"), engine, source=("purchases", 7)).state
    other = apply_event(state, event_factory("login"), engine, source=("logins", 0))
    assert not other.duplicate
    later = apply_event(other.state, event_factory("purchase"), engine, source=("purchases", 8))
    assert not later.duplicate
    assert later.state.order_count == 2
    assert later.state.offsets == {"purchases": 8, "logins": 0}


def test_redelivered_record_with_a_known_event_id_advances_the_offset(event_factory, engine):
    event = event_factory("login", event_id="l-1")
    state = apply_event(None, event, engine, source=("events", 1)).state
    outcome = apply_event(state, event, engine, source=("events", 2))
    assert outcome.duplicate
    assert outcome.state.offsets["events"] == 2


# --- out-of-order events -------------------------------------------------------------------

def test_older_purchase_after_newer_keeps_first_and_last_right(feed, event_factory, t0):
    feed(event_factory("purchase", day=10, amount="20"))
    feed(event_factory("purchase", day=2, amount="30"))
    state = feed.state()
    assert state.first_purchase_at == t0 + 2 * DAY
    assert state.last_purchase_at == t0 + 10 * DAY
    assert state.order_count == 2
    assert state.spend_e4 == 500_000
    assert state.purchase_days == {day_number(t0) + 2: 1, day_number(t0) + 10: 1}


def test_newer_purchase_after_older_moves_last_not_first(feed, event_factory, t0):
    feed(event_factory("purchase", day=2), event_factory("purchase", day=10),
         event_factory("purchase", day=5))
    assert feed.state().first_purchase_at == t0 + 2 * DAY
    assert feed.state().last_purchase_at == t0 + 10 * DAY


def test_clock_never_goes_back(feed, event_factory, t0):
    feed(event_factory("login", day=10))
    for day in (3, 9.5, 0):
        feed(event_factory("login", day=day))
        assert feed.state().clock == t0 + 10 * DAY
    feed(event_factory("login", day=11))
    assert feed.state().clock == t0 + 11 * DAY


def test_score_after_a_late_event_is_computed_at_the_clock(feed, event_factory):
    feed(event_factory("purchase", day=0), event_factory("login", day=48.5))
    # A late login 40 days before the clock is outside the 30-day window.
    feed(event_factory("login", day=8.5))
    assert feed.state().components == (50.0, 10.0, 80.0)
    assert feed.state().score == 20.0 + 3.0 + 24.0


def test_late_purchase_older_than_the_window_still_counts_in_history(feed, event_factory, t0):
    feed(event_factory("purchase", day=200, amount="10"))
    feed(event_factory("purchase", day=0, amount="10"))
    state = feed.state()
    assert state.order_count == 2
    assert state.first_purchase_at == t0
    assert state.purchase_days == {day_number(t0) + 200: 1}  # day 0 is out of the 90-day window


def test_older_rating_is_inserted_in_event_time_order(feed, event_factory, t0):
    for n, day in enumerate((10, 11, 12, 13, 14)):
        feed(event_factory("ticket", ticket_id=f"t{n}", status="closed", satisfaction=5, day=day))
    assert feed.state().components[2] == 100.0
    # Late rating older than all five: it is not among the last five by event time.
    feed(event_factory("ticket", ticket_id="old", status="closed", satisfaction=1, day=1))
    assert [r for _, r in feed.state().ratings] == [5, 5, 5, 5, 5]
    assert feed.state().components[2] == 100.0
    # Late rating in the middle: it is, and the oldest one drops out.
    feed(event_factory("ticket", ticket_id="mid", status="closed", satisfaction=1, day=12.5))
    ratings = feed.state().ratings
    assert [ts for ts, _ in ratings] == [t0 + d * DAY for d in (11, 12, 12.5, 13, 14)]
    assert [r for _, r in ratings] == [5, 5, 1, 5, 5]
    assert feed.state().components[2] == 80.0


def test_ratings_kept_follow_the_configured_sample(event_factory, engine_factory):
    engine = engine_factory(scoring=ScoringSettings(satisfaction_sample=2))
    state = None
    for n, rating in enumerate((1, 2, 5)):
        event = event_factory("ticket", ticket_id=f"t{n}", status="closed",
                              satisfaction=rating, day=n)
        state = apply_event(state, event, engine).state
    assert [r for _, r in state.ratings] == [2, 5]
    assert state.components[2] == 62.5


# --- tickets -------------------------------------------------------------------------------

def test_ticket_open_then_close(feed, event_factory, t0):
    feed(event_factory("ticket", ticket_id="t1", status="opened", priority="urgent", day=0))
    assert feed.state().open_tickets == {"t1": OpenTicket(t0, "urgent")}
    feed(event_factory("ticket", ticket_id="t1", status="closed", satisfaction=4, day=1))
    assert feed.state().open_tickets == {}
    assert feed.state().closed_tickets == ["t1"]
    assert feed.state().ratings == [(t0 + DAY, 4)]


def test_ticket_without_priority_is_normal(feed, event_factory):
    feed(event_factory("ticket", ticket_id="t1", status="opened"))
    assert feed.state().open_tickets["t1"].priority == "normal"


def test_late_open_after_close_neither_reopens_nor_acknowledges(feed, event_factory):
    closed = feed(event_factory("ticket", ticket_id="t1", status="closed", day=5))
    assert [a.rule_id for a in closed] == ["ticket_closed_survey"]
    late_open = feed(event_factory("ticket", ticket_id="t1", status="opened", day=1,
                                   priority="urgent"))
    assert late_open == []
    assert feed.state().open_tickets == {}
    # Much later: no overdue penalty from a ticket that is in fact closed.
    feed(event_factory("login", day=20))
    assert feed.state().components[2] == 80.0


def test_second_open_of_an_open_ticket_is_not_acknowledged_again(feed, event_factory, t0):
    feed(event_factory("ticket", ticket_id="t1", status="opened", day=0))
    assert feed(event_factory("ticket", ticket_id="t1", status="opened", day=1)) == []
    assert feed.state().open_tickets["t1"].opened_at == t0


def test_second_close_sends_no_second_survey(feed, event_factory):
    feed(event_factory("ticket", ticket_id="t1", status="opened", day=0))
    assert len(feed(event_factory("ticket", ticket_id="t1", status="closed", day=1))) == 1
    assert feed(event_factory("ticket", ticket_id="t1", status="closed", day=2)) == []
    assert feed.state().closed_tickets == ["t1"]


def test_overdue_open_ticket_lowers_the_score_at_the_next_event(feed, event_factory):
    feed(event_factory("ticket", ticket_id="t1", status="opened", day=0))
    feed(event_factory("login", hours=72))
    assert feed.state().components[2] == 80.0
    feed(event_factory("login", hours=73))
    assert feed.state().components[2] == 65.0
    feed(event_factory("ticket", ticket_id="t1", status="closed", hours=74))
    assert feed.state().components[2] == 80.0


# --- profiles ------------------------------------------------------------------------------

def test_profile_fields_are_stored(feed, event_factory):
    feed(event_factory(
        "profile", birthday="1985-06-15", signup_date="2023-01-02", tier="vip",
        account_manager="am-1", tags=["a", "b"], email="x@example.com", phone="+3312345678",
    ))
    state = feed.state()
    assert (state.birthday, state.signup_date) == ("1985-06-15", "2023-01-02")
    assert (state.tier, state.account_manager, state.tags) == ("vip", "am-1", ["a", "b"])
    assert (state.has_email, state.has_phone) == (True, True)


def test_profile_partial_update_leaves_absent_fields_unchanged(feed, event_factory):
    feed(event_factory(
        "profile", birthday="1985-06-15", signup_date="2023-01-02", tier="vip",
        account_manager="am-1", tags=["a", "b"], email="x@example.com", phone="+3312345678",
    ))
    feed(event_factory("profile", tags=["c"]))
    state = feed.state()
    assert state.tags == ["c"]  # replaced, not merged
    assert (state.birthday, state.signup_date) == ("1985-06-15", "2023-01-02")
    assert (state.tier, state.account_manager) == ("vip", "am-1")
    assert (state.has_email, state.has_phone) == (True, True)


def test_profile_explicit_null_or_empty_removes_a_channel(feed, event_factory):
    feed(event_factory("profile", email="x@example.com", phone="+3312345678"))
    feed(event_factory("profile", email=None))
    assert (feed.state().has_email, feed.state().has_phone) == (False, True)
    feed(event_factory("profile", phone=""))
    assert (feed.state().has_email, feed.state().has_phone) == (False, False)
    feed(event_factory("profile", tags=[]))
    assert feed.state().tags == []


def test_profile_tier_can_go_back_to_standard(feed, event_factory):
    feed(event_factory("profile", tier="vip"))
    feed(event_factory("profile", tier="standard"))
    assert feed.state().tier == "standard"


PII = {"name": "Zelda Quixote-Marsh", "email": "zelda.qm@example.org", "phone": "+44 7700 900123"}


def _pii_in(blob: bytes) -> list[str]:
    return [value for value in PII.values() if value.encode() in blob]


def test_personal_fields_never_reach_the_stored_state(feed, event_factory):
    feed(event_factory("purchase", amount="100"))
    feed(event_factory("profile", day=1, **PII))
    state = feed.state()
    assert (state.has_email, state.has_phone) == (True, True)
    blob = state.to_bytes()
    assert _pii_in(blob) == []
    assert b"Zelda" not in blob
    assert _pii_in(CustomerState.from_bytes(blob).to_bytes()) == []
    assert all(o.score_record is None or _pii_in(encode_record(o.score_record)) == []
               for o in feed.outcomes)


def test_personal_fields_never_reach_an_action_fired_by_a_profile_event(feed, event_factory):
    feed(event_factory("purchase", amount="100", day=0))  # score 64: the win-back is armed
    # The score fell below 60 on day 15 by time alone: the profile event's outcome carries the
    # timers due before it (onboarding day 7, win-back at the crossing, inactivity day 30),
    # fired at their own due times; none may carry the profile's personal fields.
    actions = feed(event_factory("profile", day=40, **PII))
    assert [a.rule_id for a in actions] == [
        "onboarding_tips", *["health_winback"] * 3, "inactive_30d_followup",
    ]
    assert {a.caused_by for a in actions} == {()}
    for action in actions:
        assert _pii_in(encode_action(action)) == []


def test_rule_variables_cannot_read_personal_fields(event_factory, engine):
    with pytest.raises(PackInvalid) as caught:
        rules_only({
            "id": "echo_profile",
            "trigger": {"on": "profile"},
            "actions": [{"type": "notification", "template": "t", "variables": {
                "name": "$event.name", "email": "$event.email", "phone": "$event.phone",
                "tags": "$event.tags",
            }}],
        })
    assert [p.loc[-1] for p in caught.value.problems] == ["name", "email", "phone"]
    pack = rules_only({
        "id": "echo_profile",
        "trigger": {"on": "profile"},
        "actions": [{"type": "notification", "template": "t",
                     "variables": {"tags": "$event.tags"}}],
    })
    custom = dataclasses.replace(engine, pack=pack)
    outcome = apply_event(None, event_factory("profile", tags=["t1"], **PII), custom)
    [action] = outcome.actions
    assert action.payload["variables"] == {"tags": ["t1"]}
    assert action.payload["channel"] == "email"
    assert _pii_in(encode_action(action)) == []


# --- state bytes ---------------------------------------------------------------------------

@pytest.fixture
def rich_history(event_factory):
    return [
        event_factory("profile", day=0, tier="standard", account_manager="am-7",
                      tags=["x", "y"], birthday="1990-02-03", email="a@b.c"),
        event_factory("purchase", day=0.5, amount="4999.9999"),
        event_factory("purchase", day=3, amount="0.0001"),
        event_factory("login", day=1), event_factory("login", day=2),
        event_factory("login", day=2.2),
        event_factory("ticket", day=2, ticket_id="t1", status="opened", priority="high"),
        event_factory("ticket", day=4, ticket_id="t2", status="opened", priority="low"),
        event_factory("ticket", day=5, ticket_id="t1", status="closed", satisfaction=3),
    ]


def test_state_bytes_round_trip(feed, rich_history):
    feed(*rich_history)
    state = feed.state()
    restored = CustomerState.from_bytes(state.to_bytes())
    assert restored == state
    assert restored.to_bytes() == state.to_bytes()
    assert isinstance(restored.open_tickets["t2"], OpenTicket)
    assert next(iter(restored.purchase_days)) == day_number(state.first_purchase_at)
    assert isinstance(restored.ratings[0], tuple)
    assert isinstance(restored.components, tuple)
    assert isinstance(restored.rfm, tuple)


def test_empty_state_round_trips(state_factory):
    state = state_factory()
    assert CustomerState.from_bytes(state.to_bytes()) == state


def test_processing_continues_identically_after_a_round_trip(
    feed_factory, rich_history, event_factory
):
    later = [
        event_factory("purchase", day=6, amount="5000"),     # crosses 10,000: VIP
        event_factory("login", day=50),                      # score drops: win-back
        event_factory("ticket", day=51, ticket_id="t2", status="closed", satisfaction=5),
    ]
    live = feed_factory()
    live(*rich_history)
    restarted = feed_factory()
    restarted(*rich_history)
    restarted.states["c1"] = CustomerState.from_bytes(restarted.state().to_bytes())
    live_actions = live(*later)
    assert restarted(*later) == live_actions
    assert {a.rule_id for a in live_actions} >= {"vip_upgrade", "health_winback"}
    assert restarted.state() == live.state()


def test_stored_state_keeps_the_spend_and_the_clock_exact(feed, rich_history):
    feed(*rich_history)
    stored = CustomerState.from_bytes(feed.state().to_bytes())
    assert stored.customer_id == "c1"
    assert stored.spend_e4 == 50_000_000
    assert Decimal(stored.spend_e4) / 10_000 == Decimal("5000")
    assert stored.clock == feed.state().clock
    assert rfc3339(stored.clock).startswith("2024-03-06")


# --- regression found in review ---

def test_engagement_window_longer_than_30_days_counts_older_logins(event_factory, engine_factory):
    engine = engine_factory(scoring=ScoringSettings(engagement_window_days=60))
    state = apply_event(None, event_factory("login", day=0), engine).state
    state = apply_event(state, event_factory("login", day=40), engine).state
    assert state.components[1] == 20.0
