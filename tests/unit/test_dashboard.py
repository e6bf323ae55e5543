"""/dashboard without a broker: what a sample keeps, the rates and percentiles derived from
it, the ring's bound, and the page and data handlers."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from churnguard.metrics import LATENCY_BUCKETS, Metrics
from streams import dashboard as dashboard_module
from streams.dashboard import (
    LATENCY_SPAN_S,
    RATE_SPAN_S,
    TOP_LINES,
    Dashboard,
    bucket_quantile,
)
from streams.metrics_export import PartitionOffsets, WorkerView


class FakeView:
    """What the worker would report: offsets and timers, changed by the test."""

    def __init__(self) -> None:
        self.offsets: list[PartitionOffsets] = []
        self.timers: dict[int, int] = {}
        self.fail = False
        self.calls = 0

    def __call__(self) -> WorkerView:
        self.calls += 1
        if self.fail:
            raise RuntimeError("consumer not started")
        return WorkerView(offsets=list(self.offsets), timers_pending=dict(self.timers),
                          recovery_remaining={}, store_bytes={}, customers={},
                          customers_by_band={})


def _make(**kwargs: Any) -> tuple[Metrics, FakeView, Dashboard]:
    metrics, view = Metrics(), FakeView()
    return metrics, view, Dashboard(metrics, view, **kwargs)


def _chart(series: dict[str, Any], chart_id: str) -> dict[str, Any]:
    [chart] = [c for c in series["charts"] if c["id"] == chart_id]
    found: dict[str, Any] = chart
    return found


def _line(series: dict[str, Any], chart_id: str, label: str) -> list[float | None]:
    [line] = [ln["values"] for ln in _chart(series, chart_id)["lines"] if ln["label"] == label]
    values: list[float | None] = line
    return values


def test_the_first_sample_is_a_baseline_and_counts_before_it_are_not_charted() -> None:
    metrics, _, dashboard = _make()
    metrics.events_in["events"] += 1000  # before the dashboard started
    dashboard.sample(100.0)
    assert dashboard.series()["t"] == []
    metrics.events_in["events"] += 10
    dashboard.sample(101.0)
    series = dashboard.series()
    assert series["t"] == [0.0]
    assert _line(series, "events", "read") == [10.0]


def test_rates_are_per_second_over_the_rate_span_from_counter_increments() -> None:
    metrics, _, dashboard = _make()
    dashboard.sample(0.0)
    for second in range(1, 11):
        metrics.events_in["events"] += 20
        metrics.events_in["orders"] += 10 if second <= 5 else 0
        metrics.events_applied[("events", "login")] += 15
        dashboard.sample(float(second))
    series = dashboard.series()
    assert series["t"] == [float(s - 10) for s in range(1, 11)]
    read = _line(series, "events", "read")
    assert read[:5] == [30.0] * 5
    # A rate point covers RATE_SPAN_S: the drop shows over 5 s, then it is steady.
    assert RATE_SPAN_S == 5.0
    assert read[5:] == [28.0, 26.0, 24.0, 22.0, 20.0]
    assert _line(series, "events", "applied") == [15.0] * 10


def test_rates_divide_by_the_seconds_sampled_when_the_timer_is_late() -> None:
    metrics, _, dashboard = _make()
    dashboard.sample(0.0)
    metrics.events_in["events"] += 30
    dashboard.sample(3.0)  # the loop was busy: one sample for 3 s
    assert _line(dashboard.series(), "events", "read") == [10.0]


def test_actions_per_rule_the_busiest_drawn_apart_the_rest_summed() -> None:
    metrics, _, dashboard = _make()
    rules = [f"rule_{n:02d}" for n in range(TOP_LINES + 2)]
    dashboard.sample(0.0)
    for second in range(1, 6):
        for rank, rule in enumerate(rules):
            metrics.actions[(rule, "email")] += len(rules) - rank
        metrics.actions[("rule_00", "task")] += 1  # types of one rule add up
        dashboard.sample(float(second))
    chart = _chart(dashboard.series(), "actions")
    labels = [line["label"] for line in chart["lines"]]
    assert labels == ["all rules", *rules[:TOP_LINES], "other rules (2)"]
    values = {line["label"]: line["values"][-1] for line in chart["lines"]}
    assert values["rule_00"] == len(rules) + 1
    assert values["other rules (2)"] == 2 + 1
    assert values["all rules"] == sum(range(1, len(rules) + 1)) + 1


def test_dead_letters_per_second_by_kind() -> None:
    metrics, _, dashboard = _make()
    dashboard.sample(0.0)
    metrics.dead_letters["malformed_json"] += 4
    dashboard.sample(1.0)
    metrics.dead_letters["malformed_json"] += 2
    metrics.dead_letters["invalid_event"] += 2
    dashboard.sample(2.0)
    series = dashboard.series()
    assert _line(series, "dead-letters", "all kinds") == [4.0, 4.0]
    assert _line(series, "dead-letters", "malformed_json") == [4.0, 3.0]
    assert _line(series, "dead-letters", "invalid_event") == [0, 1.0]


@pytest.mark.parametrize(("counts", "q", "expected"), [
    ([0, 0, 0], 0.5, None),                  # no observations
    ([4, 0, 0], 0.5, 0.5),                   # halfway into (0, 1]
    ([0, 10, 0], 0.5, 3.0),                  # halfway into (1, 5]
    ([1, 1, 0], 0.99, pytest.approx(4.92)),  # 1.98 of 2: near the top of (1, 5]
    ([0, 0, 3], 0.5, 5.0),                   # beyond the last bound: at least it
])
def test_bucket_quantile_interpolates_within_the_bucket(
    counts: list[int], q: float, expected: float | None
) -> None:
    assert bucket_quantile((1.0, 5.0), counts, q) == expected


def test_latency_percentiles_come_from_the_observations_of_the_latency_span() -> None:
    metrics, _, dashboard = _make()
    metrics.observe_latency("ack", 200.0)  # before the dashboard started: not charted
    dashboard.sample(0.0)
    for second in range(1, 4):
        for _ in range(99):
            metrics.observe_latency("ack", 0.003)  # (0, 0.005]
        for _ in range(2):
            metrics.observe_latency("winback", 7.0)  # (5, 10]: the slowest 2 %
        dashboard.sample(float(second))
    series = dashboard.series()
    p50, p99 = _line(series, "latency", "p50"), _line(series, "latency", "p99")
    # 303 observations, all rules: the 151.5th of 297 in (0, 0.005], the 299.97th of 6 in
    # (5, 10].
    assert p50[-1] == pytest.approx(0.005 * 151.5 / 297, rel=1e-3)
    assert p99[-1] == pytest.approx(5.0 + 5.0 * (0.99 * 303 - 297) / 6, rel=1e-3)
    # Nothing observed for longer than the span: no percentile (a gap, not a zero).
    for second in range(4, int(LATENCY_SPAN_S) + 5):
        dashboard.sample(float(second))
    assert _line(dashboard.series(), "latency", "p50")[-1] is None
    assert "estimated from histogram buckets" in _chart(series, "latency")["note"]


def test_lag_per_partition_the_worst_drawn_apart_and_timers_pending_summed() -> None:
    _, view, dashboard = _make()
    view.offsets = [PartitionOffsets("events", p, 100, 100, 0.0) for p in range(10)]
    view.timers = {0: 3, 1: 4}
    dashboard.sample(0.0)
    dashboard.sample(1.0)
    view.offsets[3] = PartitionOffsets("events", 3, 100, 150, 2.0)
    view.offsets[7] = PartitionOffsets("events", 7, None, 20, 2.0)  # nothing committed
    view.offsets[8] = PartitionOffsets("events", 8, 5, None, 0.0)  # no fetch yet: unknown
    view.timers = {0: 3, 1: 5, 2: 1}
    dashboard.sample(2.0)
    series = dashboard.series()
    chart = _chart(series, "lag")
    assert [line["label"] for line in chart["lines"]] == [
        "all partitions", "events/3", "events/7"]
    assert _line(series, "lag", "all partitions") == [0.0, 70.0]
    assert _line(series, "lag", "events/3") == [0.0, 50.0]
    assert "10 owned input partitions" in chart["note"]
    assert series["partitions"] == 10
    assert _line(series, "timers", "pending") == [7.0, 9.0]


def test_the_ring_is_bounded_by_the_window_and_by_count() -> None:
    metrics, view, dashboard = _make(window_s=60.0, interval_s=1.0)
    view.offsets = [PartitionOffsets("events", 0, 0, 5, 1.0)]
    for second in range(500):
        metrics.events_in["events"] += 1
        dashboard.sample(float(second))
    series = dashboard.series()
    assert len(series["t"]) == 60
    assert series["t"][0] == -59.0
    assert all(len(line["values"]) == 60 for chart in series["charts"]
               for line in chart["lines"])
    # A timer firing too often cannot grow it past its count.
    for tenth in range(5000, 6000):
        dashboard.sample(tenth / 10)
    assert len(dashboard.series()["t"]) <= 62


def test_a_failing_view_leaves_the_counters_charted() -> None:
    metrics, view, dashboard = _make()
    view.fail = True
    dashboard.sample(0.0)
    metrics.events_in["events"] += 5
    dashboard.sample(1.0)
    series = dashboard.series()
    assert _line(series, "events", "read") == [5.0]
    assert _line(series, "lag", "all partitions") == [0.0]


def test_an_empty_dashboard_has_every_chart_without_points() -> None:
    _, _, dashboard = _make()
    series = dashboard.series()
    assert [c["id"] for c in series["charts"]] == [
        "lag", "events", "latency", "actions", "dead-letters", "timers"]
    assert all(line["values"] == [] for c in series["charts"] for line in c["lines"])
    orjson.dumps(series)


def test_the_lines_are_labelled_by_rule_kind_and_partition_only() -> None:
    metrics, view, dashboard = _make()
    view.offsets = [PartitionOffsets("events", 0, 0, 5, 1.0)]
    dashboard.sample(0.0)
    metrics.events_applied[("events", "ticket")] += 1
    metrics.actions[("ticket_opened_ack", "notification")] += 1
    metrics.dead_letters["malformed_json"] += 1
    metrics.observe_latency("ticket_opened_ack", 0.01)
    dashboard.sample(1.0)
    labels = {line["label"] for chart in dashboard.series()["charts"]
              for line in chart["lines"]}
    assert labels == {"all partitions", "events/0", "read", "applied", "p50", "p99",
                      "all rules", "ticket_opened_ack", "all kinds", "malformed_json",
                      "pending"}


async def test_the_page_and_its_data_are_served_self_contained() -> None:
    metrics, _, dashboard = _make()
    dashboard.sample(0.0)
    metrics.events_in["events"] += 3
    dashboard.sample(1.0)
    app = web.Application()
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/dashboard/data", dashboard.data)
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/dashboard")
        assert page.status == 200
        assert page.content_type == "text/html"
        html = await page.text()
        csp = page.headers["Content-Security-Policy"]
        data = await client.get("/dashboard/data")
        assert data.status == 200
        assert data.headers["Cache-Control"] == "no-store"
        first = await data.read()
        assert orjson.loads(first) == orjson.loads(orjson.dumps(dashboard.series()))
        # Derived once per sample: a new sample, new data.
        assert await (await client.get("/dashboard/data")).read() == first
        metrics.events_in["events"] += 3
        dashboard.sample(2.0)
        again = orjson.loads(await (await client.get("/dashboard/data")).read())
        assert again["t"] == [-1.0, 0.0]
    # Nothing loaded from elsewhere: no URL but the SVG namespace, and the CSP allows only
    # this page's own script and style (their hashes) and same-origin requests.
    assert re.findall(r"https?://[^\s\"'`]+", html) == ["http://www.w3.org/2000/svg"]
    assert "/dashboard/data" in html
    for tag in ("script", "style"):
        [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert dashboard_module.REFRESH_S == 2.0
    assert LATENCY_BUCKETS  # the buckets the percentiles are estimated from
