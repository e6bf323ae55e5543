"""The backfill horizon (the pack's `backfill_horizon_hours`): an event processed longer than
that after it occurred is history — state, score, segment and KPIs are built from it, but
the rules it fires expire instead of messaging the customer (a ticket from last year gets no
acknowledgement). Time-driven rules had this already (`grace_hours`)."""

from __future__ import annotations

import pytest

from churnguard.batch import BatchContext, process_partition
from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.pack import PackInvalid
from churnguard.core.processor import apply_event
from churnguard.metrics import Metrics
from churnguard.rules.diff import diff_packs
from tests.unit.packs import make_pack
from tests.unit.raw_records import TOPICS, Record

HORIZON = 72 * HOUR


@pytest.fixture
def ticket(event_factory):
    def make(age_s: float, now: float, **fields):
        return event_factory("ticket", occurred_at=_iso(now - age_s), **fields)

    return make


def _iso(moment: float) -> str:
    return rfc3339(moment)


def test_the_default_pack_has_a_72_hour_horizon(engine):
    assert engine.pack.spec.backfill_horizon_hours == 72
    assert engine.pack.backfill_horizon == HORIZON


def test_a_ticket_from_last_year_is_not_acknowledged_but_counts(engine, ticket, t0):
    now = t0 + 400 * DAY
    old = apply_event(None, ticket(365 * DAY, now, ticket_id="T-old"), engine, noticed_at=now)
    assert old.actions == []
    assert old.expired == [f"ticket_opened_ack:{old.state.seen[-1]}"]
    # The state is built all the same: the ticket is open, the customer scored.
    assert list(old.state.open_tickets) == ["T-old"]
    assert old.state.score is not None
    assert [r["kind"] for r in old.outcome_records] == ["ticket_opened"]  # KPIs' input


def test_a_recent_ticket_is_acknowledged(engine, ticket, t0):
    now = t0 + 400 * DAY
    fresh = apply_event(None, ticket(HOUR, now), engine, noticed_at=now)
    assert [a.rule_id for a in fresh.actions] == ["ticket_opened_ack"]
    assert fresh.expired == []


@pytest.mark.parametrize(("age_s", "fires"), [(HORIZON, True), (HORIZON + 1, False)])
def test_the_horizon_is_exclusive(engine, ticket, t0, age_s, fires):
    now = t0 + 10 * DAY
    outcome = apply_event(None, ticket(age_s, now), engine, noticed_at=now)
    assert bool(outcome.actions) is fires
    assert bool(outcome.expired) is not fires


def test_history_builds_the_same_state_as_a_live_worker_would(event_factory, engine_factory, t0):
    """The same events, once as they happen and once imported a year later: the same score,
    segment and history; only the actions differ."""
    engine = engine_factory(disable=["vip_upgrade"])  # its profile update is a rule's action
    events = [
        event_factory("profile", day=0, email="a@b.c", tags=["x"]),
        event_factory("purchase", day=1, amount="250", order_id="o1"),
        event_factory("ticket", day=2, ticket_id="T", status="opened", priority="high"),
        event_factory("login", day=3),
        event_factory("ticket", day=4, ticket_id="T", status="closed", satisfaction=2),
    ]
    live = backfilled = None
    live_actions, backfilled_actions, expired = [], [], []
    for event in events:
        at = event.at
        live_outcome = apply_event(live, event, engine, noticed_at=at)
        live = live_outcome.state
        live_actions += live_outcome.actions
        late = apply_event(backfilled, event, engine, noticed_at=at + 365 * DAY)
        backfilled = late.state
        backfilled_actions += late.actions
        expired += late.expired
    assert live is not None
    assert backfilled is not None
    assert {a.rule_id for a in live_actions} >= {"ticket_opened_ack", "ticket_closed_survey"}
    assert [a for a in backfilled_actions if a.caused_by] == []
    assert {key.split(":")[0] for key in expired} >= {"ticket_opened_ack", "ticket_closed_survey"}
    for name in ("score", "segment", "rfm", "components", "order_count", "spend_e4",
                 "ratings", "closed_tickets", "tags", "has_email", "last_active_at"):
        assert getattr(backfilled, name) == getattr(live, name), name


def test_a_threshold_an_old_event_crosses_is_spent_unfired(engine, event_factory, t0):
    now = t0 + 400 * DAY
    state = apply_event(None, event_factory("profile", day=0), engine, noticed_at=now).state
    big = apply_event(state, event_factory("purchase", day=1, amount="12000"), engine,
                      noticed_at=now)
    assert big.actions == []
    assert any(key.startswith("vip_upgrade:") for key in big.expired)
    assert big.state.tier == "standard"  # the profile update is the rule's: not applied
    # `once`: a live purchase later does not send the welcome for the old crossing.
    later = apply_event(big.state, event_factory("purchase", occurred_at=_iso(now),
                                                 amount="5", order_id="o2"),
                        engine, noticed_at=now)
    assert [a.rule_id for a in later.actions if a.rule_id == "vip_upgrade"] == []


def test_the_horizon_is_the_packs(engine_factory, ticket, t0):
    engine = engine_factory(changes={"backfill_horizon_hours": 24 * 400})
    now = t0 + 400 * DAY
    outcome = apply_event(None, ticket(365 * DAY, now), engine, noticed_at=now)
    assert [a.rule_id for a in outcome.actions] == ["ticket_opened_ack"]


def test_replay_applies_every_event_at_its_own_moment(engine, ticket, t0):
    # No wall clock (replay, in event-time order): nothing is old, whatever its date.
    outcome = apply_event(None, ticket(365 * DAY, t0 + 400 * DAY), engine)
    assert [a.rule_id for a in outcome.actions] == ["ticket_opened_ack"]


def test_the_worker_counts_them_with_the_expired_timers(engine, raw_factory, t0):
    metrics = Metrics()
    ctx = BatchContext.create(engine, TOPICS, metrics, 24)
    record = Record(TOPICS.events, 0, 0, b"c1", raw_factory("ticket", day=0))
    result = process_partition([record], lambda keys: [None] * len(keys), ctx,
                               now=t0 + 30 * DAY)
    assert [o.topic for o in result.outputs if o.topic == TOPICS.notifications] == []
    assert metrics.timers_expired == 1
    assert any(o.topic == TOPICS.scores for o in result.outputs)


@pytest.mark.parametrize("hours", [0, -1, 24 * 3661])
def test_a_horizon_out_of_range_is_refused(hours):
    with pytest.raises(PackInvalid) as caught:
        make_pack(changes={"backfill_horizon_hours": hours})
    assert [p.loc for p in caught.value.problems] == [("backfill_horizon_hours",)]


def test_rules_diff_shows_a_changed_horizon():
    old, new = make_pack(), make_pack(changes={"backfill_horizon_hours": 24})
    assert "  backfill_horizon_hours: 72 → 24" in diff_packs(old.spec, new.spec)
