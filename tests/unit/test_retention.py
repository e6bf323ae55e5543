"""Data retention (issue 15 §4): a customer with no event for the pack's retention_days is
removed by the tick (processor.advance -> batch.process_due), as an erasure removes one:
state, due-index entry and census place go, nothing of it is published, it is counted. An
event after the horizon starts a fresh customer, in a worker and in replay alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from churnguard import due_index
from churnguard.batch import BatchContext, process_due, process_partition
from churnguard.core.clock import DAY, parse_rfc3339, rfc3339
from churnguard.core.pack import PackInvalid, build_pack
from churnguard.core.processor import Engine, advance, apply_event
from churnguard.core.rules import Action, next_due, retention_due
from churnguard.core.state import CustomerState
from churnguard.metrics import Metrics
from churnguard.replay import replay
from schemas.events import Event
from tests.unit.memory_store import MemoryStore
from tests.unit.packs import pack_data
from tests.unit.raw_records import TOPICS, Record

YEARS_3 = 1095 * DAY


@pytest.fixture
def ev(event_factory: Callable[..., Event]) -> Callable[..., Event]:
    def make(type_: str, at: float, **fields: Any) -> Event:
        return event_factory(type_, occurred_at=rfc3339(at), **fields)

    return make


def _engine(engine_factory: Callable[..., Engine], retention: int | None = 1095,
            **kwargs: Any) -> Engine:
    changes = dict(kwargs.pop("changes", {}))
    changes["retention_days"] = retention
    return engine_factory(changes=changes, **kwargs)


def _when(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.rule_id, a.created_at) for a in actions]


# --- the core ------------------------------------------------------------------------------

def test_the_tick_removes_a_customer_retention_days_after_its_last_event(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event], t0: float,
) -> None:
    engine = _engine(engine_factory, only=["inactive_30d_followup"])
    state = apply_event(None, ev("login", t0), engine).state
    state = apply_event(state, ev("ticket", t0 + 10 * DAY, ticket_id="T1", status="opened",
                                  priority="low"), engine).state
    last = t0 + 10 * DAY
    assert state.last_event_at == last
    assert retention_due(engine.pack, state) == last + YEARS_3
    just_before = advance(state, last + YEARS_3 - 1, engine)
    assert not just_before.retired
    # What was due before the retention fired, at its own time.
    assert [a.rule_id for a in just_before.actions] == ["inactive_30d_followup"]
    gone = advance(state, last + YEARS_3 + DAY, engine)
    assert gone.retired
    assert gone.actions == []


def test_every_kind_of_event_keeps_a_customer_and_timers_do_not(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event],
) -> None:
    """A birthday-only customer gets its coupons until its retention, none after; its
    profile updated a year later keeps it a year longer."""
    engine = _engine(engine_factory, only=["birthday_coupon"])
    start = parse_rfc3339("2026-01-01T00:00:00Z")
    profile = ev("profile", start, birthday="1990-05-05")
    assert _when(list(replay([profile], engine, until=start + 5 * 365 * DAY))) == [
        ("birthday_coupon", "2026-05-05T09:00:00Z"),
        ("birthday_coupon", "2027-05-05T09:00:00Z"),
        ("birthday_coupon", "2028-05-05T09:00:00Z"),
    ]  # (retention: 2028-12-31)
    update = ev("profile", start + 365 * DAY, birthday="1990-05-05", event_id="p2")
    states: dict[str, CustomerState] = {}
    actions = list(replay([profile, update], engine, until=start + 5 * 365 * DAY,
                          states=states))
    assert [a.created_at[:4] for a in actions] == ["2026", "2027", "2028", "2029"]
    assert states == {}  # removed in 2029: nothing of it is left


def test_an_event_after_the_horizon_starts_a_fresh_customer(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event], t0: float,
) -> None:
    engine = _engine(engine_factory)
    state = apply_event(None, ev("purchase", t0, amount="120"), engine).state
    assert state.order_count == 1
    back = apply_event(state, ev("purchase", t0 + YEARS_3 + DAY, amount="10", event_id="e2"),
                       engine)
    assert back.retired
    assert back.state is not state
    assert (back.state.order_count, back.state.first_purchase_at) == (1, t0 + YEARS_3 + DAY)
    assert back.state.actions_log == [] or all(
        a.at >= t0 + YEARS_3 for a in back.state.actions_log)
    # Within the horizon the customer is kept.
    kept = apply_event(back.state, ev("login", t0 + 2 * YEARS_3, event_id="e3"), engine)
    assert not kept.retired
    assert kept.state.order_count == 1


def test_replay_and_a_worker_agree_on_a_customer_who_comes_back(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event], t0: float,
) -> None:
    """The same action ids whether the tick removed the customer before its return (the
    worker: process_due, then process_partition) or the event found it past its horizon
    (replay)."""
    engine = _engine(engine_factory, changes={"backfill_horizon_hours": 24 * 3660})
    events = [ev("purchase", t0, amount="120"),
              ev("purchase", t0 + YEARS_3 + 5 * DAY, amount="15", event_id="back")]
    replayed = [a.action_id for a in replay(events, engine)]
    via_event = apply_event(apply_event(None, events[0], engine).state, events[1], engine)
    first = apply_event(None, events[0], engine)
    assert via_event.retired
    ids = [a.action_id for a in first.actions] + [a.action_id for a in via_event.actions]
    assert ids == replayed
    assert via_event.actions  # (the fresh customer's onboarding, at least)


def test_no_retention_keeps_a_customer_forever(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event], t0: float,
) -> None:
    engine = _engine(engine_factory, retention=None, only=[])
    state = apply_event(None, ev("login", t0), engine).state
    assert retention_due(engine.pack, state) is None
    assert state.next_due is None
    assert next_due(engine.pack, state) is None
    assert not advance(state, t0 + 100 * YEARS_3, engine).retired


def test_a_state_stored_before_retention_counts_from_its_clock_once(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event],
) -> None:
    """last_event_at None (format 1): the clock stands in, pinned when its dues are first
    computed, so that yearly timers firing do not keep moving its retention."""
    engine = _engine(engine_factory, only=["birthday_coupon"])
    start = parse_rfc3339("2026-01-01T00:00:00Z")
    state = apply_event(None, ev("profile", start, birthday="1990-05-05"), engine).state
    state.last_event_at = None
    state.next_due = next_due(engine.pack, state)  # as the re-index after the upgrade
    state = CustomerState.from_bytes(state.to_bytes())  # (as stored: its due not known exact)
    until = start + 5 * 365 * DAY
    fired: list[Action] = []
    while True:
        outcome = advance(state, until, engine)
        fired += outcome.actions
        if outcome.retired or state.next_due is None or state.next_due > until:
            break
    assert state.last_event_at == start
    assert outcome.retired
    assert [a.created_at[:4] for a in fired] == ["2026", "2027", "2028"]


@pytest.mark.parametrize("days", [0, -5, 36_501, "three years"])
def test_a_retention_out_of_bounds_is_refused(days: Any) -> None:
    data = pack_data(changes={"retention_days": days})
    with pytest.raises(PackInvalid) as caught:
        build_pack(data)
    [problem] = caught.value.problems
    assert problem.loc == ("retention_days",)


def test_a_changed_retention_is_a_new_pack(engine_factory: Callable[..., Engine]) -> None:
    """Its fingerprint differs: the re-index recomputes every customer's due under it."""
    assert (_engine(engine_factory, 365).pack.fingerprint
            != _engine(engine_factory, 1095).pack.fingerprint)


