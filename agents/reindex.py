"""Re-indexing the due index after a published pack changes what is due (inactivity 30 → 21
days): every customer's next due is recomputed under the running pack, a chunk of one
partition at a time, in the background.

Throttled: one chunk (`chunk` customers of one owned partition, under its lock) per call,
so events and ticks go on between chunks. Restart-safe: the cursor
(`due_index.REINDEX_CURSOR`: pack fingerprint and version, last customer key, done) is
written with the chunk's states, changelog first, so a restarted or rebalanced worker
resumes where the last one stopped — and a partition already done for the running pack is
not scanned again. The pack is told by its fingerprint: a rules file edited under the same
version is a new pack too."""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial

import orjson
import structlog

from agents.locks import PartitionLocks
from churnguard import due_index
from churnguard.batch import BatchContext, reindex
from tables.state_store import TableBatchWriter

log = structlog.get_logger(__name__)

# 500 customers (~22 ms of CPU) per REINDEX_INTERVAL_S: ~1,000,000 customers in ~3.5 min at
# about a fifth of one core (python -m benchmarks.reindex).
CHUNK = 500


class Reindex:
    def __init__(self, ctx: BatchContext, writer: TableBatchWriter, locks: PartitionLocks,
                 *, chunk: int = CHUNK) -> None:
        self.ctx = ctx
        self.writer = writer
        self.locks = locks
        self.chunk = chunk
        # Partitions known to be done for the running pack (its fingerprint; cheap skip).
        self._done: dict[int, int] = {}
        self._started: dict[int, tuple[float, int, int]] = {}  # time, customers, moved
        self._turn = 0

    async def step(self, partitions: Iterable[int]) -> int:
        """One chunk of the next owned partition that needs it; customers looked at."""
        pack = self.ctx.engine.pack.fingerprint
        pending = [p for p in sorted(partitions) if self._done.get(p) != pack]
        if not pending:
            return 0
        partition = pending[self._turn % len(pending)]
        self._turn += 1
        async with self.locks[partition]:
            return await self._chunk(partition, pack)

    async def _chunk(self, partition: int, pack: int) -> int:
        cursor = self._cursor(partition)
        # A partition without a cursor is scanned too, under the shipped pack as well: it
        # was indexed by the shipped pack of an earlier release (whose dues may differ: the
        # data retention, added later, was none), or by nothing (an empty one: one chunk).
        if cursor.get("pack") == pack and cursor.get("done"):
            self._done[partition] = pack
            return 0
        after = cursor.get("after") if cursor.get("pack") == pack else None
        lower = (bytes.fromhex(after) + b"\x00" if isinstance(after, str)
                 else due_index.FIRST_CUSTOMER)
        keys = self.writer.scan(partition, lower, due_index.AFTER_CUSTOMERS, self.chunk)
        result, moved = reindex(keys, partial(self.writer.get_many, partition), self.ctx)
        done = len(keys) < self.chunk
        started, seen, moved_total = self._started.get(partition, (time.monotonic(), 0, 0))
        seen, moved_total = seen + len(keys), moved_total + moved
        result.writes[due_index.REINDEX_CURSOR] = orjson.dumps({
            "pack": pack, "version": self.ctx.engine.pack.version,
            "after": keys[-1].hex() if keys else after, "done": done})
        await self.writer.write(partition, result.writes)
        self.ctx.metrics.timers_pending[partition] += due_index.entries_delta(result.writes)
        if done:
            self._done[partition] = pack
            self._started.pop(partition, None)
            # One line per partition and pack version.
            log.info("due_index_reindexed", partition=partition,
                     pack_version=self.ctx.engine.pack.version,
                     customers=seen, moved=moved_total,
                     seconds=round(time.monotonic() - started, 3))
        else:
            self._started[partition] = (started, seen, moved_total)
        return len(keys)

    def _cursor(self, partition: int) -> dict[str, object]:
        [raw] = self.writer.get_many(partition, [due_index.REINDEX_CURSOR])
        if raw is None:
            return {}
        cursor: dict[str, object] = orjson.loads(raw)
        return cursor
