"""The triggers rule packs added: segment changes, tags, custom events; and conditions and
branches evaluated by the engine (the language itself: test_conditions.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from churnguard.core.clock import DAY, rfc3339
from churnguard.core.pack import PackInvalid
from churnguard.core.processor import Engine, advance
from churnguard.replay import replay
from tests.unit.packs import rules_only


def _rule(rule_id: str, trigger: dict, *, conditions=(), actions=None, **extra) -> dict:
    return {
        "id": rule_id,
        "trigger": trigger,
        "conditions": list(conditions),
        "actions": actions or [{"type": "notification", "template": rule_id}],
        **extra,
    }


def engine_of(*rules: dict) -> Engine:
    return Engine(rules_only(*rules))


# --- segment changes ------------------------------------------------------------------------

def test_segment_entered_fires_on_the_event_that_changes_it(feed_factory, event_factory):
    feed = feed_factory(engine_of(
        _rule("hello_new", {"on": "segment_entered", "segment": "new"},
              actions=[{"type": "notification", "template": "welcome",
                        "variables": {"from": "$segment.previous"}}]),
    ))
    assert feed(event_factory("login")) == []  # prospect: entered `prospect`, not `new`
    [welcome] = feed(event_factory("purchase", hours=1))
    assert welcome.rule_id == "hello_new"
    assert welcome.payload["variables"] == {"from": "prospect"}
    assert welcome.segment == "new"
    assert feed(event_factory("login", hours=2)) == []  # still new: no second firing


def test_segment_left_fires_by_time_alone_when_recency_ages(feed_factory, event_factory, t0):
    """A lone purchase is `new` (R 5, F 1); its recency grade drops after 14 days (R 4: still
    new), after 30 days R 3 → `promising`, so `new` is left at the first second past 30 d."""
    feed = feed_factory(engine_of(
        _rule("new_no_more", {"on": "segment_left", "segment": "new"}),
    ))
    feed(event_factory("purchase"))
    state = feed.state()
    assert state.segment == "new"
    assert state.next_due == t0 + 14 * DAY + 1  # the first recency boundary
    [left] = advance(state, t0 + 60 * DAY, feed.engine).actions
    assert left.created_at == rfc3339(t0 + 30 * DAY + 1)
    assert left.caused_by == ()
    assert state.segment == "promising"  # R 2 (hibernating) only from 60 d + 1 s


def test_segment_triggers_replay_like_the_live_path(event_factory, t0):
    engine = engine_of(
        _rule("left_new", {"on": "segment_left", "segment": "new"}),
        _rule("at_risk", {"on": "segment_entered", "segment": "hibernating"}),
    )
    events = [event_factory("purchase", customer_id=c, hours=h)
              for c, h in (("a", 0), ("b", 5), ("a", 30 * 24 + 1))]
    actions = list(replay(events, engine, until=t0 + 200 * DAY))
    # a leaves `new` by time at 30 d + 1 s (R 3: promising), an hour before its second
    # purchase; b at 30 d 5 h + 1 s. With two orders a is `at_risk` later, never
    # `hibernating`; b, with one, is hibernating once R drops to 2 (after 60 days).
    assert [(a.customer_id, a.rule_id, a.created_at) for a in actions] == [
        ("a", "left_new", rfc3339(t0 + 30 * DAY + 1)),
        ("b", "left_new", rfc3339(t0 + 30 * DAY + 5 * 3600 + 1)),
        ("b", "at_risk", rfc3339(t0 + 60 * DAY + 5 * 3600 + 1)),
    ]
    # Same ids as a second replay: time-driven keys are stable.
    again = list(replay(events, engine, until=t0 + 200 * DAY))
    assert [a.action_id for a in again] == [a.action_id for a in actions]


def test_without_segment_rules_no_segment_dues_are_kept(feed, event_factory):
    feed(event_factory("purchase"))
    # The default pack has no segment trigger: the next due is its own timers only.
    assert feed.state().next_due != feed.state().clock + 14 * DAY + 1


def test_a_segment_trigger_must_name_a_segment_of_the_pack():
    with pytest.raises(PackInvalid) as caught:
        rules_only(_rule("x", {"on": "segment_entered", "segment": "whales"}))
    [problem] = caught.value.problems
    assert problem.loc == ("rules", 0, "trigger", "segment")
    assert "unknown segment 'whales'" in problem.message
    assert "at_risk" in problem.message


# --- tags -----------------------------------------------------------------------------------

def test_tag_added_and_removed_fire_on_profile_changes(feed_factory, event_factory):
    feed = feed_factory(engine_of(
        _rule("price_sensitive", {"on": "tag_added", "tag": "price_sensitive"}),
        _rule("price_ok", {"on": "tag_removed", "tag": "price_sensitive"}),
    ))
    assert [a.rule_id for a in feed(event_factory("profile", tags=["a"]))] == []
    assert [a.rule_id for a in feed(event_factory("profile", hours=1,
                                                  tags=["a", "price_sensitive"]))] == [
        "price_sensitive"]
    assert feed(event_factory("profile", hours=2, tags=["price_sensitive", "b"])) == []
    assert [a.rule_id for a in feed(event_factory("profile", hours=3, tags=[]))] == ["price_ok"]


def test_tags_added_by_our_own_actions_do_not_cascade(feed_factory, event_factory):
    feed = feed_factory(engine_of(
        _rule("tagger", {"on": "login"},
              actions=[{"type": "profile_update", "add_tags": ["engaged"]}]),
        _rule("on_engaged", {"on": "tag_added", "tag": "engaged"}),
    ))
    assert [a.rule_id for a in feed(event_factory("login"))] == ["tagger"]
    assert feed.state().tags == ["engaged"]


# --- custom events --------------------------------------------------------------------------

def test_custom_event_rule_reads_its_properties(feed_factory, event_factory):
    feed = feed_factory(engine_of(
        _rule("vip_shipped", {"on": "custom", "name": "order_shipped"},
              conditions=["state.tier == vip", "event.properties.carrier in [dhl, ups]"],
              actions=[{"type": "notification", "template": "care_sms", "channel": "sms",
                        "variables": {"tracking": "$event.properties.tracking"}}]),
    ))
    shipped = {"carrier": "dhl", "tracking": "JD0123"}
    assert feed(event_factory("custom", name="order_shipped", properties=shipped)) == []
    feed(event_factory("profile", hours=1, tier="vip"))
    assert feed(event_factory("custom", hours=2, name="order_viewed", properties=shipped)) == []
    assert feed(event_factory("custom", hours=3, name="order_shipped",
                              properties={"carrier": "fedex"})) == []
    [sms] = feed(event_factory("custom", hours=4, name="order_shipped", properties=shipped))
    assert sms.payload == {"template": "care_sms", "channel": "sms",
                           "variables": {"tracking": "JD0123"}}


def test_a_custom_event_is_not_activity(feed_factory, event_factory):
    feed = feed_factory(engine_of(_rule("c", {"on": "custom", "name": "ping"})))
    feed(event_factory("custom", name="ping"))
    state = feed.state()
    assert state.last_active_at is None
    assert state.order_count == 0


# --- conditions and branches in the engine --------------------------------------------------

def test_a_rule_condition_and_an_action_branch(feed_factory, event_factory):
    feed = feed_factory(engine_of(
        _rule("big_order", {"on": "purchase"}, conditions=["event.amount >= 500"],
              actions=[
                  {"type": "notification", "template": "thanks"},
                  {"type": "task", "assignee": "supervisor", "title": "VIP big order",
                   "when": {"or": ["state.tier == vip", "state.lifetime_spend >= 5000"]}},
              ]),
    ))
    assert feed(event_factory("purchase", amount="499.99")) == []
    assert [a.type for a in feed(event_factory("purchase", hours=1, amount="500"))] == [
        "notification"]
    feed(event_factory("profile", hours=2, tier="vip"))
    assert [a.type for a in feed(event_factory("purchase", hours=3, amount="600"))] == [
        "notification", "task"]


def test_conditions_on_the_business_clock(feed_factory, event_factory):
    """now.weekday / now.hour are in the pack's time zone."""
    engine = engine_of(_rule("weekend", {"on": "login"},
                             conditions=["now.weekday in [sat, sun]", "now.hour < 9"]))
    engine = Engine(rules_only(*[r.spec.model_dump() for r in engine.pack.rules]))
    feed = feed_factory(engine)
    saturday_7_utc = datetime(2024, 3, 2, 7, 0, tzinfo=UTC).isoformat()
    friday_7_utc = datetime(2024, 3, 1, 7, 0, tzinfo=UTC).isoformat()
    assert feed(event_factory("login", occurred_at=friday_7_utc)) == []
    assert [a.rule_id for a in feed(event_factory("login", occurred_at=saturday_7_utc))] == [
        "weekend"]


def test_a_profile_update_is_seen_by_the_later_actions_of_the_rule(feed_factory,
                                                                  event_factory):
    feed = feed_factory(engine_of(
        _rule("promote", {"on": "login"}, actions=[
            {"type": "profile_update", "set": {"tier": "vip"}},
            {"type": "notification", "template": "vip_now", "when": "state.tier == vip"},
        ]),
    ))
    assert [a.type for a in feed(event_factory("login"))] == ["profile_update", "notification"]


@pytest.mark.parametrize(("trigger", "field", "expected"), [
    ({"on": "login"}, "$event.amount", "sees login events, which have no 'amount'"),
    ({"on": "inactivity", "days": 3}, "$event.ticket_id", "fires with time alone"),
    ({"on": "profile"}, "$event.email", "no 'email'"),
])
def test_event_fields_a_rule_never_sees_are_refused(trigger, field, expected):
    with pytest.raises(PackInvalid) as caught:
        rules_only(_rule("x", trigger, actions=[
            {"type": "notification", "template": "t", "variables": {"v": field}}]))
    [problem] = caught.value.problems
    assert problem.loc == ("rules", 0, "actions", 0, "variables", "v")
    assert expected in problem.message
