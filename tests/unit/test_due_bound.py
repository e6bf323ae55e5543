"""After an event that only adds activity, `state.next_due` is kept as a lower bound instead
of being recomputed (processor.apply_event, rules.next_due_after_activity); timers' dues are
plain arithmetic (triggers.earliest_due); an event evaluates only the rules it may fire
(rules.candidates). The property: nothing is ever due before the stored bound, and a
customer fed any history (ticks at any moments, a pack published midway), gets exactly the
actions, score records and outcome records it got when all three are switched off (the
reference: every due recomputed exactly from the occurrences, every rule evaluated)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from churnguard.core import native, triggers
from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.pack import Rule, RulePack
from churnguard.core.processor import Engine, Outcome, advance, apply_event
from churnguard.core.rules import next_due
from churnguard.core.state import CustomerState
from schemas.events import MODEL_BY_TYPE
from streams.codecs import encode_action
from tests.unit.packs import make_pack

# It counts calls by patching module functions, which compiled modules call directly: with
# a compiled core it runs in the Python reference (tests/unit/test_native_core.py).
pytestmark = pytest.mark.skipif(native.MODE == "compiled",
                                reason="run in the Python reference by test_native_core.py")
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    derandomize=bool(os.environ.get("CI")))
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()
SPAN_S = 120 * DAY  # long enough for silences, decays below thresholds, anniversaries
SEGMENT_RULE = {"id": "at_risk_care", "trigger": {"on": "segment_entered",
                                                      "segment": "at_risk"},
                "actions": [{"type": "notification", "template": "thanks"}]}
# The packs a customer's history runs under: the default, and published changes of what is
# due (a silence, a threshold and an anchor moved, an anniversary and a segment rule added).
PACKS: dict[str, dict[str, Any]] = {
    "default": {"disable": ("signup_anniversary_coupon",)},
    "shorter": {"changes": {"version": 3, "rules.inactive_30d_followup.trigger.days": 10,
                            "rules.onboarding_tips.trigger.days": 2,
                            "rules.health_winback.trigger.below": 75}},
    "longer": {"changes": {"version": 4, "rules.inactive_30d_followup.trigger.days": 60,
                           "rules.health_winback.trigger.below": 40},
               "extra_rules": (SEGMENT_RULE,)},
    "higher_bar": {"changes": {"version": 5, "rules.health_winback.trigger.below": 75}},
    # The default edited under its own version (a rules file changed, the worker restarted).
    "edited": {"changes": {"rules.onboarding_tips.trigger.days": 2},
               "disable": ("signup_anniversary_coupon",)},
}


@cache
def _engine(name: str) -> Engine:
    return Engine(pack=make_pack(**PACKS[name]), analyse_comments=True)


def _exact_after_activity(pack: RulePack, state: CustomerState, bound: float | None
                          ) -> float | None:
    return next_due(pack, state)


def _due_from_occurrences(rule_id: str, trigger: triggers.TimerTrigger, state: CustomerState,
                          *, sla_hours: Any, tz: ZoneInfo) -> float | None:
    return min((o.due for o in triggers.pending(rule_id, trigger, state, sla_hours=sla_hours,
                                                tz=tz)), default=None)


def _every_rule(pack: RulePack, signals: frozenset[str], *, time_driven: bool
                ) -> tuple[Rule, ...]:
    return pack.rules


def _reference() -> ExitStack:
    stack = ExitStack()
    stack.enter_context(mock.patch("churnguard.core.processor.next_due_after_activity",
                                   _exact_after_activity))
    stack.enter_context(mock.patch("churnguard.core.rules.earliest_due",
                                   _due_from_occurrences))
    stack.enter_context(mock.patch("churnguard.core.rules.candidates", _every_rule))
    return stack


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Events in any arrival order, with ticks (an advance to a moment) and at most one
    pack publication between them."""
    moment = st.integers(0, int(SPAN_S)).map(lambda s: T0 + s)
    out: list[tuple[str, Any]] = []
    count = draw(st.integers(1, 30))
    publish_at = draw(st.integers(0, count))
    for n in range(count):
        if n == publish_at:
            published = st.sampled_from(["shorter", "longer", "higher_bar", "edited"])
            out.append(("pack", draw(published)))
        kind = draw(st.sampled_from(["login"] * 5 + ["purchase"] * 3 + [
            "ticket", "ticket", "profile", "feedback", "tick", "tick"]))
        at = draw(moment)
        if kind == "tick":
            out.append(("tick", float(at)))
            continue
        event: dict[str, Any] = {"type": kind, "event_id": f"e{n}", "customer_id": "c1",
                                 "occurred_at": rfc3339(at)}
        if kind == "login":
            event["channel"] = "web"
        elif kind == "purchase":
            amount = draw(st.decimals(Decimal("1"), Decimal("6000"), places=2))
            event |= {"order_id": f"o{n}", "amount": str(amount), "currency": "EUR"}
        elif kind == "ticket":
            # Few ticket ids: repeated closes (each may carry a rating) and late opens.
            event |= {"ticket_id": f"t{draw(st.integers(0, 2))}",
                      "status": draw(st.sampled_from(["opened", "closed", "closed"])),
                      "priority": draw(st.sampled_from(["low", "normal", "urgent"]))}
            rating = draw(st.one_of(st.none(), st.integers(1, 5)))
            if rating is not None and event["status"] == "closed":
                event["satisfaction"] = rating
        elif kind == "feedback":
            event["type"] = "action_feedback"
            event |= {"action_id": f"a{n}", "status": "opened"}
        else:
            event["birthday"] = draw(st.sampled_from(["1990-03-20", "1985-05-01"]))
            event["signup_date"] = draw(st.sampled_from(["2023-04-10", "2022-03-15"]))
        out.append(("event", event))
    return out


