"""The per-partition lock: an event batch and a timer tick never interleave their
read-modify-write of the same partition; other partitions go on meanwhile.

A partition's write is held open with FakeWriter.hold (asyncio.Event); tasks are started in
order and the event loop runs them first-in first-out, so no sleep is needed."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from churnguard.core.clock import HOUR
from tests.agents.support import T0, TOPICS, batch_of, emitted


@pytest.fixture
async def due_on_0_and_1(score_events, fake, rec, clock):
    """Urgent tickets on partitions 0 (customer a) and 1 (customer b), opened at T0; the
    clock then moves to their SLA due, T0 + 4 h."""
    await score_events(batch_of(
        rec(TOPICS.tickets, 0, 1, customer="a", event_id="ta", priority="urgent"),
        rec(TOPICS.tickets, 1, 1, customer="b", event_id="tb", priority="urgent"),
    ))
    clock.advance_to(T0 + 4 * HOUR)
    fake.log.clear()


async def test_a_tick_waits_for_the_batch_writing_its_partition(
    due_on_0_and_1, score_events, fire_timers, fake, rec
):
    gate = fake.hold(0)
    batch = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.logins, 0, 2, customer="a", event_id="la", at=T0 + 4 * HOUR - 10),
    )))
    await gate.entered.wait()  # the batch holds partition 0's lock inside write()

    tick_0 = asyncio.create_task(fire_timers.tick([0]))
    tick_1 = asyncio.create_task(fire_timers.tick([1]))
    other = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.logins, 1, 2, customer="b2", event_id="lb"),
    )))
    assert await tick_1 == 1   # partition 1 goes on (tick_0 had its turn first and waits)
    await other
    assert not tick_0.done()
    assert not batch.done()
    # A tick's reads: the first index entry, what is due, then the first entry after its
    # write (when the next tick is due) — all under the lock.
    assert fake.log == [
        ("write-start", 0),
        ("scan", 1), ("scan", 1), ("write-start", 1), ("write-end", 1), ("scan", 1),
        ("write-start", 1), ("write-end", 1),
    ]

    gate.release.set()
    await batch
    assert await tick_0 == 1
    assert fake.log[8:] == [
        ("write-end", 0),
        ("scan", 0), ("scan", 0), ("write-start", 0), ("write-end", 0), ("scan", 0),
    ]
    # The tick read the batch's state: the login is in it, and the breach fired once.
    state = fake.state(0, "a")
    assert sum(state.login_days.values()) == 1
    assert state.marks == {"ticket_sla_breach:t-1": "done"}
    tick_write = fake.writes[-1]
    assert [orjson.loads(o.value)["rule_id"] for o in emitted(tick_write)] == [
        "ticket_sla_breach",
    ]


async def test_a_batch_waits_for_the_tick_writing_its_partition(
    due_on_0_and_1, score_events, fire_timers, fake, rec, metrics
):
    gate = fake.hold(0)
    tick = asyncio.create_task(fire_timers.tick([0]))
    await gate.entered.wait()
    batch = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.tickets, 0, 2, customer="a", event_id="close", status="closed",
            at=T0 + 4 * HOUR),
    )))
    other = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.logins, 1, 2, customer="b", event_id="lb"),
    )))
    await other
    assert not batch.done()
    assert fake.log == [("scan", 0), ("scan", 0), ("write-start", 0),
                        ("write-start", 1), ("write-end", 1)]

    gate.release.set()
    assert await tick == 1
    await batch
    assert fake.log[5:] == [("write-end", 0), ("scan", 0), ("write-start", 0), ("write-end", 0)]
    # The close saw the fired breach (its mark is dropped with the closed ticket) and
    # fired nothing twice.
    close_write = fake.writes[-1]
    assert [orjson.loads(o.value)["rule_id"] for o in emitted(close_write)
            if o.topic not in (TOPICS.scores, TOPICS.outcomes)] == ["ticket_closed_survey"]
    state = fake.state(0, "a")
    assert state.open_tickets == {}
    assert state.marks == {}
    assert metrics.actions[("ticket_sla_breach", "task")] == 1


async def test_partitions_of_one_batch_are_written_concurrently(score_events, fake, rec,
                                                                metrics):
    gate = fake.hold(0)
    batch = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.logins, 0, 1, customer="a", event_id="la"),
        rec(TOPICS.logins, 1, 1, customer="b", event_id="lb"),
    )))
    await gate.entered.wait()
    # Partition 1 of the same batch was written while partition 0 is held.
    assert fake.log == [("write-start", 0), ("write-start", 1), ("write-end", 1)]
    assert fake.state(1, "b").seen == ["lb"]
    assert metrics.batches == 0  # the batch is done only when every partition is

    second_on_0 = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.logins, 0, 2, customer="a", event_id="la2"),
    )))
    second_on_1 = asyncio.create_task(score_events(batch_of(
        rec(TOPICS.logins, 1, 2, customer="b", event_id="lb2"),
    )))
    await second_on_1  # second_on_0 ran first: it waits for partition 0's lock
    assert not second_on_0.done()
    assert fake.log[3:] == [("write-start", 1), ("write-end", 1)]
    assert metrics.batches == 1

    gate.release.set()
    await batch
    await second_on_0
    assert fake.log[5:] == [("write-end", 0), ("write-start", 0), ("write-end", 0)]
    assert fake.state(0, "a").seen == ["la", "la2"]
    assert metrics.batches == 3
