"""What the worker's endpoints read (/metrics, /health, /ready, /status): offsets and lag
of the owned input partitions, their Burrow-style status, readiness. Sampled once a second
by the worker (so lag in seconds and the status windows have history whether or not anyone
scrapes), read at request time; nothing here runs per event."""

from __future__ import annotations

import time
from typing import Any

from faust.exceptions import ConsumerNotStarted

from agents.insights import WorkerInsights
from churnguard.census import CensusTotals, totals
from churnguard.metrics import Metrics
from streams.app import Topology
from streams.batch_path import BatchPathConsumer
from streams.metrics_export import LagClock, PartitionOffsets, WorkerView
from streams.partition_status import STATUSES, PartitionStatuses, Status
from streams.web import Heartbeat, Readiness
from tables.state_store import TableBatchWriter


class Observability:
    def __init__(self, topology: Topology, metrics: Metrics, inputs: set[str],
                 writer: TableBatchWriter | None = None,
                 insights: WorkerInsights | None = None) -> None:
        self.topology = topology
        self.insights = insights
        self.writer = writer
        self.metrics = metrics
        self.inputs = inputs
        self.heartbeat = Heartbeat()
        self.lag_clock = LagClock()
        self.statuses = PartitionStatuses()
        self._seen_attempt: float | None = None

    def sample(self) -> None:
        """Once a second: the loop is alive; high-water marks and commits seen over time."""
        self.heartbeat.beat()
        found = self.offsets()
        consumer = self.topology.app.consumer
        attempt = getattr(consumer, "last_commit_attempt", None)
        if attempt is not None and attempt != self._seen_attempt:
            self._seen_attempt = attempt
            for o in found:
                lag = _lag(o)
                self.statuses.window(o.topic, o.partition).commit(attempt, o.committed, lag)
        self.statuses.forget({(o.topic, o.partition) for o in found})

    def offsets(self) -> list[PartitionOffsets]:
        consumer = self.topology.app.consumer
        if not isinstance(consumer, BatchPathConsumer):
            return []
        now = time.time()
        found = []
        for tp, committed, highwater in consumer.offsets(self.inputs):
            if highwater is not None:
                self.lag_clock.sample(tp.topic, tp.partition, highwater, now)
            found.append(PartitionOffsets(
                tp.topic, tp.partition, committed, highwater,
                self.lag_clock.lag_seconds(tp.topic, tp.partition, committed, now)))
        self.lag_clock.forget({(o.topic, o.partition) for o in found})
        return found

    def status_of(self, offsets: list[PartitionOffsets]) -> dict[tuple[str, int], Status]:
        now = time.time()
        return {(o.topic, o.partition): self.statuses.window(o.topic, o.partition).status(
            now, _lag(o)) for o in offsets}

    def view(self) -> WorkerView:
        recovery: Any = self.topology.app.tables.recovery  # type: ignore[attr-defined]
        remaining = recovery.active_remaining() if recovery.in_recovery else {}
        offsets = self.offsets()
        pending = dict(self.metrics.timers_pending)
        store_bytes = {}
        for partition in sorted({o.partition for o in offsets}):
            stats = None if self.writer is None else self.writer.store_stats(partition)
            if stats is not None:
                store_bytes[partition] = stats[1]
        customers = dict(self.metrics.customers)
        census = self.census()
        by_band = census.band if census.complete and census.counted else {}
        return WorkerView(offsets=offsets, timers_pending=pending,
                          recovery_remaining={tp.partition: n for tp, n in remaining.items()},
                          store_bytes=store_bytes, customers=customers,
                          customers_by_band=by_band, statuses=self.status_of(offsets),
                          ready=self.readiness().ready, census_pending=len(census.pending),
                          insights_pending=self._insights_pending())

    def census(self) -> CensusTotals:
        """Customers per score band and per RFM segment over the owned partitions whose
        census is done (the stored states, exact); `pending`: owned partitions not counted
        yet (restoring, or a store being counted for the first time) — with any, the sums
        are partial (for `/segments`)."""
        return totals(self.metrics.census, self.owned_partitions())

    def _insights_pending(self) -> int:
        if self.insights is None:
            return 0
        return len(self.insights.of(self.owned_partitions())[1])

    def owned_partitions(self) -> set[int]:
        """The input partitions this worker owns (those of the customers it holds)."""
        return {tp.partition for tp in self._assignment() if tp.topic in self.inputs}

    def _assignment(self) -> set[Any]:
        # Empty, not an error, in the moment between the web server's start and the
        # consumer's (faust raises ConsumerNotStarted then): /ready is a 503, not a 500.
        try:
            return set(self.topology.app.consumer.assignment())
        except ConsumerNotStarted:
            return set()

    def readiness(self) -> Readiness:
        app = self.topology.app
        consumer = app.consumer
        owned = [tp for tp in self._assignment() if tp.topic in self.inputs]
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        recovering = bool(recovery.in_recovery) or not recovery.completed.is_set()
        consuming = isinstance(consumer, BatchPathConsumer) and bool(consumer.flow_active)
        reachable = self.topology.health.reachable is True
        return Readiness(ready=bool(owned) and not recovering and consuming and reachable,
                         partitions=len(owned), recovering=recovering, consuming=consuming,
                         broker_reachable=reachable)

    def status_report(self) -> dict[str, Any]:
        """/status: per owned input partition, Burrow-style, worst first."""
        offsets = self.offsets()
        statuses = self.status_of(offsets)
        rows = [{"topic": o.topic, "partition": o.partition,
                 "status": statuses[(o.topic, o.partition)], "lag": _lag(o),
                 "lag_seconds": round(o.lag_seconds, 3), "committed": o.committed,
                 "high_watermark": o.highwater} for o in offsets]
        rows.sort(key=lambda r: (-STATUSES.index(r["status"]), r["topic"], r["partition"]))
        worst = rows[0]["status"] if rows else "OK"
        return {"status": worst, "partitions": rows}


def _lag(offsets: PartitionOffsets) -> int:
    if offsets.highwater is None:
        return 0
    return max(0, offsets.highwater - (offsets.committed or 0))

