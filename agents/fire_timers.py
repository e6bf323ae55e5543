"""The timer tick: on each tick, for every partition this worker actively owns, read the due
index up to the clock, advance those customers (firing what is due) and write their states,
index entries and actions in one changelog-first write. Work per tick is proportional to
what is due: the index is read by a seek, never by scanning customers."""

from __future__ import annotations

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
from tables.state_store import OutputRecord, TableBatchWriter

log = structlog.get_logger(__name__)

# Partition -> the event time up to which its input has been applied (-inf: hold the tick).
Watermark = Callable[[int], Awaitable[float]]


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
    ) -> None:
        self.ctx = ctx
        self.insights = insights
        self.writer = writer
        self.locks = locks
        self.clock = clock
        self.limit = limit
        self.watermark = watermark
        # Partitions whose pending timers were counted (once, when first ticked).
        self._counted: set[int] = set()

    async def tick(self, partitions: Iterable[int]) -> int:
        """Fire what is due on these (actively owned) partitions; returns the due-index
        entries handled (customers advanced, plus any stale entries dropped)."""
        now = self.clock.now()
        started = time.perf_counter()
        self.ctx.metrics.timer_ticks += 1
        advanced = 0
        owned = set(partitions)
        metrics = self.ctx.metrics
        for gone in self._counted - owned:
            self._counted.discard(gone)
            metrics.timers_pending.pop(gone, None)
            metrics.customers.pop(gone, None)
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
                # next tick redoes it (same action ids). The other partitions go on.
                log.exception("timer_tick_failed", partition=partition)
        seconds = time.perf_counter() - started
        self.ctx.metrics.tick_duration.observe(seconds)
        if advanced:
            # One line per tick that did something; never one per customer.
            log.info("timers_fired", entries=advanced, seconds=round(seconds, 4))
        return advanced

    async def _tick_partition(self, partition: int, until: float, now: float) -> int:
        async with self.locks[partition]:
            entries = self.writer.scan(
                partition, due_index.PREFIX, due_index.scan_upper_bound(until), self.limit
            )
            if not entries:
                return 0
            loaded = census.StatesAndCensus(self.writer, partition)
            result = process_due(entries, loaded, self.ctx, until=until, noticed_at=now)
            # Outputs are co-partitioned with the inputs: same partition, no key hashing.
            outputs = [OutputRecord(o.topic, o.key, o.value, partition) for o in result.outputs]
            # Scores decayed or segments aged: the census record goes in the same write.
            counted = census.stage(loaded, result)
            # Episodes expired or recovered: their KPI slices too.
            added = None if self.insights is None else self.insights.stage(partition, result)
            await self.writer.write(partition, result.writes, outputs=outputs)
            if self.insights is not None:
                self.insights.publish(partition, added)
            self.ctx.metrics.timers_pending[partition] += due_index.entries_delta(result.writes)
            if counted is not None:
                self.ctx.metrics.census[partition] = counted
        # Due times are on the worker's clock (the demo's and the tests' clock file).
        fired_at = self.clock.now()
        metrics = self.ctx.metrics
        for rule_id, due in result.sources:
            metrics.observe_latency(rule_id, fired_at - due)
            metrics.timer_delay.observe(max(0.0, fired_at - due))
        return len(entries)