# --- the worker's batch and tick -----------------------------------------------------------

def _worker(engine: Engine) -> tuple[BatchContext, MemoryStore]:
    """A worker's batch context for `engine` and an empty partition store."""
    return BatchContext.create(engine, TOPICS, Metrics(), 24), MemoryStore()


def _purchase(raw_factory: Callable[..., bytes], at: float, offset: int,
              event_id: str) -> Record:
    value = orjson.loads(raw_factory("purchase", occurred_at=rfc3339(at), amount="80",
                                     event_id=event_id))
    del value["type"]
    return Record(TOPICS.purchases, 0, offset, b"c1", orjson.dumps(value))


def test_a_tick_past_the_retention_deletes_state_index_entry_and_census_place(
    engine_factory: Callable[..., Engine], raw_factory: Callable[..., bytes], t0: float,
) -> None:
    engine = _engine(engine_factory, only=["onboarding_tips"])
    ctx, store = _worker(engine)
    first = process_partition([_purchase(raw_factory, t0, 0, "e1")], store.load, ctx,
                              now=t0 + 60)
    store.write(first.writes)
    assert first.new_customers == 1
    # Ticks until the retention: the onboarding tips fire, the customer stays.
    later = t0 + 30 * DAY
    week = process_due(sorted(k for k in store.data if k.startswith(due_index.PREFIX)),
                       store.load, ctx, until=later, noticed_at=later)
    store.write(week.writes)
    assert ctx.metrics.customers_retired == 0
    [entry] = [k for k in store.data if k.startswith(due_index.PREFIX)]
    assert due_index.due_of(entry) == t0 + YEARS_3  # the retention (exact after a firing)
    gone_at = t0 + YEARS_3 + 1
    result = process_due([entry], store.load, ctx, until=gone_at, noticed_at=gone_at)
    assert result.writes[b"c1"] is None
    assert result.writes[entry] is None
    assert result.new_customers == -1
    assert result.census[b"c1"][1] is None
    assert TOPICS.scores not in {o.topic for o in result.outputs}
    assert ctx.metrics.customers_retired == 1
    store.write(result.writes)
    assert store.data == {}
    # The id back: a fresh customer, counted as a new one.
    back = process_partition([_purchase(raw_factory, gone_at + DAY, 1, "e2")], store.load,
                             ctx, now=gone_at + DAY)
    fresh = CustomerState.from_bytes(back.writes[b"c1"])
    assert (fresh.order_count, back.new_customers) == (1, 1)


