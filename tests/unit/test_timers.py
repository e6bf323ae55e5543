"""Time-driven rules: onboarding tips, birthday and signup anniversary coupons, the 30-day
inactivity call, ticket SLA breaches and the score-decay win-back — each at its exact due
time, through `replay(..., until=...)` (the clock runs on with no event) and through
`apply_event`/`advance` directly (late events, live ticks, grace)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.processor import Engine, advance, apply_event
from churnguard.core.rules import Action, action_id, next_due
from churnguard.core.scoring import crossing_time, health
from churnguard.core.state import CustomerState
from churnguard.replay import replay
from schemas.events import Event
from streams.codecs import encode_action
from tests.unit.packs import DEFAULT_RULES, only_retention_due, rules_only

ALL_RULES = frozenset(DEFAULT_RULES)


def ts(text: str) -> float:
    return parse_rfc3339(text)


def run(events: Iterable[Event], engine: Engine, until: float | str | None) -> list[Action]:
    """Replay `events` (sorted by event time, ties in the given order) up to `until`."""
    if isinstance(until, str):
        until = ts(until)
    ordered = sorted(events, key=lambda event: event.occurred_at)
    return list(replay(ordered, engine, until=until))


def when(actions: Iterable[Action]) -> list[tuple[str, str]]:
    return [(a.rule_id, a.created_at) for a in actions]


def copy(state: CustomerState) -> CustomerState:
    return CustomerState.from_bytes(state.to_bytes())


@pytest.fixture
def engine_for(engine_factory):
    """engine_for("onboarding_tips", changes={...}): only those rules of the default pack,
    some fields changed (tests/unit/packs.pack_data)."""

    def make(*rule_ids: str, **changes) -> Engine:
        return engine_factory(only=rule_ids, changes=changes)

    return make


@pytest.fixture
def ev(event_factory):
    """ev("login", "2026-01-01T00:00:00Z", ...) or ev("login", <epoch seconds>, ...)."""

    def make(type_: str, at: float | str, **fields) -> Event:
        occurred = at if isinstance(at, str) else rfc3339(at)
        return event_factory(type_, occurred_at=occurred, **fields)

    return make


# --- onboarding_tips -----------------------------------------------------------------------

def test_onboarding_tips_seven_days_after_the_first_purchase(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    events = [ev("purchase", t0)]
    assert run(events, engine, t0 + 7 * DAY - 1) == []  # day 6, 23:59:59 later
    [tips] = run(events, engine, t0 + 7 * DAY)
    assert (tips.rule_id, tips.type) == ("onboarding_tips", "notification")
    assert tips.created_at == rfc3339(t0 + 7 * DAY) == "2024-03-08T12:00:00Z"
    assert tips.caused_by == ()
    assert tips.customer_id == "c1"
    assert tips.action_id == action_id("c1", "onboarding_tips", "onboarding_tips", 0)
    assert tips.payload == {
        "template": "onboarding_tips",
        "channel": "push",
        "variables": {"faq_url": "https://help.example.com/faq"},
    }


def test_onboarding_tips_days_and_faq_url_are_configurable(engine_for, ev, t0):
    engine = engine_for("onboarding_tips", **{
        "rules.onboarding_tips.trigger.days": 3,
        "rules.onboarding_tips.actions.0.variables.faq_url": "https://x.test/faq"})
    events = [ev("profile", t0 - HOUR, email="a@b.c"), ev("purchase", t0)]
    assert run(events, engine, t0 + 3 * DAY - 1) == []
    [tips] = run(events, engine, t0 + 3 * DAY)
    assert tips.created_at == rfc3339(t0 + 3 * DAY)
    assert tips.payload == {
        "template": "onboarding_tips",
        "channel": "email",
        "variables": {"faq_url": "https://x.test/faq"},
    }


def test_onboarding_tips_only_once_even_with_more_purchases(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    events = [ev("purchase", t0 + day * DAY, order_id=f"o-{day}") for day in (0, 3, 8, 20, 40)]
    actions = run(events, engine, t0 + 400 * DAY)
    assert when(actions) == [("onboarding_tips", rfc3339(t0 + 7 * DAY))]


def test_no_onboarding_tips_without_a_purchase(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    events = [ev("login", t0), ev("profile", t0 + DAY, signup_date="2024-01-01")]
    assert run(events, engine, t0 + 100 * DAY) == []


def test_an_older_late_purchase_moves_the_onboarding_due_earlier(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    state = apply_event(None, ev("purchase", t0), engine).state
    assert state.next_due == t0 + 7 * DAY
    late = apply_event(state, ev("purchase", t0 - 3 * DAY, event_id="late"), engine)
    assert late.actions == []
    assert state.first_purchase_at == t0 - 3 * DAY
    assert state.next_due == t0 + 4 * DAY
    assert advance(state, t0 + 4 * DAY - 1, engine).actions == []
    [tips] = advance(state, t0 + 4 * DAY, engine).actions
    assert tips.created_at == rfc3339(t0 + 4 * DAY)
    assert tips.caused_by == ()
    assert advance(state, t0 + 100 * DAY, engine).actions == []
    # A purchase older still, after the tips went out, sends nothing more.
    assert apply_event(state, ev("purchase", t0 - 9 * DAY), engine).actions == []
    assert advance(state, t0 + 200 * DAY, engine).actions == []


# --- birthday_coupon -----------------------------------------------------------------------

def test_birthday_coupon_at_0900_utc_on_the_birthday(engine_for, ev):
    engine = engine_for("birthday_coupon")
    events = [ev("profile", "2026-01-10T00:00:00Z", birthday="1990-05-05")]
    assert run(events, engine, "2026-05-05T08:59:59Z") == []
    [coupon] = run(events, engine, "2026-05-05T09:00:00Z")
    assert (coupon.rule_id, coupon.type) == ("birthday_coupon", "coupon")
    assert coupon.created_at == "2026-05-05T09:00:00Z"
    assert coupon.caused_by == ()
    ident = action_id("c1", "birthday_coupon", "birthday_coupon:2026", 0)
    assert coupon.action_id == ident
    assert coupon.payload == {
        "code": f"CG-{ident[:10].upper()}",
        "value": 10.0,
        "kind": "percent",
        "expires_at": "2026-06-04T09:00:00Z",
    }


@pytest.mark.parametrize(
    ("zone", "birthday", "due"),
    [
        ("UTC", "1990-01-15", "2026-01-15T09:00:00Z"),
        ("Europe/Paris", "1990-01-15", "2026-01-15T08:00:00Z"),  # CET, UTC+1
        ("Europe/Paris", "1990-07-15", "2026-07-15T07:00:00Z"),  # CEST, UTC+2
        ("America/New_York", "1990-01-15", "2026-01-15T14:00:00Z"),  # EST, UTC-5
    ],
)
def test_birthday_coupon_follows_the_business_time_zone(engine_for, ev, zone, birthday, due):
    engine = engine_for("birthday_coupon", timezone=zone)
    events = [ev("profile", "2026-01-01T00:00:00Z", birthday=birthday)]
    assert run(events, engine, ts(due) - 1) == []
    assert when(run(events, engine, due)) == [("birthday_coupon", due)]


def test_birthday_coupon_once_a_year(engine_for, ev):
    engine = engine_for("birthday_coupon")
    events = [ev("profile", "2026-01-10T00:00:00Z", birthday="1990-05-05")]
    assert len(run(events, engine, "2027-05-05T08:59:59Z")) == 1
    actions = run(events, engine, "2028-12-31T00:00:00Z")
    assert when(actions) == [
        ("birthday_coupon", "2026-05-05T09:00:00Z"),
        ("birthday_coupon", "2027-05-05T09:00:00Z"),
        ("birthday_coupon", "2028-05-05T09:00:00Z"),
    ]
    assert [a.action_id for a in actions] == [
        action_id("c1", "birthday_coupon", f"birthday_coupon:{year}", 0)
        for year in (2026, 2027, 2028)
    ]


def test_no_birthday_coupon_for_the_years_before_the_birthday_was_known(engine_for, ev):
    engine = engine_for("birthday_coupon")
    # Known in June 2026: May 5, 2026 is already past, and so are all the years before.
    events = [ev("profile", "2026-06-01T00:00:00Z", birthday="1990-05-05")]
    assert run(events, engine, "2027-05-05T08:59:59Z") == []
    [coupon] = run(events, engine, "2027-05-05T09:00:00Z")
    assert coupon.created_at == "2027-05-05T09:00:00Z"
    assert coupon.action_id == action_id("c1", "birthday_coupon", "birthday_coupon:2027", 0)


@pytest.mark.parametrize(
    ("known_at", "first"),
    [
        ("2026-05-05T08:59:59Z", "2026-05-05T09:00:00Z"),  # the same morning: still today
        ("2026-05-05T09:00:01Z", "2027-05-05T09:00:00Z"),  # just too late: next year
    ],
)
def test_birthday_learned_on_the_day_itself(engine_for, ev, known_at, first):
    engine = engine_for("birthday_coupon")
    events = [ev("profile", known_at, birthday="1990-05-05")]
    assert when(run(events, engine, "2027-05-05T09:00:00Z"))[0] == ("birthday_coupon", first)


def test_feb_29_birthday_on_feb_28_in_common_years_and_feb_29_in_leap_years(engine_for, ev):
    engine = engine_for("birthday_coupon")
    # (A login in 2028: data retention would remove a customer three years without events.)
    events = [ev("profile", "2026-01-01T00:00:00Z", birthday="2000-02-29"),
              ev("login", "2028-06-01T00:00:00Z")]
    assert when(run(events, engine, "2028-02-29T08:59:59Z")) == [
        ("birthday_coupon", "2026-02-28T09:00:00Z"),
        ("birthday_coupon", "2027-02-28T09:00:00Z"),
    ]
    assert when(run(events, engine, "2029-12-31T00:00:00Z")) == [
        ("birthday_coupon", "2026-02-28T09:00:00Z"),
        ("birthday_coupon", "2027-02-28T09:00:00Z"),
        ("birthday_coupon", "2028-02-29T09:00:00Z"),
        ("birthday_coupon", "2029-02-28T09:00:00Z"),
    ]


# --- signup_anniversary_coupon -------------------------------------------------------------

@pytest.mark.parametrize("known_at", ["2024-03-01T06:00:00Z", "2024-03-01T12:00:00Z"])
def test_signup_anniversary_never_on_the_signup_day_itself(engine_for, ev, known_at):
    engine = engine_for("signup_anniversary_coupon")
    events = [ev("profile", known_at, signup_date="2024-03-01")]
    assert run(events, engine, "2025-03-01T08:59:59Z") == []
    [coupon] = run(events, engine, "2025-03-01T09:00:00Z")
    assert (coupon.rule_id, coupon.type) == ("signup_anniversary_coupon", "coupon")
    assert coupon.created_at == "2025-03-01T09:00:00Z"
    assert coupon.caused_by == ()
    assert coupon.action_id == action_id(
        "c1", "signup_anniversary_coupon", "signup_anniversary_coupon:2025", 0
    )
    assert coupon.payload["value"] == 10.0
    assert coupon.payload["expires_at"] == "2025-03-31T09:00:00Z"


def test_signup_anniversary_of_an_older_signup_once_a_year(engine_for, ev):
    engine = engine_for("signup_anniversary_coupon", **{
        "rules.signup_anniversary_coupon.actions.0.value": 20,
        "rules.signup_anniversary_coupon.actions.0.expires_in_days": 14,
        "timezone": "Europe/Paris"})
    events = [ev("profile", "2024-03-01T12:00:00Z", signup_date="2020-06-10")]
    actions = run(events, engine, "2025-12-31T00:00:00Z")
    assert when(actions) == [
        ("signup_anniversary_coupon", "2024-06-10T07:00:00Z"),
        ("signup_anniversary_coupon", "2025-06-10T07:00:00Z"),
    ]
    assert [a.payload["value"] for a in actions] == [20.0, 20.0]
    assert actions[0].payload["expires_at"] == "2024-06-24T07:00:00Z"
    assert actions[0].action_id != actions[1].action_id


def test_birthday_and_signup_anniversaries_fire_independently(engine_for, ev):
    engine = engine_for("birthday_coupon", "signup_anniversary_coupon")
    events = [ev("profile", "2024-03-01T12:00:00Z", signup_date="2024-03-01",
                 birthday="1991-03-01")]
    assert when(run(events, engine, "2025-12-31T00:00:00Z")) == [
        ("birthday_coupon", "2025-03-01T09:00:00Z"),
        ("signup_anniversary_coupon", "2025-03-01T09:00:00Z"),
    ]


# --- inactive_30d_followup -----------------------------------------------------------------

def test_inactivity_call_after_30_silent_days(engine_for, ev, t0):
    engine = engine_for("inactive_30d_followup")
    events = [ev("login", t0)]
    assert run(events, engine, t0 + 30 * DAY - 1) == []  # day 29 (and 23:59:59)
    [task] = run(events, engine, t0 + 30 * DAY)
    assert (task.rule_id, task.type) == ("inactive_30d_followup", "task")
    assert task.created_at == rfc3339(t0 + 30 * DAY)
    assert task.caused_by == ()
    assert task.action_id == action_id(
        "c1", "inactive_30d_followup", f"inactive_30d_followup:{rfc3339(t0)}", 0
    )
    assert task.payload == {
        "assignee": "retention-team",
        "priority": "high",
        "due_at": rfc3339(t0 + 31 * DAY),
        "title": "Churn-risk call",
        "details": {"silent_days": 30.0},
    }


def test_inactivity_call_goes_to_the_account_manager(engine_for, ev, t0):
    engine = engine_for("inactive_30d_followup")
    events = [ev("profile", t0 - HOUR, account_manager="am-7"), ev("purchase", t0)]
    [task] = run(events, engine, t0 + 30 * DAY)
    assert task.payload["assignee"] == "am-7"


def test_a_login_on_day_29_resets_the_inactivity_clock(engine_for, ev, t0):
    engine = engine_for("inactive_30d_followup")
    events = [ev("login", t0), ev("login", t0 + 29 * DAY)]
    assert run(events, engine, t0 + 59 * DAY - 1) == []
    assert when(run(events, engine, t0 + 88 * DAY)) == [
        ("inactive_30d_followup", rfc3339(t0 + 59 * DAY)),
    ]


def test_inactivity_call_again_only_after_new_activity_and_another_silence(
    engine_for, ev, t0
):
    engine = engine_for("inactive_30d_followup")
    assert len(run([ev("login", t0)], engine, t0 + 365 * DAY)) == 1
    events = [ev("login", t0), ev("purchase", t0 + 45 * DAY)]
    assert when(run(events, engine, t0 + 75 * DAY - 1)) == [
        ("inactive_30d_followup", rfc3339(t0 + 30 * DAY)),
    ]
    actions = run(events, engine, t0 + 365 * DAY)
    assert when(actions) == [
        ("inactive_30d_followup", rfc3339(t0 + 30 * DAY)),
        ("inactive_30d_followup", rfc3339(t0 + 75 * DAY)),
    ]
    assert actions[0].action_id != actions[1].action_id


def test_profile_and_ticket_events_are_not_activity(engine_for, ev, t0):
    engine = engine_for("inactive_30d_followup")
    events = [
        ev("login", t0),
        ev("profile", t0 + 10 * DAY, tags=["x"]),
        ev("ticket", t0 + 20 * DAY, ticket_id="T", status="opened"),
        ev("ticket", t0 + 21 * DAY, ticket_id="T", status="closed", satisfaction=5),
    ]
    assert when(run(events, engine, t0 + 60 * DAY - 1)) == [
        ("inactive_30d_followup", rfc3339(t0 + 30 * DAY)),
    ]


def test_no_inactivity_call_for_a_customer_never_active(engine_for, ev, t0):
    engine = engine_for("inactive_30d_followup")
    events = [ev("profile", t0, tags=["x"]), ev("ticket", t0, status="opened")]
    assert run(events, engine, t0 + 365 * DAY) == []


def test_inactivity_days_are_configurable(engine_for, ev, t0):
    engine = engine_for("inactive_30d_followup", **{"rules.inactive_30d_followup.trigger.days": 14})
    events = [ev("login", t0)]
    assert run(events, engine, t0 + 14 * DAY - 1) == []
    [task] = run(events, engine, t0 + 14 * DAY)
    assert task.created_at == rfc3339(t0 + 14 * DAY)
    assert task.payload["details"] == {"silent_days": 14.0}


# --- ticket_sla_breach ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("priority", "hours"),
    [("urgent", 4), ("high", 24), ("normal", 72), ("low", 168), (None, 72)],
)
def test_ticket_sla_breach_by_priority(engine_for, ev, t0, priority, hours):
    engine = engine_for("ticket_sla_breach")
    extra = {} if priority is None else {"priority": priority}
    events = [ev("ticket", t0, ticket_id="T-1", status="opened", **extra)]
    assert run(events, engine, t0 + hours * HOUR - 1) == []
    [task] = run(events, engine, t0 + hours * HOUR)
    assert (task.rule_id, task.type) == ("ticket_sla_breach", "task")
    assert task.created_at == rfc3339(t0 + hours * HOUR)
    assert task.caused_by == ()
    assert task.action_id == action_id("c1", "ticket_sla_breach", "ticket_sla_breach:T-1", 0)
    assert task.payload == {
        "assignee": "support-escalations",
        "priority": "urgent",
        "due_at": rfc3339(t0 + hours * HOUR + HOUR),
        "title": "Ticket past its SLA: escalate",
        "details": {
            "ticket_id": "T-1",
            "priority": priority or "normal",
            "opened_at": rfc3339(t0),
            "sla_hours": float(hours),
        },
    }


def test_no_sla_breach_when_the_ticket_closes_in_time(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach")
    events = [
        ev("ticket", t0, ticket_id="T", status="opened", priority="urgent"),
        ev("ticket", t0 + 4 * HOUR - 1, ticket_id="T", status="closed"),
    ]
    assert run(events, engine, t0 + 30 * DAY) == []


def test_closing_at_the_sla_moment_is_too_late(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach", "ticket_closed_survey")
    events = [
        ev("ticket", t0, ticket_id="T", status="opened", priority="urgent"),
        ev("ticket", t0 + 4 * HOUR, ticket_id="T", status="closed", event_id="close"),
    ]
    actions = run(events, engine, t0 + 30 * DAY)
    assert when(actions) == [
        ("ticket_sla_breach", rfc3339(t0 + 4 * HOUR)),
        ("ticket_closed_survey", rfc3339(t0 + 4 * HOUR)),
    ]
    assert [a.caused_by for a in actions] == [(), ("close",)]


def test_each_overdue_ticket_gets_its_own_task(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach")
    events = [
        ev("ticket", t0, ticket_id="A", status="opened", priority="urgent"),
        ev("ticket", t0, ticket_id="B", status="opened", priority="urgent"),
        ev("ticket", t0 + HOUR, ticket_id="C", status="opened", priority="high"),
        ev("ticket", t0 + 2 * HOUR, ticket_id="D", status="opened", priority="high"),
        ev("ticket", t0 + 3 * HOUR, ticket_id="D", status="closed"),
    ]
    actions = run(events, engine, t0 + 30 * DAY)
    tickets = [(a.payload["details"]["ticket_id"], a.created_at) for a in actions]
    assert sorted(tickets[:2]) == [("A", rfc3339(t0 + 4 * HOUR)), ("B", rfc3339(t0 + 4 * HOUR))]
    assert tickets[2:] == [("C", rfc3339(t0 + 25 * HOUR))]
    ids = [a.action_id for a in actions]
    assert len(set(ids)) == 3
    assert set(ids) == {action_id("c1", "ticket_sla_breach", f"ticket_sla_breach:{t}", 0)
                        for t in "ABC"}


def test_ticket_sla_hours_are_configurable(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach", "ticket_opened_ack",
                        **{"ticket_sla_hours.urgent": 1, "ticket_sla_hours.low": 48})
    events = [
        ev("ticket", t0, ticket_id="U", status="opened", priority="urgent"),
        ev("ticket", t0, ticket_id="H", status="opened", priority="high"),
        ev("ticket", t0, ticket_id="L", status="opened", priority="low"),
    ]
    actions = run(events, engine, t0 + 30 * DAY)
    acks = {a.payload["variables"]["ticket_id"]: a.payload["variables"]["expected_resolution_at"]
            for a in actions if a.rule_id == "ticket_opened_ack"}
    breaches = [(a.payload["details"]["ticket_id"], a.payload["details"]["sla_hours"],
                 a.created_at) for a in actions if a.rule_id == "ticket_sla_breach"]
    assert breaches == [
        ("U", 1.0, rfc3339(t0 + HOUR)),
        ("H", 24.0, rfc3339(t0 + 24 * HOUR)),
        ("L", 48.0, rfc3339(t0 + 48 * HOUR)),
    ]
    # The breach comes exactly when the acknowledgement's promise runs out.
    assert {ticket: at for ticket, _, at in breaches} == acks


def test_a_breached_ticket_closing_later_fires_nothing_more(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach")
    events = [
        ev("ticket", t0, ticket_id="T", status="opened", priority="urgent"),
        ev("ticket", t0 + DAY, ticket_id="T", status="closed"),
        ev("ticket", t0 + 2 * DAY, ticket_id="T", status="opened", priority="urgent"),
    ]
    actions = run(events, engine, t0 + 30 * DAY)
    assert when(actions) == [("ticket_sla_breach", rfc3339(t0 + 4 * HOUR))]


# --- score decay: health_winback at the crossing -------------------------------------------

def _decay_scenarios(ev, t0):
    return {
        # 64 from the purchase: recency decays below 90 after 15.310375 days.
        "lone purchase": [ev("purchase", t0)],
        # 40 + 9 + 24 = 73: the logins leave the 30-day window on 2024-03-31 at 00:00,
        # where 0.4 × 72.89 + 24 = 53.16.
        "logins leave the window": [ev("purchase", t0), *(ev("login", t0 + i) for i in range(3))],
        # The normal ticket is overdue 72 h after its opening: 40 + 0.3 × (80 - 15) = 59.5.
        "ticket overdue": [ev("purchase", t0),
                           ev("ticket", t0 + HOUR, ticket_id="T", status="opened")],
        # A rating of 5 lifts service to 100: 40 + 30 = 70 decays to 60 later.
        "rated": [ev("purchase", t0), ev("ticket", t0, ticket_id="T", status="opened"),
                  ev("ticket", t0 + HOUR, ticket_id="T", status="closed", satisfaction=5)],
    }


EXPECTED_CROSSING = {
    "lone purchase": "2024-03-16T19:26:57Z",
    "logins leave the window": "2024-03-31T00:00:00Z",
    "ticket overdue": "2024-03-04T13:00:01Z",
    "rated": None,  # checked against health() only
}


@pytest.mark.parametrize("scenario", list(EXPECTED_CROSSING))
def test_winback_fires_at_the_decay_crossing(engine_for, ev, t0, scenario):
    engine = engine_for("health_winback")
    events = _decay_scenarios(ev, t0)[scenario]
    state = None
    for event in events:
        state = apply_event(state, event, engine).state
    assert state is not None
    assert state.score >= 60
    frozen = copy(state)  # the state before the decay, for health() below

    actions = run(events, engine, t0 + 400 * DAY)  # no event after the last one
    assert [a.rule_id for a in actions] == ["health_winback"] * 3  # once, not twice
    assert len({a.created_at for a in actions}) == 1
    assert {a.caused_by for a in actions} == {()}
    crossed = ts(actions[0].created_at)
    if EXPECTED_CROSSING[scenario] is not None:
        assert actions[0].created_at == EXPECTED_CROSSING[scenario]
    # At the first whole second below 60: below at created_at, not one second earlier.
    assert health(frozen, crossed, engine.pack.scoring).score < 60
    assert health(frozen, crossed - 1, engine.pack.scoring).score >= 60
    assert actions[0].health_score == health(frozen, crossed, engine.pack.scoring).score
    assert next_due(engine.pack, state) == crossed == crossing_time(
        frozen, 60, frozen.clock, engine.pack.scoring)
    # Kept after the logins as a lower bound: nothing is due before it.
    assert state.next_due is not None
    assert state.next_due <= crossed
    # advance (a live tick) fires the same actions as the replay.
    ticked = advance(state, t0 + 400 * DAY, engine).actions
    assert [a.to_record() for a in ticked] == [a.to_record() for a in actions]
    assert [a.action_id for a in actions] == [
        action_id("c1", "health_winback", f"at:{crossed!r}", i) for i in range(3)
    ]


def test_vip_winback_at_the_crossing_has_the_supervisor_task(engine_for, ev, t0):
    engine = engine_for("health_winback")
    events = [ev("profile", t0 - HOUR, tier="vip", account_manager="am-1"), ev("purchase", t0)]
    actions = run(events, engine, t0 + 100 * DAY)
    assert [(a.type, a.payload.get("assignee"), a.created_at) for a in actions] == [
        ("notification", None, "2024-03-16T19:26:57Z"),
        ("task", "am-1", "2024-03-16T19:26:57Z"),
        ("coupon", None, "2024-03-16T19:26:57Z"),
        ("task", "retention-supervisors", "2024-03-16T19:26:57Z"),
    ]


def test_winback_crossing_before_the_until_only(engine_for, ev, t0):
    engine = engine_for("health_winback")
    crossed = ts("2024-03-16T19:26:57Z")
    assert run([ev("purchase", t0)], engine, crossed - 1) == []
    assert len(run([ev("purchase", t0)], engine, crossed)) == 3


def test_an_event_before_the_crossing_moves_it(engine_for, ev, t0):
    engine = engine_for("health_winback")
    # A second purchase on day 10 restarts recency: the crossing moves 10 days later.
    events = [ev("purchase", t0), ev("purchase", t0 + 10 * DAY)]
    actions = run(events, engine, t0 + 100 * DAY)
    assert {a.created_at for a in actions} == {"2024-03-26T19:26:57Z"}


def test_score_records_of_the_decay_have_no_cause(engine_for, ev, t0):
    engine = engine_for("health_winback")
    state = apply_event(None, ev("purchase", t0), engine).state
    outcome = advance(state, t0 + 16 * DAY, engine)
    records = [c.to_record() for c in outcome.score_changes]
    assert [(r["at"], r["score"], r["caused_by"]) for r in records] == [
        ("2024-03-16T19:26:57Z", 59.99, []),
    ]
    assert state.clock == ts("2024-03-16T19:26:57Z")  # the clock moved to the due, not on


# --- determinism and order -----------------------------------------------------------------

@pytest.fixture
def busy_history(ev, t0):
    """Three customers exercising every time-driven rule."""
    return [
        ev("profile", t0 - DAY, customer_id="a", birthday="1980-03-20", signup_date="2023-03-05",
           tier="vip", account_manager="am-a", email="a@x.io"),
        ev("purchase", t0, customer_id="a", amount="300"),
        ev("ticket", t0 + HOUR, customer_id="a", ticket_id="A1", status="opened",
           priority="urgent"),
        ev("login", t0 + 2 * DAY, customer_id="a"),
        ev("ticket", t0 + 3 * DAY, customer_id="a", ticket_id="A1", status="closed",
           satisfaction=2),
        ev("profile", t0, customer_id="b", birthday="2000-02-29"),
        ev("purchase", t0 + 0.25 * DAY, customer_id="b", amount="50"),
        ev("login", t0 + 20 * DAY, customer_id="b"),
        ev("ticket", t0 + 21 * DAY, customer_id="b", ticket_id="B1", status="opened",
           priority="low"),
        ev("login", t0 + 5 * DAY, customer_id="c"),
        ev("login", t0 + 50 * DAY, customer_id="c"),
    ]


def test_replaying_the_same_history_twice_gives_identical_actions(engine, busy_history, t0):
    first = run(busy_history, engine, t0 + 400 * DAY)
    second = run(busy_history, engine, t0 + 400 * DAY)
    assert {a.rule_id for a in first} == ALL_RULES - {"vip_upgrade"}
    assert [encode_action(a) for a in first] == [encode_action(a) for a in second]
    ids = [a.action_id for a in first]
    assert len(set(ids)) == len(ids)
    # Output in event-time order across customers.
    times = [ts(a.created_at) for a in first]
    assert times == sorted(times)


def test_ticking_in_small_steps_equals_one_advance(engine, busy_history, t0):
    states: dict[str, CustomerState] = {}
    for event in sorted(busy_history, key=lambda e: e.occurred_at):
        states[event.customer_id] = apply_event(
            states.get(event.customer_id), event, engine).state
    for customer, state in states.items():
        stepped, once = copy(state), copy(state)
        ticks: list[Action] = []
        moment = state.clock
        while moment < t0 + 400 * DAY:
            moment += 6 * HOUR
            ticks += advance(stepped, moment, engine).actions
        whole = advance(once, moment, engine).actions
        assert [a.to_record() for a in ticks] == [a.to_record() for a in whole], customer
        assert stepped.to_bytes() == once.to_bytes()


def test_advance_is_idempotent(engine, busy_history, t0):
    state = None
    for event in sorted(busy_history, key=lambda e: e.occurred_at):
        if event.customer_id == "a":
            state = apply_event(state, event, engine).state
    assert state is not None
    first = advance(state, t0 + 200 * DAY, engine)
    assert first.actions
    snapshot = state.to_bytes()
    again = advance(state, t0 + 200 * DAY, engine)
    assert (again.actions, again.expired, again.score_changes) == ([], [], [])
    assert state.to_bytes() == snapshot
    assert advance(state, t0 + 100 * DAY, engine).actions == []  # an earlier until: nothing


def test_an_event_after_several_dues_fires_them_first_in_due_order(engine, ev, t0):
    state = apply_event(None, ev("purchase", t0), engine).state
    opened = apply_event(state, ev("ticket", t0 + HOUR, ticket_id="T", status="opened",
                                   priority="urgent", event_id="open"), engine)
    assert [a.rule_id for a in opened.actions] == ["ticket_opened_ack"]
    outcome = apply_event(state, ev("ticket", t0 + 40 * DAY, ticket_id="T", status="closed",
                                    event_id="close"), engine)
    assert [(a.rule_id, a.created_at, a.caused_by) for a in outcome.actions] == [
        ("ticket_sla_breach", rfc3339(t0 + 5 * HOUR), ()),          # urgent: 4 h
        # 72 h overdue (+1 s, strictly after): 40 + 0.3 × (80 - 15) = 59.5 < 60.
        ("health_winback", rfc3339(t0 + 73 * HOUR + 1), ()),
        ("health_winback", rfc3339(t0 + 73 * HOUR + 1), ()),
        ("health_winback", rfc3339(t0 + 73 * HOUR + 1), ()),
        ("onboarding_tips", rfc3339(t0 + 7 * DAY), ()),
        ("inactive_30d_followup", rfc3339(t0 + 30 * DAY), ()),
        ("ticket_closed_survey", rfc3339(t0 + 40 * DAY), ("close",)),
    ]
    assert outcome.expired == []


def test_replay_interleaves_timers_and_events_of_all_customers(engine_for, ev, t0):
    engine = engine_for("onboarding_tips", "ticket_opened_ack")
    events = [
        ev("purchase", t0, customer_id="a"),
        ev("ticket", t0 + 6 * DAY, customer_id="b", ticket_id="X", status="opened"),
        ev("ticket", t0 + 7 * DAY, customer_id="b", ticket_id="Y", status="opened"),
        ev("ticket", t0 + 8 * DAY, customer_id="b", ticket_id="Z", status="opened"),
    ]
    actions = run(events, engine, None)
    assert [(a.customer_id, a.rule_id, a.created_at) for a in actions] == [
        ("b", "ticket_opened_ack", rfc3339(t0 + 6 * DAY)),
        ("a", "onboarding_tips", rfc3339(t0 + 7 * DAY)),  # a timer due at an event: first
        ("b", "ticket_opened_ack", rfc3339(t0 + 7 * DAY)),
        ("b", "ticket_opened_ack", rfc3339(t0 + 8 * DAY)),
    ]


def test_replay_without_until_stops_at_the_last_event(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    assert run([ev("purchase", t0), ev("login", t0 + 6 * DAY)], engine, None) == []
    assert len(run([ev("purchase", t0), ev("login", t0 + 6 * DAY)], engine, t0 + 7 * DAY)) == 1


def test_timer_state_survives_a_round_trip(engine, ev, t0):
    state = None
    for event in [ev("profile", t0, birthday="1990-03-10", signup_date="2020-01-01"),
                  ev("purchase", t0), ev("ticket", t0, ticket_id="T", status="opened")]:
        state = apply_event(state, event, engine).state
    assert state is not None
    advance(state, t0 + 5 * DAY, engine)  # breach (72 h) fired, marked
    restored = copy(state)
    assert restored.marks == state.marks
    assert restored.next_due == state.next_due
    later = [a.to_record() for a in advance(state, t0 + 400 * DAY, engine).actions]
    assert [a.to_record() for a in advance(restored, t0 + 400 * DAY, engine).actions] == later


# --- grace: occurrences found too late expire ----------------------------------------------

def test_a_backfilled_old_purchase_expires_the_onboarding_tips(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    now = t0 + 60 * DAY
    state = apply_event(None, ev("login", now), engine).state
    outcome = apply_event(state, ev("purchase", now - 30 * DAY, event_id="old"), engine)
    assert outcome.actions == []
    assert outcome.expired == ["onboarding_tips"]
    assert only_retention_due(engine.pack, state)
    later = advance(state, now + 365 * DAY, engine)
    assert (later.actions, later.expired) == ([], [])
    assert apply_event(state, ev("purchase", now + DAY), engine).actions == []


@pytest.mark.parametrize(("late_by", "fires"), [(24 * HOUR, True), (24 * HOUR + 1, False)])
def test_grace_is_24_hours(engine_for, ev, t0, late_by, fires):
    engine = engine_for("onboarding_tips")
    now = t0 + 60 * DAY
    state = apply_event(None, ev("login", now), engine).state
    outcome = apply_event(state, ev("purchase", now - 7 * DAY - late_by), engine)
    assert [a.rule_id for a in outcome.actions] == (["onboarding_tips"] if fires else [])
    assert outcome.expired == ([] if fires else ["onboarding_tips"])
    if fires:
        assert outcome.actions[0].created_at == rfc3339(now)
        assert outcome.actions[0].action_id == action_id(
            "c1", "onboarding_tips", "onboarding_tips", 0)


def test_a_late_ticket_opening_long_past_its_sla_expires(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach", "ticket_opened_ack")
    now = t0 + 60 * DAY
    state = apply_event(None, ev("login", now), engine).state
    outcome = apply_event(state, ev("ticket", now - 10 * DAY, ticket_id="T-9",
                                    status="opened", priority="urgent"), engine)
    assert [a.rule_id for a in outcome.actions] == ["ticket_opened_ack"]
    assert outcome.expired == ["ticket_sla_breach:T-9"]
    assert advance(state, now + 30 * DAY, engine).actions == []


def test_grace_hours_come_from_the_rule(engine, ev, t0):
    pack = rules_only({
        "id": "tips",
        "trigger": {"on": "after", "anchor": "first_purchase", "days": 1, "grace_hours": 1},
        "actions": [{"type": "notification", "template": "t"}],
    })
    custom = Engine(pack)
    now = t0 + 60 * DAY
    for late_by, fired in [(HOUR, ["tips"]), (HOUR + 1, [])]:
        state = apply_event(None, ev("login", now), custom).state
        outcome = apply_event(state, ev("purchase", now - DAY - late_by), custom)
        assert [a.rule_id for a in outcome.actions] == fired
        assert outcome.expired == ([] if fired else ["tips"])


def test_a_backfilled_purchase_seen_by_a_tick_expires_the_onboarding_tips(engine_for, ev, t0):
    engine = engine_for("onboarding_tips")
    now = t0 + 60 * DAY
    # A new customer whose first (and only) event is a purchase 30 days old.
    state = apply_event(None, ev("purchase", now - 30 * DAY), engine).state
    outcome = advance(state, now, engine, noticed_at=now)  # the worker's tick at `now`
    assert outcome.actions == []
    assert outcome.expired == ["onboarding_tips"]
    assert advance(state, now + 365 * DAY, engine).actions == []


# --- regressions found in review ----------------------

def test_winback_crossing_with_a_millisecond_ticket_time_is_the_first_whole_second(
    engine_for, ev, t0
):
    engine = engine_for("health_winback")
    events = [ev("purchase", t0), ev("ticket", t0 + 0.5, ticket_id="T", status="opened")]
    state = None
    for event in events:
        state = apply_event(state, event, engine).state
    frozen = copy(state)
    actions = run(events, engine, t0 + 30 * DAY)
    crossed = ts(actions[0].created_at)
    assert health(frozen, crossed, engine.pack.scoring).score < 60
    assert health(frozen, crossed - 1, engine.pack.scoring).score >= 60
    assert actions[0].created_at == rfc3339(t0 + 72 * HOUR + 1)


def test_a_birthday_change_does_not_re_emit_the_signup_coupon_just_fired(engine_for, ev, t0):
    engine = engine_for("signup_anniversary_coupon", "birthday_coupon")
    state = apply_event(None, ev("profile", t0, signup_date="2024-03-01"), engine).state
    [coupon] = advance(state, ts("2025-03-01T09:00:00Z"), engine).actions  # a live tick
    assert coupon.rule_id == "signup_anniversary_coupon"
    # A profile update stamped a few minutes earlier arrives just after the tick.
    late = apply_event(state, ev("profile", "2025-03-01T08:55:00Z", birthday="1990-07-01"),
                       engine)
    assert late.actions == []
    assert advance(state, ts("2025-12-31T00:00:00Z"), engine).actions[0].rule_id == (
        "birthday_coupon")


def test_closing_a_ticket_keeps_the_breach_marks_of_other_tickets(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach")
    events = [
        ev("ticket", t0, ticket_id="zd:123", status="opened", priority="urgent"),
        ev("ticket", t0 + 5 * HOUR, ticket_id="123", status="opened", priority="low"),
        ev("ticket", t0 + 6 * HOUR, ticket_id="123", status="closed"),
    ]
    actions = run(events, engine, t0 + DAY)
    assert when(actions) == [("ticket_sla_breach", rfc3339(t0 + 4 * HOUR))]


def test_an_event_stamped_ahead_of_the_live_clock_does_not_fire_timers_early(engine_for, ev, t0):
    engine = engine_for("ticket_sla_breach")
    opened = apply_event(None, ev("ticket", t0, status="opened", priority="urgent",
                                  ticket_id="U"), engine, noticed_at=t0).state
    # A login stamped 5 h ahead (a fast device clock) arrives a minute later.
    outcome = apply_event(opened, ev("login", t0 + 5 * HOUR), engine, noticed_at=t0 + 60)
    assert outcome.actions == []
    assert outcome.state.clock == t0 + 60
    # Replay (no wall clock) keeps event time: there the breach is due before the login.
    replayed = apply_event(None, ev("ticket", t0, status="opened", priority="urgent",
                                    ticket_id="U"), engine)
    later = apply_event(replayed.state, ev("login", t0 + 5 * HOUR), engine)
    assert [a.rule_id for a in later.actions] == ["ticket_sla_breach"]
