"""The worker's Prometheus metrics, rendered at scrape time from churnguard.metrics.Metrics
and the consumer's offsets: nothing is formatted or locked per event, the hot path only
adds to plain numbers. Names follow Prometheus conventions (base units, `_total` counters)
and labels come from bounded sets only (topic, partition, rule, type, reason, band) —
never a customer id."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from churnguard.metrics import Histogram, Metrics
from streams.partition_status import STATUSES

PREFIX = "churnguard"


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    topic: str
    partition: int
    committed: int | None  # the next offset the group will read (None: nothing committed)
    highwater: int | None  # from the last fetch response (right on every broker)
    # Seconds since the high-water mark was at the committed offset: how far behind in
    # time (kafka-lag-exporter's interpolation), 0 when caught up.
    lag_seconds: float


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the worker knows at scrape time beyond the counters."""

    offsets: list[PartitionOffsets]
    timers_pending: Mapping[int, int]
    recovery_remaining: Mapping[int, int]
    store_bytes: Mapping[int, int]
    customers: Mapping[int, int]
    # Summed over the owned partitions, only once every one's census is done (else empty:
    # a partial count is no figure); `census_pending`: owned partitions still counted.
    customers_by_band: Mapping[str, int]
    # Burrow-style status per (topic, partition) (streams/partition_status.py).
    statuses: Mapping[tuple[str, int], str] = field(default_factory=dict)
    ready: bool = False
    census_pending: int = 0
    # Owned partitions whose KPI and feedback aggregates are not read yet (agents/insights.py).
    insights_pending: int = 0


class LagClock:
    """When each high-water mark was seen, per partition, to tell how far behind in time a
    committed offset is: the time the high-water mark passed it (interpolated between
    samples, as kafka-lag-exporter does), so no record needs to be read."""

    KEEP = 240

    def __init__(self) -> None:
        self._samples: dict[tuple[str, int], list[tuple[float, int]]] = {}

    def sample(self, topic: str, partition: int, highwater: int, now: float) -> None:
        samples = self._samples.setdefault((topic, partition), [])
        if samples and samples[-1][1] == highwater:
            return  # unchanged: the first time it was seen is what counts
        samples.append((now, highwater))
        del samples[:-self.KEEP]

    def lag_seconds(self, topic: str, partition: int, committed: int | None,
                    now: float) -> float:
        samples = self._samples.get((topic, partition), [])
        if not samples:
            return 0.0
        offset = committed or 0
        if offset >= samples[-1][1]:
            return 0.0
        # The first sample whose high-water mark is past the committed offset: the record
        # at that offset was appended between the sample before it and this one.
        for index, (seen, highwater) in enumerate(samples):
            if highwater > offset:
                if index == 0:
                    return max(0.0, now - seen)  # older than what we remember
                before_t, before_h = samples[index - 1]
                share = (offset - before_h) / (highwater - before_h)
                return max(0.0, now - (before_t + share * (seen - before_t)))
        return 0.0

    def forget(self, keep: set[tuple[str, int]]) -> None:
        for key in [k for k in self._samples if k not in keep]:
            del self._samples[key]


