"""FireTimers.tick over the due index that ScoreEvents writes: what is due fires once, at its
due time, in one write with the moved index entry; nothing else is read or written."""

from __future__ import annotations

import orjson
import pytest

from churnguard import due_index
from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.rules import action_id
from tests.agents.support import RETAINED, T0, TOPICS, batch_of, emitted


@pytest.fixture
def open_urgent(score_events, rec, clock):
    """open_urgent(partition, customer, ticket, at): an urgent ticket opened at `at`, applied
    by ScoreEvents with the clock moved to `at` (it never goes back); its SLA is due 4 h later."""

    async def make(partition: int, customer: str, ticket: str, at: float = T0) -> None:
        clock.advance_to(at)
        record = rec(TOPICS.tickets, partition, int(at * 1000), customer=customer,
                     event_id=f"{customer}-{ticket}", ticket_id=ticket, priority="urgent", at=at)
        await score_events(batch_of(record))

    return make


def sla_breach(customer: str, ticket: str, opened: float) -> dict[str, object]:
    """The exact ticket_sla_breach task for an urgent ticket opened at `opened`."""
    due = opened + 4 * HOUR
    return {
        "action_id": action_id(customer, "ticket_sla_breach", f"ticket_sla_breach:{ticket}", 0),
        "type": "task",
        "customer_id": customer,
        "rule_id": "ticket_sla_breach",
        "rule_version": 1,
        "pack_version": 0,
        "created_at": rfc3339(due),
        "caused_by": [],
        "health_score": 24.0,
        "segment": "prospect",
        "payload": {
            "assignee": "support-escalations",
            "priority": "urgent",
            "due_at": rfc3339(due + HOUR),
            "title": "Ticket past its SLA: escalate",
            "details": {
                "ticket_id": ticket,
                "priority": "urgent",
                "opened_at": rfc3339(opened),
                "sla_hours": 4.0,
            },
        },
    }


async def test_sla_breach_fires_once_at_its_due_time_and_moves_the_index(
    open_urgent, fire_timers, fake, clock, metrics
):
    await open_urgent(0, "c1", "T1", T0)
    await open_urgent(0, "c1", "T2", T0 + HOUR)
    assert fake.index(0) == [due_index.due_key(T0 + 4 * HOUR, b"c1")]
    writes_before = len(fake.writes)

    clock.advance_to(T0 + 4 * HOUR - 1)
    scans_before = len(fake.scans)
    assert await fire_timers.tick([0]) == 0
    assert len(fake.writes) == writes_before  # nothing due: nothing written
    # One seek: the first entry, not yet due.
    assert fake.scans[scans_before:] == [(0, due_index.PREFIX, due_index.PREFIX_END, 1)]

    clock.advance_to(T0 + 4 * HOUR)
    scans_before = len(fake.scans)
    assert await fire_timers.tick([0]) == 1
    # The first entry, what is due up to the clock, the first entry after the write.
    assert fake.scans[scans_before:] == [
        (0, due_index.PREFIX, due_index.PREFIX_END, 1),
        (0, due_index.PREFIX, due_index.scan_upper_bound(T0 + 4 * HOUR), 100),
        (0, due_index.PREFIX, due_index.PREFIX_END, 1),
    ]
    [write] = fake.writes[writes_before:]
    [task] = emitted(write)
    assert (task.topic, task.key, task.partition) == (TOPICS.tasks, b"c1", 0)
    assert orjson.loads(task.value) == sla_breach("c1", "T1", T0)
    state = fake.state(0, "c1")
    assert state.marks == {"ticket_sla_breach:T1": "done"}
    assert state.clock == T0 + 4 * HOUR
    assert state.next_due == T0 + 5 * HOUR
    # The entry moves in the same write as the state.
    assert write.items == {
        b"c1": fake.data[0][b"c1"],
        due_index.due_key(T0 + 4 * HOUR, b"c1"): None,
        due_index.due_key(T0 + 5 * HOUR, b"c1"): due_index.ENTRY,
    }
    assert fake.index(0) == [due_index.due_key(T0 + 5 * HOUR, b"c1")]
    assert metrics.actions[("ticket_sla_breach", "task")] == 1

    # Same time again: nothing is due any more.
    assert await fire_timers.tick([0]) == 0
    assert len(fake.writes) == writes_before + 1

    clock.advance_to(T0 + 5 * HOUR)
    assert await fire_timers.tick([0]) == 1
    last = fake.writes[-1]
    assert [orjson.loads(o.value) for o in emitted(last)] == [sla_breach("c1", "T2", T0 + HOUR)]
    retained = due_index.due_key(T0 + HOUR + RETAINED, b"c1")  # (its last event's)
    assert last.items == {
        b"c1": fake.data[0][b"c1"],
        due_index.due_key(T0 + 5 * HOUR, b"c1"): None,
        retained: due_index.ENTRY,  # no timer pending: only its data retention
    }
    assert fake.index(0) == [retained]
    assert fake.state(0, "c1").next_due == T0 + HOUR + RETAINED
    assert metrics.actions[("ticket_sla_breach", "task")] == 2
    assert metrics.timers_expired == 0


