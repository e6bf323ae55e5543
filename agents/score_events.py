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
from streams.batch_path import SourceRecord
from tables.state_store import OutputRecord, TableBatchWriter

from churnguard.batch import BatchContext, process_partition

log = structlog.get_logger(__name__)


class ScoreEvents:
    """The batch handler installed into the worker's consumer."""

    def __init__(self, ctx: BatchContext, writer: TableBatchWriter) -> None:
        self.ctx = ctx
        self.writer = writer

    async def __call__(self, batch: Mapping[object, Sequence[SourceRecord]]) -> None:
        started = time.perf_counter()
        by_partition: dict[int, list[SourceRecord]] = defaultdict(list)
        for records in batch.values():
            for record in records:
                by_partition[record.partition].append(record)
        now = time.time()
        await asyncio.gather(*(
            self._partition(partition, records, now)
            for partition, records in by_partition.items()
        ))
        metrics = self.ctx.metrics
        metrics.batches += 1
        metrics.batch_events += sum(len(r) for r in by_partition.values())
        metrics.batch_seconds += time.perf_counter() - started

    async def _partition(self, partition: int, records: list[SourceRecord], now: float) -> None:
        # Topics of one partition are applied topic by topic, each in offset order.
        records.sort(key=lambda r: (r.topic, r.offset))
        result = process_partition(
            records,
            lambda keys: self.writer.get_many(partition, keys),
            self.ctx,
            now=now,
        )
        outputs = [OutputRecord(o.topic, o.key or b"", o.value, None) for o in result.outputs]
        await self.writer.write(partition, result.writes, outputs=outputs)