def test_an_event_past_the_retention_in_a_batch_counts_the_removal(
    engine_factory: Callable[..., Engine], raw_factory: Callable[..., bytes], t0: float,
) -> None:
    engine = _engine(engine_factory, only=[])
    ctx, store = _worker(engine)
    store.write(process_partition([_purchase(raw_factory, t0, 0, "e1")], store.load, ctx,
                                  now=t0).writes)
    back_at = t0 + YEARS_3 + 2 * DAY
    result = process_partition([_purchase(raw_factory, back_at, 1, "e2")], store.load, ctx,
                               now=back_at)
    fresh = CustomerState.from_bytes(result.writes[b"c1"])
    assert fresh.order_count == 1
    assert result.new_customers == 0  # one removed, one new
    assert ctx.metrics.customers_retired == 1


# --- what keeps a customer, and history being imported ---------------------------------------

@pytest.mark.parametrize(("status", "kept"), [("delivered", False), ("failed", False),
                                              ("completed", False), ("opened", True),
                                              ("clicked", True)])
def test_only_feedback_the_customer_gave_keeps_it(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event], status: str, kept: bool,
) -> None:
    """A delivery report of its yearly coupon does not keep a birthday-only customer."""
    engine = _engine(engine_factory, only=["birthday_coupon"])
    start = parse_rfc3339("2026-01-01T00:00:00Z")
    events = [ev("profile", start, birthday="1990-05-05"),
              ev("action_feedback", start + 2 * 365 * DAY, action_id="a1", status=status,
                 event_id="f1")]
    states: dict[str, CustomerState] = {}
    list(replay(events, engine, until=start + 3 * 365 * DAY + DAY, states=states))
    assert ("c1" in states) is kept


