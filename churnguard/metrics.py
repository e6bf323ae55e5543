"""Every counter and histogram churnguard keeps, in one place: plain numbers updated per
batch by the shell, no locks (one event loop) and no text on the hot path. The worker's
`/metrics` renders them at scrape time (streams/metrics_export.py); `worker_stats` logs a
summary."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from churnguard.census import Census

# Values, not counts: a batch's metrics never add to them.
GAUGES = frozenset({"pack_version", "timers_pending", "customers", "census"})

# Upper bounds (seconds / records) of the histograms' buckets; +Inf is implied.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0)


@dataclass(slots=True)
class Histogram:
    """Prometheus-style: per-bucket counts (not cumulative; rendered cumulative), sum, count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for index, n in enumerate(other.counts):
            self.counts[index] += n
        self.total += other.total
        self.count += other.count

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as the exposition format wants them, +Inf last."""
        running, pairs = 0, []
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs

    def quantile(self, q: float) -> float | None:
        """An estimate (the bucket's upper bound) for the dashboard; None when empty."""
        if not self.count:
            return None
        rank, running = q * self.count, 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            if running >= rank:
                return bound
        return float("inf")


def _latency() -> Histogram:
    return Histogram(LATENCY_BUCKETS)


@dataclass
class Metrics:
    events_in: Counter[str] = field(default_factory=Counter)  # by source topic
    # by (source topic, event type): what was applied (valid and not a duplicate)
    events_applied: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # by rejection kind
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (rule, type)
    suppressed: Counter[str] = field(default_factory=Counter)  # by guard reason
    score_changes: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # outcome records by kind
    feedback_unmatched: int = 0  # feedback on an action not among the customer's latest
    timer_ticks: int = 0
    due_customers: int = 0  # customers advanced by ticks
    timers_fired: int = 0  # actions of time-driven firings
    timers_expired: int = 0  # noticed too late (past the grace, older than the horizon): not fired
    tickets_evicted: int = 0  # oldest open tickets dropped beyond MAX_OPEN_TICKETS a customer
    customers_retired: int = 0  # removed by data retention (no event for retention_days)
    pack_version: int = 0  # the published rule pack running (0: the shipped default)
    # Due-index entries (customers with a pending timer) per owned partition: counted once
    # when the partition is first ticked, then kept by every write's delta.
    timers_pending: Counter[int] = field(default_factory=Counter)
    # Customers with a state per owned partition: counted and kept the same way.
    customers: Counter[int] = field(default_factory=Counter)
    # Per owned partition, its census (customers per score band and RFM segment) as last
    # read or written under the partition's lock (agents/census.py); only a `done` one is
    # a figure. Dropped when the partition is revoked.
    census: dict[int, Census] = field(default_factory=dict)
    rule_packs_refused: int = 0  # published versions that failed validation here
    rebalances: int = 0
    batches: int = 0
    batch_events: int = 0
    batch_seconds: float = 0.0
    failed_batches: int = 0
    batch_size: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    batch_duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    tick_duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    # Record timestamp (timers: due time) -> action produced, by rule.
    latency: dict[str, Histogram] = field(default_factory=dict)
    timer_delay: Histogram = field(default_factory=_latency)  # due -> fired

    def observe_latency(self, rule_id: str, seconds: float) -> None:
        histogram = self.latency.get(rule_id)
        if histogram is None:
            histogram = self.latency[rule_id] = _latency()
        histogram.observe(max(0.0, seconds))

    def merge(self, other: Metrics) -> None:
        """Add another set of counters (a batch's, counted apart until it succeeded)."""
        for name in self.__dataclass_fields__:
            if name in GAUGES:
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, Counter):
                mine.update(theirs)
            elif isinstance(mine, Histogram):
                mine.merge(theirs)
            elif isinstance(mine, dict):
                for key, histogram in theirs.items():
                    if key in mine:
                        mine[key].merge(histogram)
                    else:
                        mine[key] = Histogram(histogram.bounds, list(histogram.counts),
                                              histogram.total, histogram.count)
            else:
                setattr(self, name, mine + theirs)

    def applied_by_type(self) -> dict[str, int]:
        applied: Counter[str] = Counter()
        for (_, kind), n in self.events_applied.items():
            applied[kind] += n
        return dict(applied)

    def snapshot(self) -> dict[str, Any]:
        """The `worker_stats` log line: totals, not histograms."""
        return {
            "events_in": dict(self.events_in),
            "events_applied": self.applied_by_type(),
            "duplicates": self.duplicates,
            "dead_letters": dict(self.dead_letters),
            "actions": {f"{rule}/{kind}": n for (rule, kind), n in sorted(self.actions.items())},
            "suppressed": dict(self.suppressed),
            "score_changes": self.score_changes,
            "outcomes": dict(self.outcomes),
            "feedback_unmatched": self.feedback_unmatched,
            "timer_ticks": self.timer_ticks,
            "due_customers": self.due_customers,
            "timers_fired": self.timers_fired,
            "timers_expired": self.timers_expired,
            "tickets_evicted": self.tickets_evicted,
            "customers_retired": self.customers_retired,
            "pack_version": self.pack_version,
            "rule_packs_refused": self.rule_packs_refused,
            "rebalances": self.rebalances,
            "batches": self.batches,
            "batch_events": self.batch_events,
            "batch_seconds": round(self.batch_seconds, 3),
            "failed_batches": self.failed_batches,
        }
