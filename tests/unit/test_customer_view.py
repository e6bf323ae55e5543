"""The customer 360 (churnguard.core.customer_view): states built through the real core
(apply_event with the default engine), then the view read back — the score trend, the
actions with their rule version and cause, episodes, open tickets, no personal data — and
states stored before the 360's fields existed still load."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pytest

from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.customer_view import customer_view
from churnguard.core.processor import apply_event
from churnguard.core.state import MAX_LOGGED_ACTIONS, MAX_SCORE_TREND, CustomerState
from schemas.events import Login

PII = {"name": "Zelda Quixote-Marsh", "email": "zelda.qm@example.org",
       "phone": "+44 7700 900123"}
BIRTHDAY = "1987-06-05"


def _json(view: dict[str, Any]) -> dict[str, Any]:
    """The view through JSON: it must encode, and come back equal (no tuples, no floats
    for times, nothing orjson would have to guess)."""
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(view))
    assert decoded == view
    return decoded


@pytest.fixture
def story(feed, event_factory):
    """A customer with a profile (personal fields included), a purchase and tickets, whose
    score fell below 60 by time alone (t2 overdue on day 5): a win-back episode is open."""
    feed(event_factory("profile", day=0, tier="standard", account_manager="am-7",
                       region="north", timezone="Europe/Paris", tags=["beta"],
                       signup_date="2023-01-15", birthday=BIRTHDAY, **PII))
    feed(event_factory("purchase", day=0, hours=1, amount="50", event_id="buy-1"))
    feed(event_factory("ticket", day=1, ticket_id="t1", status="opened", priority="high",
                       category="billing", event_id="open-t1"))
    feed(event_factory("ticket", day=2, ticket_id="t2", status="opened", priority="low",
                       category="delivery", event_id="open-t2"))
    feed(event_factory("ticket", day=3, ticket_id="t1", status="closed", satisfaction=4,
                       event_id="close-t1"))
    # Day 20: the timers due before it fire first, caused by no event: t1's SLA (day 2), the
    # win-back at the score's crossing below 60 (day 5), onboarding (day 7), t2's SLA (day 9).
    feed(event_factory("login", day=20, event_id="login-20"))
    return feed


def test_the_view_is_json_and_shows_the_profile_without_personal_data(story, engine):
    state = story.state()
    view = _json(customer_view(state, engine.pack))
    assert view["customer_id"] == "c1"
    assert view["profile"] == {
        "tier": "standard", "account_manager": "am-7", "region": "north",
        "timezone": "Europe/Paris", "signup_date": "2023-01-15", "tags": ["beta"],
        "has_email": True, "has_phone": True,
    }
    assert view["tags"] == ["beta"]
    blob = orjson.dumps(view)
    for value in [*PII.values(), BIRTHDAY, "Zelda", "zelda"]:
        assert value.encode() not in blob, value
    assert b"birthday" not in blob
    # The state keeps the birthday (anniversary rules): only the view leaves it out.
    assert state.birthday == BIRTHDAY


def test_lifetime_figures_score_and_segment(story, engine, t0):
    state = story.state()
    view = customer_view(state, engine.pack)
    assert view["as_of"] == rfc3339(state.clock) == rfc3339(t0 + 20 * DAY)
    assert view["lifetime"] == {
        "order_count": 1,
        "lifetime_spend": 50.0,
        "first_purchase_at": rfc3339(t0 + HOUR),
        "last_purchase_at": rfc3339(t0 + HOUR),
        "last_active_at": rfc3339(t0 + 20 * DAY),
        "last_event_at": rfc3339(t0 + 20 * DAY),
        "purchases_90d": 1,
        "logins_30d": 1,
        "closed_tickets_kept": 1,
    }
    recency, engagement, service = state.components
    assert view["score"] == {
        "value": state.score, "band": "poor",
        "components": {"recency": recency, "engagement": engagement, "service": service},
    }
    assert state.score < 60
    assert view["segment"] == state.segment
    assert view["rfm"] == dict(zip("rfm", state.rfm, strict=True))
    assert view["next_due"] == rfc3339(state.next_due)
    assert view["retained_until"] == rfc3339(t0 + 20 * DAY + 1095 * DAY)  # (data retention)
    # The windows are counted at `now`: 120 days on, the purchase and the login are out.
    later = customer_view(state, engine.pack, now=t0 + 120 * DAY)["lifetime"]
    assert (later["purchases_90d"], later["logins_30d"]) == (0, 0)
    assert later["order_count"] == 1


def test_a_customer_never_seen_buying_is_unscored_until_rescored(engine):
    view = _json(customer_view(CustomerState("c0"), engine.pack))
    assert view["score"] == {"value": None, "band": "unscored", "components": None}
    assert (view["rfm"], view["segment"], view["next_due"]) == (None, None, None)
    assert view["score_trend"] == view["actions"] == view["open_episodes"] == []
    assert view["lifetime"]["first_purchase_at"] is None


def test_open_tickets_are_shown_with_their_sla(story, engine, t0):
    view = customer_view(story.state(), engine.pack)
    # t1 was closed; t2 (low: 168 h) is still open, and past its SLA (it escalated).
    assert view["open_tickets"] == [{
        "ticket_id": "t2", "opened_at": rfc3339(t0 + 2 * DAY), "priority": "low",
        "category": "delivery", "sla_due_at": rfc3339(t0 + 2 * DAY + 168 * HOUR),
    }]
    assert "ticket_sla_breach" in {a["rule_id"] for a in view["actions"]}


def test_actions_newest_first_with_rule_version_and_cause(story, engine):
    state = story.state()
    view = customer_view(state, engine.pack)
    sent = story.all_actions()
    assert len(sent) <= MAX_LOGGED_ACTIONS
    assert [(a["action_id"], a["rule_id"], a["rule_version"], a["caused_by"])
            for a in view["actions"]] == [
        (a.action_id, a.rule_id, a.rule_version, list(a.caused_by)) for a in reversed(sent)]
    times = [parse_rfc3339(a["at"]) for a in view["actions"]]
    assert times == sorted(times, reverse=True)
    by_rule: dict[str, dict[str, Any]] = {}
    for shown in view["actions"]:
        by_rule.setdefault(shown["rule_id"], shown)  # each rule's newest
    # Caused by an event, or by time alone.
    assert by_rule["ticket_opened_ack"]["caused_by"] == ["open-t2"]  # the newest of two
    assert by_rule["ticket_closed_survey"]["caused_by"] == ["close-t1"]
    assert by_rule["onboarding_tips"]["caused_by"] == []
    assert {a["rule_version"] for a in view["actions"]} == {1}  # the shipped pack's rules
    # Targets: the channel, the assignee, the coupon's code.
    winback = [a for a in view["actions"] if a["rule_id"] == "health_winback"]
    assert [a["type"] for a in winback] == ["coupon", "task", "notification"]
    coupon, task, notification = winback
    assert notification["target"] == "email"  # the profile has an email address
    assert task["target"] == "am-7"
    # The code itself is a bearer secret: only its last four characters are shown.
    assert coupon["target"].startswith("…")
    assert len(coupon["target"]) == 5
    assert coupon["coupon"] == {"value": 15.0, "kind": "percent",
                                "expires_at": rfc3339(parse_rfc3339(coupon["at"]) + 30 * DAY)}
    assert all(a["feedback"] == [] and a["redeemed"] is False for a in view["actions"])


def test_a_published_rule_version_is_shown(feed_factory, engine_factory, event_factory):
    feed = feed_factory(engine_factory(changes={"rules.ticket_opened_ack.version": 3}))
    feed(event_factory("ticket", ticket_id="t9", status="opened", event_id="open-t9"))
    [action] = customer_view(feed.state(), feed.engine.pack)["actions"]
    assert (action["rule_id"], action["rule_version"], action["caused_by"]) == (
        "ticket_opened_ack", 3, ["open-t9"])
    assert action["target"] == "push"  # no contact channel known: push


def test_feedback_and_redemption_are_decoded(story, engine, event_factory):
    by_type = {a["type"]: a for a in customer_view(story.state(), engine.pack)["actions"]
               if a["rule_id"] == "health_winback"}
    notification, coupon = by_type["notification"], by_type["coupon"]
    for status in ("opened", "delivered", "opened"):  # reported twice: shown once
        story(event_factory("action_feedback", day=21, action_id=notification["action_id"],
                            status=status))
    code = next(a.target for a in story.state().actions_log
                if a.action_id == coupon["action_id"])
    story(event_factory("purchase", day=22, amount="80", coupon_code=code))
    after = {a["action_id"]: a for a in customer_view(story.state(), engine.pack)["actions"]}
    assert after[notification["action_id"]]["feedback"] == ["delivered", "opened"]
    assert after[notification["action_id"]]["redeemed"] is False
    assert after[coupon["action_id"]]["redeemed"] is True
    assert after[coupon["action_id"]]["feedback"] == []


def test_a_treated_episode_is_shown_until_recovered(story, engine, event_factory, t0):
    state = story.state()
    [episode] = customer_view(state, engine.pack)["open_episodes"]
    ids = [a["action_id"] for a in customer_view(state, engine.pack)["actions"]
           if a["rule_id"] == "health_winback"]
    started = parse_rfc3339(episode["started_at"])
    assert t0 + 3 * DAY < started < t0 + 20 * DAY
    assert episode == {
        "rule_id": "health_winback", "arm": "treated", "started_at": episode["started_at"],
        "ends_at": rfc3339(started + 30 * DAY), "threshold": 60.0,
        "action_ids": ids[::-1],  # in the rule's order; the view's actions are newest first
        "recovered": False, "recovered_at": None, "purchased": False,
    }
    story(event_factory("purchase", day=21, amount="20"))
    [recovered] = customer_view(story.state(), engine.pack)["open_episodes"]
    assert (recovered["recovered"], recovered["purchased"]) == (True, True)
    assert recovered["recovered_at"] == rfc3339(t0 + 21 * DAY)


def test_a_held_out_episode_is_shown_without_actions(feed_factory, engine_factory,
                                                     event_factory, t0):
    feed = feed_factory(engine_factory(
        changes={"rules.health_winback.guards": {"holdout_percent": 100}}))
    feed(event_factory("purchase", day=0, amount="50"))
    feed(event_factory("login", day=40))
    view = _json(customer_view(feed.state(), feed.engine.pack))
    [episode] = view["open_episodes"]
    assert episode["arm"] == "held_out"
    assert len(episode["action_ids"]) == 3  # the ones it would have sent
    assert "health_winback" not in {a["rule_id"] for a in view["actions"]}


def test_score_trend_keeps_only_score_changes(feed, event_factory, engine, t0):
    first = feed(event_factory("purchase", day=0, amount="50"))
    assert first == []
    assert feed.state().score_trend == [(int(t0), 64.0)]
    # A second order an hour later: the segment changes (F 1 → 2), the score does not.
    feed(event_factory("purchase", day=0, hours=1, amount="50"))
    outcome = feed.outcomes[-1]
    assert outcome.score_record is not None
    assert (outcome.score_record["segment"], outcome.score_record["score"]) == (
        "promising", 64.0)
    assert feed.state().score_trend == [(int(t0), 64.0)]
    # A login changes the score: a new point.
    feed(event_factory("login", day=1))
    assert feed.state().score_trend == [(int(t0), 64.0), (int(t0 + DAY), 67.0)]
    view = customer_view(feed.state(), engine.pack)
    assert view["score_trend"] == [{"at": rfc3339(t0), "score": 64.0},
                                   {"at": rfc3339(t0 + DAY), "score": 67.0}]


def test_score_trend_is_bounded_to_the_latest_changes(feed, event_factory, engine):
    feed(event_factory("purchase", day=0, amount="50"))
    for day in range(1, 61):
        feed(event_factory("login", day=day))
    # Every score change the core reported (score records also come for segment changes).
    changes: list[tuple[int, float]] = []
    for outcome in feed.outcomes:
        for record in (c.to_record() for c in outcome.score_changes):
            if not changes or changes[-1][1] != record["score"]:
                changes.append((int(parse_rfc3339(record["at"])), record["score"]))
    assert len(changes) > MAX_SCORE_TREND
    state = feed.state()
    assert len(state.score_trend) == MAX_SCORE_TREND == 30
    assert state.score_trend == changes[-MAX_SCORE_TREND:]
    assert state.score_trend[-1][1] == state.score
    trend = customer_view(state, engine.pack)["score_trend"]
    assert [point["score"] for point in trend] == [score for _, score in changes[-30:]]
    times = [parse_rfc3339(point["at"]) for point in trend]
    assert times == sorted(times)  # oldest first
    assert all(a["score"] != b["score"] for a, b in pairwise(trend))


def test_new_fields_round_trip(story):
    state = story.state()
    restored = CustomerState.from_bytes(state.to_bytes())
    assert restored == state
    assert restored.to_bytes() == state.to_bytes()
    assert all(isinstance(point, tuple) for point in restored.score_trend)
    assert all(isinstance(logged.caused_by, tuple) for logged in restored.actions_log)
    # Compact: whole seconds in the trend, and the two new action fields last in an entry.
    assert all(isinstance(at, int) for at, _ in restored.score_trend)
    assert restored.actions_log[0][-2:] == (1, state.actions_log[0].caused_by)


@pytest.mark.parametrize("fields", [13, 11, 9])
def test_a_state_stored_before_the_360_still_loads(story, engine, fields):
    """Before: no score_trend, and LoggedAction entries of 13 fields, without rule_version
    and caused_by. Shorter entries load too: every field after the 9th has a default. Such
    states are JSON (the form before the binary one)."""
    old = orjson.loads(story.state().to_json_bytes())
    del old["score_trend"]
    old["actions_log"] = [entry[:fields] for entry in old["actions_log"]]
    state = CustomerState.from_bytes(orjson.dumps(old))
    assert state.score_trend == []
    assert state.actions_log
    assert {(a.rule_version, a.caused_by) for a in state.actions_log} == {(0, ())}
    view = _json(customer_view(state, engine.pack))
    assert view["score_trend"] == []
    assert {(a["rule_version"], tuple(a["caused_by"])) for a in view["actions"]} == {(0, ())}
    # Processing goes on, and the new fields fill from then on.
    login = state.clock + DAY
    event = Login(event_id="later", customer_id="c1", occurred_at=rfc3339(login))
    after = apply_event(state, event, engine).state
    assert [at for at, _ in after.score_trend] == [int(login)]
