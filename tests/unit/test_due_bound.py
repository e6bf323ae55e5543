"""After an event that only adds activity, `state.next_due` is kept as a lower bound instead
of being recomputed (processor.apply_event, rules.next_due_after_activity). The property:
nothing is ever due before the stored bound, and a customer fed any history, with ticks at
any moments, gets exactly the actions, score records and outcome records it got when every
transition recomputed the exact due (the reference: the bound replaced by next_due)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.pack import RulePack
from churnguard.core.processor import Outcome, advance, apply_event
from churnguard.core.rules import next_due
from churnguard.core.state import CustomerState
from churnguard.engine import build_engine
from schemas.events import MODEL_BY_TYPE
from streams.codecs import encode_action
from streams.settings import Settings

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    derandomize=bool(os.environ.get("CI")))
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()
SPAN_S = 120 * DAY  # long enough for silences, decays below thresholds, anniversaries
ENGINE = build_engine(Settings())


def _exact(pack: RulePack, state: CustomerState, bound: float | None) -> float | None:
    return next_due(pack, state)


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, dict[str, Any] | float]]:
    """Events in any arrival order, with ticks (an advance to a moment) between them."""
    moment = st.integers(0, int(SPAN_S)).map(lambda s: T0 + s)
    out: list[tuple[str, dict[str, Any] | float]] = []
    for n in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["login"] * 5 + ["purchase"] * 3 + ["ticket", "profile",
                                                                         "tick", "tick"]))
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
            event |= {"ticket_id": f"t{draw(st.integers(0, 3))}",
                      "status": draw(st.sampled_from(["opened", "closed"])),
                      "priority": draw(st.sampled_from(["low", "normal", "urgent"]))}
        else:
            event["birthday"] = draw(st.sampled_from(["1990-03-20", "1985-05-01"]))
            event["signup_date"] = "2023-04-10"
        out.append(("event", event))
    return out


def _run(history: list[tuple[str, dict[str, Any] | float]], *, reference: bool
         ) -> tuple[list[Any], list[float | None]]:
    patch = (mock.patch("churnguard.core.processor.next_due_after_activity", _exact)
             if reference else nullcontext())
    produced: list[Any] = []
    slack: list[float | None] = []  # exact due minus stored bound, after each step
    state: CustomerState | None = None
    with patch:
        for kind, item in history:
            outcome: Outcome
            if kind == "tick":
                if state is None:
                    continue
                assert isinstance(item, float)
                outcome = advance(state, item, ENGINE, noticed_at=item + HOUR)
            else:
                assert isinstance(item, dict)
                event = MODEL_BY_TYPE[item["type"]].model_validate(item)
                outcome = apply_event(state, event, ENGINE)  # type: ignore[arg-type]
                state = outcome.state
            produced += [encode_action(a) for a in outcome.actions]
            produced += [c.to_record() for c in outcome.score_changes]
            produced += outcome.outcome_records + outcome.expired
            exact = next_due(ENGINE.pack, state)
            slack.append(None if exact is None or state.next_due is None
                         else exact - state.next_due)
            if exact is not None:
                assert state.next_due is not None
                assert state.next_due <= exact
        if state is not None:  # and on to the end of time: every due comes
            produced += [encode_action(a) for a in
                         advance(state, T0 + 3 * 365 * DAY, ENGINE).actions]
    return produced, slack


@PROPERTY
@given(steps())
def test_a_bound_changes_nothing_but_the_work(history):
    kept, _slack = _run(history, reference=False)
    exact, exact_slack = _run(history, reference=True)
    assert kept == exact
    assert all(s in (None, 0.0) for s in exact_slack)  # the reference is exact


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
