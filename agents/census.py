"""The census of each owned partition (churnguard/census.py): customers per score band and
per RFM segment, kept in the partition's store under `due_index.CENSUS`.

- Deltas: the batch and tick handlers load their states through `StatesAndCensus`, which
  reads the census record in the same multi-get (still one store read per partition and
  write), and call `stage` under the partition's lock before their write: it applies the
  write's changes (only those of customers the census already counts) and adds the record
  to the same write, so it reaches the changelog with the states it counts. The record is
  decoded only when the write changes a customer's band or segment.
- Baseline: `CensusScan.step`, driven like the re-index (streams/worker.py: one call per
  `CENSUS_INTERVAL_S`, through the guarded-run path, so rebalances wait for it), counts a
  store without a census record — written before the census existed — one chunk of one
  owned partition per call, under its lock; the cursor (the last key counted) is written
  with the counts, so a restarted or rebalanced worker resumes where the last one stopped.
  A partition without customers gets a done, empty census at its first step.
- Published: after each successful write the census goes to `Metrics.census[partition]`;
  `step` also reads the record of every owned partition not known yet (one partition per
  call) and drops those no longer owned; the worker clears them all on revocation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog

from agents.locks import PartitionLocks
from churnguard import due_index
from churnguard.batch import PartitionResult
from churnguard.census import Census, standing_of_raw
from churnguard.metrics import Metrics
from tables.state_store import TableBatchWriter

log = structlog.get_logger(__name__)

# Customers counted per CENSUS_INTERVAL_S (streams/worker.py): a state's JSON is parsed for
# its score and segment only (~3 µs for the benchmark workload's ~800-byte states), so a
# chunk holds the loop for a few ms (plus its RocksDB seek and multi-get) and 1,000,000
# customers are counted in ~100 s.
CHUNK = 1000


def read(writer: TableBatchWriter, partition: int) -> Census:
    """The partition's census record; a fresh one (nothing counted, not done) if it has none."""
    [raw] = writer.get_many(partition, [due_index.CENSUS])
    return Census() if raw is None else Census.from_bytes(raw)


class StatesAndCensus:
    """The `load` of process_partition / process_due for one partition: the states and, in
    the same multi-get, the census record (kept for `stage`)."""

    def __init__(self, writer: TableBatchWriter, partition: int) -> None:
        self.writer = writer
        self.partition = partition
        self.census: bytes | None = None

    def __call__(self, keys: list[bytes]) -> list[bytes | None]:
        *states, self.census = self.writer.get_many(self.partition, [*keys, due_index.CENSUS])
        return states


def stage(loaded: StatesAndCensus, result: PartitionResult) -> Census | None:
    """Under the partition's lock, before `result` is written: the census with its changes
    applied, and its record added to `result.writes` when they changed it. None when the
    write changes no customer's standing. Publish the census only once the write is done."""
    if not result.census:
        return None  # (a change needs its state loaded: the record was read with it)
    census = Census() if loaded.census is None else Census.from_bytes(loaded.census)
    if census.apply(result.census):
        result.writes[due_index.CENSUS] = census.to_bytes()
    return census


class CensusScan:
    def __init__(self, writer: TableBatchWriter, locks: PartitionLocks, metrics: Metrics,
                 *, chunk: int = CHUNK) -> None:
        self.writer = writer
        self.locks = locks
        self.metrics = metrics
        self.chunk = chunk
        self._started: dict[int, float] = {}
        self._turn = 0

    async def step(self, partitions: Iterable[int]) -> int:
        """Read, or count one chunk of, the next owned partition whose census is not known
        to be done; customers counted."""
        owned = frozenset(partitions)
        known = self.metrics.census
        for gone in [p for p in known if p not in owned]:
            del known[gone]
        pending = [p for p in sorted(owned) if p not in known or not known[p].done]
        if not pending:
            return 0
        partition = pending[self._turn % len(pending)]
        self._turn += 1
        async with self.locks[partition]:
            return await self._chunk(partition)

    def forget(self) -> None:
        """Partitions revoked: what another worker writes meanwhile is read again."""
        self.metrics.census.clear()

    async def _chunk(self, partition: int) -> int:
        census = read(self.writer, partition)
        if census.done:
            self.metrics.census[partition] = census
            return 0
        started = self._started.setdefault(partition, time.monotonic())
        lower = due_index.FIRST_CUSTOMER if census.after is None else census.after + b"\x00"
        keys = self.writer.scan(partition, lower, due_index.AFTER_CUSTOMERS, self.chunk)
        for raw in self.writer.get_many(partition, keys):
            if raw is not None:
                census.add(standing_of_raw(raw))
        if keys:
            census.after = keys[-1]
        census.done = len(keys) < self.chunk
        await self.writer.write(partition, {due_index.CENSUS: census.to_bytes()})
        self.metrics.census[partition] = census
        if census.done:
            del self._started[partition]
            # One line per partition counted.
            log.info("census_counted", partition=partition,
                     customers=sum(census.band.values()),
                     seconds=round(time.monotonic() - started, 3))
        return len(keys)
