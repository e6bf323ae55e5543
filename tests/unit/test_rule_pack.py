"""The default rule pack through apply_event, its settings, and the rule-engine contract."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from pydantic import ValidationError

from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.pack import PackInvalid, RuleSpec, ThresholdTrigger, build_pack
from churnguard.core.processor import advance, apply_event
from churnguard.core.rules import action_id, next_due
from streams.codecs import encode_action
from tests.unit.packs import make_pack, only_retention_due, pack_data, rules_only

CONTRACT_FIELDS = [
    "action_id", "type", "customer_id", "rule_id", "rule_version", "pack_version", "created_at",
    "caused_by",
    "health_score", "segment", "payload",
]


# --- tickets -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("priority", "hours"),
    [("urgent", 4), ("high", 24), ("normal", 72), ("low", 168), (None, 72)],
)
def test_ticket_opened_ack_promises_resolution_by_priority(
    feed, event_factory, t0, priority, hours
):
    extra = {} if priority is None else {"priority": priority}
    opened = event_factory("ticket", event_id="tk-1", ticket_id="T-9", status="opened",
                           day=1, **extra)
    [ack] = feed(opened)
    assert (ack.rule_id, ack.type) == ("ticket_opened_ack", "notification")
    assert ack.payload["template"] == "ticket_acknowledgement"
    assert ack.payload["variables"] == {
        "ticket_id": "T-9",
        "priority": priority or "normal",
        "expected_resolution_hours": hours,
        "expected_resolution_at": rfc3339(t0 + DAY + hours * HOUR),
    }
    assert ack.caused_by == ("tk-1",)
    assert ack.created_at == rfc3339(t0 + DAY)


def test_ticket_sla_hours_are_configurable(feed_factory, engine_factory, event_factory, t0):
    feed = feed_factory(engine_factory(changes={
        "ticket_sla_hours": {"urgent": 1, "high": 2, "normal": 3, "low": 4}}))
    [ack] = feed(event_factory("ticket", status="opened", priority="low"))
    assert ack.payload["variables"]["expected_resolution_hours"] == 4
    assert ack.payload["variables"]["expected_resolution_at"] == rfc3339(t0 + 4 * HOUR)


def test_ticket_closed_survey(feed, event_factory):
    feed(event_factory("ticket", ticket_id="T-1", status="opened", day=0))
    [survey] = feed(event_factory("ticket", ticket_id="T-1", status="closed", day=1,
                                  satisfaction=2))
    assert (survey.rule_id, survey.type) == ("ticket_closed_survey", "notification")
    assert survey.payload["template"] == "satisfaction_survey"
    assert survey.payload["variables"] == {"ticket_id": "T-1"}


@pytest.mark.parametrize(
    ("profile", "channel"),
    [
        ({"email": "a@b.c", "phone": "+1"}, "email"),
        ({"email": "a@b.c"}, "email"),
        ({"phone": "+1"}, "sms"),
        ({}, "push"),
    ],
)
def test_notification_channel_follows_known_contact_channels(
    feed, event_factory, profile, channel
):
    feed(event_factory("profile", **profile))
    [ack] = feed(event_factory("ticket", status="opened"))
    assert ack.payload["channel"] == channel


# --- vip_upgrade ---------------------------------------------------------------------------

def test_vip_upgrade_fires_when_lifetime_spend_reaches_10000(feed, event_factory):
    feed(event_factory("profile", email="a@b.c"))
    assert feed(event_factory("purchase", amount="6000", day=1)) == []
    actions = [a for a in feed(event_factory("purchase", amount="4000", day=2))
               if a.rule_id == "vip_upgrade"]
    assert [a.type for a in actions] == ["profile_update", "notification"]
    update, welcome = actions
    assert update.payload == {"set": {"tier": "vip"}, "add_tags": ["vip"]}
    assert welcome.payload["template"] == "vip_welcome"
    assert welcome.payload["variables"] == {"lifetime_spend": 10_000.0}
    state = feed.state()
    assert state.tier == "vip"
    assert "vip" in state.tags


def test_vip_upgrade_not_below_the_threshold(feed, event_factory):
    feed(event_factory("profile"))
    feed(event_factory("purchase", amount="5000"), event_factory("purchase", amount="4999.9999"))
    assert all(a.rule_id != "vip_upgrade" for a in feed.all_actions())
    assert feed.state().tier == "standard"


def test_vip_upgrade_fires_exactly_once(feed, event_factory):
    feed(event_factory("profile"))
    for day in range(6):
        feed(event_factory("purchase", amount="3000", day=day))
    vip = [a for a in feed.all_actions() if a.rule_id == "vip_upgrade"]
    assert len(vip) == 2  # profile_update + notification, once
    assert vip[0].caused_by == vip[1].caused_by
    # Even after the CRM resets the tier, spending more does not upgrade again.
    feed(event_factory("profile", tier="standard", day=7))
    feed(event_factory("purchase", amount="50000", day=8))
    assert len([a for a in feed.all_actions() if a.rule_id == "vip_upgrade"]) == 2


def test_no_vip_upgrade_for_a_customer_already_vip_by_profile(feed, event_factory):
    feed(event_factory("profile", tier="vip"))
    feed(event_factory("purchase", amount="6000", day=1),
         event_factory("purchase", amount="6000", day=2),
         event_factory("purchase", amount="6000", day=3))
    assert all(a.rule_id != "vip_upgrade" for a in feed.all_actions())
    assert feed.state().tier == "vip"
    assert "vip" not in feed.state().tags


def test_vip_threshold_is_configurable(feed_factory, engine_factory, event_factory):
    feed = feed_factory(engine_factory(changes={"rules.vip_upgrade.trigger.at_least": 500}))
    feed(event_factory("profile"))
    assert feed(event_factory("purchase", amount="499.99")) == []
    actions = feed(event_factory("purchase", amount="0.01"))
    assert [(a.rule_id, a.type) for a in actions] == [
        ("vip_upgrade", "profile_update"), ("vip_upgrade", "notification"),
    ]
    assert actions[1].payload["variables"]["lifetime_spend"] == 500.0


def test_vip_upgrade_counts_out_of_order_purchases(feed, event_factory):
    feed(event_factory("profile", day=0))
    feed(event_factory("purchase", amount="7000", day=10))
    actions = feed(event_factory("purchase", amount="3000", day=5))
    assert [a.rule_id for a in actions if a.rule_id == "vip_upgrade"] == ["vip_upgrade"] * 2
    assert actions[0].created_at == rfc3339(feed.state().clock)


def test_vip_upgrade_when_the_very_first_purchase_crosses_the_threshold(feed, event_factory):
    feed(event_factory("purchase", amount="12000", day=0))
    feed(event_factory("purchase", amount="100", day=1))
    assert [a.type for a in feed.all_actions() if a.rule_id == "vip_upgrade"] == [
        "profile_update", "notification",
    ]
    assert feed.state().tier == "vip"


# --- health_winback ------------------------------------------------------------------------
# A purchase alone scores 64 (recency 100, service 80). With no further event, recency decays
# after 7 days: 0.4 × recency + 24 drops below 60 (59.99, the score is rounded) 15.310375 days
# later (T0 + 15 d 7 h 26 min 56.4 s); the win-back fires at the first whole second after
# that, 2024-03-16T19:26:57Z, by time alone (caused_by == ()), not at the next event. A login
# 30 days after the purchase then scores 0.4 × 72.29 + 3 + 24 = 55.92.
# These tests are about the win-back: the time-driven rules are disabled (see test_timers.py).

TIMER_RULES = frozenset({
    "onboarding_tips", "birthday_coupon", "signup_anniversary_coupon",
    "inactive_30d_followup", "ticket_sla_breach",
})
CROSSING_S = 15 * DAY + 7 * HOUR + 26 * 60 + 57  # after a lone purchase at T0
CROSSING = "2024-03-16T19:26:57Z"


def winback_rules(**changes) -> dict:
    """engine_factory keywords: the default pack without its timers, fields changed."""
    return {"disable": TIMER_RULES, "changes": changes}


@pytest.fixture
def winback_feed(feed_factory, engine_factory):
    return feed_factory(engine_factory(**winback_rules()))


def test_winback_fires_when_the_score_drops_below_60(winback_feed, event_factory, t0):
    feed = winback_feed
    feed(event_factory("purchase", day=0))
    assert feed.state().score == 64.0
    assert feed.state().next_due == t0 + CROSSING_S
    assert rfc3339(t0 + CROSSING_S) == CROSSING
    actions = feed(event_factory("login", event_id="later", day=30))
    assert feed.state().score == pytest.approx(55.92)
    assert [(a.rule_id, a.type) for a in actions] == [
        ("health_winback", "notification"),
        ("health_winback", "task"),
        ("health_winback", "coupon"),
    ]
    care, task, coupon = actions
    crossed = t0 + CROSSING_S
    assert all(a.created_at == CROSSING for a in actions)
    assert all(a.caused_by == () for a in actions)  # time alone, not the login
    assert all(a.health_score == 59.99 for a in actions)
    assert care.payload["template"] == "winback_care"
    assert care.payload["variables"] == {"health_score": 59.99, "segment": "new"}
    assert task.payload == {
        "assignee": "retention-team",
        "priority": "high",
        "due_at": rfc3339(crossed + 24 * HOUR),
        "title": "Win-back call: health score dropped",
    }
    assert coupon.payload["value"] == 15
    assert coupon.payload["kind"] == "percent"
    assert coupon.payload["expires_at"] == rfc3339(crossed + 30 * DAY)
    assert re.fullmatch(r"CG-[0-9A-F]{10}", coupon.payload["code"])
    # The action ids use the due time (at:<due>), not the login's event id.
    assert [a.action_id for a in actions] == [
        action_id("c1", "health_winback", f"at:{crossed!r}", i) for i in range(3)
    ]
    # The crossing has its own score record (no cause), then the login's.
    records = [c.to_record() for c in feed.outcomes[-1].score_changes]
    assert [(r["at"], r["score"], r["caused_by"]) for r in records] == [
        (CROSSING, 59.99, []),
        (rfc3339(t0 + 30 * DAY), 55.92, ["later"]),
    ]


def test_no_winback_for_a_customer_never_at_60(winback_feed, event_factory):
    feed = winback_feed
    for day in range(12):
        feed(event_factory("login", day=day))  # at most 0 + 30 + 24 = 54
    # Nothing to decay below: no crossing ahead.
    assert only_retention_due(feed.engine.pack, feed.state())
    feed(event_factory("login", day=60))
    assert feed.state().score < 60
    assert feed.all_actions() == []


def test_winback_not_again_while_staying_below(winback_feed, event_factory, t0):
    feed = winback_feed
    feed(event_factory("purchase", day=0))
    first = feed(event_factory("login", day=30))
    assert [a.rule_id for a in first] == ["health_winback"] * 3
    # Disarmed until the score is back at 60: only the win-back episode's window end is due.
    [episode] = feed.state().episodes
    assert feed.state().next_due == episode.ends_at == episode.started_at + 30 * DAY
    for day in (31, 40):
        assert feed(event_factory("login", day=day)) == []
        assert feed.state().next_due == episode.ends_at
    for day in (50, 100):  # the window (from the crossing on day 16) is over
        assert feed(event_factory("login", day=day)) == []
        assert feed.state().episodes == []
        assert only_retention_due(feed.engine.pack, feed.state())
    assert feed.state().score < 60


def test_winback_again_after_recovering_and_dropping_again(winback_feed, event_factory, t0):
    feed = winback_feed
    feed(event_factory("purchase", day=0))
    first = feed(event_factory("login", event_id="drop-1", day=30))
    assert feed(event_factory("purchase", day=32)) == []  # recovers to 67: armed again
    assert feed.state().score == 67.0
    # The recovered episode collects revenue until its window ends (30 days after the
    # crossing); then recency from day 32, the day-30 login leaving the window: below 60
    # on day 53.
    [episode] = feed.state().episodes
    assert rfc3339(episode.ends_at) == rfc3339(feed.state().next_due) == "2024-04-15T19:26:57Z"
    assert episode.recovered_at == t0 + 32 * DAY
    second = feed(event_factory("login", event_id="drop-2", day=70))
    assert feed.state().score < 60
    assert [a.rule_id for a in first] == ["health_winback"] * 3
    assert [a.rule_id for a in second] == ["health_winback"] * 3
    assert {a.created_at for a in first} == {CROSSING}
    assert {a.created_at for a in second} == {"2024-04-24T00:50:57Z"}
    assert {a.caused_by for a in first + second} == {()}
    assert {a.action_id for a in first}.isdisjoint(a.action_id for a in second)


def test_winback_score_equal_to_the_threshold_is_not_below(
    feed_factory, engine_factory, event_factory, t0
):
    # Threshold 64: the purchase alone scores exactly 64 (≥, armed) and keeps scoring exactly
    # 64 for the 7 days recency stays at 100; only then does the decay take it below.
    feed = feed_factory(engine_factory(**winback_rules(
        **{"rules.health_winback.trigger.below": 64})))
    feed(event_factory("purchase", day=0))
    assert feed.state().score == 64.0
    assert feed(event_factory("profile", hours=1)) == []
    state = feed.state()
    outcome = advance(state, t0 + 7 * DAY, feed.engine)
    assert outcome.actions == []
    assert state.score == 64.0  # rescored at day 7: still exactly 64
    # 0.4 × recency + 24 < 63.995 ⇔ age > 7.010375 d = 7 d 896.4 s: the next whole second.
    assert state.next_due == t0 + 7 * DAY + 897
    actions = feed(event_factory("profile", day=8))
    assert [a.rule_id for a in actions] == ["health_winback"] * 3
    assert {a.created_at for a in actions} == {rfc3339(t0 + 7 * DAY + 897)}
    assert {a.health_score for a in actions} == {63.99}


def test_winback_task_goes_to_the_account_manager(winback_feed, event_factory):
    feed = winback_feed
    feed(event_factory("profile", account_manager="am-zoe"))
    feed(event_factory("purchase", day=0))
    tasks = [a for a in feed(event_factory("login", day=30)) if a.type == "task"]
    assert [t.payload["assignee"] for t in tasks] == ["am-zoe"]


def test_winback_task_default_queue_is_configurable(feed_factory, engine_factory, event_factory):
    feed = feed_factory(engine_factory(**winback_rules(**{"task_queues.default": "care-desk"})))
    feed(event_factory("purchase", day=0))
    tasks = [a for a in feed(event_factory("login", day=30)) if a.type == "task"]
    assert [t.payload["assignee"] for t in tasks] == ["care-desk"]


def test_vip_winback_adds_a_supervisor_task(winback_feed, event_factory):
    feed = winback_feed
    feed(event_factory("profile", tier="vip", account_manager="am-max"))
    feed(event_factory("purchase", day=0))
    actions = feed(event_factory("login", day=30))
    assert [(a.type, a.payload.get("assignee")) for a in actions] == [
        ("notification", None),
        ("task", "am-max"),
        ("coupon", None),
        ("task", "retention-supervisors"),
    ]
    assert actions[3].payload["title"] == "VIP at risk: review the win-back play"
    assert {a.created_at for a in actions} == {CROSSING}


def test_customer_upgraded_by_spend_gets_the_supervisor_task(winback_feed, event_factory):
    feed = winback_feed
    feed(event_factory("profile"))
    feed(event_factory("purchase", amount="10000", day=0))
    assert feed.state().tier == "vip"
    actions = feed(event_factory("login", day=30))
    assert [a.rule_id for a in actions] == ["health_winback"] * 4
    assert actions[-1].payload["assignee"] == "retention-supervisors"
    assert {a.created_at for a in actions} == {CROSSING}


def test_winback_threshold_and_coupon_are_configurable(
    feed_factory, engine_factory, event_factory, t0
):
    engine = engine_factory(**winback_rules(**{
        "rules.health_winback.trigger.below": 50,
        "rules.health_winback.actions.2.value": 25,
        "rules.health_winback.actions.2.expires_in_days": 7}))
    feed = feed_factory(engine)
    feed(event_factory("purchase", day=0))
    assert feed(event_factory("login", day=30)) == []  # 55.92 is not below 50
    # With the day-30 login counted, 0.4 × recency + 27 < 49.995 at 2024-04-12T18:50:57Z.
    # (The stored due is a lower bound after a login: next_due is what is really due.)
    crossed = next_due(engine.pack, feed.state())
    assert crossed is not None
    assert rfc3339(crossed) == "2024-04-12T18:50:57Z"
    actions = feed(event_factory("login", day=50))
    assert feed.state().score < 50
    [coupon] = [a for a in actions if a.type == "coupon"]
    assert coupon.created_at == rfc3339(crossed)
    assert coupon.health_score == 49.99
    assert coupon.payload["value"] == 25
    assert coupon.payload["expires_at"] == rfc3339(crossed + 7 * DAY)


# --- action records ------------------------------------------------------------------------

@pytest.fixture
def history(event_factory):
    def make(customer_id: str = "c1"):
        return [
            event_factory("profile", customer_id=customer_id, tier="vip", email="a@b.c"),
            event_factory("purchase", customer_id=customer_id, day=0, event_id="p1"),
            event_factory("ticket", customer_id=customer_id, day=1, event_id="t1",
                          status="opened", ticket_id="T"),
            event_factory("ticket", customer_id=customer_id, day=2, event_id="t2",
                          status="closed", ticket_id="T"),
            event_factory("login", customer_id=customer_id, day=30, event_id="l1"),
        ]

    return make


def test_action_ids_are_deterministic_and_distinct(feed_factory, history):
    first, second = feed_factory(), feed_factory()
    first(*history())
    second(*history())
    # ack, survey, then at the login: the timers due before it, in due order.
    assert [a.rule_id for a in first.all_actions()] == [
        "ticket_opened_ack", "ticket_closed_survey", "onboarding_tips",
        *["health_winback"] * 4, "inactive_30d_followup",
    ]
    ids = [a.action_id for a in first.all_actions()]
    assert len(ids) == 8
    assert ids == [a.action_id for a in second.all_actions()]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert [encode_action(a) for a in first.all_actions()] == [
        encode_action(a) for a in second.all_actions()
    ]


def test_action_ids_differ_between_customers(feed, history):
    feed(*history("c1"), *history("c2"))
    c1 = [a.action_id for a in feed.all_actions() if a.customer_id == "c1"]
    c2 = [a.action_id for a in feed.all_actions() if a.customer_id == "c2"]
    assert len(c1) == len(c2) == 8
    assert set(c1).isdisjoint(c2)


def test_action_id_depends_on_every_part():
    base = action_id("c1", "rule", "evt", 0)
    assert base == action_id("c1", "rule", "evt", 0)
    others = {action_id("c2", "rule", "evt", 0), action_id("c1", "other", "evt", 0),
              action_id("c1", "rule", "evt2", 0), action_id("c1", "rule", "evt", 1)}
    assert base not in others
    assert len(others) == 4


def test_action_record_has_every_contract_field(feed, history):
    feed(*history())
    actions = feed.all_actions()
    # The VIP supervisor task of the win-back, fired by the decay before the login.
    action = [a for a in actions if a.rule_id == "health_winback"][-1]
    record = action.to_record()
    assert list(record) == CONTRACT_FIELDS
    assert record["type"] == "task"
    assert record["customer_id"] == "c1"
    assert record["rule_id"] == "health_winback"
    assert record["rule_version"] == 1
    assert record["created_at"] == CROSSING
    assert record["caused_by"] == []
    assert record["health_score"] == 59.99  # the score at the crossing, not at the login
    assert record["segment"] == "new"
    assert set(record["payload"]) == {"assignee", "priority", "due_at", "title"}
    # An event-driven action names its event.
    ack = actions[0].to_record()
    assert list(ack) == CONTRACT_FIELDS
    assert (ack["rule_id"], ack["caused_by"]) == ("ticket_opened_ack", ["t1"])
    assert ack["created_at"] == rfc3339(feed.state().clock - 29 * DAY)


# --- settings and rule specs ---------------------------------------------------------------

def test_default_pack_rules_in_order():
    assert [r.id for r in make_pack().rules] == [
        "ticket_opened_ack", "ticket_closed_survey", "vip_upgrade", "health_winback",
        "onboarding_tips", "birthday_coupon", "signup_anniversary_coupon",
        "inactive_30d_followup", "ticket_sla_breach",
    ]


def test_disabled_rule_is_removed(feed_factory, engine_factory, event_factory):
    pack = make_pack(disable=["ticket_closed_survey"])
    assert "ticket_closed_survey" not in [r.id for r in pack.rules]
    feed = feed_factory(engine_factory(pack=pack))
    opened = feed(event_factory("ticket", ticket_id="T", status="opened", day=0))
    closed = feed(event_factory("ticket", ticket_id="T", status="closed", day=1))
    assert [a.rule_id for a in opened] == ["ticket_opened_ack"]
    assert closed == []


def test_disabled_winback_never_fires(feed_factory, engine_factory, event_factory, t0):
    feed = feed_factory(engine_factory(disable=["health_winback"]))
    feed(event_factory("purchase", day=0), event_factory("login", day=30))
    # Only the (enabled) timers fire; no win-back, not even when time runs on for a year.
    assert [a.rule_id for a in feed.all_actions()] == ["onboarding_tips", "inactive_30d_followup"]
    later = advance(feed.state(), t0 + 365 * DAY, feed.engine)
    assert [a.rule_id for a in later.actions] == ["inactive_30d_followup"]
    assert feed.state().score < 60


def test_rule_with_enabled_false_does_not_fire(event_factory, engine):
    pack = make_pack(changes={"rules.ticket_opened_ack.enabled": False})
    ticket = event_factory("ticket", status="opened")
    assert apply_event(None, ticket, engine).actions  # enabled in the default pack
    outcome = apply_event(None, ticket, replace(engine, pack=pack))
    assert outcome.actions == []


@pytest.mark.parametrize(
    "bounds",
    [{}, {"below": 60, "at_least": 60}, {"below": 1, "at_least": 2}],
)
def test_threshold_trigger_needs_exactly_one_bound(bounds):
    with pytest.raises(ValidationError, match="exactly one"):
        ThresholdTrigger(on="threshold", metric="health_score", **bounds)


@pytest.mark.parametrize(
    ("bounds", "value", "holds"),
    [({"below": 60}, 59.99, True), ({"below": 60}, 60, False),
     ({"at_least": 10}, 10, True), ({"at_least": 10}, 9.99, False)],
)
def test_threshold_trigger_condition(bounds, value, holds):
    trigger = ThresholdTrigger(on="threshold", metric="lifetime_spend", **bounds)
    assert trigger.compiled().holds(value) is holds


@pytest.mark.parametrize(("once", "fired"), [(True, 1), (False, 2)])
def test_threshold_once_never_fires_again_even_after_re_arming(event_factory, engine, once, fired):
    # logins_30d can fall back under the bound (unlike lifetime spend), re-arming the rule.
    pack = rules_only({
        "id": "engaged",
        "trigger": {"on": "threshold", "metric": "logins_30d", "at_least": 2, "once": once},
        "actions": [{"type": "coupon", "value": 5}],
    })
    custom = replace(engine, pack=pack)
    state, actions = None, []
    for day in (0, 1, 40, 41):
        outcome = apply_event(state, event_factory("login", day=day), custom)
        state = outcome.state
        actions.extend(outcome.actions)
    assert len(actions) == fired
    assert actions[0].caused_by == (state.seen[1],)


def test_rule_json_with_a_bad_trigger_is_rejected():
    with pytest.raises(ValidationError):
        RuleSpec.model_validate({
            "id": "bad", "trigger": {"on": "threshold", "metric": "health_score"},
            "actions": [{"type": "coupon", "value": 5}],
        })
    with pytest.raises(ValidationError):
        RuleSpec.model_validate({"id": "no_actions", "trigger": {"on": "login"}, "actions": []})


# --- regressions found in review ---

def test_expected_resolution_is_counted_from_the_ticket_opening(feed, event_factory, t0):
    feed(event_factory("login", hours=2))
    [ack] = feed(event_factory("ticket", status="opened", priority="urgent", hours=0))
    assert ack.payload["variables"]["expected_resolution_at"] == rfc3339(t0 + 4 * HOUR)


def test_partial_ticket_sla_map_is_rejected():
    data = pack_data(changes={"ticket_sla_hours": {"urgent": 2}})
    with pytest.raises(PackInvalid) as caught:
        build_pack(data)
    [problem] = caught.value.problems
    assert problem.loc == ("ticket_sla_hours",)
    assert "missing ['high', 'normal', 'low']" in problem.message
