"""When the worker's next timer tick runs: at the earliest pending due of the partitions it
owns (what each tick's seek of the due index tells, lowered by batches that index an earlier
due), no sooner than the floor after a tick and no later than the interval after it — and at
the plain interval with a clock that is not the wall clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from unittest.mock import MagicMock

import pytest

from agents.fire_timers import DUE_RESOLUTION_S, FireTimers
from agents.locks import PartitionLocks
from agents.score_events import ScoreEvents
from churnguard.batch import BatchContext
from churnguard.clocks import ManualClock
from churnguard.core.clock import HOUR
from tests.agents.support import T0, TOPICS, Records, batch_of

INTERVAL = 60.0
FLOOR = 0.02


class WallManualClock(ManualClock):
    """A clock moved by hand that the tick loop takes for the wall clock."""

    wall = True


@pytest.fixture
def clock() -> ManualClock:
    return WallManualClock(T0)


@pytest.fixture
def timers(ctx: BatchContext, writer: MagicMock, locks: PartitionLocks,
           clock: ManualClock) -> FireTimers:
    return FireTimers(ctx, writer, locks, clock, limit=100, interval=INTERVAL, floor=FLOOR)


OpenUrgent = Callable[[int, str, float], Awaitable[None]]


@pytest.fixture
def open_urgent(score_events: ScoreEvents, rec: Records) -> OpenUrgent:
    """open_urgent(partition, customer, due): an urgent ticket whose SLA (4 h) ends at
    `due`, applied by ScoreEvents at the clock's time."""

    async def make(partition: int, customer: str, due: float) -> None:
        opened = due - 4 * HOUR
        await score_events(batch_of(rec(
            TOPICS.tickets, partition, int(opened * 1000), customer=customer,
            event_id=f"{customer}-open", ticket_id=f"{customer}-t", priority="urgent",
            at=opened)))

    return make


def after(seconds: float) -> object:
    """The wait for a due `seconds` after the clock (T0 + whole milliseconds)."""
    return pytest.approx(seconds + DUE_RESOLUTION_S, abs=1e-6)


async def test_the_next_tick_is_at_the_earliest_due_of_the_partitions_ticked(
    timers: FireTimers, open_urgent: OpenUrgent, clock: ManualClock
) -> None:
    await open_urgent(0, "a", T0 + 30)
    await open_urgent(1, "b", T0 + 10)
    await open_urgent(2, "c", T0 + 2 * INTERVAL)
    assert timers.seconds_to_next_tick(0.0) == INTERVAL  # nothing ticked yet: nothing known

    assert await timers.tick([0, 1, 2]) == 0
    assert timers.seconds_to_next_tick(0.0) == after(10)
    # 4 s later (on the clock and since the tick), 6 s are left.
    clock.advance_to(T0 + 4)
    assert timers.seconds_to_next_tick(4.0) == after(6)
    # Partition 1 is not owned any more: its due no longer counts.
    assert await timers.tick([0, 2]) == 0
    assert timers.seconds_to_next_tick(0.0) == after(26)
    # Only a due beyond the interval: the interval bounds the wait.
    assert await timers.tick([2]) == 0
    assert timers.seconds_to_next_tick(0.0) == INTERVAL

    # A tick that fires: the wait is for the entry after its write (none left on 0).
    clock.advance_to(T0 + 30)
    assert await timers.tick([0, 2]) == 1
    assert timers.seconds_to_next_tick(0.0) == INTERVAL
    timers.forget()  # e.g. a rebalance stopped the flow: nothing known
    assert timers.seconds_to_next_tick(0.0) == INTERVAL


async def test_a_due_the_watermark_holds_back_is_retried_after_the_floor(
    ctx: BatchContext, writer: MagicMock, locks: PartitionLocks, clock: ManualClock,
    open_urgent: OpenUrgent,
) -> None:
    await open_urgent(0, "a", T0 + 10)
    applied = {0: T0 + 9}

    async def watermark(partition: int) -> float:
        return applied[partition]

    timers = FireTimers(ctx, writer, locks, clock, limit=100, watermark=watermark,
                        interval=INTERVAL, floor=FLOOR)
    clock.advance_to(T0 + 10.5)  # due on the clock, not yet by the events applied
    assert await timers.tick([0]) == 0
    assert timers.seconds_to_next_tick(0.0) == FLOOR
    assert timers.seconds_to_next_tick(FLOOR) == 0.0  # the floor has passed: tick now
    applied[0] = T0 + 10.5
    assert await timers.tick([0]) == 1


async def test_a_partition_whose_tick_fails_is_retried_after_the_interval(
    timers: FireTimers, open_urgent: OpenUrgent, writer: MagicMock, clock: ManualClock
) -> None:
    """Not after the floor: a customer whose timer processing raises would fill the log."""
    await open_urgent(0, "a", T0 + 10)
    assert await timers.tick([0]) == 0
    assert timers.seconds_to_next_tick(0.0) == after(10)
    clock.advance_to(T0 + 10)
    working = writer.scan.side_effect
    writer.scan.side_effect = OSError("disk")
    assert await timers.tick([0]) == 0  # logged as timer_tick_failed
    assert timers.seconds_to_next_tick(0.0) == INTERVAL
    writer.scan.side_effect = working
    assert await timers.tick([0]) == 1


async def test_with_a_clock_that_is_not_the_wall_clock_the_wait_is_the_interval(
    ctx: BatchContext, writer: MagicMock, locks: PartitionLocks, score_events: ScoreEvents,
    open_urgent: OpenUrgent,
) -> None:
    """The demo's file clock runs days in seconds: its dues say nothing of real seconds."""
    timers = FireTimers(ctx, writer, locks, ManualClock(T0), limit=100, interval=INTERVAL,
                        floor=FLOOR)
    score_events.on_due = timers.note_due
    await open_urgent(0, "a", T0 + 1)
    assert timers.seconds_to_next_tick(0.0) == INTERVAL
    assert await timers.tick([0]) == 0
    assert timers.seconds_to_next_tick(0.0) == INTERVAL


async def test_a_batch_indexing_an_earlier_due_wakes_the_paused_loop(
    timers: FireTimers, score_events: ScoreEvents, open_urgent: OpenUrgent,
) -> None:
    """The loop waits the interval (nothing known); a batch then indexes a due 50 ms ahead:
    the loop's wait ends at that due, not at the interval (60 s: the test would time out)."""
    score_events.on_due = timers.note_due
    assert await timers.tick([0]) == 0
    loop = asyncio.get_running_loop()
    paused = asyncio.create_task(timers.pause(loop.time()))
    # One turn of the event loop (not a timing): the task runs up to its wait, the
    # interval, for nothing is known yet.
    await asyncio.sleep(0)
    assert not paused.done()

    await open_urgent(0, "a", T0 + 0.05)
    assert timers.seconds_to_next_tick(0.0) == after(0.05)
    await asyncio.wait_for(paused, timeout=10)

    # A later due than the one known does not shorten anything.
    timers.note_due(0, T0 + 30)
    assert timers.seconds_to_next_tick(0.0) == after(0.05)
