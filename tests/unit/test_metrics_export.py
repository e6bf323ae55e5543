"""The counters and histograms as Prometheus renders them, and the lag clock."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from churnguard.metrics import Histogram, Metrics
from streams.metrics_export import (
    LagClock,
    PartitionOffsets,
    WorkerCollector,
    WorkerView,
    registry_for,
)


def test_histogram_buckets_are_cumulative_and_merge():
    histogram = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 3.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("1.0", 2), ("5.0", 3), ("+Inf", 4)]
    assert (histogram.count, histogram.total) == (4, 11.5)
    other = Histogram((1.0, 5.0))
    other.observe(2.0)
    histogram.merge(other)
    assert histogram.cumulative() == [("1.0", 2), ("5.0", 4), ("+Inf", 5)]
    assert histogram.quantile(0.5) == 5.0
    assert Histogram((1.0,)).quantile(0.5) is None


def test_batch_metrics_merge_their_histograms_and_latencies():
    total, batch = Metrics(), Metrics()
    batch.batch_size.observe(10)
    batch.observe_latency("r1", 0.02)
    batch.observe_latency("r1", -1)  # clock skew: counted as 0, never negative
    total.merge(batch)
    total.merge(batch)
    assert total.batch_size.count == 2
    assert total.latency["r1"].count == 4
    assert total.latency["r1"] is not batch.latency["r1"]


@pytest.mark.parametrize(("committed", "expected"), [
    (100, 0.0),      # caught up
    (90, 15.0),      # appended halfway between the samples at t=10 (80) and t=20 (100)
    (50, 20.0),      # before the oldest sample we kept: at least that old
    (None, 20.0),
])
def test_lag_seconds_interpolate_when_the_high_water_mark_passed_the_offset(committed, expected):
    clock = LagClock()
    clock.sample("t", 0, 80, 10.0)
    clock.sample("t", 0, 80, 15.0)  # unchanged: the first sighting counts
    clock.sample("t", 0, 100, 20.0)
    assert clock.lag_seconds("t", 0, committed, 30.0) == pytest.approx(expected)
    assert clock.lag_seconds("t", 1, 5, 30.0) == 0.0


def _render(metrics: Metrics, view: WorkerView) -> dict[str, list]:
    collector = WorkerCollector(metrics, lambda: view, version="9.9", contract_version="1")
    text = generate_latest(registry_for(collector)).decode()
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_the_exposition_names_units_and_labels():
    metrics = Metrics()
    metrics.events_applied[("in", "login")] += 3
    metrics.actions[("winback", "coupon")] += 2
    metrics.suppressed["holdout"] += 1
    metrics.dead_letters["malformed_json"] += 4
    metrics.observe_latency("winback", 0.2)
    metrics.pack_version = 7
    view = WorkerView(
        offsets=[PartitionOffsets("in", 0, 40, 50, 2.5), PartitionOffsets("in", 1, None, 0, 0)],
        timers_pending={0: 3}, recovery_remaining={}, store_bytes={}, customers={},
        customers_by_band={"good": 1})
    found = _render(metrics, view)
    assert found["churnguard_consumer_lag_records"] == [
        ({"topic": "in", "partition": "0"}, 10.0), ({"topic": "in", "partition": "1"}, 0.0)]
    assert found["churnguard_consumer_lag_seconds"][0][1] == 2.5
    assert found["churnguard_consumer_committed_offset"] == [
        ({"topic": "in", "partition": "0"}, 40.0)]
    assert found["churnguard_events_consumed_total"] == [
        ({"topic": "in", "event_type": "login"}, 3.0)]
    assert found["churnguard_actions_emitted_total"] == [
        ({"action_type": "coupon", "rule_id": "winback"}, 2.0)]
    assert found["churnguard_actions_suppressed_total"] == [({"reason": "holdout"}, 1.0)]
    assert found["churnguard_dead_letters_total"] == [({"kind": "malformed_json"}, 4.0)]
    assert found["churnguard_event_to_action_latency_seconds_count"] == [
        ({"rule_id": "winback"}, 1.0)]
    assert found["churnguard_timers_pending"] == [({"partition": "0"}, 3.0)]
    assert found["churnguard_ruleset_info"] == [({"version": "7"}, 1.0)]
    assert found["churnguard_build_info"] == [({"version": "9.9", "contract_version": "1"},
                                               1.0)]
    for name in found:
        assert name.startswith("churnguard_")
