"""The default rule pack through apply_event, its settings, and the rule-engine contract."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from pydantic import ValidationError

from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.default_rules import default_pack
from churnguard.core.processor import apply_event
from churnguard.core.rules import Rule, RulePack, ThresholdTrigger, action_id
from streams.codecs import encode_action
from streams.settings import RuleSettings

CONTRACT_FIELDS = [
    "action_id", "type", "customer_id", "rule_id", "rule_version", "created_at", "caused_by",
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
    feed = feed_factory(engine_factory(rules=RuleSettings(
        ticket_sla_hours={"urgent": 1, "high": 2, "normal": 3, "low": 4})))
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
    feed = feed_factory(engine_factory(rules=RuleSettings(vip_spend_threshold=500)))
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
# A purchase alone scores 64 (recency 100, service 80). A login 30 days later scores
# 0.4 × 72.29 + 3 + 24 = 55.92: the score crosses 60 downwards.

def test_winback_fires_when_the_score_drops_below_60(feed, event_factory, t0):
    feed(event_factory("purchase", day=0))
    assert feed.state().score == 64.0
    actions = feed(event_factory("login", event_id="drop", day=30))
    assert feed.state().score == pytest.approx(55.92)
    assert [(a.rule_id, a.type) for a in actions] == [
        ("health_winback", "notification"),
        ("health_winback", "task"),
        ("health_winback", "coupon"),
    ]
    care, task, coupon = actions
    now = t0 + 30 * DAY
    assert care.payload["template"] == "winback_care"
    assert care.payload["variables"] == {"health_score": 55.92, "segment": "new"}
    assert task.payload == {
        "assignee": "retention-team",
        "priority": "high",
        "due_at": rfc3339(now + 24 * HOUR),
        "title": "Win-back call: health score dropped",
    }
    assert coupon.payload["value"] == 15
    assert coupon.payload["kind"] == "percent"
    assert coupon.payload["expires_at"] == rfc3339(now + 30 * DAY)
    assert re.fullmatch(r"CG-[0-9A-F]{10}", coupon.payload["code"])
    assert all(a.caused_by == ("drop",) for a in actions)


def test_no_winback_for_a_customer_never_at_60(feed, event_factory):
    for day in range(12):
        feed(event_factory("login", day=day))  # at most 0 + 30 + 24 = 54
    feed(event_factory("login", day=60))
    assert feed.state().score < 60
    assert feed.all_actions() == []


def test_winback_not_again_while_staying_below(feed, event_factory):
    feed(event_factory("purchase", day=0))
    assert len(feed(event_factory("login", day=30))) == 3
    for day in (31, 40, 50, 100):
        assert feed(event_factory("login", day=day)) == []
    assert feed.state().score < 60


def test_winback_again_after_recovering_and_dropping_again(feed, event_factory):
    feed(event_factory("purchase", day=0))
    first = feed(event_factory("login", event_id="drop-1", day=30))
    assert feed(event_factory("purchase", day=32)) == []  # recovers to 70
    assert feed.state().score >= 60
    second = feed(event_factory("login", event_id="drop-2", day=70))
    assert feed.state().score < 60
    assert [a.rule_id for a in first] == ["health_winback"] * 3
    assert [a.rule_id for a in second] == ["health_winback"] * 3
    assert {a.action_id for a in first}.isdisjoint(a.action_id for a in second)


def test_winback_score_equal_to_the_threshold_is_not_below(
    feed_factory, engine_factory, event_factory
):
    # Threshold 64: the purchase alone scores exactly 64 (≥, armed), the next drop fires.
    feed = feed_factory(engine_factory(rules=RuleSettings(winback_score_threshold=64)))
    feed(event_factory("purchase", day=0))
    assert feed.state().score == 64.0
    assert feed(event_factory("profile", hours=1)) == []
    actions = feed(event_factory("profile", day=8))
    assert [a.rule_id for a in actions] == ["health_winback"] * 3


def test_winback_task_goes_to_the_account_manager(feed, event_factory):
    feed(event_factory("profile", account_manager="am-zoe"))
    feed(event_factory("purchase", day=0))
    tasks = [a for a in feed(event_factory("login", day=30)) if a.type == "task"]
    assert [t.payload["assignee"] for t in tasks] == ["am-zoe"]


def test_winback_task_default_queue_is_configurable(feed_factory, engine_factory, event_factory):
    feed = feed_factory(engine_factory(rules=RuleSettings(default_task_queue="care-desk")))
    feed(event_factory("purchase", day=0))
    tasks = [a for a in feed(event_factory("login", day=30)) if a.type == "task"]
    assert [t.payload["assignee"] for t in tasks] == ["care-desk"]


def test_vip_winback_adds_a_supervisor_task(feed, event_factory):
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


def test_customer_upgraded_by_spend_gets_the_supervisor_task(feed, event_factory):
    feed(event_factory("profile"))
    feed(event_factory("purchase", amount="10000", day=0))
    assert feed.state().tier == "vip"
    actions = feed(event_factory("login", day=30))
    assert len(actions) == 4
    assert actions[-1].payload["assignee"] == "retention-supervisors"


def test_winback_threshold_and_coupon_are_configurable(
    feed_factory, engine_factory, event_factory
):
    feed = feed_factory(engine_factory(rules=RuleSettings(
        winback_score_threshold=50, winback_coupon_value=25, winback_coupon_days=7)))
    feed(event_factory("purchase", day=0))
    assert feed(event_factory("login", day=30)) == []  # 55.92 is not below 50
    actions = feed(event_factory("login", day=50))
    assert feed.state().score < 50
    [coupon] = [a for a in actions if a.type == "coupon"]
    assert coupon.payload["value"] == 25
    assert coupon.payload["expires_at"] == rfc3339(feed.state().clock + 7 * DAY)


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
    ids = [a.action_id for a in first.all_actions()]
    assert len(ids) == 6  # ack, survey, 4 × win-back
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
    assert len(c1) == len(c2) == 6
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
    state = feed.state()
    action = feed.all_actions()[-1]
    record = action.to_record()
    assert list(record) == CONTRACT_FIELDS
    assert record["type"] == "task"
    assert record["customer_id"] == "c1"
    assert record["rule_id"] == "health_winback"
    assert record["rule_version"] == 1
    assert record["created_at"] == rfc3339(state.clock)
    assert record["caused_by"] == ["l1"]
    assert record["health_score"] == state.score
    assert record["segment"] == state.segment == "new"
    assert set(record["payload"]) == {"assignee", "priority", "due_at", "title"}


# --- settings and rule specs ---------------------------------------------------------------

def test_default_pack_rules_in_order():
    assert [r.id for r in default_pack(RuleSettings()).rules] == [
        "ticket_opened_ack", "ticket_closed_survey", "vip_upgrade", "health_winback",
    ]


def test_disabled_rule_is_removed(feed_factory, engine_factory, event_factory):
    settings = RuleSettings(disabled=frozenset({"ticket_closed_survey"}))
    assert "ticket_closed_survey" not in [r.id for r in default_pack(settings).rules]
    feed = feed_factory(engine_factory(rules=settings))
    opened = feed(event_factory("ticket", ticket_id="T", status="opened", day=0))
    closed = feed(event_factory("ticket", ticket_id="T", status="closed", day=1))
    assert [a.rule_id for a in opened] == ["ticket_opened_ack"]
    assert closed == []


def test_disabled_winback_never_fires(feed_factory, engine_factory, event_factory):
    feed = feed_factory(engine_factory(rules=RuleSettings(disabled=frozenset({"health_winback"}))))
    feed(event_factory("purchase", day=0), event_factory("login", day=30))
    assert feed.all_actions() == []


def test_rule_with_enabled_false_does_not_fire(event_factory, engine):
    pack = RulePack.model_validate({
        **default_pack(RuleSettings()).model_dump(),
        "rules": [{**r.model_dump(), "enabled": r.id != "ticket_opened_ack"}
                  for r in default_pack(RuleSettings()).rules],
    })
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
    assert trigger.holds(value) is holds


@pytest.mark.parametrize(("once", "fired"), [(True, 1), (False, 2)])
def test_threshold_once_never_fires_again_even_after_re_arming(event_factory, engine, once, fired):
    # logins_30d can fall back under the bound (unlike lifetime spend), re-arming the rule.
    pack = RulePack.model_validate({
        "rules": [{
            "id": "engaged",
            "when": {"on": "threshold", "metric": "logins_30d", "at_least": 2, "once": once},
            "actions": [{"type": "coupon", "value": 5}],
        }],
        "ticket_sla_hours": {"normal": 72},
        "default_task_queue": "q",
        "supervisor_queue": "s",
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
        Rule.model_validate({
            "id": "bad", "when": {"on": "threshold", "metric": "health_score"},
            "actions": [{"type": "coupon", "value": 5}],
        })
    with pytest.raises(ValidationError):
        Rule.model_validate({"id": "no_actions", "when": {"on": "login"}, "actions": []})


# --- regressions found in review ---

def test_expected_resolution_is_counted_from_the_ticket_opening(feed, event_factory, t0):
    feed(event_factory("login", hours=2))
    [ack] = feed(event_factory("ticket", status="opened", priority="urgent", hours=0))
    assert ack.payload["variables"]["expected_resolution_at"] == rfc3339(t0 + 4 * HOUR)


def test_partial_ticket_sla_map_is_rejected_or_handled(engine_factory, event_factory):
    try:
        settings = RuleSettings(ticket_sla_hours={"urgent": 2})
    except ValidationError:
        return  # rejected up front: fine
    engine = engine_factory(rules=settings)
    outcome = apply_event(None, event_factory("ticket", status="opened", priority="low"), engine)
    assert [a.rule_id for a in outcome.actions] == ["ticket_opened_ack"]