async def test_a_redone_tick_does_not_fire_again(open_urgent, fire_timers, fake, clock):
    """The fired marker is stored with the state: even a stale entry left behind (as if
    the index move had been lost) fires nothing the second time."""
    await open_urgent(0, "c1", "T1")
    entry = due_index.due_key(T0 + 4 * HOUR, b"c1")
    clock.advance_to(T0 + 4 * HOUR)
    assert await fire_timers.tick([0]) == 1
    fake.data[0][entry] = due_index.ENTRY
    writes_before = len(fake.writes)
    assert await fire_timers.tick([0]) == 1
    [write] = fake.writes[writes_before:]
    assert emitted(write) == []
    assert write.items == {b"c1": fake.data[0][b"c1"], entry: None}
    assert fake.index(0) == [due_index.due_key(T0 + RETAINED, b"c1")]


async def test_a_tick_reads_only_the_partitions_it_is_given(
    open_urgent, fire_timers, fake, clock, metrics
):
    for partition, customer in [(0, "a"), (1, "b"), (2, "c")]:
        await open_urgent(partition, customer, "T")
    clock.advance_to(T0 + 4 * HOUR)
    scans_before, writes_before = len(fake.scans), len(fake.writes)

    assert await fire_timers.tick([2, 0]) == 2
    assert [s[0] for s in fake.scans[scans_before:]] == [0, 0, 0, 2, 2, 2]
    # Counted 1 each; the fired SLA breach left only the customer's data retention behind.
    assert metrics.timers_pending == {0: 1, 1: 1, 2: 1}  # 1: counted by its writes
    assert fake.index(0) == [due_index.due_key(T0 + RETAINED, b"a")]
    written = fake.writes[writes_before:]
    assert [w.partition for w in written] == [0, 2]
    assert [[(o.key, o.partition) for o in emitted(w)] for w in written] == [
        [(b"a", 0)], [(b"c", 2)],
    ]
    assert fake.index(1) == [due_index.due_key(T0 + 4 * HOUR, b"b")]
    assert fake.state(1, "b").marks == {}

    assert await fire_timers.tick([1]) == 1
    assert [(o.key, o.partition) for o in emitted(fake.writes[-1])] == [(b"b", 1)]
    assert metrics.timers_pending == {1: 1}  # 0 and 2 are not owned any more
    assert await fire_timers.tick([]) == 0
    assert await fire_timers.tick([0, 1, 2]) == 0


async def test_limit_bounds_the_customers_per_partition_and_tick(
    open_urgent, timers_factory, fake, clock
):
    await open_urgent(0, "late", "T", T0 + HOUR)
    await open_urgent(0, "early", "T", T0)
    await open_urgent(1, "other", "T", T0)
    timers = timers_factory(limit=1)
    clock.advance_to(T0 + 6 * HOUR)
    writes_before = len(fake.writes)

    assert await timers.tick([0, 1]) == 2
    assert [(w.partition, [o.key for o in emitted(w)]) for w in fake.writes[writes_before:]] == [
        (0, [b"early"]), (1, [b"other"]),
    ]
    assert {s[3] for s in fake.scans} == {1}
    assert fake.index(0) == [due_index.due_key(T0 + 5 * HOUR, b"late"),
                             due_index.due_key(T0 + RETAINED, b"early")]

    assert await timers.tick([0, 1]) == 1
    assert [o.key for o in emitted(fake.writes[-1])] == [b"late"]
    assert fake.state(0, "late").marks == {"ticket_sla_breach:T": "done"}
    assert await timers.tick([0, 1]) == 0
    assert len(fake.writes) == writes_before + 3