def test_history_being_imported_is_not_removed_before_the_rest_of_it_arrives(
    engine_factory: Callable[..., Engine], raw_factory: Callable[..., bytes],
    ev: Callable[..., Event], t0: float,
) -> None:
    """Purchases 4 years, 2 years and 30 days ago, imported in three batches (records
    stamped with the import's time) with ticks between: the customer is never 3 years
    inactive, and the worker ends where replay ends — three orders."""
    engine = _engine(engine_factory, only=[])
    ctx, store = _worker(engine)
    now = t0 + 5 * 365 * DAY
    ages = (4 * 365 * DAY, 2 * 365 * DAY, 30 * DAY)
    for offset, age in enumerate(ages):
        result = process_partition([_purchase(raw_factory, now - age, offset, f"e{offset}")],
                                   store.load, ctx, now=now)
        store.write(result.writes)
        entries = sorted(k for k in store.data if k.startswith(due_index.PREFIX))
        store.write(process_due(entries, store.load, ctx, until=now, noticed_at=now).writes)
    assert ctx.metrics.customers_retired == 0
    state = CustomerState.from_bytes(store.data[b"c1"])
    assert state.order_count == 3
    assert next_due(engine.pack, state) == now - 30 * DAY + YEARS_3  # (the stored: a bound)
    replayed: dict[str, CustomerState] = {}
    list(replay([ev("purchase", now - age, amount="80", event_id=f"e{n}")
                 for n, age in enumerate(ages)], engine, states=replayed))
    assert replayed["c1"].order_count == 3


def test_an_imported_customer_past_its_retention_goes_a_backfill_horizon_later(
    engine_factory: Callable[..., Engine], raw_factory: Callable[..., bytes], t0: float,
) -> None:
    engine = _engine(engine_factory, only=[])
    ctx, store = _worker(engine)
    now = t0 + 5 * 365 * DAY
    store.write(process_partition([_purchase(raw_factory, now - 4 * 365 * DAY, 0, "e0")],
                                  store.load, ctx, now=now).writes)
    [entry] = [k for k in store.data if k.startswith(due_index.PREFIX)]
    assert due_index.due_of(entry) == now + engine.pack.backfill_horizon
    early = process_due([entry], store.load, ctx, until=now + DAY, noticed_at=now + DAY)
    assert early.writes[b"c1"] is not None  # kept
    later = now + engine.pack.backfill_horizon
    gone = process_due([entry], store.load, ctx, until=later, noticed_at=later)
    assert gone.writes[b"c1"] is None
    assert ctx.metrics.customers_retired == 1


def test_a_record_applied_before_an_event_removed_the_customer_stays_applied(
    engine_factory: Callable[..., Engine], raw_factory: Callable[..., bytes], t0: float,
) -> None:
    """The fresh customer keeps the offsets and event ids known: a redelivered record
    changes nothing."""
    engine = _engine(engine_factory, only=[])
    ctx, store = _worker(engine)
    first = _purchase(raw_factory, t0, 0, "e0")
    store.write(process_partition([first], store.load, ctx, now=t0).writes)
    back_at = t0 + YEARS_3 + DAY
    back = _purchase(raw_factory, back_at, 1, "e1")
    store.write(process_partition([back], store.load, ctx, now=back_at).writes)
    assert ctx.metrics.customers_retired == 1
    again = process_partition([first, back], store.load, ctx, now=back_at)
    assert ctx.metrics.duplicates == 2
    assert CustomerState.from_bytes(again.writes[b"c1"]).order_count == 1


def test_a_win_back_episode_open_at_the_removal_counts_as_expired(
    engine_factory: Callable[..., Engine], ev: Callable[..., Event], t0: float,
) -> None:
    """Retention shorter than the recovery window: the episode the win-back started is not
    left open in the KPIs forever."""
    engine = _engine(engine_factory, 20, only=["health_winback"])
    outcomes: list[Any] = []
    actions = list(replay([ev("purchase", t0, amount="60")], engine, until=t0 + 60 * DAY,
                          outcomes=outcomes))
    assert {a.rule_id for a in actions} == {"health_winback"}  # (the score fell below 60)
    kinds = [record["kind"] for record in outcomes]
    assert kinds.count("episode_started") == 1
    assert kinds.count("episode_expired") == 1
