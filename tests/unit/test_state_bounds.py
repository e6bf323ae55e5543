"""Bounded state (issue 16): at most MAX_OPEN_TICKETS open tickets per customer, the oldest
evicted (counted, one log line per batch), and a per-event cost that does not grow with
the customer's history."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from churnguard.batch import BatchContext, process_partition
from churnguard.core import native, triggers
from churnguard.core.clock import DAY
from churnguard.core.processor import apply_event
from churnguard.core.state import MAX_OPEN_TICKETS, CustomerState
from churnguard.metrics import Metrics
from tests.unit.raw_records import TOPICS, Record


def opened(event_factory, n, *, minutes=None, priority=None):
    fields = {"ticket_id": f"t-{n:05d}", "status": "opened", "event_id": f"o-{n:05d}",
              "hours": (n if minutes is None else minutes) / 60}
    if priority is not None:
        fields["priority"] = priority
    return event_factory("ticket", **fields)


def test_ten_thousand_open_tickets_keep_the_state_small(engine, event_factory):
    state = None
    for n in range(10_000):
        outcome = apply_event(state, opened(event_factory, n), engine)
        state = outcome.state
        assert len(outcome.evicted_tickets) == (1 if n >= MAX_OPEN_TICKETS else 0)
    assert len(state.open_tickets) == MAX_OPEN_TICKETS
    # The newest ones are kept.
    assert sorted(state.open_tickets) == [f"t-{n:05d}" for n in range(9_900, 10_000)]
    assert len(state.to_bytes()) < 64 * 1024
    # SLA marks of evicted tickets went with them.
    ticket_marks = [m for m in state.marks if m.startswith("ticket_sla_breach:")]
    assert len(ticket_marks) <= MAX_OPEN_TICKETS


def test_the_evicted_ticket_is_the_oldest_whatever_the_arrival_order(engine, event_factory):
    events = [opened(event_factory, n, minutes=n) for n in range(MAX_OPEN_TICKETS + 20)]
    forward = backward = None
    for event in events:
        forward = apply_event(forward, event, engine).state
    for event in reversed(events):
        backward = apply_event(backward, event, engine).state
    assert set(forward.open_tickets) == set(backward.open_tickets)
    assert min(forward.open_tickets) == "t-00020"


def test_a_late_ticket_older_than_all_open_ones_is_acknowledged_not_kept(
    engine, event_factory, ids_of
):
    state = None
    for n in range(1, MAX_OPEN_TICKETS + 1):
        state = apply_event(state, opened(event_factory, n), engine).state
    late = opened(event_factory, 0)
    outcome = apply_event(state, late, engine)
    assert outcome.evicted_tickets == ["t-00000"]
    assert "t-00000" not in outcome.state.open_tickets
    assert ("ticket_opened_ack", "notification") in ids_of(outcome.actions)


def test_an_evicted_ticket_never_breaches_its_sla_and_its_close_still_asks(
    engine, event_factory, ids_of
):
    state = apply_event(None, opened(event_factory, 0, priority="urgent"), engine).state
    for n in range(1, MAX_OPEN_TICKETS + 1):
        state = apply_event(state, opened(event_factory, n, minutes=1 + n / 1000,
                                          priority="low"), engine).state
    assert "t-00000" not in state.open_tickets
    # Past the urgent SLA (4 h): no escalation for the evicted ticket.
    later = event_factory("login", hours=6, event_id="l1")
    outcome = apply_event(state, later, engine)
    assert "ticket_sla_breach" not in {a.rule_id for a in outcome.actions}
    close = event_factory("ticket", ticket_id="t-00000", status="closed", hours=7,
                          event_id="c0")
    outcome = apply_event(outcome.state, close, engine)
    assert ("ticket_closed_survey", "notification") in ids_of(outcome.actions)


# It counts calls by patching triggers.rfc3339, which compiled modules call directly: with a
# compiled core it runs in the Python reference (tests/unit/test_native_core.py).
@pytest.mark.skipif(native.MODE == "compiled",
                    reason="run in the Python reference by test_native_core.py")
def test_next_due_builds_no_occurrence_for_tickets_not_yet_due(
    engine, event_factory, monkeypatch
):
    """The cost of an event must not grow with the open tickets: next_due is arithmetic,
    and only occurrences that are due get their contexts (rfc3339 renderings) built."""
    state = None
    for n in range(MAX_OPEN_TICKETS):
        state = apply_event(state, opened(event_factory, n), engine).state
    calls = 0
    real = triggers.rfc3339

    def counting(ts):
        nonlocal calls
        calls += 1
        return real(ts)

    monkeypatch.setattr(triggers, "rfc3339", counting)
    apply_event(state, event_factory("login", hours=2, event_id="l1"), engine)
    # The inactivity trigger renders its own key once per call; the tickets render nothing.
    assert calls < 10


def test_evictions_are_counted_and_logged_once_per_batch(engine, raw_factory, t0):
    metrics = Metrics()
    ctx = BatchContext.create(engine, TOPICS, metrics, 24)
    store: dict[bytes, bytes | None] = {}

    def load(keys):
        return [store.get(k) for k in keys]

    def ticket(customer, n, offset):
        value = raw_factory("ticket", customer_id=customer, ticket_id=f"t-{n}",
                            event_id=f"{customer}-{n}", status="opened", hours=n / 60)
        return Record(TOPICS.events, 0, offset, customer.encode(), value)

    recs = [ticket(c, n, i * 2 + j) for i, n in enumerate(range(MAX_OPEN_TICKETS + 30))
            for j, c in enumerate(["c1", "c2"])]
    with capture_logs() as logs:
        result = process_partition(recs, load, ctx, now=t0 + DAY)
    store.update(result.writes)
    assert metrics.tickets_evicted == 60
    assert metrics.snapshot()["tickets_evicted"] == 60
    evictions = [entry for entry in logs if entry["event"] == "open_tickets_evicted"]
    assert len(evictions) == 1
    assert evictions[0]["tickets"] == 60
    assert evictions[0]["customers"] == 2
    assert evictions[0]["limit"] == MAX_OPEN_TICKETS
    state = CustomerState.from_bytes(store[b"c1"])
    assert len(state.open_tickets) == MAX_OPEN_TICKETS


@pytest.mark.parametrize("hours", [1.0, 100.0])
def test_an_event_with_a_hundred_open_tickets_stays_cheap(engine, event_factory, hours):
    """Each of 100 open tickets costs next_due a comparison, not an occurrence: applying an
    event to such a state stays well under a millisecond-scale budget per event."""
    import time

    state = None
    for n in range(MAX_OPEN_TICKETS):
        state = apply_event(state, opened(event_factory, n), engine).state
    logins = [event_factory("login", hours=hours + n * 1e-3, event_id=f"l{n}")
              for n in range(200)]
    started = time.perf_counter()
    for login in logins:
        state = apply_event(state, login, engine).state
    per_event = (time.perf_counter() - started) / len(logins)
    assert per_event < 5e-3, f"{per_event * 1e3:.2f} ms per event"


def test_settings_that_would_grow_every_state_are_bounded(monkeypatch):
    from pydantic import ValidationError

    from streams.settings import Settings

    monkeypatch.setenv("CHURNGUARD_DEDUP_WINDOW", "1000000")
    with pytest.raises(ValidationError, match="less than or equal"):
        Settings()


def test_a_pack_that_would_grow_every_state_is_refused():
    from churnguard.core.pack import PackInvalid
    from tests.unit.packs import make_pack

    with pytest.raises(PackInvalid) as caught:
        make_pack(changes={"scoring.engagement_window_days": 100_000})
    [problem] = caught.value.problems
    assert problem.loc == ("scoring", "engagement_window_days")
    assert "less than or equal to 366" in problem.message
