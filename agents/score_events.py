"""The hot path: batches of input records -> customer state, scores and actions.

Per batch and partition: multi-get the customers' states, apply the events with the pure
core (churnguard.batch), then hand the dirty states and the output records to the table
writer, which sends the outputs, then the changelog, awaits delivery, then stores. Offsets
are committed by the batch path only after that returns."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

import structlog
from faust.types import TP

from agents import census
from agents.insights import WorkerInsights
from agents.locks import PartitionLocks
from churnguard import due_index
from churnguard.batch import BatchContext, process_partition
from churnguard.clocks import Clock
from streams.batch_path import SourceRecord
from streams.partition_group import group_order, merge
from tables.state_store import OutputRecord, TableBatchWriter

log = structlog.get_logger(__name__)


class ScoreEvents:
    """The batch handler installed into the worker's consumer."""

    def __init__(
        self, ctx: BatchContext, writer: TableBatchWriter, locks: PartitionLocks, clock: Clock,
        *, insights: WorkerInsights | None = None,
    ) -> None:
        self.ctx = ctx
        self.insights = insights
        self.writer = writer
        self.locks = locks
        self.clock = clock
        # What the timer tick needs for its event-time watermark: the newest record time
        # applied per input partition (seconds).
        self.applied_until: dict[TP, float] = {}

    async def __call__(self, batch: Mapping[TP, Sequence[SourceRecord]]) -> None:
        started = time.perf_counter()
        by_partition: dict[int, list[Sequence[SourceRecord]]] = defaultdict(list)
        for tp in sorted(batch, key=group_order):
            by_partition[tp.partition].append(batch[tp])
        now = self.clock.now()
        # Every partition's write must have ended before the batch counts as failed: one
        # still writing after revocation could interleave with the partition's new owner.
        results = await asyncio.gather(
            *(self._partition(p, lists, now) for p, lists in by_partition.items()),
            return_exceptions=True,
        )
        failed = {p for p, r in zip(by_partition, results, strict=True)
                  if isinstance(r, BaseException)}
        for tp, records in batch.items():
            if records and tp.partition not in failed:
                self.applied_until[tp] = records[-1].timestamp_ms / 1000.0
        for failure in results:
            if isinstance(failure, BaseException):
                # The batch path reads it again from the committed offsets.
                self.ctx.metrics.failed_batches += 1
                raise failure
        metrics = self.ctx.metrics
        size = sum(len(r) for r in batch.values())
        seconds = time.perf_counter() - started
        metrics.batches += 1
        metrics.batch_events += size
        metrics.batch_seconds += seconds
        metrics.batch_size.observe(size)
        metrics.batch_duration.observe(seconds)

    async def _partition(
        self, partition: int, per_topic: list[Sequence[SourceRecord]], now: float
    ) -> None:
        # Each topic's records stay in offset order (the state's offset guard relies on
        # it); across topics the batch path released them so that this merge by record
        # timestamp is the partition group's stream-time order.
        records = merge(per_topic)
        async with self.locks[partition]:
            loaded = census.StatesAndCensus(self.writer, partition)
            result = process_partition(records, loaded, self.ctx, now=now)
            # Outputs are co-partitioned with the inputs: same partition, no key hashing.
            outputs = [OutputRecord(o.topic, o.key, o.value, partition) for o in result.outputs]
            # The census record, when bands or segments changed, goes in the same write.
            counted = census.stage(loaded, result)
            # So do the KPI and feedback slices its outcomes add to.
            added = None if self.insights is None else self.insights.stage(partition, result)
            await self.writer.write(partition, result.writes, outputs=outputs)
            if self.insights is not None:
                self.insights.publish(partition, added)
            metrics = self.ctx.metrics
            metrics.timers_pending[partition] += due_index.entries_delta(result.writes)
            metrics.customers[partition] += result.new_customers
            if counted is not None:
                metrics.census[partition] = counted
        if result.sources:
            # Record timestamps are the broker's (or the producer's) wall clock.
            produced = time.time()
            for rule_id, started in result.sources:
                self.ctx.metrics.observe_latency(rule_id, produced - started)