async def test_an_index_entry_without_state_is_deleted(fire_timers, fake, clock, metrics):
    ghost = due_index.due_key(T0, b"ghost")
    future = due_index.due_key(T0 + DAY, b"ghost2")
    fake.data[0].update({ghost: due_index.ENTRY, future: due_index.ENTRY})
    clock.advance_to(T0 + HOUR)
    assert await fire_timers.tick([0]) == 1
    [write] = fake.writes
    assert (write.partition, write.items, emitted(write)) == (0, {ghost: None}, [])
    assert fake.data[0] == {future: due_index.ENTRY}
    assert metrics.due_customers == 1


async def test_a_stale_entry_of_a_live_customer_is_deleted_and_the_current_one_kept(
    open_urgent, fire_timers, fake, clock
):
    await open_urgent(0, "c1", "T1")  # current entry: T0 + 4 h
    stored = fake.data[0][b"c1"]
    stale = due_index.due_key(T0 + HOUR, b"c1")
    fake.data[0][stale] = due_index.ENTRY
    clock.advance_to(T0 + 2 * HOUR)
    writes_before = len(fake.writes)
    assert await fire_timers.tick([0]) == 1
    [write] = fake.writes[writes_before:]
    assert emitted(write) == []
    assert write.items == {b"c1": stored, stale: None}
    assert fake.index(0) == [due_index.due_key(T0 + 4 * HOUR, b"c1")]


async def test_a_tick_late_beyond_grace_expires_the_occurrence(
    open_urgent, fire_timers, fake, clock, metrics
):
    await open_urgent(0, "c1", "T1")
    clock.advance_to(T0 + 4 * HOUR + 3 * DAY)  # 72 h late; the grace is 24 h
    writes_before = len(fake.writes)
    assert await fire_timers.tick([0]) == 1
    [write] = fake.writes[writes_before:]
    assert emitted(write) == []
    assert metrics.timers_expired == 1
    assert ("ticket_sla_breach", "task") not in metrics.actions
    state = fake.state(0, "c1")
    assert state.marks == {"ticket_sla_breach:T1": "done"}
    assert state.next_due == T0 + RETAINED
    assert write.items == {
        b"c1": fake.data[0][b"c1"], due_index.due_key(T0 + 4 * HOUR, b"c1"): None,
        due_index.due_key(T0 + RETAINED, b"c1"): due_index.ENTRY,
    }
    assert await fire_timers.tick([0]) == 0
    assert metrics.timers_expired == 1


async def test_a_tick_just_within_grace_still_fires(open_urgent, fire_timers, fake, clock,
                                                     metrics):
    await open_urgent(0, "c1", "T1")
    clock.advance_to(T0 + 4 * HOUR + 24 * HOUR)  # exactly the grace: not late yet
    assert await fire_timers.tick([0]) == 1
    assert [orjson.loads(o.value) for o in emitted(fake.writes[-1])] == [
        sla_breach("c1", "T1", T0),
    ]
    assert metrics.timers_expired == 0


async def test_ticks_are_counted(open_urgent, fire_timers, clock, metrics):
    await open_urgent(0, "c1", "T1")
    clock.advance_to(T0 + 4 * HOUR)
    assert await fire_timers.tick([0]) == 1
    assert metrics.timer_ticks == 1


async def test_the_tick_never_runs_ahead_of_the_events_applied(
    open_urgent, ctx, writer, locks, clock, fake
):
    """With a backlog, the tick only advances up to the event time applied so far; held
    (-inf) it touches nothing; caught up (+inf) it runs on the wall clock."""
    from agents.fire_timers import FireTimers

    await open_urgent(0, "c1", "T1", T0)
    marks = {0: T0 + 3 * HOUR}

    async def watermark(partition: int) -> float:
        return marks[partition]

    timers = FireTimers(ctx, writer, locks, clock, limit=100, watermark=watermark)
    clock.advance_to(T0 + 5 * HOUR)  # the breach (T0 + 4 h) is due on the wall clock…
    writes = len(fake.writes)
    assert await timers.tick([0]) == 0  # …but events are applied only up to T0 + 3 h
    marks[0] = -float("inf")
    assert await timers.tick([0]) == 0  # a batch in hand: hold
    assert len(fake.writes) == writes
    marks[0] = float("inf")
    assert await timers.tick([0]) == 1  # caught up: the wall clock rules
    [task] = [orjson.loads(o.value) for o in emitted(fake.writes[-1])]
    assert task["rule_id"] == "ticket_sla_breach"
    assert task["created_at"] == rfc3339(T0 + 4 * HOUR)
