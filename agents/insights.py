"""The worker's KPI and feedback aggregates (churnguard/insights.py): added to the store in
each batch's and tick's write, held in memory per owned partition for `/kpis` and
`/feedback`.

- `stage`, called by the batch and tick handlers under the partition's lock before their
  write, reads the slices the write's outcome records and comment terms touch (one
  multi-get) and adds them, with the additions, to the write; `publish`, once the write is
  done, folds the same additions into memory.
- `step`, driven like the census scan (streams/worker.py, through the guarded-run path),
  reads the slices of an owned partition not read yet, one chunk per call, under its lock:
  a partition taken over (a restart, a rebalance) is summed from its own store, not from
  its customers. Partitions no longer owned are dropped, all of them on revocation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog

from agents.locks import PartitionLocks
from churnguard import due_index
from churnguard.batch import DEFAULT_MAX_RECORD_BYTES, RECORD_OVERHEAD, PartitionResult
from churnguard.core.kpis import KpiAggregates
from churnguard.insights import PartitionInsights, Touched, touched, writes
from tables.state_store import TableBatchWriter

log = structlog.get_logger(__name__)

# Slices read per call: a year of one busy partition (a few thousand slices) in seconds.
CHUNK = 500


class WorkerInsights:
    def __init__(self, writer: TableBatchWriter, locks: PartitionLocks, *,
                 chunk: int = CHUNK, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.writer = writer
        self.max_record_bytes = max_record_bytes
        # Slice updates left out because the slice outgrew a record (never expected: terms
        # are pruned and short; a dimension with tens of thousands of values a day could).
        self.too_large = 0
        self.locks = locks
        self.chunk = chunk
        self.partitions: dict[int, PartitionInsights] = {}
        # The KPI aggregates of every fully read partition, summed (what /kpis reads: one
        # index, not one per partition).
        self.total = KpiAggregates()
        self._started: dict[int, float] = {}

    def stage(self, partition: int, result: PartitionResult) -> Touched | None:
        """Under the partition's lock, before `result` is written: the slices it touches,
        with its additions, into `result.writes`. None when it adds nothing."""
        found = touched(result.outcomes, result.comments)
        if not found:
            return None
        added = writes(found, self.writer.get_many(partition, found.slice_keys()))
        oversized = [key for key, value in added.items()
                     if len(key) + len(value) + RECORD_OVERHEAD > self.max_record_bytes]
        if oversized:
            # Its figures stop growing rather than the partition stalling on a write the
            # broker refuses; said once per write, counted.
            self.too_large += len(oversized)
            log.error("insights_slice_too_large", partition=partition,
                      slices=[key.hex() for key in oversized],
                      max_record_bytes=self.max_record_bytes)
            for key in oversized:
                del added[key]
                found.records.pop(key, None)
                found.comments.pop(key, None)
        result.writes.update(added)
        return found

    def publish(self, partition: int, found: Touched | None) -> None:
        """The write of `found` is done."""
        into = self.partitions.get(partition)
        if found is None or into is None:
            return
        into.publish(found)
        if into.done:
            for records in found.records.values():
                self.total.fold_all(records)

    def of(self, partitions: Iterable[int]) -> tuple[list[PartitionInsights], list[int]]:
        """These (owned) partitions' aggregates where fully read, and those not fully read
        yet (with any, the sums are partial)."""
        ready, pending = [], []
        for partition in sorted(set(partitions)):
            found = self.partitions.get(partition)
            if found is not None and found.done:
                ready.append(found)
            else:
                pending.append(partition)
        return ready, pending

    def kpis(self) -> tuple[KpiAggregates, list[int]]:
        """The summed KPI aggregates and the partitions they are of."""
        return self.total, sorted(p for p, into in self.partitions.items() if into.done)

    def forget(self) -> None:
        """Partitions revoked: what another worker writes meanwhile is read again."""
        self.partitions.clear()
        self.total = KpiAggregates()
        self._started.clear()

    async def step(self, partitions: Iterable[int]) -> int:
        """Read one chunk of the next owned partition not fully read; slices read."""
        owned = frozenset(partitions)
        gone = [p for p in self.partitions if p not in owned]
        for partition in gone:
            del self.partitions[partition]
            self._started.pop(partition, None)
        if gone:  # (rare: revocation forgets all) the sum without them
            self.total = KpiAggregates()
            for into in self.partitions.values():
                if into.done:
                    self.total.merge(into.slices.kpis)
        pending = [p for p in sorted(owned)
                   if p not in self.partitions or not self.partitions[p].done]
        if not pending:
            return 0
        partition = pending[0]
        async with self.locks[partition]:
            into = self.partitions.setdefault(partition, PartitionInsights())
            started = self._started.setdefault(partition, time.monotonic())
            lower = (due_index.INSIGHTS if into.after is None else into.after + b"\x00")
            keys = self.writer.scan(partition, lower, due_index.INSIGHTS_END, self.chunk)
            values = self.writer.get_many(partition, keys)
            into.read([(k, v) for k, v in zip(keys, values, strict=True) if v is not None],
                      last=len(keys) < self.chunk)
        if into.done:
            self.total.merge(into.slices.kpis)
            del self._started[partition]
            # One line per partition read.
            log.info("insights_read", partition=partition,
                     cells=len(into.slices.kpis.cells),
                     seconds=round(time.monotonic() - started, 3))
        return len(keys)
