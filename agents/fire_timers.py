"""The timer tick: on each tick, for every partition this worker actively owns, read the due
index up to the clock, advance those customers (firing what is due) and write their states,
index entries and actions in one changelog-first write. Work per tick is proportional to
what is due: the index is read by a seek, never by scanning customers.

When the next tick runs: the same seek tells each partition's earliest pending due, and the
worker's loop (streams/worker.py) sleeps until the earliest of them (`pause`), so a timer
fires at its moment rather than at the next poll — at most the tick interval after the last
tick (dues nobody announced, a clock that is not the wall clock) and at least a floor after
it (a due held back by the watermark is retried shortly, not in a busy loop). A batch that
indexes an earlier due wakes the loop (`note_due`)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from agents import census
from agents.insights import WorkerInsights
from agents.locks import PartitionLocks
from churnguard import due_index
from churnguard.batch import BatchContext, process_due
from churnguard.clocks import Clock
from churnguard.state_cache import DecodedStates
from tables.state_store import OutputRecord, TableBatchWriter

log = structlog.get_logger(__name__)

# Partition -> the event time up to which its input has been applied (-inf: hold the tick).
Watermark = Callable[[int], Awaitable[float]]

# The index keeps milliseconds: a due may lie up to 1 ms after its entry's time, and a tick
# that came that early would find nothing and wait a floor. So the loop wakes that much later.
DUE_RESOLUTION_S = 0.001


def seconds_to_next_tick(
    earliest: float | None, now: float, since_tick: float, *, interval: float, floor: float
) -> float:
    """How long the tick loop still waits, `since_tick` seconds after its last tick ended:
    until `earliest`, the earliest pending due known (index time, on a clock reading `now`;
    None: none known, or a clock whose seconds are not real ones), but at least `floor` after
    that tick and at most `interval` after it. 0 or less: tick now."""
    floor = min(floor, interval)
    wait = interval
    if earliest is not None:
        wait = max(floor, min(interval, (earliest - now) + DUE_RESOLUTION_S + since_tick))
    return wait - since_tick


class FireTimers:
    def __init__(
        self,
        ctx: BatchContext,
        writer: TableBatchWriter,
        locks: PartitionLocks,
        clock: Clock,
        *,
        limit: int,
        watermark: Watermark | None = None,
        insights: WorkerInsights | None = None,
        interval: float = 0.25,
        floor: float = 0.02,
        decoded: DecodedStates | None = None,
    ) -> None:
        self.ctx = ctx
        # The batches' decoded states (churnguard/state_cache.py): taken and kept as they do.
        self.decoded = decoded
        self.insights = insights
        self.writer = writer
        self.locks = locks
        self.clock = clock
        self.limit = limit
        self.watermark = watermark
        # The longest and the shortest wait between ticks (settings.tick_interval_s and
        # fetch_max_wait_s: under continuous input the watermark moves once per batch, and a
        # fetch is answered within that wait, so retrying sooner finds the same watermark).
        self.interval = interval
        self.floor = floor
        # Partitions whose pending timers were counted (once, when first ticked).
        self._counted: set[int] = set()
        # Partition -> its earliest pending due as far as this worker knows: the index's
        # first entry after its last tick, lowered by batches that index an earlier one.
        self._next_due: dict[int, float] = {}
        self._earlier = asyncio.Event()

    async def tick(self, partitions: Iterable[int]) -> int:
        """Fire what is due on these (actively owned) partitions; returns the due-index
        entries handled (customers advanced, plus any stale entries dropped)."""
        now = self.clock.now()
        started = time.perf_counter()
        self.ctx.metrics.timer_ticks += 1
        advanced = 0
        owned = set(partitions)
        metrics = self.ctx.metrics
        retired = metrics.customers_retired
        for gone in self._counted - owned:
            self._counted.discard(gone)
            metrics.timers_pending.pop(gone, None)
            metrics.customers.pop(gone, None)
        for gone in self._next_due.keys() - owned:
            del self._next_due[gone]
        for partition in sorted(owned - self._counted):
            # Once per partition taken over; from then on each write's delta keeps them.
            async with self.locks[partition]:
                metrics.timers_pending[partition] = self.writer.count_keys(
                    partition, due_index.PREFIX, due_index.PREFIX_END)
                metrics.customers[partition] = self.writer.count_keys(
                    partition, due_index.FIRST_CUSTOMER, due_index.AFTER_CUSTOMERS)
            self._counted.add(partition)
        for partition in sorted(partitions):
            try:
                # Never ahead of the events: with a backlog, only up to what was applied.
                until = now if self.watermark is None else min(
                    now, await self.watermark(partition))
                if until == -math.inf:
                    continue  # its events are being applied, or none yet: next tick
                advanced += await self._tick_partition(partition, until, now)
            except Exception:
                # Nothing of this partition is marked fired unless its write completed: the
                # next tick redoes it (same action ids). The other partitions go on. Its due
                # is forgotten: one that fails every tick is retried every interval, not in
                # a loop at the floor.
                self._next_due.pop(partition, None)
                log.exception("timer_tick_failed", partition=partition)
        seconds = time.perf_counter() - started
        self.ctx.metrics.tick_duration.observe(seconds)
        if advanced:
            # One line per tick that did something; never one per customer.
            log.info("timers_fired", entries=advanced, seconds=round(seconds, 4),
                     retired=metrics.customers_retired - retired)
        return advanced

    async def _tick_partition(self, partition: int, until: float, now: float) -> int:
        upper = due_index.scan_upper_bound(until)
        async with self.locks[partition]:
            first = self._seek_first(partition)
            if first is None or first >= upper:
                return 0  # nothing due: one seek, which also tells when the next tick is
            entries = self.writer.scan(partition, due_index.PREFIX, upper, self.limit)
            loaded = census.StatesAndCensus(self.writer, partition)
            result = process_due(entries, loaded, self.ctx, until=until, noticed_at=now,
                                 decoded=self.decoded)
            # Outputs are co-partitioned with the inputs: same partition, no key hashing.
            outputs = [OutputRecord(o.topic, o.key, o.value, partition) for o in result.outputs]
            # Scores decayed or segments aged: the census record goes in the same write.
            counted = census.stage(loaded, result)
            # Episodes expired or recovered: their KPI slices too.
            added = None if self.insights is None else self.insights.stage(partition, result)
            await self.writer.write(partition, result.writes, outputs=outputs)
            if self.decoded is not None:
                self.decoded.keep(result.writes, result.states)
            if self.insights is not None:
                self.insights.publish(partition, added)
            self.ctx.metrics.timers_pending[partition] += due_index.entries_delta(result.writes)
            self.ctx.metrics.customers[partition] += result.new_customers  # (retention)
            if counted is not None:
                self.ctx.metrics.census[partition] = counted
            self._seek_first(partition)  # where the entries moved: the next tick's due
        # Due times are on the worker's clock (the demo's and the tests' clock file).
        fired_at = self.clock.now()
        metrics = self.ctx.metrics
        for rule_id, due in result.sources:
            metrics.observe_latency(rule_id, fired_at - due)
            metrics.timer_delay.observe(max(0.0, fired_at - due))
        return len(entries)

    def _seek_first(self, partition: int) -> bytes | None:
        """The partition's first index entry (one seek), remembered as its earliest pending
        due. Under the partition's lock."""
        found = self.writer.scan(partition, due_index.PREFIX, due_index.PREFIX_END, 1)
        if not found:
            self._next_due.pop(partition, None)
            return None
        self._next_due[partition] = due_index.due_of(found[0])
        return found[0]

    # -- when the next tick runs ---------------------------------------------------------------

    def note_due(self, partition: int, due: float) -> None:
        """A write indexed an entry due at `due` (index time) on `partition`: when that is
        earlier than the partition's due known, the paused loop computes its wait again."""
        if due < self._next_due.get(partition, math.inf):
            self._next_due[partition] = due
            self._earlier.set()

    def forget(self) -> None:
        """No tick ran (nothing owned, the flow stopped for a rebalance, the tick failed):
        what was known is stale, the next wait is the interval."""
        self._next_due.clear()

    def seconds_to_next_tick(self, since_tick: float) -> float:
        earliest = min(self._next_due.values(), default=None) if self.clock.wall else None
        return seconds_to_next_tick(earliest, self.clock.now(), since_tick,
                                    interval=self.interval, floor=self.floor)

    async def pause(self, ended: float) -> None:
        """Until the next tick is due; `ended`: when the last one ended, on the event loop's
        clock (monotonic). Woken by `note_due`, it computes its wait again from there."""
        loop = asyncio.get_running_loop()
        while True:
            self._earlier.clear()
            wait = self.seconds_to_next_tick(loop.time() - ended)
            if wait <= 0:
                return
            try:
                async with asyncio.timeout(wait):
                    await self._earlier.wait()
            except TimeoutError:
                return