class WorkerCollector(Collector):
    def __init__(self, metrics: Metrics, view: Callable[[], WorkerView], *, version: str,
                 contract_version: str) -> None:
        self.metrics = metrics
        self.view = view
        self.version = version
        self.contract_version = contract_version

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        view = self.view()
        yield from _offsets(view)
        yield _counter("events_consumed", "Input events applied, by topic and event type",
                       ["topic", "event_type"],
                       {(t, kind): n for (t, kind), n in m.events_applied.items()})
        yield _counter("records_read", "Input records read (applied, duplicate or dead-lettered)",
                       ["topic"], {(t,): n for t, n in m.events_in.items()})
        yield _counter("actions_emitted", "Actions produced, by type and rule",
                       ["action_type", "rule_id"],
                       {(kind, rule): n for (rule, kind), n in m.actions.items()})
        yield _counter("actions_suppressed", "Actions a guard stopped or deferred, by reason",
                       ["reason"], {(r,): n for r, n in m.suppressed.items()})
        yield _counter("dead_letters", "Records dead-lettered, by kind", ["kind"],
                       {(k,): n for k, n in m.dead_letters.items()})
        yield _counter("duplicates", "Events already applied (redelivered or repeated ids)",
                       [], {(): m.duplicates})
        yield _counter("outcomes", "Outcome records (KPIs' input), by kind", ["kind"],
                       {(k,): n for k, n in m.outcomes.items()})
        yield _counter("feedback_unmatched",
                       "Feedback on an action not among the customer's latest 50 (ignored)", [],
                       {(): m.feedback_unmatched})
        yield _counter("timers_fired", "Actions of time-driven firings", [], {(): m.timers_fired})
        yield _counter("timers_expired",
                       "Firings noticed too late to act on: timer occurrences past their "
                       "grace, rules of events older than the backfill horizon", [],
                       {(): m.timers_expired})
        yield _counter("customers_retired",
                       "Customers removed from state by data retention: no event for the rule "
                       "pack's retention_days", [], {(): m.customers_retired})
        yield _counter("rebalances", "Partition assignments received", [], {(): m.rebalances})
        yield _counter("failed_batches", "Batches that failed and were read again", [],
                       {(): m.failed_batches})
        yield _counter("rule_packs_refused", "Published rule packs that failed validation", [],
                       {(): m.rule_packs_refused})
        yield _histogram("batch_size", "Records per batch", m.batch_size)
        yield _histogram("batch_duration_seconds", "Time to apply and write a batch",
                         m.batch_duration)
        yield _histogram("tick_duration_seconds", "Time of one timer tick", m.tick_duration)
        yield _histogram("timer_fire_delay_seconds", "Due time to fired", m.timer_delay)
        latency = HistogramMetricFamily(
            f"{PREFIX}_event_to_action_latency_seconds",
            "Triggering record's timestamp (timers: due time) to action produced",
            labels=["rule_id"])
        for rule_id, histogram in sorted(m.latency.items()):
            latency.add_metric([rule_id], histogram.cumulative(), histogram.total)
        yield latency
        yield _gauge("timers_pending",
                     "Customers with something due: a timer, or at the latest their data "
                     "retention", ["partition"],
                     {(str(p),): n for p, n in view.timers_pending.items()})
        yield _gauge("table_recovery_remaining_records",
                     "Changelog records still to restore", ["partition"],
                     {(str(p),): n for p, n in view.recovery_remaining.items()})
        yield _gauge("state_store_bytes", "Size of the state store", ["partition"],
                     {(str(p),): n for p, n in view.store_bytes.items()})
        yield _gauge("customers", "Customers with a state", ["partition"],
                     {(str(p),): n for p, n in view.customers.items()})
        yield _gauge("customers_by_band", "Customers by health band (good >= 80, average "
                     "60-80, poor < 60) of the stored states; absent while a partition's "
                     "census is being counted", ["band"],
                     {(b,): n for b, n in view.customers_by_band.items()})
        yield _gauge("census_partitions_pending", "Owned partitions whose census (customers "
                     "by band and segment) is not counted yet", [],
                     {(): view.census_pending})
        yield _gauge("insights_partitions_pending", "Owned partitions whose KPI and feedback "
                     "aggregates are not read yet (/kpis says partial meanwhile)", [],
                     {(): view.insights_pending})
        status = GaugeMetricFamily(
            f"{PREFIX}_partition_status", "1 for the partition's current Burrow-style status "
            "(OK, WARN, STALL, STOP, REWIND)", labels=["topic", "partition", "status"])
        for (topic, partition), current in sorted(view.statuses.items()):
            for name in STATUSES:
                status.add_metric([topic, str(partition), name], 1 if name == current else 0)
        yield status
        yield _gauge("ready", "1 when the worker is ready (as /ready)", [],
                     {(): 1 if view.ready else 0})
        build = InfoMetricFamily(f"{PREFIX}_build", "churnguard build")
        build.add_metric([], {"version": self.version, "contract_version": self.contract_version})
        yield build
        ruleset = InfoMetricFamily(f"{PREFIX}_ruleset", "The rule pack running")
        ruleset.add_metric([], {"version": str(m.pack_version)})
        yield ruleset


def registry_for(collector: WorkerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def _offsets(view: WorkerView) -> Iterator[Metric]:
    labels = ["topic", "partition"]
    lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag_records",
                            "High-water mark minus committed offset", labels=labels)
    seconds = GaugeMetricFamily(f"{PREFIX}_consumer_lag_seconds",
                                "How far behind in time the committed offset is", labels=labels)
    committed = GaugeMetricFamily(f"{PREFIX}_consumer_committed_offset",
                                  "Next offset the group reads", labels=labels)
    highwater = GaugeMetricFamily(f"{PREFIX}_partition_high_watermark",
                                  "High-water mark from the last fetch response", labels=labels)
    for o in view.offsets:
        key = [o.topic, str(o.partition)]
        if o.highwater is not None:
            highwater.add_metric(key, o.highwater)
            lag.add_metric(key, max(0, o.highwater - (o.committed or 0)))
            seconds.add_metric(key, o.lag_seconds)
        if o.committed is not None:
            committed.add_metric(key, o.committed)
    yield from (lag, seconds, committed, highwater)


def _family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str,
            documentation: str, labels: list[str],
            values: Mapping[tuple[str, ...], float]) -> CounterMetricFamily | GaugeMetricFamily:
    """A counter or gauge family with one sample per label values, in label order."""
    family = kind(f"{PREFIX}_{name}", documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


_counter = partial(_family, CounterMetricFamily)
_gauge = partial(_family, GaugeMetricFamily)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{PREFIX}_{name}", documentation)
    family.add_metric([], histogram.cumulative(), histogram.total)
    return family