def _run(history: list[tuple[str, Any]], *, reference: bool
         ) -> tuple[list[Any], list[float | None]]:
    produced: list[Any] = []
    slack: list[float | None] = []  # exact due minus stored bound, after each step
    state: CustomerState | None = None
    engine = _engine("default")
    with _reference() if reference else ExitStack():
        for kind, item in history:
            outcome: Outcome
            if kind == "pack":
                engine = _engine(item)
                continue
            if kind == "tick":
                if state is None:
                    continue
                outcome = advance(state, item, engine, noticed_at=item + HOUR)
            else:
                event = MODEL_BY_TYPE[item["type"]].model_validate(item)
                outcome = apply_event(state, event, engine)  # type: ignore[arg-type]
                state = outcome.state
            produced += [encode_action(a) for a in outcome.actions]
            produced += [c.to_record() for c in outcome.score_changes]
            produced += outcome.outcome_records + outcome.expired
            if state.due_pack != engine.pack.fingerprint:
                continue  # a tick before the reindex came to it: the old pack's due
            exact = next_due(engine.pack, state)
            slack.append(None if exact is None or state.next_due is None
                         else exact - state.next_due)
            if exact is not None:
                assert state.next_due is not None
                assert state.next_due <= exact
        if state is not None:  # and on to the end of time: every due comes
            produced += [encode_action(a) for a in
                         advance(state, T0 + 3 * 365 * DAY, engine).actions]
    return produced, slack


def _event(n: int, kind: str, at: float, **fields: Any) -> tuple[str, dict[str, Any]]:
    return ("event", {"type": kind, "event_id": f"e{n}", "customer_id": "c1",
                      "occurred_at": rfc3339(at), **fields})


_BUY = {"order_id": "o1", "amount": "80", "currency": "EUR"}
# A repeated close rates the ticket again (lower): no signal, but the service score falls
# and the win-back's crossing comes earlier than the bound kept.
REPEATED_CLOSE = [
    _event(1, "purchase", T0, **_BUY),
    _event(2, "ticket", T0 + HOUR, ticket_id="t1", status="opened", priority="normal"),
    _event(3, "ticket", T0 + 2 * HOUR, ticket_id="t1", status="closed", satisfaction=5),
    _event(4, "ticket", T0 + 3 * HOUR, ticket_id="t1", status="closed", satisfaction=1),
    _event(5, "ticket", T0 + 4 * HOUR, ticket_id="t1", status="closed", satisfaction=1),
    ("tick", T0 + 100 * DAY),
]
# A pack publishing an anniversary rule: a login after it keeps no bound the old pack
# computed (a silence 30 days on), so this year's anniversary, 14 days on, comes on time.
LOGIN_AFTER_PUBLISH = [
    _event(1, "login", T0, channel="web"),
    _event(2, "profile", T0, signup_date="2022-03-15"),
    ("pack", "higher_bar"),
    _event(3, "login", T0 + DAY, channel="web"),
    ("tick", T0 + 20 * DAY),
]


