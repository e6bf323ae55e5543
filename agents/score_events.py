"""The hot path: batches of input records -> customer state, scores and actions.

Per batch and partition: multi-get the customers' states, apply the events with the pure
core (churnguard.batch), then hand the dirty states and the output records to the table
writer, which sends the outputs, then the changelog, awaits delivery, then stores. Offsets
are committed by the batch path only after that returns.

A partition batch whose write failed may have sent its outputs: the batch path reads it
again, and the retry must send the same payloads under the same action ids. So the
partition remembers the engine that evaluated it (`_Pin`) and evaluates its records again
with that engine, however many batches the retry takes, even when a newer pack was
published meanwhile; the switch reaches the partition with its first batch past them.
Meanwhile its timer tick is held (no applied time for its inputs), or the tick could fire
under the newer pack a timer the failed batch fired. Memory of this worker only: after a
restart, or on another worker after a rebalance, the batch is read again under the pack
running there."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from faust.types import TP

from agents import census
from agents.insights import WorkerInsights
from agents.locks import PartitionLocks
from churnguard import due_index
from churnguard.batch import BatchContext, process_partition
from churnguard.clocks import Clock
from churnguard.core.processor import Engine
from churnguard.state_cache import DEFAULT_CAPACITY, DecodedStates
from streams.batch_path import SourceRecord
from streams.partition_group import group_order, merge
from tables.state_store import OutputRecord, TableBatchWriter

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Pin:
    """A partition's batch whose write failed, to be read again: the engine that evaluated
    it and, per input topic partition, the offset after its last record."""

    engine: Engine
    ends: dict[TP, int] = field(default_factory=dict)
    logged: bool = False


class ScoreEvents:
    """The batch handler installed into the worker's consumer."""

    def __init__(
        self, ctx: BatchContext, writer: TableBatchWriter, locks: PartitionLocks, clock: Clock,
        *, insights: WorkerInsights | None = None, decoded: DecodedStates | None = None,
    ) -> None:
        self.ctx = ctx
        # The states this handler last wrote, kept decoded (churnguard/state_cache.py).
        self.decoded = DecodedStates(DEFAULT_CAPACITY) if decoded is None else decoded
        self.insights = insights
        self.writer = writer
        self.locks = locks
        self.clock = clock
        # What the timer tick needs for its event-time watermark: the newest record time
        # applied per input partition (seconds).
        self.applied_until: dict[TP, float] = {}
        # Partition -> its failed batch still to be read again (see the module's docstring).
        self._pins: dict[int, _Pin] = {}
        # Told the earliest due each written batch indexes (partition, due): the timer tick
        # (FireTimers.note_due) wakes for it instead of finding it at its next poll.
        self.on_due: Callable[[int, float], None] | None = None

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
            if not records:
                continue
            pin = self._pins.get(tp.partition)
            if pin is not None and tp in pin.ends:
                # Records of its failed batch still to be read again: hold the tick.
                self.applied_until.pop(tp, None)
            elif tp.partition not in failed:
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
        # Per topic partition: the first offset and the one after the last.
        spans = {TP(r[0].topic, r[0].partition): (r[0].offset, r[-1].offset + 1)
                 for r in per_topic if r}
        async with self.locks[partition]:
            engine = self._engine_for(partition, spans)
            loaded = census.StatesAndCensus(self.writer, partition)
            result = process_partition(records, loaded, self.ctx, now=now, engine=engine,
                                       decoded=self.decoded)
            # Outputs are co-partitioned with the inputs: same partition, no key hashing.
            outputs = [OutputRecord(o.topic, o.key, o.value, partition) for o in result.outputs]
            # The census record, when bands or segments changed, goes in the same write.
            counted = census.stage(loaded, result)
            # So do the KPI and feedback slices its outcomes add to.
            added = None if self.insights is None else self.insights.stage(partition, result)
            try:
                await self.writer.write(partition, result.writes, outputs=outputs)
            except BaseException:
                # Its outputs may be out: read again, it is evaluated by this engine.
                self._pin(partition, engine, spans)
                raise
            self._settle(partition, spans)
            self.decoded.keep(result.writes, result.states)
            if self.insights is not None:
                self.insights.publish(partition, added)
            metrics = self.ctx.metrics
            delta, first = due_index.index_changes(result.writes)
            metrics.timers_pending[partition] += delta
            metrics.customers[partition] += result.new_customers
            if first is not None and self.on_due is not None:
                self.on_due(partition, due_index.due_of(first))
            if counted is not None:
                metrics.census[partition] = counted
        if result.sources:
            # Record timestamps are the broker's (or the producer's) wall clock.
            produced = time.time()
            for rule_id, started in result.sources:
                self.ctx.metrics.observe_latency(rule_id, produced - started)

    def _engine_for(self, partition: int, spans: Mapping[TP, tuple[int, int]]) -> Engine:
        """The engine for this batch of `partition`: its failed batch's while the batch holds
        records of it, else the running one."""
        pin = self._pins.get(partition)
        if pin is None:
            return self.ctx.engine
        if any(first < pin.ends[tp] for tp, (first, _) in spans.items() if tp in pin.ends):
            running = self.ctx.engine
            if pin.engine is not running and not pin.logged:
                pin.logged = True  # once per failed batch, however many retries
                log.info("batch_read_again_under_its_pack", partition=partition,
                         pack_version=pin.engine.pack.version,
                         running=running.pack.version)
            return pin.engine
        # None of its records: read again and written (a retry in several batches), or
        # passed elsewhere (the partition came back after a rebalance, its committed
        # offsets beyond them). The batch path reads a failed batch again from its first
        # offsets and the merge releases it in the same order, so while records of it are
        # left, the partition's next batch starts with them.
        del self._pins[partition]
        return self.ctx.engine

    def _pin(self, partition: int, engine: Engine,
             spans: Mapping[TP, tuple[int, int]]) -> None:
        pin = self._pins.setdefault(partition, _Pin(engine))
        assert pin.engine is engine  # a pinned partition is evaluated by its pin's engine
        for tp, (_, end) in spans.items():
            pin.ends[tp] = max(end, pin.ends.get(tp, end))

    def _settle(self, partition: int, spans: Mapping[TP, tuple[int, int]]) -> None:
        """A batch of `partition` is written: what it read again of a failed batch is done."""
        pin = self._pins.get(partition)
        if pin is None:
            return
        for tp, (_, end) in spans.items():
            if tp in pin.ends and end >= pin.ends[tp]:
                del pin.ends[tp]
        if not pin.ends:
            del self._pins[partition]