@PROPERTY
@given(steps())
@example(REPEATED_CLOSE)
@example(LOGIN_AFTER_PUBLISH)
@example([_event(1, "purchase", T0, **_BUY), ("pack", "edited"),
          _event(2, "login", T0 + DAY, channel="web"), ("tick", T0 + 7 * DAY)])
def test_a_bound_changes_nothing_but_the_work(history):
    kept, _slack = _run(history, reference=False)
    exact, exact_slack = _run(history, reference=True)
    assert kept == exact
    assert all(s in (None, 0.0) for s in exact_slack)  # the reference is exact
    ids = [orjson.loads(record)["action_id"] for record in kept if isinstance(record, bytes)]
    assert len(ids) == len(set(ids))


def test_a_threshold_re_armed_and_crossed_again_at_the_same_moment_fires_with_new_ids():
    """Crossed below the higher bar when it is published (time-driven, `at:<due>`), re-armed
    at the same moment by the default's lower bar, then crossed again when the higher bar
    comes back: two firings, two sets of action ids, not the first set sent twice."""
    login = {"channel": "web"}
    history = [_event(0, "login", T0, **login), _event(1, "purchase", T0, **_BUY),
               ("pack", "higher_bar"), _event(2, "login", T0, **login),
               ("pack", "default"), _event(3, "login", T0, **login),
               ("pack", "higher_bar"), ("tick", T0)]
    produced, _slack = _run(history, reference=False)
    winbacks = [orjson.loads(record) for record in produced if isinstance(record, bytes)
                and orjson.loads(record)["rule_id"] == "health_winback"]
    assert {w["created_at"] for w in winbacks} == {rfc3339(T0)}
    ids = [w["action_id"] for w in winbacks]
    assert len(ids) == 2 * 3  # twice its three actions for a customer who is not a vip
    assert len(set(ids)) == len(ids)


def test_a_login_keeps_the_bound_and_the_bound_fires_nothing(engine_factory):
    """A login after a purchase leaves the decay crossing where it was (a bound); when the
    bound comes, nothing fires and no score record is made: the bound moves to the crossing."""
    engine = engine_factory(only=("health_winback",), changes={})
    def event(kind: str, n: int, at: float, **fields: Any) -> Any:
        return MODEL_BY_TYPE[kind].model_validate(
            {"type": kind, "event_id": f"e{n}", "customer_id": "c1",
             "occurred_at": rfc3339(at), **fields})

    state = apply_event(None, event("purchase", 1, T0, order_id="o1", amount="50",
                                    currency="EUR"), engine).state
    crossing = next_due(engine.pack, state)
    assert crossing is not None
    assert state.next_due == crossing
    state = apply_event(state, event("login", 2, T0 + DAY, channel="web"), engine).state
    later = next_due(engine.pack, state)
    assert later is not None
    assert later > crossing
    assert state.next_due <= crossing  # kept: the login could only move dues later
    came = advance(state, crossing, engine)
    assert (came.actions, came.score_changes, came.outcome_records) == ([], [], [])
    assert state.next_due == later


def test_a_silence_followed_up_is_not_due_again_when_a_published_pack_lengthens_it():
    """Followed up after 30 silent days, then a pack makes it 60: the same silence is not
    due again at 60 days (no wake that fires nothing and publishes a score)."""
    default, longer = _engine("default"), _engine("longer")
    login = MODEL_BY_TYPE["login"].model_validate(
        {"type": "login", "event_id": "e1", "customer_id": "c1", "occurred_at": rfc3339(T0),
         "channel": "web"})
    state = apply_event(None, login, default).state
    fired = advance(state, T0 + 31 * DAY, default)
    assert "inactive_30d_followup" in {a.rule_id for a in fired.actions}
    kept = next_due(longer.pack, state)
    with _reference():
        exact = next_due(longer.pack, state)
    assert kept == exact
    assert kept != T0 + 60 * DAY
